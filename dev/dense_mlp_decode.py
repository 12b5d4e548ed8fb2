"""dev/dense_mlp_decode.py -- a decode-size dense SwiGLU MLP (Jamba-v0.1: H 4096, F 14336, bf16) two ways, on a GPU:

    python3 dev/dense_mlp_decode.py [--batch 1,8]

(a) torch: F.linear for gate and up (views of one fused (2F, H) buffer), silu * up, F.linear for down (cuBLAS GEMVs,
    what modeling_jamba's dense MLP runs today);
(b) jamba.moe_experts with one expert, every token routed to it with weight 1.0 (impl auto: the weight-streaming
    decode kernel at these sizes), on the same fused weights.
Both timed in turns (benchmarks/common.time_interleaved), each call queued behind a GPU sleep; floor = the weight
bytes (3 x H x F x 2) at the measured copy bandwidth. Question for the decode path: does (b) stream the dense
weights faster than cuBLAS (decode profile, session 7: the dense GEMVs at ~80% of copy bandwidth, our MoE decode
kernel at 86-90%)? If so, the model's dense MLPs could run through it (their gate/up weights stored as one fused
buffer with the two Linear weights as views, so no copy).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import common  # noqa: E402
from jamba_ext import ops  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=14336)
    args = ap.parse_args()
    dev = torch.device("cuda")
    H, Fd = args.hidden, args.ffn
    bw = common.copy_bandwidth_gbs(dev)
    gate_up = (torch.randn(1, 2 * Fd, H, device=dev) * H ** -0.5).bfloat16()
    down = (torch.randn(1, H, Fd, device=dev) * Fd ** -0.5).bfloat16()
    wg, wu, wd = gate_up[0, :Fd], gate_up[0, Fd:], down[0]
    floor_us = 3 * H * Fd * 2 / (bw * 1e9) * 1e6
    print(f"{common.device_name(dev)} | copy {bw:.0f} GB/s | H {H} F {Fd} | weight floor {floor_us:.1f} us")
    for B in [int(b) for b in args.batch.split(",")]:
        x = torch.randn(B, H, device=dev).bfloat16()
        ids = torch.zeros(B, 1, device=dev, dtype=torch.int32)
        w = torch.ones(B, 1, device=dev)
        offsets, slots = ops.moe_permute(ids, 1)

        def torch_mlp():
            return F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)

        def ours():
            return ops.moe_experts(x, w, ids, gate_up, down, slots, offsets, "auto")

        ref = (F.linear(F.silu(F.linear(x.float(), wg.float())) * F.linear(x.float(), wu.float()), wd.float()))
        for name, fn in (("torch", torch_mlp), ("moe_experts E=1", ours)):
            err = ((fn().float() - ref).norm() / ref.norm()).item()
            print(f"  B={B} {name}: rel err vs fp32 {err:.2e}")
        t = common.time_interleaved({"torch": torch_mlp, "moe_experts E=1": ours}, dev, rounds=7, reps=5)
        for name, r in t.items():
            us = r["median_ms"] * 1e3
            print(f"  B={B} {name:>16}: {us:8.1f} us  ({floor_us / us * 100:5.1f}% of the weight floor)")


if __name__ == "__main__":
    main()
