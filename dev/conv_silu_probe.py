"""dev/conv_silu_probe.py -- is the causal_conv1d forward's SiLU (2 SFU ops per output) part of its time at 1x2048?

    python3 dev/conv_silu_probe.py      # on the GPU, ~20 s

Graph-timed like bench_kernels (us per call; PDL on and off), Jamba-v0.1 shapes, bf16: the forward with SiLU and
without (the op's silu flag: identical loads, stores and schedule, no MUFU), and a same-size copy. If the rows
without SiLU are close to the copy, the SFU work (16 results per clock per SM; ~8 us of the ~16 us floor at
1x2048) is what keeps the forward from the copy's speed there.
"""
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
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    DI, K = 8192, 4
    for Bsz, L in ((1, 2048), (1, 8192)):
        x = rn(Bsz, DI, L, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        nbytes = 2 * Bsz * DI * L * 2
        cells = []
        for silu in (True, False):
            for pdl in ("1", "0"):
                with common.env(JAMBA_EXT_PDL=pdl):
                    us = bb.graph_us(lambda: ops.causal_conv1d(x, w, b, None, silu, K - 1))
                cells.append(f"silu={int(silu)} pdl={pdl} {us:6.1f}")
        print(f"conv B={Bsz} L={L}: " + " | ".join(cells) + f" | copy {bb.copy_graph_us(nbytes):6.1f} us", flush=True)


if __name__ == "__main__":
    main()
