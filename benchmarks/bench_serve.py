"""Serving throughput and latency: `jamba-ext serve` (jamba_ext.server, continuous batching) under concurrent clients,
against the same requests answered one at a time by model.generate() (what a server without batching does).

    python benchmarks/bench_serve.py            # GPU: one Jamba-v0.1 block (bench_model's), bf16, 64 requests of
                                                #      128-2048 prompt tokens and 8-128 new tokens, 16 clients
    python benchmarks/bench_serve.py --smoke    # tiny CPU config (CI-sized)

The server runs in this process (a thread) on a free local port; --clients threads send the requests (token-id
prompts, fixed seed) over HTTP, half of them streamed. Rows, for each --batch-sizes value: the wall time for all
requests, new tokens/s, and per request the latency (median and 90th percentile) and, for the streamed ones, the time
to the first chunk of text (the median of --reps runs, after a warm-up run, whose time is shown apart); then the
largest batch size again with each request's own sampling settings (MIXED, in turn: greedy and sampled rows, filters
and penalties share the steps); then "generate, one at a time": the same requests through model.generate() in turn (the
latency of the last one is the whole run). Correctness first: greedy answers in fp32 equal each prompt's own
generate() (on a GPU in bf16 the first token's agreement is recorded, not required: near ties of random weights).
Writes benchmarks/results/bench_serve.json; --smoke (and a run on the CPU) under benchmarks/results/local/.
"""
import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_batch import workload  # noqa: E402
from common import meta, results_dir, write_results  # noqa: E402

from jamba_ext import server  # noqa: E402


