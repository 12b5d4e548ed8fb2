"""One selective_scan_bwd call at a Jamba-v0.1 shape (bf16, d_inner 8192, d_state 16), for Nsight Compute:
    ncu --section WarpStateStats -k regex:scan_bwd -c 1 python3 dev/ncu_scan_bwd.py [B L]"""
import sys

import torch

import jamba_ext.ops as ops

B, L = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (1, 2048)
DI, N, dev = 8192, 16, "cuda"
r = lambda *s: torch.randn(*s, device=dev).to(torch.bfloat16)  # noqa: E731
A = -torch.exp(torch.rand(DI, N, device=dev) * 2.5 - 0.7)
Bm, Cm = r(B, L, N).transpose(1, 2), r(B, L, N).transpose(1, 2)  # the model's (B, L, N) views
ops.selective_scan_bwd(r(B, DI, L), r(B, DI, L) * 0.5, A, Bm, Cm, torch.randn(DI, device=dev), r(B, DI, L),
                       torch.rand(DI, device=dev) * 3 - 4.5, True, None, r(B, DI, L), None)
torch.cuda.synchronize()
print("ok")
