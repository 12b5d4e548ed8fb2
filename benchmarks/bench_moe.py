"""Fused MoE dispatch (jamba.moe_route + jamba.moe_experts) against the torch ways of running Jamba's experts.

    python3 benchmarks/bench_moe.py            # H200: Jamba-v0.1 sizes, bf16, tokens 1 .. 16384
    python3 benchmarks/bench_moe.py --smoke    # tiny shapes, runs on CPU (CI)

Writes benchmarks/results/<--name, default bench_moe>.json (+ .png); --smoke (and a run on the CPU) under
benchmarks/results/local/ (gitignored).

Shapes: H 4096, F 14336, E 16, top-2 (Jamba-v0.1), weights in the transformers 5.x fused layout.
Rows per token count (each checked against an fp32 reference before it is timed):
  ours            moe_route + moe_experts(impl auto): routing, permutation, both GEMMs, SiLU*up, combine
  ours:<impl>     one CUDA engine forced: mma / mma64 / mma256 (mma.sync GEMM variants), wgmma (Hopper),
                  gemv (decode: moe_decode_kernel)
  ours+grouped_mm our routing, permutation and combine around torch._grouped_mm (the allowed fallback)
  ours fp8        moe_experts_fp8 on the weights quantized once (e4m3, a scale per row; its error against the
                  bf16 reference includes the quantisation, so its bound is FP8_ERR; floor: half the weight bytes)
  ours fp8 act    the same with act_fp8=True (Hopper: x and act quantized per row, e4m3 x e4m3 GEMMs; FP8A_ERR)
  (a) hf_loop     transformers 4.x JambaSparseMoeBlock: one_hot mask, loop over all experts, torch.where
  (b) sorted_mm   tokens sorted by expert, one torch.matmul pair per expert (host loop over offsets)
  (c) grouped_mm  the same with torch._grouped_mm (no host loop), routing and combine in torch
  dense mm        (>= 512 tokens, a ceiling, not a MoE) the same FLOPs as two dense torch.matmul calls, all
                  T * TOPK slots through one expert: (T*TOPK, H) x (H, 2F), then (T*TOPK, F) x (F, H); timed in
                  the same rounds as the rows above, so under the same clocks and power draw
Figures: median time (CUDA events), useful TFLOP/s = 2 * T * TOPK * 3 * H * F / time against the measured
dense bf16 matmul rate (8192^3 at the start, a cool GPU) and, from 512 tokens, against the "dense mm" row of
the same token count (the column "of dense same-work"); for <= 64 tokens, bytes of the touched experts' weights
(distinct experts * 3*H*F*2) against the measured copy bandwidth (floor = bytes / bandwidth).
"""
import argparse
import collections
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

from jamba_ext import ops  # noqa: E402


def hf_loop(x, logits, w_gate_up, w_down, K):
    """(a) transformers 4.x JambaSparseMoeBlock.forward (expert weights as slices of the fused tensors)."""
    T, H = x.shape
    E, F2, _ = w_gate_up.shape
    Fd = F2 // 2
    p = torch.softmax(logits, dim=1, dtype=torch.float)
    w, sel = torch.topk(p, K, dim=-1)
    w = w.to(x.dtype)
    out = torch.zeros(T, H, dtype=x.dtype, device=x.device)
    mask = F.one_hot(sel, num_classes=E).permute(2, 1, 0)
    for e in range(E):
        idx, top_x = torch.where(mask[e])
        if top_x.shape[0] == 0:
            continue
        cur = x[None, top_x].reshape(-1, H)
        h = F.linear(F.silu(F.linear(cur, w_gate_up[e, :Fd])) * F.linear(cur, w_gate_up[e, Fd:]), w_down[e])
        out.index_add_(0, top_x, h * w[top_x, idx, None])
    return out


def _torch_route(x, logits, E, K):
    p = torch.softmax(logits, dim=1, dtype=torch.float)
    w, sel = torch.topk(p, K, dim=-1)
    order = torch.sort(sel.reshape(-1), stable=True).indices
    counts = torch.bincount(sel.reshape(-1), minlength=E)
    return w.to(x.dtype).reshape(-1), order, counts


