"""dev/proj_small_m_probe.py -- cuBLAS (F.linear) on Jamba-v0.1's projections at the row counts of a short prefill,
against both floors: the weights' bytes at the measured copy bandwidth and the FLOPs at the measured matmul rate.

    python3 dev/proj_small_m_probe.py          # on the GPU, ~30 s

Session 47 (docs/PERF_NOTES.md, "Model prefill", short prompts): is there time to win with our own kernels for the
projections at 64-512 rows? Each product is timed per call inside a CUDA graph of 20 calls (weights 4x over the L2
between calls, so every call reads them from HBM), bf16, batch of M rows.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import common  # noqa: E402

SHAPES = (("in_proj", 4096, 16384), ("out_proj", 8192, 4096), ("mlp gate_up", 4096, 28672),
          ("mlp down", 14336, 4096), ("x_proj", 8192, 288), ("q/k/v", 4096, 6144))


def main():
    dev = torch.device("cuda")
    bw = common.copy_bandwidth_gbs(dev) * 1e9
    tf = common.matmul_tflops(dev)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s, bf16 matmul (8192^3) {tf:.0f} TFLOP/s")
    for name, k, n in SHAPES:
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5
              for _ in range(max(1, (200 << 20) // (n * k * 2)))]    # > 2x the 60 MB L2 in all
        for m in (64, 128, 256, 512):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            it = iter(range(1 << 30))

            def fn():
                F.linear(x, ws[next(it) % len(ws)])
            us = common.graph_us(fn)
            t_bytes = n * k * 2 / bw * 1e6
            t_flops = 2 * m * n * k / (tf * 1e12) * 1e6
            floor = max(t_bytes, t_flops)
            print(f"{name:<12} M={m:<4} K={k:<6} N={n:<6} {us:8.1f} us | bytes {t_bytes:6.1f} us, FLOPs "
                  f"{t_flops:6.1f} us -> {'bytes' if t_bytes >= t_flops else 'FLOPs'} bind, "
                  f"{100 * floor / us:5.1f}% of the floor")


if __name__ == "__main__":
    main()
