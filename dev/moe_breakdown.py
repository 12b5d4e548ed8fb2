"""Where the time of one MoE op goes (session 55): moe_route + moe_experts (impl auto) at Jamba-v0.1 sizes, bf16,
for each token count given (argv, default 2048), under torch.profiler: every CUDA kernel's mean duration per call,
the kernels' sum (a kernel's time includes its PDL wait for the one before, so the sum can pass the op's), and the
op's median time per call (benchmarks/common.time_ms: CUDA events).
    python3 dev/moe_breakdown.py 1536 2048 4096     (H200; device round dev/session55_round.sh)"""
import os
import sys
import torch
from torch.profiler import profile, ProfilerActivity
from jamba_ext import ops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import common  # noqa: E402

H, F, E, K, REPS = 4096, 14336, 16, 2, 20
dev, dt = torch.device("cuda"), torch.bfloat16
torch.manual_seed(0)
wgu = torch.randn(E, 2 * F, H, device=dev, dtype=dt) * H ** -0.5
wd = torch.randn(E, H, F, device=dev, dtype=dt) * F ** -0.5
for T in [int(a) for a in sys.argv[1:]] or [2048]:
    x = torch.randn(T, H, device=dev, dtype=dt)
    logits = torch.randn(T, E, device=dev)

    def op():
        w, ids, offsets, slots = ops.moe_route(logits, K)
        return ops.moe_experts(x, w, ids, wgu, wd, slots, offsets)

    wall = common.time_ms(op, dev, warmup=3, reps=REPS)["median_ms"] * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            op()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / REPS, e.count // REPS) for e in prof.key_averages()
            if e.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    ksum = sum(r[1] for r in rows)
    flops = 2.0 * T * K * 3 * H * F
    print(f"--- {T} tokens: op {wall:.1f} us a call (median; {flops / wall / 1e6:.1f} TFLOP/s); "
          f"kernels {ksum:.1f} us")
    for name, us, n in rows:
        print(f"  {us:9.1f} us  {100 * us / ksum:5.1f}%  x{n}  {name[:110]}")
