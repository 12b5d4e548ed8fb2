"""moe_experts once at T tokens (argv[1], default 4096; Jamba-v0.1, bf16) with the wgmma engine, for Nsight Compute
(dev/README.md); argv[2] = fp8: moe_experts_fp8 on the quantized weights with its wgmma kernel (moe_wgmma_f8ws_kernel)."""
import os
import sys
import torch, jamba_ext
from jamba_ext import ops
torch.manual_seed(0)
T, H, F, E, K = int(sys.argv[1]) if len(sys.argv) > 1 else 4096, 4096, 14336, 16, 2
dev, dt = torch.device("cuda"), torch.bfloat16
x = torch.randn(T, H, device=dev, dtype=dt)
wgu = torch.randn(E, 2 * F, H, device=dev, dtype=dt) * H ** -0.5
wd = torch.randn(E, H, F, device=dev, dtype=dt) * F ** -0.5
w, ids, offsets, slots = ops.moe_route(torch.randn(T, E, device=dev), K)
if len(sys.argv) > 2 and sys.argv[2] == "fp8":
    os.environ["JAMBA_EXT_FP8_WGMMA"] = "1"
    q = (*ops.quantize_fp8(wgu), *ops.quantize_fp8(wd))
    ops.moe_experts_fp8(x, w, ids, *q, slots, offsets)
else:
    ops.moe_experts(x, w, ids, wgu, wd, slots, offsets, "wgmma")
torch.cuda.synchronize()
