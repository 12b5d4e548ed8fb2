"""A/B of the MoE ring kernels' variants (csrc/cuda/moe.cu moe_decode_kernel; EXPERIMENT switches) at Jamba-v0.1
sizes: bf16 moe_experts (impl gemv: the ring from 5 tokens) and moe_experts_fp8 (the ring from 7 tokens). Per token
count 16 routings from random logits cycled (the touched weights not in L2 from the call before), CUDA graphs of the 16
calls replayed in turns (benchmarks/common.time_interleaved), us per call and % of the touched weights' bytes at the
measured copy bandwidth; then each variant's kernel times (torch.profiler, PDL off) and its outputs' distance from the
first variant's. Session 65 ran it as dev/moe_dec_ks_ab.py at 8493417 (ks2 / ks4: JAMBA_EXT_MOE_DEC_KS, since removed;
s65_ks_8493417.log).

    python3 dev/moe_ring_ab.py [--bf16 5,6,7,8] [--fp8 8,16,32,64,128] [--rounds 7]
        [--variants default,mt2=JAMBA_EXT_MOE_DEC_MT:2]
(At 15e322f it ran default,mt1down=JAMBA_EXT_MOE_DEC_MT:down,mt1all=JAMBA_EXT_MOE_DEC_MT:all, s65_mt_15e322f.log: the
switch's values then; down on one m16 tile a warp is the default since.)
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



def parse_variants(spec):
    """"name" (no switch) or "name=VAR:value[+VAR2:value2...]" (environment variables set for that variant),
    comma-separated"""
    out = {}
    for item in spec.split(","):
        name, _, env = item.partition("=")
        out[name] = dict(pair.split(":", 1) for pair in env.split("+")) if env else {}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bf16", default="5,6,7,8")
    ap.add_argument("--fp8", default="8,16,32,64,128")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--variants", default="default,mt2=JAMBA_EXT_MOE_DEC_MT:2")
    args = ap.parse_args()
    variants = parse_variants(args.variants)
    first = next(iter(variants))
    dev = torch.device("cuda")
    torch.manual_seed(0)
    H, Fd, E, K = 4096, 14336, 16, 2
    w_gate_up = (torch.randn(E, 2 * Fd, H, device=dev) * H ** -0.5).bfloat16()
    w_down = (torch.randn(E, H, Fd, device=dev) * Fd ** -0.5).bfloat16()
    q_gu, s_gu = ops.quantize_fp8(w_gate_up)
    q_d, s_d = ops.quantize_fp8(w_down)
    router = (torch.randn(E, H, device=dev) * H ** -0.5 * 4).bfloat16()
    bw = common.copy_bandwidth_gbs(dev)
    print(f"{common.device_name(dev)} | copy {bw:.0f} GB/s", flush=True)
    cases = [("bf16", int(t)) for t in args.bf16.split(",") if t] + [("fp8", int(t)) for t in args.fp8.split(",") if t]
    for kind, T in cases:
        calls, floor = [], 0.0
        wbytes = 2 if kind == "bf16" else 1
        for _ in range(16):
            x = torch.randn(T, H, device=dev).bfloat16()
            w, ids, offsets, slots = ops.moe_route(torch.nn.functional.linear(x, router), K)
            calls.append((x, w, ids, slots, offsets))
            floor += int((offsets[1:] > offsets[:-1]).sum()) * 3 * H * Fd * wbytes / (bw * 1e9) * 1e6 / 16

        def one(v, c):
            with common.env(**variants[v]):
                if kind == "bf16":
                    return ops.moe_experts(c[0], c[1], c[2], w_gate_up, w_down, c[3], c[4], "gemv")
                return ops.moe_experts_fp8(c[0], c[1], c[2], q_gu, s_gu, q_d, s_d, c[3], c[4])
        outs = {v: [one(v, c) for c in calls] for v in variants}
        errs = ", ".join(f"{v} {max(bench_moe.rel_err(a, b) for a, b in zip(outs[v], outs[first])):.1e}"
                         for v in variants if v != first)
        print(f"--- {kind} T = {T}: weight floor {floor:.1f} us (mean over the routings); max rel diff from "
              f"{first}: {errs}", flush=True)
        graphs = {v: common.capture(lambda v=v: [one(v, c) for c in calls]) for v in variants}
        tg = common.time_interleaved({v: graphs[v].replay for v in variants}, dev, rounds=args.rounds, reps=2,
                                     warmup=1)
        for v in variants:
            mg = tg[v]["median_ms"] * 1e3 / 16
            print(f"  {v:<8}  graph {mg:7.1f} us per call ({tg[v]['p10_ms'] * 1e3 / 16:6.1f}-"
                  f"{tg[v]['p90_ms'] * 1e3 / 16:6.1f})  {100 * floor / mg:5.1f}% of the floor", flush=True)
        state = {"i": 0}
        for v in variants:
            def run(v=v):
                state["i"] += 1
                return one(v, calls[state["i"] % 16])
            bd = bench_moe.kernel_breakdown(run, iters=16)
            print(f"  kernels ({v}, PDL off, us per call): " +
                  ", ".join(f"{k} {u:.1f}" for k, u in list(bd.items())[:4]), flush=True)


if __name__ == "__main__":
    main()
