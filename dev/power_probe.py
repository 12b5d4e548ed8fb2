"""dev/power_probe.py -- does the data in the idle rows cost time? (H200 under its power cap)

    python3 dev/power_probe.py      # on the GPU, ~1 min

The H200 runs sustained bf16 GEMMs at its power limit (nvidia-smi: clocks 1.5-1.7 GHz, throttle reason
sw_power_cap), and a tensor core's power depends on the bits it multiplies. The wgmma MoE engine's idle rows (an
expert's last 128-row tile past its end) carry the next expert's real tokens today. If zero rows draw less power,
zeroing the idle rows would raise the clock for the rest. Timed in turns (common.time_interleaved):
1. dense torch.matmul (8192 x 4096) @ (4096 x 28672), A random / A with 25% zero rows / A all zero;
2. jamba.moe_experts (wgmma) at 2048 / 4096 tokens, same routing, x random / x all zero.
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)
import common  # noqa: E402

from jamba_ext import ops  # noqa: E402


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    M, H, F2 = 8192, 4096, 28672
    a = torch.randn(M, H, device=dev, dtype=torch.bfloat16)
    a25 = a.clone()
    a25[torch.randperm(M, device=dev)[: M // 4]] = 0
    a0 = torch.zeros_like(a)
    b = torch.randn(F2, H, device=dev, dtype=torch.bfloat16) * H ** -0.5
    fns = {"dense A random": lambda: a @ b.t(), "dense A 25% zero rows": lambda: a25 @ b.t(),
           "dense A zero": lambda: a0 @ b.t()}
    flops = 2 * M * H * F2
    res = common.time_interleaved(fns, dev, rounds=6, reps=5, warmup=2)
    for n, r in res.items():
        print(f"{n:28s} {r['median_ms'] * 1e3:9.1f} us  {flops / (r['median_ms'] * 1e-3) / 1e12:6.1f} TFLOP/s", flush=True)

    E, K, Fd = 16, 2, 14336
    wgu = (torch.randn(E, 2 * Fd, H, device=dev) * H ** -0.5).bfloat16()
    wd = (torch.randn(E, H, Fd, device=dev) * Fd ** -0.5).bfloat16()
    router = (torch.randn(E, H, device=dev) * H ** -0.5 * 4).bfloat16()
    for T in (2048, 4096):
        x = torch.randn(T, H, device=dev).bfloat16()
        w, ids, offsets, slots = ops.moe_route(torch.nn.functional.linear(x, router), K)
        xz = torch.zeros_like(x)
        fns = {f"moe T={T} x random": lambda x=x: ops.moe_experts(x, w, ids, wgu, wd, slots, offsets, "wgmma"),
               f"moe T={T} x zero": lambda xz=xz: ops.moe_experts(xz, w, ids, wgu, wd, slots, offsets, "wgmma")}
        res = common.time_interleaved(fns, dev, rounds=6, reps=3, warmup=1)
        fl = 2 * T * K * 3 * H * Fd
        for n, r in res.items():
            print(f"{n:28s} {r['median_ms'] * 1e3:9.1f} us  {fl / (r['median_ms'] * 1e-3) / 1e12:6.1f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
