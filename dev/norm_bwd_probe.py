"""rms_norm_bwd's kernels one by one (torch profiler, device time per kernel) at rows x dim in bf16, on its 16-byte
path (whole aligned rows) and its element path (rows sliced at an odd offset):
    python3 dev/norm_bwd_probe.py [rows dim]"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import jamba_ext.ops as ops

rows, dim = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (2048, 4096)
dev, bf = "cuda", torch.bfloat16
w = torch.randn(dim, device=dev).to(bf)
dy = torch.randn(rows, dim, device=dev).to(bf)
cases = {"16-byte path": torch.randn(rows, dim, device=dev).to(bf),
         "element path": torch.randn(rows, dim + 1, device=dev).to(bf)[:, 1:]}
for name, x in cases.items():
    for _ in range(3):
        ops.rms_norm_bwd(x, w, dy, [])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            ops.rms_norm_bwd(x, w, dy, [])
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    print(f"{name} ({rows} x {dim}): " + ", ".join(f"{e.key.split('(')[0][-40:]} {e.device_time_total / e.count:.1f} us"
                                                   for e in sorted(ev, key=lambda e: -e.device_time_total)[:5]))