# the "mixed settings" row: each request's own sampling settings, in turn (jamba_ext.row_sampling)
MIXED = [{}, {"temperature": 0.8, "top_p": 0.95}, {"temperature": 0.7, "top_k": 50}, {"repetition_penalty": 1.1},
         {"temperature": 1.0, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": 0.2}]


class _Ids:
    """A tokenizer for token-id prompts: decode shows the ids (the text only has to be deterministic)."""

    def encode(self, text, add_bos=True):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return "".join(f"<{int(t)}>" for t in ids)


def _request(url, body, stream):
    """-> (answer text, seconds to the first text chunk or None, total seconds)."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(dict(body, stream=stream)).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    first = None
    with urllib.request.urlopen(req, timeout=600) as r:
        if not stream:
            ans = json.loads(r.read())
            return ans["choices"][0]["text"], None, time.perf_counter() - t0
        parts = []
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0]["text"]
            if text and first is None:
                first = time.perf_counter() - t0
            parts.append(text)
    return "".join(parts), first, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU config (CI)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--requests", type=int, default=None, help="number of requests (64; smoke 10)")
    ap.add_argument("--lengths", default=None, help="min,max prompt tokens (128,2048; smoke 4,40)")
    ap.add_argument("--budgets", default=None, help="min,max new tokens a request (8,128; smoke 1,8)")
    ap.add_argument("--clients", type=int, default=None, help="concurrent clients (16; smoke 4)")
    ap.add_argument("--batch-sizes", default=None, help="server rows, comma list (8,16; smoke 3)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs after a warm-up run, median (2; smoke 1)")
    args = ap.parse_args(argv)
    args.reps = max(1, args.reps or (1 if args.smoke else 2))
    n = args.requests or (10 if args.smoke else 64)
    clients = args.clients or (4 if args.smoke else 16)
    sizes = [int(b) for b in (args.batch_sizes or ("3" if args.smoke else "8,16")).split(",")]
    device, cfg, dtype, model, lengths, prompts, budgets, _, (lo, hi), (b_lo, b_hi) = workload(
        args.smoke, args.device, n, args.lengths, args.budgets)
    bodies = [{"prompt": p, "max_tokens": b} for p, b in zip(prompts, budgets)]
    tok = _Ids()

    def alone(i):
        with torch.inference_mode():
            return model.generate([prompts[i]], max_new_tokens=budgets[i], eos_token_id=None)[0, lengths[i]:].tolist()

    mixed = [dict(b, **MIXED[i % len(MIXED)]) for i, b in enumerate(bodies)]
    rows, check = [], {}
    for bs, asks in [(bs, bodies) for bs in sizes] + [(sizes[-1], mixed)]:
        got, started = {}, threading.Event()

        def ready(httpd):
            got["httpd"] = httpd
            started.set()
        th = threading.Thread(target=server.serve, args=(model, tok, "127.0.0.1", 0), daemon=True, kwargs=dict(
            ready=ready, batch_size=bs, max_prompt_tokens=hi, max_new_tokens=b_hi, eos_token_id=None))
        th.start()
        started.wait(120)
        url = "http://127.0.0.1:%d" % got["httpd"].server_address[1]
        _request(url, {"prompt": prompts[0][:8], "max_tokens": 2}, False)            # the graph capture
        runs = []
        for rep in range(args.reps + 1):        # the first run warms up (each prompt length's first prefill)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as ex:
                res = list(ex.map(lambda i: _request(url, asks[i], stream=i % 2 == 1), range(n)))
            runs.append((time.perf_counter() - t0, res))
        warm_s, runs = runs[0][0], sorted(runs[1:], key=lambda r: r[0])
        wall, res = runs[(len(runs) - 1) // 2]  # the median run (the lower of the middle two)
        got["httpd"].shutdown()
        th.join(60)
        if not check:                                   # correctness, on the first 6 requests
            k = min(6, n)
            want = [tok.decode(alone(i)) for i in range(k)]
            same = sum(res[i][0] == want[i] for i in range(k)) / k
            first = sum(res[i][0][:res[i][0].find(">") + 1] == want[i][:want[i].find(">") + 1] for i in range(k)) / k
            check = {"requests_checked": k, "same_as_alone": same, "first_token_agreement": first,
                     "ok": same == 1.0 or dtype != torch.float32}
            print("check:", check, flush=True)
        lat = sorted(r[2] for r in res)
        ttft = sorted(r[1] for r in res if r[1] is not None)
        name = f"serve b{bs}" + (", mixed settings" if asks is mixed else "")
        rows.append(dict(label=name, impl="jamba-ext serve", batch_size=bs, clients=clients, requests=n,
                         new_tokens=sum(budgets), seconds=wall, new_tokens_per_s=sum(budgets) / wall,
                         latency_p50_s=statistics.median(lat), latency_p90_s=lat[int(0.9 * (len(lat) - 1))],
                         ttft_p50_s=statistics.median(ttft) if ttft else None, median_us=wall * 1e6,
                         warmup_run_s=warm_s, runs_s=[w for w, _ in runs]))
        r = rows[-1]
        print(f"{name:32s} | {clients} clients | {wall:8.3f} s | {r['new_tokens_per_s']:9.1f} new tok/s | "
              f"latency p50 {r['latency_p50_s']:.3f} s, p90 {r['latency_p90_s']:.3f} s | first text (streamed) "
              f"p50 {r['ttft_p50_s'] or 0:.3f} s | warm-up run {warm_s:.3f} s", flush=True)
    for i in range(n):                                  # (warm-up: the baseline's graph, each length's prefill)
        alone(i)
    t0, lat = time.perf_counter(), []
    for i in range(n):
        alone(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        lat.append(time.perf_counter() - t0)           # (a request waits for all before it)
    wall = time.perf_counter() - t0
    rows.append(dict(label="generate, one at a time", impl="generate, one at a time", batch_size=1, clients=1,
                     requests=n, new_tokens=sum(budgets), seconds=wall, new_tokens_per_s=sum(budgets) / wall,
                     latency_p50_s=statistics.median(lat), latency_p90_s=sorted(lat)[int(0.9 * (n - 1))],
                     ttft_p50_s=None, median_us=wall * 1e6))
    print(f"generate, one at a time          | {wall:8.3f} s | {sum(budgets) / wall:9.1f} new tok/s | latency p50 "
          f"{statistics.median(lat):.3f} s (each waits for those before it)", flush=True)
    info = meta(device, dtype=str(dtype), check=check, config=cfg.to_dict(), prompt_lengths=[lo, hi],
                budgets=[b_lo, b_hi])
    path = write_results("bench_serve_smoke" if args.smoke else "bench_serve", rows, info,
                         folder=results_dir(args.smoke, device))
    print("wrote", path)
    return 0 if check.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
