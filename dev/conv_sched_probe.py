"""dev/conv_sched_probe.py -- the causal_conv1d forward's two schedules, A/B in one binary (graph-timed, us).

    python3 dev/conv_sched_probe.py [--rounds 3]     # on the GPU, ~1 min

JAMBA_EXT_CONV_BAL=0: 4-segment warps (segment = 4 warp vectors of 256 steps), whole waves, then one segment per
warp; =1: one wave of warps whose ranges of warp vectors differ by at most one (csrc/cuda/causal_conv1d.cu); unset:
the size rule. Jamba-v0.1 shapes (d_inner 8192, width 4, bf16, final state kept as the model does), timed in turns
per round, and a same-size copy. Prints the best of the rounds and each round.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)
import common  # noqa: E402
from bench_kernels import Bench, rn  # noqa: E402

from jamba_ext import ops  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    DI, K = 8192, 4
    print(f"copy bandwidth {bb.bw:.0f} GB/s", flush=True)
    for Bsz, L in ((1, 2048), (1, 3072), (2, 2048), (1, 4096), (1, 8192), (8, 2048), (1, 32768)):
        x = rn(Bsz, DI, L, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        nbytes = 2 * Bsz * DI * L * 2
        ref = None
        best = {}
        per = []
        for _ in range(args.rounds):
            cells = {}
            for bal in ("0", "1", None):
                with common.env(JAMBA_EXT_CONV_BAL=bal):
                    out = ops.causal_conv1d(x, w, b, None, True, K - 1)
                    if ref is None:
                        ref = out
                    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]), "schedules differ"
                    us = bb.graph_us(lambda: ops.causal_conv1d(x, w, b, None, True, K - 1))
                key = {"0": "seg", "1": "bal", None: "default"}[bal]
                cells[key] = us
                best[key] = min(best.get(key, 1e9), us)
            cells["copy"] = bb.copy_graph_us(nbytes)
            best["copy"] = min(best.get("copy", 1e9), cells["copy"])
            per.append(cells)
        floor = nbytes / (bb.bw * 1e3)
        print(f"conv {Bsz}x{L}: best " + " | ".join(f"{k} {v:7.2f}" for k, v in best.items())
              + f" | floor {floor:6.2f} us, bal {100 * floor / best['bal']:.1f}% / seg {100 * floor / best['seg']:.1f}%"
              f" of copy bw", flush=True)
        for i, c in enumerate(per):
            print(f"    round {i}: " + " | ".join(f"{k} {v:7.2f}" for k, v in c.items()), flush=True)


if __name__ == "__main__":
    main()
