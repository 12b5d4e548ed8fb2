"""Prefill attention on the H200: SDPA's backends at Jamba-v0.1 shapes (32 query heads, 8 KV heads, head_dim 128,
bf16, causal, enable_gqa), batch 1. For each backend: the first call at a prompt length it has not seen (host wall
time around the call plus a device sync: what a new prompt length costs once) and the steady time (CUDA events,
median of 10). The model's prefill leaves the backend to SDPA (its default picks cuDNN on Hopper); cuDNN builds an
execution plan per new shape. Usage: python3 dev/sdpa_prefill_probe.py [--masked]
--masked (session 52): a left-padded batch of 4 as the model runs it under a padding mask (K / V heads repeated, a
(4, 1, L, L) boolean mask: causal and each row's own left padding of 0-300 steps), backends default / cudnn /
efficient / math."""
import sys
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"default": None, "cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
            "efficient": [SDPBackend.EFFICIENT_ATTENTION]}


MASKED = "--masked" in sys.argv[1:]
if MASKED:
    BACKENDS["math"] = [SDPBackend.MATH]


def run(backend, q, k, v, mask=None):
    kw = dict(attn_mask=mask) if mask is not None else dict(is_causal=True, enable_gqa=True)
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, **kw)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, **kw)


def inputs(n, dev):
    """q, k, v (and the mask) of a prompt of n steps: batch 1 with 8 KV heads, or (--masked) a left-padded batch of
    4 with the KV heads repeated to 32."""
    B, hk = (4, 32) if MASKED else (1, 8)
    q = torch.randn(B, 32, n, 128, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, hk, n, 128, device=dev, dtype=torch.bfloat16)
    v = torch.randn(B, hk, n, 128, device=dev, dtype=torch.bfloat16)
    if not MASKED:
        return q, k, v, None
    keep = torch.ones(B, n, dtype=torch.bool, device=dev)
    for b, pad in enumerate((0, 100, 200, 300)):
        keep[b, :min(pad, n - 1)] = False
    causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
    mask = causal[None, None] & keep[:, None, None, :]
    return q, k, v, mask | ~mask.any(dim=-1, keepdim=True)


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    for L in ((1000, 2048, 4096) if MASKED else (1000, 2048, 8192, 32768)):
        line = [f"L {L:6d}:"]
        for i, (name, be) in enumerate(BACKENDS.items()):
            n = L + 3 * i + 1                      # a length no backend has seen
            q, k, v, mask = inputs(n, dev)
            torch.cuda.synchronize()
            try:
                t0 = time.perf_counter()
                run(be, q, k, v, mask)
                torch.cuda.synchronize()
                first = (time.perf_counter() - t0) * 1e3
            except RuntimeError as e:
                line.append(f"{name} n/a ({str(e).splitlines()[0][:60]})")
                continue
            ts = []
            for _ in range(10):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                run(be, q, k, v, mask)
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            line.append(f"{name} first {first:7.2f} ms, then {statistics.median(ts):7.3f} ms")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
