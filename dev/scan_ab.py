"""dev/scan_ab.py -- A/B of selective_scan variants behind an EXPERIMENT env knob, timed in turns on one GPU.

    python3 dev/scan_ab.py --knob JAMBA_EXT_<NAME> [--off 0]

(used for the steady loop of selective_scan_pc_kernel, knob JAMBA_EXT_SCAN_STEADY, since removed:
benchmarks/results/scan_ab_1fb09d3.log). The knob must be read per call by the host code under test.

For each benchmark shape (bf16, DI 8192, N 16: 1x2048, 1x8192, 1x32768, 8x2048; B/C t-fast and n-fast as
the model passes them), the op with the knob unset and with knob=off: outputs and last states must be
bit-identical (same arithmetic in the same order), then both are timed in turns (common.time_interleaved)
and printed in ms and % of the exponential floor (B*DI*L*N / 4.11e12 ex2/s, the H200's measured rate).
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
import common  # noqa: E402
from bench_kernels import scan_args  # noqa: E402
from jamba_ext import ops  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--knob", required=True, help="EXPERIMENT env knob read per call")
    ap.add_argument("--off", default="0")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    dev = torch.device("cuda")
    DI, N = 8192, 16
    print(f"A/B: knob unset ('new') vs {args.knob}={args.off} ('old'), commit {common.git_commit()}")
    for Bsz, L in ((1, 2048), (1, 8192), (1, 32768), (8, 2048)):
        a = scan_args(Bsz, DI, L, N, dev)
        for layout in ("t-fast", "n-fast"):
            av = dict(a)
            if layout == "n-fast":
                av["B"] = a["B"].transpose(1, 2).contiguous().transpose(1, 2)
                av["C"] = a["C"].transpose(1, 2).contiguous().transpose(1, 2)
            new = lambda: ops.selective_scan(**av)

            def old():
                with common.env(**{args.knob: args.off}):
                    return ops.selective_scan(**av)
            o1, l1 = new()
            o0, l0 = old()
            same = torch.equal(o1, o0) and torch.equal(l1, l0)
            t = common.time_interleaved({"new": new, "old": old}, dev, rounds=args.rounds, reps=3)
            floor = Bsz * DI * L * N / 4.11e12 * 1e3
            tn, to = t["new"]["median_ms"], t["old"]["median_ms"]
            print(f"{Bsz}x{L:<6d} {layout}: new {tn:.4f} ms ({100 * floor / tn:.1f}% of exp floor)  old {to:.4f} ms "
                  f"({100 * floor / to:.1f}%)  new/old {tn / to:.3f}  bit-identical {same}", flush=True)
            assert same, "outputs differ"
        del a
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
