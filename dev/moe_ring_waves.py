"""Session 65 probe: do the MoE ring kernels (csrc/cuda/moe.cu moe_decode_kernel, bf16, NT 1) lose to their last wave?

Jamba-v0.1 sizes (H 4096, F 14336, E 16). For n = 3 .. 16 touched experts, tokens routed so that every touched
expert gets 2 slots (n <= 8: n tokens, token i on experts i, i + 1 mod n; from 9: ceil(n / 2) tokens of top-4, token i
on experts 2i .. 2i + 3 mod n, so at odd n two experts get 3), at most 8 tokens so that the ring runs one n-tile
(NT 1) throughout: the kernels' work grows by one expert at a time. The ring runs at every n (JAMBA_EXT_MOE_GEMV=0:
3-4 tokens too). Per n: each kernel's time (torch.profiler, PDL off, 16 calls), with down on 2 m16 tiles a warp
(JAMBA_EXT_MOE_DEC_MT=2) and on 1 (the default since session 65: twice the blocks), and its touched weights' bytes per
second, next to its block count in waves of 264 resident blocks (2 per SM on 132 SMs; gate_up 448 blocks an expert,
down 128 on MT 2, 256 on MT 1). If the last partial wave costs, the us per expert of down steps up where its waves
cross an integer and falls back as the wave fills. (At 15e322f, s65_mt_15e322f.log, the MT 1 rows had gate_up on MT 1
too: JAMBA_EXT_MOE_DEC_MT=all then.)

    python3 dev/moe_ring_waves.py [--experts 3-16]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402
import bench_moe  # noqa: E402
from jamba_ext import ops  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", default="3-16")
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.experts.split("-"))
    dev = torch.device("cuda")
    torch.manual_seed(0)
    H, Fd, E = 4096, 14336, 16
    w_gate_up = (torch.randn(E, 2 * Fd, H, device=dev) * H ** -0.5).bfloat16()
    w_down = (torch.randn(E, H, Fd, device=dev) * Fd ** -0.5).bfloat16()
    bw = common.copy_bandwidth_gbs(dev)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(f"{common.device_name(dev)} | copy {bw:.0f} GB/s | {sms} SMs", flush=True)
    print(" experts       gate_up us  (TB/s, waves)   down us  (TB/s, waves)   down us / expert")
    for n in range(lo, hi + 1):
        perm = torch.randperm(E)[:n].to(dev)
        T, K = (n, 2) if n <= 8 else ((n + 1) // 2, 4)
        i = torch.arange(T, device=dev)[:, None] * (K // 2) + torch.arange(K, device=dev)[None, :]
        ids = perm[i % n].to(torch.int32)
        w = torch.rand(T, K, device=dev) * 0.5 + 0.1
        offsets, slots = ops.moe_permute(ids, E)
        x = torch.randn(T, H, device=dev).bfloat16()
        ref = None
        ref = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "simt")
        for label, mt, env in (("MT 2", 2, {"JAMBA_EXT_MOE_DEC_MT": "2"}), ("MT 1", 1, {})):
            with common.env(JAMBA_EXT_MOE_GEMV="0", **env):
                err = bench_moe.rel_err(ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "gemv"), ref)
                bd = bench_moe.kernel_breakdown(
                    lambda: ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "gemv"), iters=16)
            ring = [(k.split(", ")[1], u) for k, u in bd.items() if k.startswith("moe_decode_kernel<")]  # GATE_UP
            gu, dn = sum(u for g, u in ring if g == "true"), sum(u for g, u in ring if g == "false")
            gb, db = n * 2 * Fd * H * 2, n * H * Fd * 2  # (touched experts' bytes)
            gw, dw = 448 * n / (2 * sms), 128 * 2 // mt * n / (2 * sms)
            print(f"  {n:5d} {label}  {gu:8.1f}  ({gb / gu / 1e6:4.2f}, {gw:5.2f})   {dn:7.1f}  ({db / dn / 1e6:4.2f}, "
                  f"{dw:5.2f})   {dn / n:6.2f}   err vs simt {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
