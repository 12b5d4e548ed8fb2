"""selective_scan_bwd variants timed in turns (bf16, d_inner 8192, d_state 16, the model's B / C views):
    python3 dev/scan_bwd_ab.py [ENV=VAL ...]   each argument a variant (an environment setting read per call);
the first row is the default. Prints us per call (median of rounds) at 1x2048 and 1x8192."""
import os
import statistics
import sys

import torch

import jamba_ext.ops as ops

DI, N, dev = 8192, 16, "cuda"
variants = [None] + sys.argv[1:]
r = lambda *s: torch.randn(*s, device=dev).to(torch.bfloat16)  # noqa: E731
for B, L in [(1, 2048), (1, 8192)]:
    A = -torch.exp(torch.rand(DI, N, device=dev) * 2.5 - 0.7)
    args = (r(B, DI, L), r(B, DI, L) * 0.5, A, r(B, L, N).transpose(1, 2), r(B, L, N).transpose(1, 2),
            torch.randn(DI, device=dev), r(B, DI, L), torch.rand(DI, device=dev) * 3 - 4.5, True, None, r(B, DI, L),
            None)
    times = {v: [] for v in variants}
    for rnd in range(7):
        for v in variants:
            saved = dict(os.environ)
            if v:
                k, val = v.split("=", 1)
                os.environ[k] = val
            ops.selective_scan_bwd(*args)
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(1_000_000)
            e0.record()
            for _ in range(5):
                ops.selective_scan_bwd(*args)
            e1.record()
            torch.cuda.synchronize()
            times[v].append(e0.elapsed_time(e1) * 1000 / 5)
            os.environ.clear()
            os.environ.update(saved)
    print(f"{B}x{L}: " + " | ".join(f"{v or 'default'} {statistics.median(t):.1f} us" for v, t in times.items()))
