"""The fp8 GEMVs' two kernels at 1 / 4 tokens (Jamba-v0.1 sizes), us per call from torch.profiler (PDL off), for each
JAMBA_EXT_MOE_GEMV value given ("g,d": warps along K of the two kernels; the first row: the default).
Usage: python3 dev/fp8_gemv_kernels.py ["g,d" ...]"""
import os, sys
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import common  # noqa: E402
from bench_moe import kernel_breakdown  # noqa: E402
from jamba_ext import ops  # noqa: E402

dev = torch.device("cuda")
H, F, E = 4096, 14336, 16
g = torch.Generator(device=dev).manual_seed(0)
q8 = (*ops.quantize_fp8((torch.randn(E, 2 * F, H, device=dev, generator=g) * H ** -0.5).to(torch.bfloat16)),
      *ops.quantize_fp8((torch.randn(E, H, F, device=dev, generator=g) * F ** -0.5).to(torch.bfloat16)))
for T in (1, 4):
    x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
    w, ids, offs, slots = ops.moe_route(torch.randn(T, E, device=dev, generator=g), 2)
    for v in [None] + sys.argv[1:]:
        env = dict(JAMBA_EXT_FP8_GEMV_FAST="0") if v == "checked" else dict(JAMBA_EXT_MOE_GEMV=v)
        with common.env(**env):
            k = kernel_breakdown(lambda: ops.moe_experts_fp8(x, w, ids, *q8), iters=10)
        print(f"T={T} kw {v or 'default'}: " + ", ".join(f"{n} {t:.1f}" for n, t in k.items()), flush=True)
