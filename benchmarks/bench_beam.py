"""Beam search throughput: generate(num_beams=n) of jamba_ext against transformers' on the same weights.

    python benchmarks/bench_beam.py            # GPU: one Jamba-v0.1 block (bench_model's), bf16, 2K prompt, batch 1,
                                               #      4 beams, 32 new tokens (EOS off: every run goes the full length)
    python benchmarks/bench_beam.py --smoke    # tiny CPU config (CI-sized)

Rows: "jamba_ext+graph" (the default on CUDA: each decode step replayed from a captured CUDA graph over B x n rows,
the beams' state reordered in place between replays), "jamba_ext" (eager steps, dynamic cache), "transformers"
(its generate(num_beams=n), do_sample=False), and "jamba_ext+graph greedy" (num_beams=1 over the same prompt, for
the cost of a search step against a plain decode step; "greedy x<n>": batch x n prompts, batch x n rows, the
decode step a search step runs, without the search's own work; distinct prompts, since copies of one would route
every row to the same experts). Each row: the wall time of generate() with 1 and with n_new
new tokens (median of --reps, the device synchronised), prefill_ms = the first, decode_ms_per_token = (second -
first) / (n_new - 1), tokens_per_s = beams * batch / decode_ms_per_token (tokens the search evaluates). Since session 46
the timed graph calls replay the graph the warm-up call kept (same rows and cache bucket), so no capture lies in the
n_new call's time; until then it did (~27 ms for one block, ~0.9 ms of each step's figure at 32 new tokens).
Correctness first: our graph search's sequences and scores against our eager static-cache search (same kernels:
must be equal), and against transformers' (recorded: in bf16 a near tie may pick another beam).
Writes benchmarks/results/bench_beam.json; --smoke (and a run on the CPU) bench_beam_smoke.json under
benchmarks/results/local/ (gitignored).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import ONE_BLOCK, SMOKE, build_hf, sync  # noqa: E402
from common import meta, results_dir, write_results  # noqa: E402

from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM  # noqa: E402


def timed(fn, device, reps: int) -> float:
    ts = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU config (CI)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--prompt", type=int, default=None, help="prompt length (2048; smoke 32)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--new", type=int, default=None, help="new tokens (32; smoke 6)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    cfg = JambaConfig(**(SMOKE if args.smoke else ONE_BLOCK))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    L, n_new = args.prompt or (32 if args.smoke else 2048), args.new or (6 if args.smoke else 32)
    if args.beams < 2 or n_new < 2:
        ap.error("--beams and --new must be >= 2")
    print(f"building {'smoke' if args.smoke else 'one-block Jamba-v0.1'} model on {device} {dtype} ...", flush=True)
    ours = JambaForCausalLM.from_config(cfg, dtype=dtype, device=device, seed=0)
    hf, hf_note = (None, "skipped (--no-hf)") if args.no_hf else build_hf(cfg, ours, use_mamba_kernels=False)
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (args.batch, L), device=device, generator=gen)
    mask = torch.ones_like(ids)
    # batch x beams distinct prompts (copies of one prompt would route every row to the same experts, while a search's
    # beams hold different tokens and touch more of them: batch 4 touches up to 8 of 16 experts a MoE layer, not 2)
    wide = torch.randint(3, cfg.vocab_size, (args.batch * args.beams, L), device=device, generator=gen)
    kw = dict(num_beams=args.beams, eos_token_id=None, return_dict_in_generate=True, output_scores=True)
    graph_ok = device.type == "cuda"

    # ---- correctness first
    with torch.no_grad():
        a = ours.generate(ids, max_new_tokens=n_new, cuda_graph=graph_ok, static_cache=True, **kw)
        b = ours.generate(ids, max_new_tokens=n_new, cuda_graph=False, static_cache=True, **kw)
        check = {"graph_equals_eager": a.sequences.tolist() == b.sequences.tolist()
                 and torch.equal(a.sequences_scores, b.sequences_scores)}
        if hf is not None:
            try:
                h = hf.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, pad_token_id=0, **kw)
                check["transformers_same_sequences"] = a.sequences.tolist() == h.sequences.tolist()
                check["transformers_scores_max_abs_diff"] = (a.sequences_scores.float()
                                                             - h.sequences_scores.float()).abs().max().item()
            except Exception as e:  # noqa: BLE001 -- the baseline's failure is recorded, ours still measured
                hf, hf_note = None, f"transformers generate failed: {type(e).__name__}: {e}"[:300]
    check["ok"] = check["graph_equals_eager"]
    print("check:", check, flush=True)

    runs = {"jamba_ext+graph": lambda n: ours.generate(ids, max_new_tokens=n, cuda_graph=graph_ok, **kw),
            "jamba_ext": lambda n: ours.generate(ids, max_new_tokens=n, cuda_graph=False, static_cache=False, **kw),
            "jamba_ext+graph greedy": lambda n: ours.generate(ids, max_new_tokens=n, cuda_graph=graph_ok,
                                                              eos_token_id=None),
            f"jamba_ext+graph greedy x{args.beams}": lambda n: ours.generate(
                wide, max_new_tokens=n, cuda_graph=graph_ok, eos_token_id=None)}
    if hf is not None:
        runs["transformers"] = lambda n: hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                                     pad_token_id=0, **kw)
    rows = []
    with torch.no_grad():
        for name, run in runs.items():
            run(2)                                                       # warm-up
            reps = 1 if name == "transformers" else args.reps             # (its slow path: seconds a call)
            t1, tn = timed(lambda: run(1), device, reps), timed(lambda: run(n_new), device, reps)
            per = (tn - t1) / (n_new - 1)
            beams = 1 if name.endswith("greedy") else args.beams    # (greedy xN: N prompts per prompt)
            rows.append(dict(label=name, impl=name, batch=args.batch, beams=beams, prompt=L, new_tokens=n_new,
                             prefill_ms=t1, total_ms=tn, decode_ms_per_token=per,
                             tokens_per_s=beams * args.batch / (per / 1e3), median_us=tn * 1e3))
            print(f"{name:<26} prefill {t1:9.1f} ms | {n_new} tokens {tn:9.1f} ms | {per:8.2f} ms a step | "
                  f"{rows[-1]['tokens_per_s']:9.1f} beam-tokens/s", flush=True)
    base = {r["impl"]: r["decode_ms_per_token"] for r in rows}
    if "transformers" in base:
        print(f"decode step, transformers / jamba_ext+graph: {base['transformers'] / base['jamba_ext+graph']:.1f}x",
              flush=True)
    info = meta(device, dtype=str(dtype), baseline=hf_note, check=check, config=cfg.to_dict())
    path = write_results("bench_beam_smoke" if args.smoke else "bench_beam", rows, info,
                         folder=results_dir(args.smoke, device))
    print("wrote", path)
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
