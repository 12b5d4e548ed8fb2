"""A decode step's token pick: jamba.sample_rows (one kernel: each row's penalties, temperature, top_k, top_p, min_p
and the draw) against the torch code that does the same (torch eager, in the same run) and the floor.

    python benchmarks/bench_sampling.py            # GPU: bf16 logits, V = 65536 (Jamba's), batch 1 / 16 / 64
    python benchmarks/bench_sampling.py --smoke    # tiny CPU run (CI)

Rows per batch size B:
  sample_rows, mixed         bench_serve's MIXED settings in turn (greedy and sampled rows, filters and penalties)
  torch eager, mixed         the same per-row settings in torch ops (penalties, per-row top_k by topk + gather,
                             top_p by sort + cumsum, min_p, softmax + multinomial, greedy rows by argmax): what a
                             batch of mixed requests costs without the kernel
  sample_rows, top_p 0.95    every row temperature 0.8, top_p 0.95
  generate()'s top_p 0.95    JambaForCausalLM._warp + softmax + multinomial, the same settings (generate(do_sample))
  sample_rows, greedy        every row greedy; against torch's argmax
  ..., one-block             each sample_rows row again with JAMBA_EXT_SAMPLE_ROWS_CLUSTER=0: the one-block kernel
                             (a row on one block) beside the default (on sm_90+ from V = 4096: a row on a cluster of
                             8 CTAs); on the CPU the switch changes nothing (the same C kernel)
Floor: the bytes one pass must read (logits, seen and counts once) over the copy bandwidth measured in the same run.
Correctness first: the kernel's kept columns against the float64 reference (reference.sample_rows_kept) on the
mixed inputs of every batch size, and the one-block kernel's tokens and tau equal to the default's (check "...
one-block same"). Writes benchmarks/results/bench_sampling.json (--smoke: results/local/).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import MIXED  # noqa: E402  (the serving benchmark's per-request settings, in turn)
from common import copy_bandwidth_gbs, env, fmt_row, meta, results_dir, time_ms, write_results  # noqa: E402

from jamba_ext import ops, reference  # noqa: E402
from jamba_ext.modeling_jamba import JambaForCausalLM  # noqa: E402
from jamba_ext.row_sampling import check  # noqa: E402



def torch_mixed(logits, P, seen, counts, gen, kmax):
    """The per-row pick in torch ops (the kernel's semantics; P: (R, 7) params as sample_rows takes them; kmax: the
    largest top_k of the rows, known on the host)."""
    temp, k, top_p, min_p, rep, pres, freq = P.unbind(1)
    x = logits.float()
    x = torch.where(seen, torch.where(x < 0, x * rep[:, None], x / rep[:, None]), x)
    c = counts.float()
    x = x - freq[:, None] * c - pres[:, None] * (c > 0).float()
    greedy = x.argmax(-1)
    s = x / torch.where(temp > 0, temp, 1.0)[:, None]
    V = s.shape[1]
    kk = k.long().clamp(0, V)
    top = torch.topk(s, min(max(kmax, 1), V), dim=-1).values
    kth = top.gather(1, (kk.clamp(1, top.shape[1]) - 1)[:, None])
    s = s.masked_fill(((kk > 0) & (kk < V))[:, None] & (s < kth), float("-inf"))
    srt, idx = torch.sort(s, dim=-1)
    drop = torch.softmax(srt, -1).cumsum(-1) <= (1 - top_p)[:, None]
    drop[:, -1] = False
    s = s.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    p = torch.softmax(s, -1)
    drop = p < min_p[:, None] * p.amax(-1, keepdim=True)
    drop.scatter_(1, p.argmax(-1, keepdim=True), False)
    s = s.masked_fill(drop, float("-inf"))
    drawn = torch.multinomial(torch.softmax(s, -1), 1, generator=gen)[:, 0]
    return torch.where(temp > 0, drawn, greedy)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (CI)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batches", default=None, help="comma list (1,16,64; smoke 1,4)")
    ap.add_argument("--vocab", type=int, default=None, help="V (65536; smoke 1000)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    V = args.vocab or (1000 if args.smoke else 65536)
    batches = [int(b) for b in (args.batches or ("1,4" if args.smoke else "1,16,64")).split(",")]
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    reps = 5 if args.smoke else 50
    bw = copy_bandwidth_gbs(dev, (64 << 20) if args.smoke else (2 << 30))
    print(f"device {dev}, V = {V}, {dtype}, copy bandwidth {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    rows, checks = [], {}
    for B in batches:
        g = torch.Generator().manual_seed(B)
        logits = (torch.randn(B, V, generator=g) * 3).to(dev, dtype)
        seen = (torch.rand(B, V, generator=g) < 0.01).to(dev)
        counts = (torch.rand(B, V, generator=g) < 0.002).int().to(dev)
        mixed = [check(MIXED[i % len(MIXED)]) for i in range(B)]
        P = torch.tensor([list(s) for s in mixed], dtype=torch.float32, device=dev)
        top_p = torch.tensor([[0.8, 0, 0.95, 0.0, 1.0, 0.0, 0.0]] * B, device=dev)
        greedy = torch.tensor([[0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0]] * B, device=dev)
        # correctness: the kernel's kept columns (tau) against the float64 reference, mixed settings
        tokens, tau = ops.sample_rows(logits, P, seen, counts, seed=1, offset=0)
        ref = reference.sample_rows_kept(logits.cpu(), P.cpu(), seen.cpu(), counts.cpu())
        bad = reference.sample_rows_disagreements(P.cpu(), tokens, tau, *ref)
        checks[f"B{B}"] = not bad
        if bad:
            print(f"check B={B}: {bad[:4]}", flush=True)
        with env(JAMBA_EXT_SAMPLE_ROWS_CLUSTER="0"):                    # the one-block kernel: the same bits
            t1, tau1 = ops.sample_rows(logits, P, seen, counts, seed=1, offset=0)
        checks[f"B{B} one-block same"] = bool(torch.equal(t1, tokens) and torch.equal(tau1, tau))
        nbytes = B * V * (logits.element_size() + 1 + 4)
        floor_us = nbytes / (bw * 1e3)
        pick_mixed = lambda: ops.sample_rows(logits, P, seen, counts, seed=1, offset=0)  # noqa: E731
        pick_top_p = lambda: ops.sample_rows(logits, top_p, seed=1, offset=0)          # noqa: E731
        pick_greedy = lambda: ops.sample_rows(logits, greedy, seed=1, offset=0)        # noqa: E731
        one = dict(JAMBA_EXT_SAMPLE_ROWS_CLUSTER="0")   # (the switch is read at each call: set around the timing)
        cases = [
            ("sample_rows, mixed", "sample_rows", pick_mixed, {}),
            ("sample_rows, mixed, one-block", "sample_rows one-block", pick_mixed, one),
            ("torch eager, mixed", "torch eager", lambda: torch_mixed(logits, P, seen, counts, gen,
                                                                     max(m.top_k for m in mixed)), {}),
            ("sample_rows, top_p 0.95", "sample_rows", pick_top_p, {}),
            ("sample_rows, top_p 0.95, one-block", "sample_rows one-block", pick_top_p, one),
            ("generate()'s top_p 0.95", "torch eager", lambda: torch.multinomial(torch.softmax(JambaForCausalLM._warp(
                logits, True, 0.8, 0, 0.95), -1), 1, generator=gen), {}),
            ("sample_rows, greedy", "sample_rows", pick_greedy, {}),
            ("sample_rows, greedy, one-block", "sample_rows one-block", pick_greedy, one),
            ("torch argmax", "torch eager", lambda: logits.argmax(-1), {}),
        ]
        for label, impl, fn, switches in cases:
            with env(**switches):
                us = time_ms(fn, dev, warmup=3, reps=reps)["median_ms"] * 1e3
            fl = floor_us if "mixed" in label else B * V * logits.element_size() / (bw * 1e3)
            rows.append(dict(label=f"{label} B={B}", impl=impl, batch=B, vocab=V, median_us=us, floor_us=fl,
                             of_floor=fl / us))
            print(fmt_row(f"{label} B={B}", us, fl), flush=True)
    info = meta(dev, dtype=str(dtype), copy_bandwidth_gbs=bw, check=dict(checks, ok=all(checks.values())))
    print("check:", info["check"], flush=True)
    path = write_results("bench_sampling_smoke" if args.smoke else "bench_sampling", rows, info,
                         folder=results_dir(args.smoke, dev))
    print("wrote", path)
    return 0 if info["check"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
