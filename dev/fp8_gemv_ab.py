"""A/B of the fp8 MoE engines at Jamba-v0.1 sizes, in turns (common.time_interleaved): the weight-streaming GEMVs
(csrc/cuda/moe_gemv.cu, F8 = true; up to ops.FP8_CUDA_GEMV_MAX_TOKENS), the ring kernels (csrc/cuda/moe.cu
moe_decode_kernel F8, session 37; run here at every token count by moving the thresholds), on Hopper the wgmma kernel
(csrc/cuda/moe_wgmma.cu moe_wgmma_f8ws_kernel, session 38; forced at every count from 16), the dequantizing path
(dequant_fp8 of the touched experts + moe_experts) and the bf16 op. Session 36 also timed the GEMVs' warps along K
(JAMBA_EXT_MOE_GEMV="g,d", `--kw`) and 2 / 8 chunks' loads in flight (a knob since removed, fp8_ab_ce17227.log).
us per call and % of the touched weights' bytes at the measured copy bandwidth. Usage: python3 dev/fp8_gemv_ab.py
[tokens,...] [--kw] [--nt] [--fast] (--nt: the ring's n-tiles per pass forced, JAMBA_EXT_FP8_RING_NT; --fast: a row
with the A/B switch JAMBA_EXT_FP8_GEMV_FAST=0, the dot loop without its unchecked path, session 41)"""
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import common  # noqa: E402
from jamba_ext import ops  # noqa: E402


@contextlib.contextmanager
def thresholds(gemv_max, ring_max):
    """ops' engine choice of moe_experts_fp8 moved for the duration"""
    old = ops.FP8_CUDA_GEMV_MAX_TOKENS, ops.FP8_RING_MAX_TOKENS
    ops.FP8_CUDA_GEMV_MAX_TOKENS, ops.FP8_RING_MAX_TOKENS = gemv_max, ring_max
    try:
        yield
    finally:
        ops.FP8_CUDA_GEMV_MAX_TOKENS, ops.FP8_RING_MAX_TOKENS = old


def main():
    dev = torch.device("cuda")
    H, F, E, K = 4096, 14336, 16, 2
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    kw_rows = "--kw" in sys.argv
    nt_rows = "--nt" in sys.argv
    fast_rows = "--fast" in sys.argv
    tokens = [int(t) for t in args[0].split(",")] if args else [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    hopper = torch.cuda.get_device_capability(dev)[0] == 9
    bw = common.copy_bandwidth_gbs(dev)
    print(f"commit {os.environ.get('JAMBA_COMMIT', '?')} | copy {bw:.0f} GB/s | H {H} F {F} E {E} top-{K}", flush=True)
    g = torch.Generator(device=dev).manual_seed(0)
    wgu = (torch.randn(E, 2 * F, H, device=dev, generator=g) * H ** -0.5).to(torch.bfloat16)
    wd = (torch.randn(E, H, F, device=dev, generator=g) * F ** -0.5).to(torch.bfloat16)
    q8 = (*ops.quantize_fp8(wgu), *ops.quantize_fp8(wd))
    router = torch.randn(E, H, device=dev, generator=g).to(torch.bfloat16) * 0.05
    # dequant_fp8 of every expert (what the dequantizing path runs when all are touched): 1 byte read and 2 written per
    # weight, against the copy-bandwidth floor of those bytes
    dq = {"dequant_fp8 gate_up + down, all experts": lambda: (ops.dequant_fp8(q8[0], q8[1], torch.bfloat16),
                                                             ops.dequant_fp8(q8[2], q8[3], torch.bfloat16))}
    t = common.time_interleaved(dq, dev, rounds=5, reps=3, seed=1)
    for name, r in t.items():
        fl = E * 3 * H * F * 3 / (bw * 1e9) * 1e6
        print(f"{name}: {r['median_ms'] * 1e3:.1f} us ({100 * fl / (r['median_ms'] * 1e3):.1f}% of its byte floor "
              f"{fl:.1f} us)", flush=True)
    for T in tokens:
        x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
        w, ids, offs, slots = ops.moe_route(x @ router.t(), K)
        touched = int((offs[1:] - offs[:-1] > 0).sum())
        floor8 = touched * 3 * H * F / (bw * 1e9) * 1e6

        def fp8(gemv_max=ops.FP8_CUDA_GEMV_MAX_TOKENS, ring_max=ops.FP8_RING_MAX_TOKENS, **env):
            def run():
                with common.env(**env), thresholds(gemv_max, ring_max):
                    return ops.moe_experts_fp8(x, w, ids, *q8, slots, offs)
            return run

        def fp8_deq():
            return ops.moe_experts(x, w, ids, ops.dequant_fp8(q8[0], q8[1], x.dtype, offs),
                                   ops.dequant_fp8(q8[2], q8[3], x.dtype, offs), slots, offs)

        fns = {"bf16 op": lambda: ops.moe_experts(x, w, ids, wgu, wd, slots, offs),
               "fp8 ring": fp8(gemv_max=0, ring_max=1 << 30, JAMBA_EXT_FP8_WGMMA="0"), "fp8 op (default)": fp8()}
        if hopper and T >= 16:
            fns["fp8 wgmma"] = fp8(gemv_max=0, ring_max=1 << 30, JAMBA_EXT_FP8_WGMMA="1")
        if T >= 128:
            fns["fp8 dequant path"] = fp8_deq
        if nt_rows and 2 <= T <= 512:
            for nt in (1, 2, 4):  # n-tiles of 8 tokens per pass (the pick: by slots per expert, csrc/cuda/moe.cu)
                fns[f"fp8 ring NT={nt}"] = fp8(gemv_max=0, ring_max=1 << 30, JAMBA_EXT_FP8_RING_NT=str(nt))
        if T <= ops.FP8_GEMV_MAX_TOKENS:
            fns["fp8 gemv"] = fp8(gemv_max=1 << 30)
            if fast_rows:
                fns["fp8 gemv checked"] = fp8(gemv_max=1 << 30, JAMBA_EXT_FP8_GEMV_FAST="0")
            if kw_rows:
                for kw in ("1,1", "2,4", "4,4", "1,2", "1,4"):  # warps along K (fp8's default: 1,1; bf16's pick: 2,4)
                    fns[f"fp8 gemv kw {kw}"] = fp8(gemv_max=1 << 30, JAMBA_EXT_MOE_GEMV=kw)
        t = common.time_interleaved(fns, dev, rounds=5, reps=3, seed=T)
        for name, r in t.items():
            us = r["median_ms"] * 1e3
            fl = floor8 * (2 if name == "bf16 op" else 1)
            print(f"T={T:<4} {name:<18} {us:9.1f} us  ({100 * fl / us:5.1f}% of its weight floor {fl:7.1f} us)",
                  flush=True)


if __name__ == "__main__":
    main()
