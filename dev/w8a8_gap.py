"""The W8A8 op at 16384 tokens timed with PDL on and off (the 1.2 ms gap between timed and profiled, PERF_NOTES)."""
import os, sys, torch
sys.path.insert(0, "benchmarks")
import common
from jamba_ext import ops
dev = torch.device("cuda"); H, F, E, K, T = 4096, 14336, 16, 2, 16384
g = torch.Generator(device=dev).manual_seed(0)
q8 = (*ops.quantize_fp8((torch.randn(E, 2 * F, H, device=dev, generator=g) * H ** -0.5).to(torch.bfloat16)),
      *ops.quantize_fp8((torch.randn(E, H, F, device=dev, generator=g) * F ** -0.5).to(torch.bfloat16)))
x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
w, ids, offs, slots = ops.moe_route(x @ (torch.randn(E, H, device=dev, generator=g).to(torch.bfloat16) * 0.05).t(), K)
def f(**env):
    def run():
        with common.env(**env):
            return ops.moe_experts_fp8(x, w, ids, *q8, slots, offs, act_fp8=True)
    return run
t = common.time_interleaved({"pdl on": f(), "pdl off": f(JAMBA_EXT_PDL="0")}, dev, rounds=4, reps=3, seed=1)
for k, r in t.items(): print(f"W8A8 T={T} {k}: {r['median_ms']*1e3:.0f} us (p10 {r['p10_ms']*1e3:.0f})", flush=True)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
for k in range(3):
    s.record(); f()(); e.record(); torch.cuda.synchronize(); print(f"single call {s.elapsed_time(e)*1e3:.0f} us", flush=True)
# The kernels of the same calls, PDL on and off (the profiler's sum per call against the events' wall time per call)
from torch.profiler import ProfilerActivity, profile
for pdl in ("1", "0"):
    with common.env(JAMBA_EXT_PDL=pdl):
        f()(); torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            s.record()
            for _ in range(3):
                f()()
            e.record(); torch.cuda.synchronize()
    ks = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            ks[ev.key.split("(")[0].replace("void ", "")[:48]] = t / 3
    print(f"PDL {pdl}: wall {s.elapsed_time(e) * 1e3 / 3:.0f} us/call, kernels {sum(ks.values()):.0f} us/call: " +
          ", ".join(f"{k} {v:.0f}" for k, v in sorted(ks.items(), key=lambda kv: -kv[1])), flush=True)
# Single calls after the GPU was kept busy for ~50 ms by matmuls (queued before the start event): is the single
# call's extra time the GPU coming out of idle?
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
for k in range(3):
    torch.cuda.synchronize()
    for _ in range(60):
        a @ a
    s.record(); f()(); e.record(); torch.cuda.synchronize()
    print(f"single call after busy matmuls {s.elapsed_time(e)*1e3:.0f} us", flush=True)
for k in range(2):
    torch.cuda.synchronize()
    for _ in range(60):
        a @ a
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        f()(); torch.cuda.synchronize()
    print("  its kernels (us): " + ", ".join(f"{ev.key.split('(')[0][:40]} {(getattr(ev, 'device_time_total', 0) or 0):.0f}"
                                            for ev in prof.key_averages() if (getattr(ev, 'device_time_total', 0) or 0) > 0), flush=True)
    import time; time.sleep(0.5)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        f()(); torch.cuda.synchronize()
    print("  after 0.5 s idle, its kernels (us): " + ", ".join(f"{ev.key.split('(')[0][:40]} {(getattr(ev, 'device_time_total', 0) or 0):.0f}"
                                            for ev in prof.key_averages() if (getattr(ev, 'device_time_total', 0) or 0) > 0), flush=True)
