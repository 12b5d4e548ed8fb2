"""MoE experts at ONE token (batch-1 decode), Jamba-v0.1 sizes, bf16: the GEMV kernels of moe_gemv.cu (the default)
against the shared-memory ring kernel (moe_decode_persist_kernel, JAMBA_EXT_MOE_T1=0) and against kw choices of
the GEMV kernels (JAMBA_EXT_MOE_T1="g,d": warps along K of gate_up, down). Eager calls timed in turns
(benchmarks/common.time_interleaved, behind a GPU sleep), then CUDA graphs of 20 calls each replayed in turns,
and the per-kernel times (torch.profiler, PDL off). Routing changes per call set (16 different routings cycled),
so the touched experts' weights are never in L2 from the previous call.

    python3 dev/moe_t1_ab.py [--variants default,ring,2,8,...] [--rounds 7]
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
    ap.add_argument("--variants", default="default,ring,2/8,4/4,4/8,8/8,2/4,1/8")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    H, Fd, E, K = 4096, 14336, 16, 2
    w_gate_up = (torch.randn(E, 2 * Fd, H, device=dev) * H ** -0.5).bfloat16()
    w_down = (torch.randn(E, H, Fd, device=dev) * Fd ** -0.5).bfloat16()
    bw = common.copy_bandwidth_gbs(dev)
    floor_us = 2 * 3 * H * Fd * 2 / (bw * 1e9) * 1e6
    print(f"{common.device_name(dev)} | copy {bw:.0f} GB/s | weight floor (2 experts) {floor_us:.1f} us", flush=True)
    # 16 routings (distinct expert pairs), x and weights per routing
    calls = []
    for i in range(16):
        x = torch.randn(1, H, device=dev).bfloat16()
        ids = torch.tensor([[i, (i + 5) % E]], device=dev, dtype=torch.int32)
        w = torch.rand(1, K, device=dev) * 0.5 + 0.1
        offsets, slots = ops.moe_permute(ids, E)
        calls.append((x, w, ids, slots, offsets))
    ref = []
    for x, w, ids, _, _ in calls:
        r = torch.zeros(1, H, device=dev)
        for j in range(K):
            e = int(ids[0, j])
            gu = x.float() @ w_gate_up[e].float().t()
            y = (torch.nn.functional.silu(gu[:, :Fd]) * gu[:, Fd:]) @ w_down[e].float().t()
            r += y * w[0, j].bfloat16().float()
        ref.append(r)

    def envs(v):
        return {} if v == "default" else {"JAMBA_EXT_MOE_T1": "0"} if v == "ring" else \
            {"JAMBA_EXT_MOE_T1": v.replace("/", ",")}

    state = {"i": 0}

    def make(v):
        def run():
            c = calls[state["i"] % 16]
            state["i"] += 1
            with common.env(**envs(v)):
                return ops.moe_experts(c[0], c[1], c[2], w_gate_up, w_down, c[3], c[4], "gemv")
        return run

    variants = args.variants.split(",")
    for v in variants:
        with common.env(**envs(v)):
            errs = [bench_moe.rel_err(ops.moe_experts(c[0], c[1], c[2], w_gate_up, w_down, c[3], c[4], "gemv"), r)
                    for c, r in zip(calls, ref)]
        print(f"{v:<8} max rel err vs fp32 {max(errs):.2e}", flush=True)
    t = common.time_interleaved({v: make(v) for v in variants}, dev, rounds=args.rounds, reps=4, warmup=2)
    print("eager, in turns (us): median p10 p90 | % of floor")
    for v in variants:
        m = t[v]["median_ms"] * 1e3
        print(f"  {v:<8} {m:7.1f} {t[v]['p10_ms'] * 1e3:7.1f} {t[v]['p90_ms'] * 1e3:7.1f} | {100 * floor_us / m:5.1f}%",
              flush=True)
    # graphs: 16 calls (all routings) per graph
    graphs = {}
    for v in variants:
        with common.env(**envs(v)):
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for c in calls:
                    ops.moe_experts(c[0], c[1], c[2], w_gate_up, w_down, c[3], c[4], "gemv")
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for c in calls:
                    ops.moe_experts(c[0], c[1], c[2], w_gate_up, w_down, c[3], c[4], "gemv")
            graphs[v] = g
    tg = common.time_interleaved({v: graphs[v].replay for v in variants}, dev, rounds=args.rounds, reps=2, warmup=1)
    print("graph of 16 calls, in turns (us per call): median p10 p90 | % of floor")
    for v in variants:
        m = tg[v]["median_ms"] * 1e3 / 16
        print(f"  {v:<8} {m:7.1f} {tg[v]['p10_ms'] * 1e3 / 16:7.1f} {tg[v]['p90_ms'] * 1e3 / 16:7.1f} | "
              f"{100 * floor_us / m:5.1f}%", flush=True)
    for v in ("default", "ring"):
        if v in variants:
            bd = bench_moe.kernel_breakdown(make(v), iters=16)
            print(f"kernels ({v}, PDL off, us per call): " +
                  ", ".join(f"{k} {u:.1f}" for k, u in list(bd.items())[:6]), flush=True)


if __name__ == "__main__":
    main()
