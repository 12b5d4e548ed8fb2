"""moe_experts_fp8 at T tokens (argv[1], default 1; Jamba-v0.1 sizes, bf16 x) on its weight-streaming GEMVs, three
calls, for Nsight Compute (dev/ncu_fp8_gemv.sh profiles the third call's two kernels)."""
import sys
import torch
from jamba_ext import ops
T, H, F, E = int(sys.argv[1]) if len(sys.argv) > 1 else 1, 4096, 14336, 16
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
q8 = (*ops.quantize_fp8((torch.randn(E, 2 * F, H, device=dev, generator=g) * H ** -0.5).to(torch.bfloat16)),
      *ops.quantize_fp8((torch.randn(E, H, F, device=dev, generator=g) * F ** -0.5).to(torch.bfloat16)))
x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
w, ids, _, _ = ops.moe_route(torch.randn(T, E, device=dev, generator=g), 2)
for _ in range(3):
    ops.moe_experts_fp8(x, w, ids, *q8)
torch.cuda.synchronize()
