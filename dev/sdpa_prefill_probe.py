"""Prefill attention on the H200: SDPA's backends at Jamba-v0.1 shapes (32 query heads, 8 KV heads, head_dim 128,
bf16, causal, enable_gqa), batch 1. For each backend: the first call at a prompt length it has not seen (host wall
time around the call plus a device sync: what a new prompt length costs once) and the steady time (CUDA events,
median of 10). The model's prefill leaves the backend to SDPA (its default picks cuDNN on Hopper); cuDNN builds an
execution plan per new shape. Usage: python3 dev/sdpa_prefill_probe.py"""
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"default": None, "cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
            "efficient": [SDPBackend.EFFICIENT_ATTENTION]}


def run(backend, q, k, v):
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    for L in (1000, 2048, 8192, 32768):
        line = [f"L {L:6d}:"]
        for i, (name, be) in enumerate(BACKENDS.items()):
            n = L + 3 * i + 1                      # a length no backend has seen
            q = torch.randn(1, 32, n, 128, device=dev, dtype=torch.bfloat16)
            k = torch.randn(1, 8, n, 128, device=dev, dtype=torch.bfloat16)
            v = torch.randn(1, 8, n, 128, device=dev, dtype=torch.bfloat16)
            torch.cuda.synchronize()
            try:
                t0 = time.perf_counter()
                run(be, q, k, v)
                torch.cuda.synchronize()
                first = (time.perf_counter() - t0) * 1e3
            except RuntimeError as e:
                line.append(f"{name} n/a ({str(e).splitlines()[0][:60]})")
                continue
            ts = []
            for _ in range(10):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                run(be, q, k, v)
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            line.append(f"{name} first {first:7.2f} ms, then {statistics.median(ts):7.3f} ms")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
