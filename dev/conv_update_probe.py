"""dev/conv_update_probe.py -- causal_conv1d_update at decode batches under env variants, graph-timed like
bench_kernels (us per call, best of ROUNDS rounds timed in turns), Jamba-v0.1 shapes (d_inner 8192, width 4), bf16
taps and bias as in the model, next to a same-size torch copy.

    python3 dev/conv_update_probe.py "default" "JAMBA_EXT_CONV_UPDATE_P16=0" "JAMBA_EXT_CONV_UPDATE_NB=2"   # ~20 s
    BATCHES=32,64 ROUNDS=5 python3 dev/conv_update_probe.py ...   # other batch sizes (default 1,16,64,256), rounds
    BATCHES= FWD=1x2048,1x8192 python3 dev/conv_update_probe.py ...  # the forward (causal_conv1d) at B x L instead

Each variant is a space-separated list of NAME=VALUE settings ("default": none). Every variant's output and new
state must equal the first variant's bit for bit (the variants change loads and schedules, not arithmetic).
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


def parse(v):
    return dict(kv.split("=", 1) for kv in v.split() if kv != "default")


def ab(bb, label, variants, rounds, nbytes, check, call):
    """check() -> tensors that every variant must reproduce bit for bit; call: the op, timed in a CUDA graph, the
    variants in turns, best of rounds."""
    ref = None
    for name, env in variants:
        with common.env(**env):
            got = check()
        ref = got if ref is None else ref
        assert all(torch.equal(g, r) for g, r in zip(got, ref)), (name, label)
    times = {name: [] for name, _ in variants}
    for _ in range(rounds):
        for name, env in variants:
            with common.env(**env):
                times[name].append(bb.graph_us(call))
    print(f"{label} ({nbytes / 1e6:.2f} MB, floor {nbytes / (bb.bw * 1e3):.2f} us, torch copy "
          f"{bb.copy_graph_us(nbytes):.2f} us): " + " | ".join(f"[{n}] {min(t):.2f}" for n, t in times.items()),
          flush=True)


def main():
    variants = [(v, parse(v)) for v in (sys.argv[1:] or ["default"])]
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    DI, K = 8192, 4
    rounds = int(os.environ.get("ROUNDS", "3"))
    for Bsz in [int(v) for v in os.environ.get("BATCHES", "1,16,64,256").split(",") if v]:
        x = rn(Bsz, DI, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        st0 = rn(Bsz, DI, K, dev=dev)
        st = st0.clone()

        def check():
            s = st0.clone()
            return ops.causal_conv1d_update(x, s, w, b, True), s

        ab(bb, f"conv_update B={Bsz}", variants, rounds, 2 * Bsz * DI * K * 2 + 2 * Bsz * DI * 2 + DI * (K + 1) * 2,
           check, lambda: ops.causal_conv1d_update(x, st, w, b, True))
    for Bsz, L in [tuple(int(u) for u in v.split("x")) for v in os.environ.get("FWD", "").split(",") if v]:
        x = rn(Bsz, DI, L, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        fwd = lambda: ops.causal_conv1d(x, w, b, None, True, K - 1)  # noqa: E731
        ab(bb, f"causal_conv1d {Bsz}x{L}", variants, rounds,
           2 * Bsz * DI * L * 2 + DI * (K + 1) * 2 + Bsz * DI * (K - 1) * 2, fwd, fwd)


if __name__ == "__main__":
    main()
