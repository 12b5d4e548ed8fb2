"""Was dequant_fp8's 64% of the copy-bandwidth floor (1 byte read, 2 written per weight; fp8_dequant_a63046d.log) its
kernel or the byte mix? Its kernel: dequant_probe_252858e.log (8-byte chunks 86.8%, since the default). Times, in turns, at Jamba-v0.1's expert sizes (all 16 experts, gate_up + down, 2.8 G weights):
our dequant_fp8, torch's fp8 -> bf16 cast of the same bytes (the same 1 + 2 bytes, no scale), a bf16 fill of the 5.6 GB
output (writes only) and a same-size device copy (2 + 2). Usage: python3 dev/dequant_bytes_probe.py"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import common  # noqa: E402
from jamba_ext import ops  # noqa: E402


def main():
    dev = torch.device("cuda")
    E, H, F = 16, 4096, 14336
    n = E * 3 * H * F
    q = torch.randint(0, 120, (n // 4096, 4096), dtype=torch.uint8, device=dev).view(torch.float8_e4m3fn)
    s = torch.rand(n // 4096, device=dev) + 0.5
    out = torch.empty(n // 4096, 4096, dtype=torch.bfloat16, device=dev)
    src = torch.empty_like(out)
    bw = common.copy_bandwidth_gbs(dev)
    fns = {"dequant_fp8 (ours)": lambda: ops.dequant_fp8(q, s, torch.bfloat16),
           "torch fp8 -> bf16 cast": lambda: q.to(torch.bfloat16),
           "bf16 fill (writes only)": lambda: out.fill_(1.0),
           "bf16 copy (2 + 2 bytes)": lambda: out.copy_(src)}
    gb = {"dequant_fp8 (ours)": 3 * n, "torch fp8 -> bf16 cast": 3 * n, "bf16 fill (writes only)": 2 * n,
          "bf16 copy (2 + 2 bytes)": 4 * n}
    print(f"commit {os.environ.get('JAMBA_COMMIT', '?')} | copy {bw:.0f} GB/s | {n / 1e9:.2f} G weights", flush=True)
    t = common.time_interleaved(fns, dev, rounds=5, reps=3, seed=0)
    for name, r in t.items():
        us = r["median_ms"] * 1e3
        print(f"{name:<26} {us:9.1f} us  {gb[name] / us / 1e3:7.0f} GB/s  ({100 * gb[name] / (bw * 1e3) / us:5.1f}% of "
              f"the copy bandwidth)", flush=True)


if __name__ == "__main__":
    main()
