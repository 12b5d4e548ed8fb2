"""MoE experts at decode sizes, Jamba-v0.1, bf16: the GEMV kernels of moe_gemv.cu (impl gemv, the default path up
to its token limit) against the engines they replace: impl gemv with JAMBA_EXT_MOE_GEMV=0 ("ring": the
shared-memory ring kernels of moe.cu) and impl auto with it ("auto0": what auto ran before, wgmma from 9 tokens),
and, at one token, against kw choices of the GEMV kernels ("g/d": JAMBA_EXT_MOE_GEMV="g,d", warps along K of
gate_up, down). Per token count: 16 routings from random logits cycled (the touched weights are not in L2 from
the previous call); eager calls timed in turns (benchmarks/common.time_interleaved, behind a GPU sleep), then
CUDA graphs of the 16 calls replayed in turns, and the per-kernel times of the default (torch.profiler, PDL off).

    python3 dev/moe_gemv_ab.py [--tokens 1,2,4,8,16] [--kw 2/8,4/4,...] [--rounds 7]
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


def envs(v):
    return {"JAMBA_EXT_MOE_GEMV": "0"} if v in ("ring", "auto0") else \
        {"JAMBA_EXT_MOE_GEMV": v.replace("/", ",")} if "/" in v else {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="1,2,4,8,16")
    ap.add_argument("--kw", default="2/8,4/4,8/8,2/4,1/8")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    H, Fd, E, K = 4096, 14336, 16, 2
    w_gate_up = (torch.randn(E, 2 * Fd, H, device=dev) * H ** -0.5).bfloat16()
    w_down = (torch.randn(E, H, Fd, device=dev) * Fd ** -0.5).bfloat16()
    router = (torch.randn(E, H, device=dev) * H ** -0.5 * 4).bfloat16()
    bw = common.copy_bandwidth_gbs(dev)
    print(f"{common.device_name(dev)} | copy {bw:.0f} GB/s", flush=True)
    for T in [int(t) for t in args.tokens.split(",")]:
        calls, ref, floor = [], [], 0.0
        for i in range(16):
            x = torch.randn(T, H, device=dev).bfloat16()
            w, ids, offsets, slots = ops.moe_route(torch.nn.functional.linear(x, router), K)
            calls.append((x, w, ids, slots, offsets))
            floor += int((offsets[1:] > offsets[:-1]).sum()) * 3 * H * Fd * 2 / (bw * 1e9) * 1e6 / 16
            r = torch.zeros(T, H, device=dev)
            for e in range(E):
                tok, slot = torch.nonzero(ids == e, as_tuple=True)
                if tok.numel():
                    gu = x[tok].float() @ w_gate_up[e].float().t()
                    y = (torch.nn.functional.silu(gu[:, :Fd]) * gu[:, Fd:]) @ w_down[e].float().t()
                    r.index_add_(0, tok, y * w[tok, slot].bfloat16().float()[:, None])
            ref.append(r)
        variants = ["default", "ring", "auto0"] + (args.kw.split(",") if T == 1 and args.kw else [])
        impl = {v: "auto" if v == "auto0" else "gemv" for v in variants}

        def one(v, c):
            with common.env(**envs(v)):
                return ops.moe_experts(c[0], c[1], c[2], w_gate_up, w_down, c[3], c[4], impl[v])
        print(f"--- T = {T}: weight floor {floor:.1f} us (mean over the routings)", flush=True)
        for v in variants:
            err = max(bench_moe.rel_err(one(v, c), r) for c, r in zip(calls, ref))
            print(f"  {v:<8} max rel err vs fp32 {err:.2e}", flush=True)
        state = {"i": 0}

        def make(v):
            def run():
                state["i"] += 1
                return one(v, calls[state["i"] % 16])
            return run
        t = common.time_interleaved({v: make(v) for v in variants}, dev, rounds=args.rounds, reps=4, warmup=2)
        graphs = {v: common.capture(lambda v=v: [one(v, c) for c in calls]) for v in variants}
        tg = common.time_interleaved({v: graphs[v].replay for v in variants}, dev, rounds=args.rounds, reps=2,
                                     warmup=1)
        print("  variant   eager us (p10-p90)        graph us per call (p10-p90)  graph % of floor")
        for v in variants:
            m, mg = t[v]["median_ms"] * 1e3, tg[v]["median_ms"] * 1e3 / 16
            print(f"  {v:<8} {m:7.1f} ({t[v]['p10_ms'] * 1e3:6.1f}-{t[v]['p90_ms'] * 1e3:6.1f})   {mg:7.1f} "
                  f"({tg[v]['p10_ms'] * 1e3 / 16:6.1f}-{tg[v]['p90_ms'] * 1e3 / 16:6.1f})   "
                  f"{100 * floor / mg:5.1f}%", flush=True)
        for v in ("default", "ring"):
            bd = bench_moe.kernel_breakdown(make(v), iters=16)
            print(f"  kernels ({v}, PDL off, us per call): " +
                  ", ".join(f"{k} {u:.1f}" for k, u in list(bd.items())[:5]), flush=True)


if __name__ == "__main__":
    main()
