"""A/B of moe_experts_fp8 with fp8 activations (act_fp8: W8A8 on Hopper, csrc/cuda/moe_wgmma.cu moe_wgmma_gemm_q8)
against the weight-only fp8 op (W8A16: the ring / wgmma-with-converters engines) and the bf16 op, at Jamba-v0.1 sizes
(H 4096, F 14336, 16 experts, top-2), timed in turns (common.time_interleaved). Prints us per call, the whole op's
TFLOP/s against the measured dense bf16 matmul rate and against the dense e4m3 rate (torch._scaled_mm, where this torch
has it), and the error of each fp8 form against the bf16 op on bf16 weights (relative rms / max over the outputs).
--ab: also the W8A8 op under the persistent kernel's switches (JAMBA_EXT_WGMMA_HALF=1 / 0: an expert's last <= 64
rows as a half tile, by default from 384 slots per expert; JAMBA_EXT_MOE_EPI=0: without the epilogue warps) and the
W8A8 op's kernels (torch.profiler, us per call) at the largest token count.
--force: the W8A8 kernel at every token count (ops.FP8_W8A8_MIN_TOKENS = 1), to place that threshold.
Usage: python3 dev/w8a8_ab.py [tokens,...] [--ab] [--force]"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import common  # noqa: E402
from jamba_ext import ops  # noqa: E402


def fp8_matmul_tflops(dev, n=8192):
    """dense e4m3 x e4m3 -> bf16 rate of torch._scaled_mm (None where unavailable)"""
    if not hasattr(torch, "_scaled_mm"):
        return None
    a = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=dev)
    try:
        ms = common.time_ms(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16), dev)["median_ms"]
    except Exception as e:  # noqa: BLE001 (an older / newer torch signature: report and go on)
        print(f"torch._scaled_mm: {type(e).__name__}: {e}", flush=True)
        return None
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def main():
    dev = torch.device("cuda")
    H, F, E, K = 4096, 14336, 16, 2
    if "--force" in sys.argv:
        ops.FP8_W8A8_MIN_TOKENS = 1
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    tokens = [int(t) for t in args[0].split(",")] if args else [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    mm = common.matmul_tflops(dev)
    mm8 = fp8_matmul_tflops(dev)
    mm8s = f"{mm8:.0f}" if mm8 else "n/a"
    print(f"commit {os.environ.get('JAMBA_COMMIT', '?')} | bf16 matmul {mm:.0f} TFLOP/s | e4m3 matmul {mm8s} TFLOP/s | "
          f"H {H} F {F} E {E} top-{K}", flush=True)
    g = torch.Generator(device=dev).manual_seed(0)
    wgu = (torch.randn(E, 2 * F, H, device=dev, generator=g) * H ** -0.5).to(torch.bfloat16)
    wd = (torch.randn(E, H, F, device=dev, generator=g) * F ** -0.5).to(torch.bfloat16)
    q8 = (*ops.quantize_fp8(wgu), *ops.quantize_fp8(wd))
    router = torch.randn(E, H, device=dev, generator=g).to(torch.bfloat16) * 0.05
    for T in tokens:
        x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
        w, ids, offs, slots = ops.moe_route(x @ router.t(), K)
        def w8a8(**env):
            def run():
                with common.env(**env):
                    return ops.moe_experts_fp8(x, w, ids, *q8, slots, offs, act_fp8=True)
            return run

        fns = {"bf16 op": lambda: ops.moe_experts(x, w, ids, wgu, wd, slots, offs),
               "fp8 W8A16 (default)": lambda: ops.moe_experts_fp8(x, w, ids, *q8, slots, offs),
               "fp8 W8A8 (act_fp8)": w8a8()}
        if "--ab" in sys.argv:
            fns["W8A8 half tiles on"] = w8a8(JAMBA_EXT_WGMMA_HALF="1")
            fns["W8A8 half tiles off"] = w8a8(JAMBA_EXT_WGMMA_HALF="0")
            fns["W8A8 no epi warps"] = w8a8(JAMBA_EXT_MOE_EPI="0")
        base = fns["bf16 op"]().double()
        nb = base.norm().item()
        errs = {}
        for name in ("fp8 W8A16 (default)", "fp8 W8A8 (act_fp8)"):
            d = fns[name]().double() - base
            errs[name] = f"rel rms {d.norm().item() / nb:.4f}, max {d.abs().max().item() / base.abs().max().item():.4f}"
        t = common.time_interleaved(fns, dev, rounds=5, reps=3, seed=T)
        flop = 2 * T * K * 3 * H * F
        for name, r in t.items():
            us = r["median_ms"] * 1e3
            tf = flop / (us * 1e-6) / 1e12
            r8 = f", {100 * tf / mm8:5.1f}% of e4m3" if mm8 and "W8A8" in name else ""
            print(f"T={T:<5} {name:<20} {us:9.1f} us  {tf:6.1f} TFLOP/s ({100 * tf / mm:5.1f}% of bf16 matmul{r8})"
                  f"{'  err vs bf16 op: ' + errs[name] if name in errs else ''}", flush=True)
        if "--ab" in sys.argv and T == tokens[-1]:
            from bench_moe import kernel_breakdown
            kb = kernel_breakdown(fns["fp8 W8A8 (act_fp8)"])
            print(f"T={T} W8A8 kernels (us/call): " + ", ".join(f"{k} {v:.1f}" for k, v in kb.items()), flush=True)


if __name__ == "__main__":
    main()
