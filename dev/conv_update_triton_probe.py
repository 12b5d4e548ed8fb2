"""dev/conv_update_triton_probe.py -- where does causal_conv1d_update's time go at decode batches? Our kernel next
to Triton kernels that do all of its work or parts of it, graph-timed like bench_kernels (us per call, best of ROUNDS
rounds timed in turns), Jamba-v0.1 shapes (d_inner 8192, width 4), bf16 state / x / taps / bias.

    python3 dev/conv_update_triton_probe.py      # on the GPU, ~1 min

The Triton kernels treat a channel's 4 state entries as one 64-bit word (the shift is (s >> 16) | x << 48, and the
window of the step is the new state): "full" (state, x, taps, bias -> out and state: the op; its state must equal
ours bit for bit and its out within a bf16 rounding), "no taps" (state and x -> state, out = x: the same bytes
without the taps' and bias's loads), "state only" (state and x -> state). Each at BC channels per program and a
warp count. If a Triton "full" beats our kernel, its structure is the next step; the parts say what the loads of
the taps and of out cost.
"""
import os
import sys

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)
from bench_kernels import Bench, rn  # noqa: E402

from jamba_ext import ops  # noqa: E402


@triton.jit
def _f(bits):  # the low 16 bits of a uint64 as a bf16 value, in fp32
    return (bits & 0xFFFF).to(tl.uint16).to(tl.bfloat16, bitcast=True).to(tl.float32)


@triton.jit
def _upd(x, st, w, b, out, DI, BC: tl.constexpr, MODE: tl.constexpr):
    """MODE 0: full; 1: no taps (out = x); 2: state only. grid (DI / BC, B)"""
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    row = tl.program_id(1).to(tl.int64) * DI
    xb = tl.load(x + row + c).to(tl.uint16, bitcast=True).to(tl.uint64)
    s = tl.load(st + row + c).to(tl.uint64, bitcast=True)
    new = (s >> 16) | (xb << 48)
    if MODE == 0:
        wb = tl.load(w + c).to(tl.uint64, bitcast=True)
        acc = tl.load(b + c).to(tl.float32)
        acc += _f(wb) * _f(new) + _f(wb >> 16) * _f(new >> 16)
        acc += _f(wb >> 32) * _f(new >> 32) + _f(wb >> 48) * _f(new >> 48)
        o = acc / (1.0 + tl.exp(-acc))
        tl.store(out + row + c, o.to(tl.bfloat16))
    if MODE == 1:
        tl.store(out + row + c, xb.to(tl.uint16).to(tl.bfloat16, bitcast=True))
    tl.store(st + row + c, new.to(tl.int64, bitcast=True))


def main():
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    DI, K = 8192, 4
    rounds = int(os.environ.get("ROUNDS", "5"))
    for Bsz in (16, 64, 256):
        x = rn(Bsz, DI, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        st0 = rn(Bsz, DI, K, dev=dev)
        out = torch.empty_like(x)
        w64 = w.view(torch.int64).view(DI)

        def tri(st, mode, bc, warps):
            _upd[(DI // bc, Bsz)](x, st.view(torch.int64).view(Bsz, DI), w64, b, out, DI, BC=bc, MODE=mode,
                                  num_warps=warps)

        st_ours, st_tri = st0.clone(), st0.clone()
        ref = ops.causal_conv1d_update(x, st_ours, w, b, True)
        tri(st_tri, 0, 256, 4)
        assert torch.equal(st_tri, st_ours), Bsz
        torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
        st = st0.clone()
        rows = {"ours": lambda: ops.causal_conv1d_update(x, st, w, b, True)}
        for mode, name in ((0, "full"), (1, "no taps"), (2, "state only")):
            for bc, warps in ((256, 4), (512, 4), (512, 8), (1024, 8), (128, 2)):
                rows[f"{name} {bc}/{warps}"] = lambda m=mode, c=bc, wp=warps: tri(st, m, c, wp)
        times = {k: [] for k in rows}
        for _ in range(rounds):
            for k, fn in rows.items():
                times[k].append(bb.graph_us(fn))
        nbytes = 2 * Bsz * DI * K * 2 + 2 * Bsz * DI * 2 + DI * (K + 1) * 2
        print(f"conv_update B={Bsz} ({nbytes / 1e6:.2f} MB, floor {nbytes / (bb.bw * 1e3):.2f} us, torch copy "
              f"{bb.copy_graph_us(nbytes):.2f} us): " + " | ".join(f"[{k}] {min(u for u in t if u is not None):.2f}" if any(u is not None for u in t) else f"[{k}] -" for k, t in times.items()),
              flush=True)


if __name__ == "__main__":
    main()
