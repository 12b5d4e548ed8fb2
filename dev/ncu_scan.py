"""One selective_scan call at a Jamba-v0.1 shape, for Nsight Compute:
    ncu --section WarpStateStats -k regex:selective_scan -c 1 python3 dev/ncu_scan.py [B L]
(bf16: the g4 kernel; JAMBA_EXT_SCAN_IMPL=pc for the pipelined one)"""
import sys

import torch

import jamba_ext.ops as ops

B, L = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (1, 8192)
DI, N, dev = 8192, 16, "cuda"
r = lambda *s: torch.randn(*s, device=dev).to(torch.bfloat16)
a = dict(u=r(B, DI, L), delta=r(B, DI, L) * 0.5, A=-torch.exp(torch.rand(DI, N, device=dev) * 2.5 - 0.7),
         B=r(B, N, L), C=r(B, N, L), D=torch.randn(DI, device=dev), z=r(B, DI, L),
         delta_bias=torch.rand(DI, device=dev) * 3 - 4.5, delta_softplus=True, initial_state=None)
ops.selective_scan(**a)
torch.cuda.synchronize()
print("ok")