def sorted_mm(x, logits, w_gate_up, w_down, K):
    """(b) tokens sorted by expert, a torch.matmul pair per expert over its contiguous rows."""
    E, F2, _ = w_gate_up.shape
    Fd = F2 // 2
    w, order, counts = _torch_route(x, logits, E, K)
    xs = x.index_select(0, order // K)
    ys = torch.empty_like(xs)
    lo = 0
    for e, c in enumerate(counts.tolist()):
        if c:
            gu = xs[lo:lo + c] @ w_gate_up[e].t()
            ys[lo:lo + c] = (F.silu(gu[:, :Fd]) * gu[:, Fd:]) @ w_down[e].t()
        lo += c
    out = torch.zeros_like(x)
    out.index_add_(0, order // K, ys * w[order, None])
    return out


def grouped(x, logits, w_gate_up, w_down, K):
    """(c) torch._grouped_mm for both GEMMs, routing and combine in torch (no host sync)."""
    E, F2, _ = w_gate_up.shape
    Fd = F2 // 2
    w, order, counts = _torch_route(x, logits, E, K)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    xs = x.index_select(0, order // K)
    gu = torch._grouped_mm(xs, w_gate_up.transpose(1, 2), offs=offs)
    ys = torch._grouped_mm(F.silu(gu[:, :Fd]) * gu[:, Fd:], w_down.transpose(1, 2), offs=offs)
    out = torch.zeros_like(x)
    out.index_add_(0, order // K, ys * w[order, None])
    return out


def ours(impl):
    def run(x, logits, w_gate_up, w_down, K):
        w, ids, offsets, slots = ops.moe_route(logits, K)
        return ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl)
    return run


def ours_fp8(q8, act_fp8=False):
    """moe_experts_fp8 on the weights quantized once (q8: quantize_fp8 of w_gate_up and of w_down), its default engines
    by size (ops.py's fp8 section); act_fp8: fp8 activations allowed (W8A8 on Hopper from ops.FP8_W8A8_MIN_TOKENS)"""
    def run(x, logits, w_gate_up, w_down, K):
        w, ids, offsets, slots = ops.moe_route(logits, K)
        return ops.moe_experts_fp8(x, w, ids, *q8, slots, offsets, act_fp8=act_fp8)
    return run


FP8_ERR = 8e-2  # fp8 rows: the weights' e4m3 rounding (3 mantissa bits) is part of their error against the bf16 one
FP8A_ERR = 1.2e-1  # fp8 activations too: x's and act's e4m3 roundings on top (~6.6% rms at Jamba sizes, w8a8_*.log)


def with_env(fn, **env):
    """fn run with the given environment variables set (EXPERIMENT knobs of the kernels, read per call)"""
    def run(*args):
        with common.env(**env):
            return fn(*args)
    return run


def kernel_times(launches, iters):
    """us per call by kernel name from `launches`, (start, name, us) of each kernel run in `iters` calls of one
    function. A name launched c > 1 times in every call becomes 'name #1' .. 'name #c' by its place in the call (the
    MoE's two GEMMs may run one kernel instance: moe_wgmma_persist_kernel's gate_up, then its down); a name whose
    count is not a multiple of iters keeps one row. Sorted by time, longest first."""
    launches = sorted(launches, key=lambda t: t[0])
    count = collections.Counter(n for _, n, _ in launches)
    per_call = {n: c // iters if c % iters == 0 else 1 for n, c in count.items()}
    seen, out = {}, {}
    for _, n, us in launches:
        k = seen.get(n, 0)
        seen[n] = k + 1
        key = f"{n} #{k % per_call[n] + 1}" if per_call[n] > 1 else n
        out[key] = out.get(key, 0.0) + us / iters
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def kernel_breakdown(fn, iters=3):
    """GPU time per kernel name (us per call) from torch.profiler (kernel_times); {} when the profiler is unavailable.
    Run with programmatic dependent launch off (JAMBA_EXT_PDL=0): with it, a kernel's blocks may start while
    the previous kernel runs and wait there, and the profiler counts that wait as the kernel's time (session 6:
    the combine after the wgmma GEMM read 160 us instead of 15)."""
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
        with common.env(JAMBA_EXT_PDL="0"):
            fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(iters):
                    fn()
                torch.cuda.synchronize()
        launches = [(ev.time_range.start, ev.name.split("(")[0].replace("void ", "")[:48], ev.device_time_total)
                    for ev in prof.events() if ev.device_type != DeviceType.CPU and ev.device_time_total > 0]
        return kernel_times(launches, iters)
    except Exception as e:  # noqa: BLE001 -- a breakdown is optional
        return {"unavailable": str(e)[:80]}


def sanitize_cases():
    """Every engine once on shapes with partial tiles (compute-sanitizer memcheck / racecheck target)."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    for T, H, Fd, E, K, dt in [(5, 40, 24, 4, 2, torch.bfloat16), (300, 136, 72, 16, 2, torch.bfloat16),
                               (150, 264, 200, 3, 1, torch.float16), (9, 37, 23, 3, 2, torch.float32),
                               (12, 200, 136, 16, 2, torch.bfloat16), (40, 72, 8, 1, 1, torch.float16),
                               (170, 136, 72, 2, 2, torch.bfloat16),  # 170 rows per expert: merged tiles
                               (1, 264, 200, 16, 3, torch.bfloat16), (1, 40, 24, 16, 12, torch.float16),  # one token
                               # more tiles than SMs, one k tile a tile (gate_up, then down): the swap engine's
                               # many-CTA case (with JAMBA_EXT_MOE_SWAP=1)
                               (600, 64, 1024, 16, 2, torch.bfloat16), (600, 2048, 64, 16, 2, torch.float16)]:
        rn = lambda *s: torch.randn(*s, generator=g, device=dev).to(dt)
        x, wgu, wd = rn(T, H), rn(E, 2 * Fd, H) * H ** -0.5, rn(E, H, Fd) * Fd ** -0.5
        w, ids, offsets, slots = ops.moe_route(torch.randn(T, E, generator=g, device=dev), K)
        impls = ["simt", "auto"] + (["mma", "mma64", "mma256", "wgmma", "gemv"] if H % 8 == 0 and dt != torch.float32
                                    else [])
        for impl in impls:
            out = ops.moe_experts(x, w, ids, wgu, wd, slots, offsets, impl)
            assert not torch.isnan(out).any(), impl
        if T <= 4 and "gemv" in impls:  # the ring kernels and forced splits of the GEMV kernels (moe_gemv.cu)
            for t1 in ("0", "1,1", "8,8"):
                out = with_env(lambda: ops.moe_experts(x, w, ids, wgu, wd, slots, offsets, "gemv"),
                               JAMBA_EXT_MOE_GEMV=t1)()
                assert not torch.isnan(out).any(), f"gemv JAMBA_EXT_MOE_GEMV={t1}"
        if "wgmma" in impls and torch.cuda.get_device_capability(dev)[0] == 9:  # both tilings (moe_wgmma.cu)
            for tiles, persist, epi, merge in (("all", "1", "1", "0"), ("tail", "1", "1", "0"), ("all", "0", "1", "0"),
                                               ("all", "1", "0", "0"), ("all", "1", "1", "1")):
                out = with_env(lambda: ops.moe_experts(x, w, ids, wgu, wd, slots, offsets, "wgmma"),
                               JAMBA_EXT_WGMMA_TILES=tiles, JAMBA_EXT_WGMMA_PERSIST=persist, JAMBA_EXT_MOE_EPI=epi,
                               JAMBA_EXT_MOE_MERGE=merge)()
                assert not torch.isnan(out).any(), f"wgmma tiles={tiles} persist={persist} epi={epi} merge={merge}"
    torch.cuda.synchronize()
    print("bench_moe --sanitize: all engines ran")


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU ok)")
    ap.add_argument("--tokens", type=str, default=None, help="comma-separated token counts")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--only", type=str, default=None, help="comma-separated variant names to run (default: all)")
    ap.add_argument("--skip", type=str, default=None, help="comma-separated variant names to leave out")
    ap.add_argument("--name", type=str, default=None, help="results file stem (default bench_moe)")
    ap.add_argument("--small-engines", action="store_true",
                    help="also time the GEMM engines (mma*, wgmma*) below 64 tokens (skipped there by default)")
    ap.add_argument("--order", choices=["rotate", "random"], default="random",
                    help="order of the variants in each timing round (common.time_interleaved)")
    ap.add_argument("--sanitize", action="store_true",
                    help="run every CUDA engine once on small odd shapes (for compute-sanitizer) and exit")
    args = ap.parse_args()
    if args.sanitize:
        return sanitize_cases()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    torch.manual_seed(0)
    if args.smoke:
        H, Fd, E, K, dtype = 64, 96, 4, 2, torch.bfloat16
        tokens = [1, 8, 64]
    else:
        H, Fd, E, K, dtype = 4096, 14336, 16, 2, torch.bfloat16
        tokens = [1, 8, 64, 512, 1024, 2048, 4096, 16384]  # 1024-2048: around the auto switch point (4096 slots)
    if args.tokens:
        tokens = [int(t) for t in args.tokens.split(",")]
    reps = args.reps or (5 if dev.type == "cpu" else 10)

    bw = common.copy_bandwidth_gbs(dev) if dev.type == "cuda" else common.copy_bandwidth_gbs(dev, 256 << 20)
    mm = common.matmul_tflops(dev)
    print(f"device {common.device_name(dev)} | copy {bw:.0f} GB/s | bf16 matmul {mm:.1f} TFLOP/s | "
          f"H {H} F {Fd} E {E} top-{K} {dtype}", flush=True)

    w_gate_up = (torch.randn(E, 2 * Fd, H, device=dev) * H ** -0.5).to(dtype)
    w_down = (torch.randn(E, H, Fd, device=dev) * Fd ** -0.5).to(dtype)
    router = (torch.randn(E, H, device=dev) * H ** -0.5 * 4).to(dtype)
    has_grouped = dev.type == "cuda" and hasattr(torch, "_grouped_mm")

    variants = [("ours", ours("auto"))]
    if dev.type == "cuda":
        variants += [(f"ours:{impl}", ours(impl)) for impl in ("mma", "mma64", "mma256", "wgmma", "gemv")]
        # A/B up to 4 tokens: the shared-memory ring kernel instead of the GEMV kernels (moe_gemv.cu)
        variants += [("ours:gemv ring", with_env(ours("gemv"), JAMBA_EXT_MOE_GEMV="0"))]
        # A/B: the 128 x 256 tiles in the non-persistent kernel (the default is persistent; moe_wgmma.cu)
        variants += [("ours:wgmma nonpersist", with_env(ours("wgmma"), JAMBA_EXT_WGMMA_TILES="all",
                                                        JAMBA_EXT_WGMMA_PERSIST="0"))]
        # A/B: the persistent kernel without half tiles (an expert's last <= 64 rows as a full 128-row tile)
        variants += [("ours:wgmma nohalf", with_env(ours("wgmma"), JAMBA_EXT_WGMMA_TILES="all",
                                                    JAMBA_EXT_WGMMA_HALF="0"))]
        # A/B: half tiles forced on in both GEMMs' 128 x 256 tiles (by default from 384 slots an expert in gate_up)
        variants += [("ours:wgmma half", with_env(ours("wgmma"), JAMBA_EXT_WGMMA_TILES="all",
                                                  JAMBA_EXT_WGMMA_HALF="1"))]
        # A/B (sessions 60, 66): half tiles by size in both GEMMs from 384 slots an expert (the rule before session 66;
        # by default down's run from 1024, see moe_wgmma.cu), and in gate_up only (down's m-tiles then keep one pace)
        variants += [("ours:wgmma half both", with_env(ours("wgmma"), JAMBA_EXT_WGMMA_HALF="b")),
                     ("ours:wgmma half g", with_env(ours("wgmma"), JAMBA_EXT_WGMMA_HALF="g"))]
        # A/B (session 67, for 2304-2943 tokens): gate_up's half tiles at any size (down's by the rule), alone and with
        # down on the swap engine (dev/moe_tiles.py: ~0.91 of the tensor work useful at 2560 tokens against 0.83)
        variants += [("ours:wgmma half G", with_env(ours("wgmma"), JAMBA_EXT_WGMMA_HALF="G")),
                     ("ours:wgmma half G swap d", with_env(ours("wgmma"), JAMBA_EXT_WGMMA_HALF="G",
                                                           JAMBA_EXT_MOE_SWAP="d"))]
        # A/B: the persistent kernel without its epilogue warps (the consumers run all of gate_up's epilogue)
        variants += [("ours:wgmma noepiw", with_env(ours("wgmma"), JAMBA_EXT_MOE_EPI="0"))]
        # A/B: the persistent kernel without its merged tiles (by default from 128 to 192 slots per expert, an
        # expert's last <= 64 rows join its previous tile; JAMBA_EXT_MOE_MERGE=1 forces them at any size)
        variants += [("ours:wgmma nomerge", with_env(ours("wgmma"), JAMBA_EXT_MOE_MERGE="0"))]
        # A/B (sizes where they are off): merged tiles forced on
        variants += [("ours:wgmma merge", with_env(ours("wgmma"), JAMBA_EXT_MOE_MERGE="1"))]
        # A/B: the swap-AB engine (W rows on the wgmma's M side, an expert's rows on N in chunks of 32; session 54)
        # forced on, and forced off
        variants += [("ours:wgmma swap", with_env(ours("wgmma"), JAMBA_EXT_MOE_SWAP="1")),
                     ("ours:wgmma noswap", with_env(ours("wgmma"), JAMBA_EXT_MOE_SWAP="0")),
                     # (session 67) the swap engine in one GEMM, the 128 x 256 tiles in the other
                     ("ours:wgmma swap g", with_env(ours("wgmma"), JAMBA_EXT_MOE_SWAP="g")),
                     ("ours:wgmma swap d", with_env(ours("wgmma"), JAMBA_EXT_MOE_SWAP="d")),
                     # the epilogues a conversion a value (before session 56: moe_act_fast2 / moe_scaled2)
                     ("ours:wgmma f2f", with_env(ours("wgmma"), JAMBA_EXT_MOE_EPI_F2F="1"))]
        if has_grouped:
            variants += [("ours+grouped_mm", ours("grouped_mm"))]
        if hasattr(torch, "float8_e4m3fn"):  # fp8 expert weights (a scale per row): half the weight bytes
            q8 = (*ops.quantize_fp8(w_gate_up), *ops.quantize_fp8(w_down))
            variants += [("ours fp8", ours_fp8(q8)), ("ours fp8 act", ours_fp8(q8, act_fp8=True))]
    variants += [("(a) hf_loop", hf_loop), ("(b) sorted_mm", sorted_mm)]
    if has_grouped:
        variants += [("(c) grouped_mm", grouped)]

    if args.only:
        variants = [v for v in variants if v[0] in args.only.split(",")]
    if args.skip:
        variants = [v for v in variants if v[0] not in args.skip.split(",")]
    rows = []
    for T in tokens:
        x = torch.randn(T, H, device=dev).to(dtype)
        logits = F.linear(x, router)
        w, ids, offsets, slots = ops.moe_route(logits, K)
        touched = int((offsets[1:] - offsets[:-1] > 0).sum())
        wbytes = touched * 3 * H * Fd * 2
        flops = 2 * T * K * 3 * H * Fd
        # fp32 reference on the same routing (the routing weight rounded to bf16 as HF does), one expert at a time
        ref = torch.zeros(T, H, device=dev)
        for e in range(E):
            tok, slot = torch.nonzero(ids == e, as_tuple=True)
            if tok.numel():
                gu = x[tok].float() @ w_gate_up[e].float().t()
                y = (F.silu(gu[:, :Fd]) * gu[:, Fd:]) @ w_down[e].float().t()
                ref.index_add_(0, tok, y * w[tok, slot].to(dtype).float()[:, None])
        base_b = None
        timed = {}  # correct variants, timed below in turns (common.time_interleaved)
        dense = None
        if T >= 512 and (not args.only or "dense mm" in args.only.split(",")) and "dense mm" not in (args.skip or ""):
            xs = x.repeat(K, 1)
            dense = {"label": f"dense mm T={T}", "op": "dense mm", "tokens": T, "H": H, "F": Fd, "E": E,
                     "top_k": K, "dtype": str(dtype).replace("torch.", ""), "correct": True}
            rows.append(dense)
            timed["dense mm"] = (dense, lambda: torch.matmul(torch.matmul(xs, w_gate_up[0].t())[:, :Fd],
                                                             w_down[0].t()))
        for name, fn in variants:
            if (name == "ours:gemv" and T > 512) or (name == "ours:gemv ring" and T > 4) or \
                    (name.startswith(("ours:mma", "ours:wgmma")) and T < 64 and not args.small_engines):
                continue
            out = fn(x, logits, w_gate_up, w_down, K)
            err = rel_err(out, ref)
            ok = err < (FP8A_ERR if "fp8 act" in name else FP8_ERR if "fp8" in name else 2e-2) and \
                not torch.isnan(out).any().item()
            row = {"label": f"{name} T={T}", "op": name, "tokens": T, "H": H, "F": Fd, "E": E, "top_k": K,
                   "dtype": str(dtype).replace("torch.", ""), "rel_err_vs_fp32": err, "correct": ok}
            rows.append(row)
            if not ok:
                print(f"{name:<18} T={T:<6} WRONG: relative error {err:.3e} vs fp32 reference: not timed", flush=True)
                continue
            timed[name] = (row, (lambda fn=fn: fn(x, logits, w_gate_up, w_down, K)))
        times = common.time_interleaved({n: f for n, (_, f) in timed.items()}, dev, rounds=5, order=args.order, seed=T,
                                        reps=max(1, reps // 5), warmup=1)
        for name, (row, _) in timed.items():
            t = times[name]
            us = t["median_ms"] * 1e3
            row.update(median_us=us, p10_us=t["p10_ms"] * 1e3, p90_us=t["p90_ms"] * 1e3,
                       tflops=flops / (us * 1e-6) / 1e12)
            row["pct_matmul_rate"] = 100 * row["tflops"] / mm
            extra = f"{row['tflops']:7.1f} TFLOP/s ({row['pct_matmul_rate']:4.1f}% of matmul)"
            if dense is not None and name != "dense mm":
                row["pct_dense_same_work"] = 100 * dense["median_us"] / us
                extra += f" ({row['pct_dense_same_work']:5.1f}% of dense same-work)"
            floor_us = None
            if T <= 64:
                wb = wbytes // 2 if "fp8" in name else wbytes  # e4m3: one byte a weight (the scales: 0.02%)
                floor_us = wb / (bw * 1e9) * 1e6
                row.update(weight_bytes=wb, experts_touched=touched, floor_us=floor_us,
                           pct_bw_floor=100 * floor_us / us)
            if name == "(b) sorted_mm":
                base_b = us
            err_s = f" err={row['rel_err_vs_fp32']:.1e}" if "rel_err_vs_fp32" in row else ""
            print(common.fmt_row(f"{name} T={T}{err_s}", us, floor_us, extra), flush=True)
        for r in rows:
            if r["tokens"] == T and base_b and "median_us" in r:
                r["speedup_vs_b"] = base_b / r["median_us"]
        if dev.type == "cuda":
            row_ours = next((r for r in rows if r["tokens"] == T and r["op"] == "ours"), None)
            if row_ours is not None:
                row_ours["kernels_us"] = kernel_breakdown(lambda: ours("auto")(x, logits, w_gate_up, w_down, K))
                print("  ours kernels (us/call): " + ", ".join(f"{k} {v:.1f}" for k, v in row_ours["kernels_us"].items()),
                      flush=True)
        summary = ", ".join(f"{r['op']} {r['speedup_vs_b']:.2f}x" for r in rows
                            if r["tokens"] == T and "speedup_vs_b" in r and r["op"].startswith("ours"))
        print(f"  T={T}: speed-up over (b): {summary}", flush=True)

    info = common.meta(dev, copy_gbs=bw, matmul_tflops=mm, H=H, F=Fd, E=E, top_k=K, dtype=str(dtype),
                       smoke=args.smoke)
    name = args.name or ("bench_moe_smoke" if args.smoke else "bench_moe")
    print("wrote", common.write_results(name, rows, info, folder=common.results_dir(args.smoke, dev)))
    if any(not r["correct"] for r in rows if r["op"].startswith("ours")):
        sys.exit(1)


if __name__ == "__main__":
    main()
