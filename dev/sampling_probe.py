"""What one decode step's token pick costs on the GPU (session 51 probe): bench_serve's "mixed settings" row ran 22%
slower than the same requests greedy (3.80 against 3.12 s at 16 rows, 85d0418), ~2 ms a step.

    python dev/sampling_probe.py [--batches 8,16,64] [--vocab 65536]

Rows (CUDA events, median of 50 after 5 warm-ups; bf16 logits (B, V)): argmax; JambaForCausalLM._warp + a draw at
one setting for all rows (temperature only; top_k 50; top_p 0.95; min_p 0.05); RowSampler.penalize + pick with
bench_serve's MIXED settings in turn (seen and counts on); and the parts: torch.sort, torch.topk(50), a draw.
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))


def timed(fn, reps=50):
    for _ in range(5):
        fn()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3)
    return statistics.median(out)


def main() -> int:
    from bench_serve import MIXED
    from jamba_ext.modeling_jamba import JambaForCausalLM
    from jamba_ext.row_sampling import RowSampler, check

    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="8,16,64")
    ap.add_argument("--vocab", type=int, default=65536)
    args = ap.parse_args()
    dev, V = torch.device("cuda"), args.vocab
    g = torch.Generator(device=dev)
    g.manual_seed(0)
    draw = lambda s: torch.multinomial(torch.softmax(s.float(), -1), 1, generator=g)  # noqa: E731
    for B in [int(b) for b in args.batches.split(",")]:
        logits = (torch.randn(B, V, device=dev) * 3).to(torch.bfloat16)
        seen = torch.rand(B, V, device=dev) < 0.01
        counts = (torch.rand(B, V, device=dev) < 0.002).int()
        rs = RowSampler([check(MIXED[i % len(MIXED)]) for i in range(B)], dev)
        rows = [("argmax", lambda: logits.argmax(-1))]
        for name, kw in (("temperature 0.8", dict(temperature=0.8, top_k=0, top_p=1.0)),
                         ("top_k 50", dict(temperature=0.8, top_k=50, top_p=1.0)),
                         ("top_p 0.95", dict(temperature=0.8, top_k=0, top_p=0.95)),
                         ("min_p 0.05", dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05))):
            rows.append((f"_warp {name} + draw", lambda kw=kw: draw(JambaForCausalLM._warp(logits, True, **kw))))
        rows += [("RowSampler MIXED: penalize + pick", lambda: rs.pick(rs.penalize(logits, seen, counts), g)),
                 ("  penalize", lambda: rs.penalize(logits, seen, counts)),
                 ("  scores (filters)", lambda: rs.scores(logits)),
                 ("  torch.sort (B, V) fp32", lambda: torch.sort(logits.float(), dim=-1)),
                 ("  torch.topk 50", lambda: torch.topk(logits.float(), 50, dim=-1)),
                 ("  softmax + multinomial", lambda: draw(logits))]
        print(f"--- B = {B}, V = {V}, bf16 logits", flush=True)
        for name, fn in rows:
            print(f"{name:40s} {timed(fn):9.1f} us", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
