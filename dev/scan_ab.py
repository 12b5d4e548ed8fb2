"""dev/scan_ab.py -- A/B of selective_scan variants behind an EXPERIMENT env knob, timed in turns on one GPU.

    python3 dev/scan_ab.py --knob JAMBA_EXT_<NAME> [--off 0]
    python3 dev/scan_ab.py --knob JAMBA_EXT_<NAME> --off 1,2,4 --tol 1e-2

(used for the steady loop of selective_scan_pc_kernel, knob JAMBA_EXT_SCAN_STEADY, since removed:
benchmarks/results/scan_ab_1fb09d3.log). The knob must be read per call by the host code under test.

For each benchmark shape (bf16, DI 8192, N 16: 1x2048, 1x8192, 1x32768, 8x2048; B/C t-fast and n-fast as
the model passes them), the op with the knob unset and with knob=off (each value of a comma list): outputs and
last states must be bit-identical (same arithmetic in the same order), or, with --tol, within that relative
distance of the unset run's (max |a - b| / max |b|; for knobs that change the arithmetic, e.g. the FMA-pipe
exponentials of JAMBA_EXT_SCAN_FX), then all are timed in turns (common.time_interleaved) and printed in ms and %
of the exponential floor (B*DI*L*N / 4.11e12 ex2/s, the H200's measured rate).
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
    ap.add_argument("--off", default="0", help="knob value(s), comma-separated")
    ap.add_argument("--tol", type=float, default=None, help="relative distance allowed instead of bit identity")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    dev = torch.device("cuda")
    DI, N = 8192, 16
    offs = args.off.split(",")
    print(f"A/B: knob unset ('new') vs {args.knob} in {offs}, commit {common.git_commit()}")
    for Bsz, L in ((1, 2048), (1, 8192), (1, 32768), (8, 2048)):
        a = scan_args(Bsz, DI, L, N, dev)
        for layout in ("t-fast", "n-fast"):
            av = dict(a)
            if layout == "n-fast":
                av["B"] = a["B"].transpose(1, 2).contiguous().transpose(1, 2)
                av["C"] = a["C"].transpose(1, 2).contiguous().transpose(1, 2)
            fns = {"new": lambda: ops.selective_scan(**av)}
            for v in offs:
                def old(v=v):
                    with common.env(**{args.knob: v}):
                        return ops.selective_scan(**av)
                fns[f"{args.knob}={v}"] = old
            o1, l1 = fns["new"]()
            checks = []
            for name, fn in fns.items():
                if name == "new":
                    continue
                o0, l0 = fn()
                if args.tol is None:
                    ok = torch.equal(o1, o0) and torch.equal(l1, l0)
                    checks.append(f"{name} bit-identical {ok}")
                else:
                    d = max(((o0.float() - o1.float()).abs().max() / o1.float().abs().max()).item(),
                            ((l0 - l1).abs().max() / l1.abs().max()).item())
                    ok = d <= args.tol
                    checks.append(f"{name} rel.dist {d:.2e}")
                assert ok, f"{name}: outputs differ ({checks[-1]})"
            t = common.time_interleaved(fns, dev, rounds=args.rounds, reps=3)
            floor = Bsz * DI * L * N / 4.11e12 * 1e3
            tn = t["new"]["median_ms"]
            row = "  ".join(f"{n} {t[n]['median_ms']:.4f} ms ({100 * floor / t[n]['median_ms']:.1f}%, "
                            f"{t[n]['median_ms'] / tn:.3f}x)" for n in fns)
            print(f"{Bsz}x{L:<6d} {layout}: {row}  [{'; '.join(checks)}]", flush=True)
        del a
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
