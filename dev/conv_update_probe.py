"""dev/conv_update_probe.py -- causal_conv1d_update at decode batches: batch rows per thread (NB) x batch tiles per
block (2^LBT), graph-timed like bench_kernels (us per call), Jamba-v0.1 shapes (d_inner 8192, width 4), bf16.

    python3 dev/conv_update_probe.py      # on the GPU, ~30 s

The vec kernel's default block is 128 consecutive channel groups of one batch tile, so every batch tile re-reads its
channels' taps and bias from L2 (at batch 64 with NB = 2: 2.6 MB beside 10.5 MB of state, x and out; NB = 1 -> 2
cut the time 3.9 -> 3.3 us). EXPERIMENT JAMBA_EXT_CONV_UPDATE_LBT = 1..3 makes a block 2^LBT batch tiles x
128 >> LBT channel groups (grid.y over batch), so the 2^LBT threads of a channel group in one block share the taps'
loads in L1. Each variant's output and new state must equal the default's bit for bit (same arithmetic per
channel); the rows are timed in turns (a round of every variant, then the next round) next to a same-size copy.
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

VARIANTS = [("default", {}), ("nb2 lbt0", {"NB": "2", "LBT": "0"}), ("nb2 lbt1", {"NB": "2", "LBT": "1"}),
            ("nb2 lbt2", {"NB": "2", "LBT": "2"}), ("nb2 lbt3", {"NB": "2", "LBT": "3"}),
            ("nb1 lbt0", {"NB": "1", "LBT": "0"}), ("nb1 lbt1", {"NB": "1", "LBT": "1"}),
            ("nb1 lbt2", {"NB": "1", "LBT": "2"}), ("nb1 lbt3", {"NB": "1", "LBT": "3"})]


def envs(v):
    return {f"JAMBA_EXT_CONV_UPDATE_{k}": val for k, val in v.items()}


def main():
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    DI, K = 8192, 4
    rounds = int(os.environ.get("ROUNDS", "3"))
    for Bsz in (16, 64, 256):
        x = rn(Bsz, DI, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        st0 = rn(Bsz, DI, K, dev=dev)
        ref_st = st0.clone()
        ref = ops.causal_conv1d_update(x, ref_st, w, b, True)
        for name, v in VARIANTS:  # same bits as the default
            st = st0.clone()
            with common.env(**envs(v)):
                out = ops.causal_conv1d_update(x, st, w, b, True)
            assert torch.equal(out, ref) and torch.equal(st, ref_st), (name, Bsz)
        nbytes = 2 * Bsz * DI * K * 2 + 2 * Bsz * DI * 2 + DI * (K + 1) * 2
        times = {name: [] for name, _ in VARIANTS}
        st = st0.clone()
        for _ in range(rounds):
            for name, v in VARIANTS:
                with common.env(**envs(v)):
                    times[name].append(bb.graph_us(lambda: ops.causal_conv1d_update(x, st, w, b, True)))
        copy = bb.copy_graph_us(nbytes)
        floor = nbytes / (bb.bw * 1e3)
        print(f"conv_update B={Bsz} ({nbytes / 1e6:.1f} MB, floor {floor:.2f} us, copy {copy:.2f} us): " +
              " | ".join(f"{n} {min(t):.2f}" for n, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
