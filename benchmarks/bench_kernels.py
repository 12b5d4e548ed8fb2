"""GPU benchmark of the Mamba-path kernels (issue 3) at Jamba-v0.1 shapes in bf16, against torch eager on
the same inputs and against the floor measured in the same run.

Shapes: d_inner 8192, d_state 16, conv width 4. selective_scan and causal_conv1d at batch x seqlen =
1x2048, 1x8192, 1x32768, 8x2048 (selective_scan_bwd, the gradients, at 1x2048 and 1x8192); the decode updates
at batch 1, 16, 64, 256; rms_norm / add_rms_norm over
8192 rows of hidden 4096; gemv (the decode step's projections, 1 and 8 rows) against F.linear (cuBLAS);
decode_attention (one token against a 2K-128K KV cache) against SDPA.
Floors: memory-bound kernels: minimal bytes (inputs read once, outputs written once) / measured copy
bandwidth. selective_scan: max(bytes / bandwidth, exponentials / SFU rate), exponentials =
batch*d_inner*seqlen*d_state; the SFU ex2 rate is measured by a Triton microbenchmark when Triton works,
else taken as SMs x 16 ex2/clk x the max SM clock (the JSON says which). Every row is checked against
the reference at its shape (on sampled channels where the fp32 reference would not fit) before it is
timed. The decode rows also give the time per call inside a CUDA graph (CPU launch cost removed): at batch
1 the event-timed figure is the launch path, not the kernel; and that graph again with programmatic dependent
launch off (env JAMBA_EXT_PDL=0, "no PDL"), which shows what PDL saves between back-to-back kernels, and a
device copy of the same bytes timed the same way ("same-size copy in a graph": the speed a copy reaches at that
size, per-kernel fixed costs included). Writes benchmarks/results/bench_kernels.json
(+ .png); --smoke writes bench_kernels_smoke.json under benchmarks/results/local/ (gitignored).

    python benchmarks/bench_kernels.py            # full shapes (GPU)
    python benchmarks/bench_kernels.py --smoke    # tiny shapes, CPU or GPU (CI)
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

from jamba_ext import ops, reference as R  # noqa: E402

BF16 = torch.bfloat16
TOL = dict(rtol=1e-2, atol=1e-2)


# ---- inputs ----------------------------------------------------------------------------------------------
def rn(*shape, dev, dtype=BF16, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device=dev) * scale + shift).to(dtype)


def scan_args(Bsz, DI, L, N, dev):
    return dict(u=rn(Bsz, DI, L, dev=dev), delta=rn(Bsz, DI, L, dev=dev, scale=0.5),
                A=-torch.exp(torch.rand(DI, N, device=dev) * 2.5 - 0.7),
                B=rn(Bsz, N, L, dev=dev), C=rn(Bsz, N, L, dev=dev),
                D=torch.randn(DI, device=dev), z=rn(Bsz, DI, L, dev=dev),
                delta_bias=torch.rand(DI, device=dev) * 3 - 4.5, delta_softplus=True, initial_state=None)


def sample_channels(a, idx):
    """The same scan restricted to channels idx (the reference of a sample)."""
    s = dict(a)
    for k in ("u", "delta", "z"):
        s[k] = a[k][:, idx]
    for k in ("A", "D", "delta_bias"):
        s[k] = a[k][idx]
    return s


# ---- rows --------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, dev, smoke, reps):
        self.dev, self.smoke, self.reps = dev, smoke, reps
        self.rows = []
        self.bw = common.copy_bandwidth_gbs(dev, nbytes=(64 << 20) if smoke else (2 << 30))
        self.sfu, self.sfu_how = common.sfu_rate(dev)

    def time(self, fn, small=False, reps=None, warmup=None):
        warmup = warmup if warmup is not None else (2 if self.smoke else 10)
        return common.time_ms(fn, self.dev, warmup=warmup, reps=reps or self.reps, flush_l2=small)

    def graph_us(self, fn, n=20):
        """GPU time per call with the CPU out of the loop: n calls captured in one CUDA graph, replayed."""
        if self.dev.type != "cuda":
            return None
        try:
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream(self.dev).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(n):
                    fn()
            t = common.time_ms(g.replay, self.dev, warmup=3, reps=20)
            return t["median_ms"] * 1e3 / n
        except Exception as e:  # noqa: BLE001 -- a figure we can do without
            print(f"    (graph timing failed: {type(e).__name__}: {e})")
            return None

    def copy_graph_us(self, nbytes, _cache={}):
        """A device copy moving the same bytes (nbytes/2 read, nbytes/2 written) timed like graph_us: what the
        copy engine of torch reaches at this size, fixed per-kernel costs included (the copy-bandwidth floor
        comes from a 2 GiB copy, where they vanish)."""
        if self.dev.type != "cuda":
            return None
        if nbytes not in _cache:
            half = max(16, nbytes // 2)
            src = torch.empty(half, dtype=torch.uint8, device=self.dev)
            dst = torch.empty_like(src)
            _cache[nbytes] = self.graph_us(lambda: dst.copy_(src))
            del src, dst
        return _cache[nbytes]

    def row(self, op, shape, fn, nbytes, exps=None, eager=None, small=False, eager_reps=None, graph=False):
        t = self.time(fn, small)
        us = t["median_ms"] * 1e3
        floor_mem = nbytes / (self.bw * 1e9) * 1e6
        floor, binds = floor_mem, "memory"
        if exps is not None and self.sfu:
            floor_sfu = exps / self.sfu * 1e6
            if floor_sfu > floor_mem:
                floor, binds = floor_sfu, "sfu"
        r = dict(op=op, label=f"{op} {shape}", shape=shape, dtype="bf16", median_us=us,
                 p10_us=t["p10_ms"] * 1e3, p90_us=t["p90_ms"] * 1e3, bytes=nbytes,
                 gbs=nbytes / (us * 1e-6) / 1e9, pct_copy_bw=100 * nbytes / (us * 1e-6) / 1e9 / self.bw,
                 floor_us=floor, floor_binds=binds, pct_of_floor=100 * floor / us)
        if exps is not None:
            r["exps"] = exps
        extra = f"{r['gbs']:7.0f} GB/s ({r['pct_copy_bw']:4.1f}% copy bw), floor binds: {binds}"
        if graph:
            gu = self.graph_us(fn)
            if gu is not None:
                r["graph_us"] = gu
                r["pct_copy_bw_graph"] = 100 * nbytes / (gu * 1e-6) / 1e9 / self.bw
                extra += f" | in a CUDA graph {gu:6.1f} us ({r['pct_copy_bw_graph']:4.1f}% copy bw)"
                cu = self.copy_graph_us(nbytes)
                if cu is not None:
                    r["copy_graph_us"] = cu
                    r["pct_of_copy_graph"] = 100 * cu / gu
                    extra += f" | same-size copy in a graph {cu:6.1f} us (ours at {r['pct_of_copy_graph']:5.1f}% of its speed)"
                with common.env(JAMBA_EXT_PDL="0"):  # the same graph without programmatic dependent launch
                    gu0 = self.graph_us(fn)
                if gu0 is not None:
                    r["graph_us_no_pdl"] = gu0
                    extra += f" [no PDL {gu0:6.1f} us]"
        if eager is not None:
            te = self.time(eager, small, reps=eager_reps, warmup=1 if eager_reps else None)
            r["eager_us"] = te["median_ms"] * 1e3
            r["speedup_vs_eager"] = r["eager_us"] / us
            extra += f" | eager {r['eager_us']:9.1f} us (x{r['speedup_vs_eager']:.1f})"
        print(common.fmt_row(r["label"], us, floor, extra), flush=True)
        self.rows.append(r)
        return r


def check(name, got, want, **tol):
    got, want = got.double(), want.double()
    if torch.isnan(got).any() or not torch.allclose(got, want, **(tol or TOL)):
        err = (got - want).abs().max().item()
        raise AssertionError(f"{name}: wrong result at the benchmark shape (max abs err {err:.3e})")


def bench_scan(bb, shapes, DI, N):
    dev = bb.dev
    for Bsz, L in shapes:
        a = scan_args(Bsz, DI, L, N, dev)
        out, last = ops.selective_scan(**a)
        idx = torch.arange(0, DI, max(1, DI // 48), device=dev)  # sampled channels, fp64 reference
        ref_out, ref_last = R.selective_scan(**{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                                for k, v in sample_channels(a, idx).items()})
        check("selective_scan", out[:, idx], ref_out)
        check("selective_scan last_state", last[:, idx], ref_last, rtol=1e-4, atol=1e-4)
        # bytes: u, delta, z read + out written (bf16), B and C (bf16), last_state (f32), A/D/bias
        nbytes = 4 * Bsz * DI * L * 2 + 2 * Bsz * N * L * 2 + Bsz * DI * N * 4 + DI * N * 4 + 2 * DI * 4
        eager = None
        if Bsz * DI * L <= 8 * 8192 * 2048 and L <= 2048:  # the Python loop over time is slow
            eager = lambda: R.selective_scan(**a)
        bb.row("selective_scan", f"B={Bsz} DI={DI} L={L} N={N}", lambda: ops.selective_scan(**a), nbytes,
               exps=Bsz * DI * L * N, eager=eager, eager_reps=3)
        if dev.type == "cuda":
            # variants timed in the same run: the general kernel (JAMBA_EXT_SCAN_IMPL=old), the pipelined kernel
            # (=pc; the default takes the bf16 g4 kernel where its layouts hold) and B/C as the model passes them
            # ((B, L, N) transposed: n-fast)
            bt = {"B": a["B"].transpose(1, 2).contiguous().transpose(1, 2),
                  "C": a["C"].transpose(1, 2).contiguous().transpose(1, 2)}
            for label, env, over in (("old", {"JAMBA_EXT_SCAN_IMPL": "old"}, {}),
                                     ("pipelined", {"JAMBA_EXT_SCAN_IMPL": "pc"}, {}),
                                     ("B/C n-fast", {}, bt)):
                with common.env(**env):
                    av = dict(a, **over)
                    check(f"selective_scan ({label})", ops.selective_scan(**av)[0][:, idx], ref_out)
                    bb.row(f"selective_scan ({label})", f"B={Bsz} DI={DI} L={L} N={N}",
                           lambda: ops.selective_scan(**av), nbytes, exps=Bsz * DI * L * N)
            del bt
        del a, out, last
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def bench_scan_bwd(bb, shapes, DI, N):
    """selective_scan_bwd (training): every gradient. Checked on sampled channels (du, ddelta, dz are per channel)
    against float64. Floor: the bytes it must move (u, delta, z, dout read and du, ddelta, dz written in bf16, B, C
    read, dB, dC written in f32) against the exponentials of one forward pass (the kernel evaluates each three
    times: checkpoints, chunk recompute, reverse step). Alternative: the autograd of reference.py in fp32, the
    path of every earlier version."""
    dev = bb.dev
    for Bsz, L in shapes:
        a = scan_args(Bsz, DI, L, N, dev)
        dout = rn(Bsz, DI, L, dev=dev)
        args = lambda s, do: (s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"], s["z"], s["delta_bias"],  # noqa
                              True, s["initial_state"], do, None)
        got = ops.selective_scan_bwd(*args(a, dout))
        idx = torch.arange(0, DI, max(1, DI // 48), device=dev)
        s64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in sample_channels(a, idx).items()}
        want = R.selective_scan_bwd(*args(s64, dout[:, idx].double()))
        for name, i in (("du", 0), ("ddelta", 1), ("dz", 6)):
            check(f"selective_scan_bwd {name}", got[i][:, idx], want[i], rtol=3e-2, atol=3e-2)
        nbytes = 7 * Bsz * DI * L * 2 + 2 * Bsz * N * L * (2 + 4) + DI * N * 4
        eager = None
        if Bsz * DI * L <= 8192 * 2048:  # the reference's Python loop over time, forward and backward
            a32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
            eager = lambda: R.selective_scan_bwd(*args(a32, dout.float()))  # noqa: E731
        bb.row("selective_scan_bwd", f"B={Bsz} DI={DI} L={L} N={N}", lambda: ops.selective_scan_bwd(*args(a, dout)),
               nbytes, exps=Bsz * DI * L * N, eager=eager, eager_reps=2)
        del a, dout, got
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def bench_conv_bwd(bb, shapes, DI, K):
    """causal_conv1d_bwd (training): dx, dweight, dbias from dout, with SiLU. Checked against float64 autograd of
    the reference on sampled channels. Floor: x and dout read, dx written (bf16). Alternative: the autograd of
    reference.py in fp32 (torch's depthwise conv1d and its backward; the path of every earlier version)."""
    dev = bb.dev
    for Bsz, L in shapes:
        x, dout = rn(Bsz, DI, L, dev=dev), rn(Bsz, DI, L, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        dx, dw, db, _ = ops.causal_conv1d_bwd(x, w, b, None, dout, True)
        idx = torch.arange(0, DI, max(1, DI // 48), device=dev)
        ins = [x[:, idx].double().requires_grad_(), w[idx].double().requires_grad_(), b[idx].double().requires_grad_()]
        ref = R.causal_conv1d(ins[0], ins[1], ins[2], None, True)[0]
        want = torch.autograd.grad(ref, ins, dout[:, idx].double())
        check("causal_conv1d_bwd dx", dx[:, idx], want[0], rtol=3e-2, atol=3e-2)
        check("causal_conv1d_bwd dweight", dw[idx], want[1], rtol=1e-3, atol=1e-2)
        check("causal_conv1d_bwd dbias", db[idx], want[2], rtol=1e-3, atol=1e-2)
        nbytes = 3 * Bsz * DI * L * 2 + DI * (K + 1) * 6
        xs, ws_, bs = [t.float().requires_grad_() for t in (x, w, b)]

        def eager():
            o = R.causal_conv1d(xs, ws_, bs, None, True)[0]
            return torch.autograd.grad(o, (xs, ws_, bs), dout.float())
        bb.row("causal_conv1d_bwd", f"B={Bsz} DI={DI} L={L} K={K}",
               lambda: ops.causal_conv1d_bwd(x, w, b, None, dout, True), nbytes, eager=eager)
        del x, dout, dx, xs
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def bench_conv(bb, shapes, DI, K):
    dev = bb.dev
    for Bsz, L in shapes:
        x = rn(Bsz, DI, L, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        out, fin = ops.causal_conv1d(x, w, b, None, True, K - 1)
        ref_out, ref_fin = R.causal_conv1d(x, w, b, None, True, K - 1)  # fp32 compute, bf16 out
        check("causal_conv1d", out, ref_out)
        check("causal_conv1d final_state", fin, ref_fin, rtol=0, atol=0)
        nbytes = 2 * Bsz * DI * L * 2 + Bsz * DI * (K - 1) * 2 + DI * (K + 1) * 2
        torch_conv = lambda: F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=K - 1, groups=DI)[..., :L])
        bb.row("causal_conv1d", f"B={Bsz} DI={DI} L={L} K={K}", lambda: ops.causal_conv1d(x, w, b, None, True, K - 1),
               nbytes, eager=torch_conv, graph=True)
        del x, out


def bench_decode(bb, batches, DI, N, K):
    dev = bb.dev
    for Bsz in batches:
        # causal_conv1d_update: HF cache layout (B, DI, K) in bf16
        x = rn(Bsz, DI, dev=dev)
        w, b = rn(DI, K, dev=dev, scale=0.5), rn(DI, dev=dev, scale=0.1)
        st = rn(Bsz, DI, K, dev=dev)
        st_ref = st.clone()
        out = ops.causal_conv1d_update(x, st, w, b, True)
        ref_out, ref_st = R.causal_conv1d_update(x, st_ref, w, b, True)
        check("causal_conv1d_update", out, ref_out)
        check("causal_conv1d_update state", st, ref_st, rtol=0, atol=0)
        nbytes = 2 * Bsz * DI * K * 2 + 2 * Bsz * DI * 2 + DI * (K + 1) * 2
        small = nbytes < (120 << 20)
        bb.row("causal_conv1d_update", f"B={Bsz} DI={DI} K={K}", lambda: ops.causal_conv1d_update(x, st, w, b, True),
               nbytes, eager=lambda: R.causal_conv1d_update(x, st, w, b, True), small=small, graph=True)
        if dev.type == "cuda" and os.environ.get("JAMBA_EXT_AB_ROWS") == "1":
            # A/B: the other thread layout than the default at this batch (4 channels vs one 16-byte state piece)
            other = "0" if Bsz >= 128 else "1"
            with common.env(JAMBA_EXT_CONV_UPDATE_P16=other):
                check(f"causal_conv1d_update (p16={other})", ops.causal_conv1d_update(x, st.clone(), w, b, True),
                      R.causal_conv1d_update(x, st.clone(), w, b, True)[0])
                bb.row(f"causal_conv1d_update (p16={other})", f"B={Bsz} DI={DI} K={K}",
                       lambda: ops.causal_conv1d_update(x, st, w, b, True), nbytes, small=small, graph=True)
        # selective_state_update: fp32 state (as mamba_ssm's benchmark figure), bf16 activations
        s = dict(state=torch.randn(Bsz, DI, N, device=dev), x=rn(Bsz, DI, dev=dev),
                 dt=rn(Bsz, DI, dev=dev, scale=0.5), A=-torch.exp(torch.rand(DI, N, device=dev) * 2.5 - 0.7),
                 B=rn(Bsz, N, dev=dev), C=rn(Bsz, N, dev=dev), D=torch.randn(DI, device=dev),
                 z=rn(Bsz, DI, dev=dev), dt_bias=torch.rand(DI, device=dev) * 3 - 4.5, dt_softplus=True)
        st0 = s["state"].clone()
        y = ops.selective_state_update(**s)
        ry, rs = R.selective_state_update(**dict(s, state=st0))
        check("selective_state_update", y, ry)
        check("selective_state_update state", s["state"], rs, rtol=1e-5, atol=1e-5)
        nbytes = 2 * Bsz * DI * N * 4 + 4 * Bsz * DI * 2 + 2 * Bsz * N * 2 + DI * N * 4 + 2 * DI * 4
        small = nbytes < (120 << 20)
        bb.row("selective_state_update", f"B={Bsz} DI={DI} N={N} state=f32",
               lambda: ops.selective_state_update(**s), nbytes,
               eager=lambda: R.selective_state_update(**s), small=small, graph=True)


def bench_mamba_step(bb, batches, DI, N, K, R):
    """jamba.mamba_inner_step (a Mamba layer's decode step between in_proj and out_proj): the fused CUDA kernel
    against the five launches it replaces (the same op without its workspace), both in a CUDA graph."""
    dev = bb.dev
    NO = R + 2 * N
    for Bsz in batches:
        xz = rn(Bsz, 2 * DI, dev=dev)
        a = dict(x=xz[:, :DI], z=xz[:, DI:], conv_state=rn(Bsz, DI, K, dev=dev),
                 conv_weight=rn(DI, K, dev=dev, scale=0.5),
                 conv_bias=rn(DI, dev=dev, scale=0.1), xproj_weight=rn(NO, DI, dev=dev, scale=DI ** -0.5),
                 norm_weight=rn(NO, dev=dev, scale=0.3, shift=1.0), dtproj_weight=rn(DI, R, dev=dev, scale=R ** -0.5),
                 A=-torch.exp(torch.rand(DI, N, device=dev) * 2.5 - 0.7), D=torch.randn(DI, device=dev),
                 dt_bias=torch.rand(DI, device=dev) * 3 - 4.5, ssm_state=torch.randn(Bsz, DI, N, device=dev))
        fused = dev.type == "cuda" and Bsz <= 2            # the fused kernel's limits (else: the five launches)
        work = ops.mamba_inner_step_workspace(DI, Bsz, NO, dev) if fused else None
        args = lambda c: (c["x"], c["z"], c["conv_state"], c["conv_weight"], c["conv_bias"], c["xproj_weight"],  # noqa
                          c["norm_weight"], c["dtproj_weight"], c["A"], c["D"], c["dt_bias"], c["ssm_state"], R, 1e-6)
        ref = R_mamba_step(a, R)
        got = ops.mamba_inner_step(*args(dict(a, conv_state=a["conv_state"].clone(),
                                              ssm_state=a["ssm_state"].clone())), work)
        check("mamba_inner_step", got, ref, rtol=3e-2, atol=3e-2)
        nbytes = ((NO * DI + DI * R + DI * (K + 1) + NO) * 2 + 2 * Bsz * DI * K * 2 + 2 * Bsz * DI * N * 4
                  + DI * N * 4 + 2 * DI * 4 + 3 * Bsz * DI * 2)
        for label, wk in (("mamba_inner_step (fused)", work), ("mamba_inner_step (five launches)", None)):
            if label.endswith("(fused)") and not fused:
                continue
            bb.row(label, f"B={Bsz} DI={DI} R={R} N={N} K={K}", lambda: ops.mamba_inner_step(*args(a), wk), nbytes,
                   small=True, graph=True)


def R_mamba_step(a, Rk):
    return R.mamba_inner_step(a["x"], a["z"], a["conv_state"], a["conv_weight"], a["conv_bias"], a["xproj_weight"],
                              a["norm_weight"], a["dtproj_weight"], a["A"], a["D"], a["dt_bias"], a["ssm_state"],
                              Rk, 1e-6)[0]


def bench_norm(bb, rows, dim):
    dev = bb.dev
    x, r = rn(rows, dim, dev=dev), rn(rows, dim, dev=dev)
    w = rn(dim, dev=dev, scale=0.3, shift=1.0)
    check("rms_norm", ops.rms_norm(x, w), R.rms_norm(x, w))
    o, s = ops.add_rms_norm(x, r, w)
    ro, rs = R.add_rms_norm(x, r, w)
    check("add_rms_norm", o, ro)
    check("add_rms_norm residual", s, rs, rtol=0, atol=0)
    nb = rows * dim * 2
    small = 4 * nb < (120 << 20)
    bb.row("rms_norm", f"rows={rows} dim={dim}", lambda: ops.rms_norm(x, w), 2 * nb + dim * 2,
           eager=lambda: R.rms_norm(x, w), small=small, graph=True)
    bb.row("add_rms_norm", f"rows={rows} dim={dim}", lambda: ops.add_rms_norm(x, r, w), 4 * nb + dim * 2,
           eager=lambda: R.add_rms_norm(x, r, w), small=small, graph=True)


def bench_norm_bwd(bb, rows, dim):
    """rms_norm_bwd (training): dx and dweight from dy. Checked against float64 autograd of the reference. Floor: x
    and dy read, dx written (bf16). Alternative: the autograd of reference.py in fp32 (every earlier version)."""
    dev = bb.dev
    x, dy = rn(rows, dim, dev=dev), rn(rows, dim, dev=dev)
    w = rn(dim, dev=dev, scale=0.3, shift=1.0)
    dx, dw = ops.rms_norm_bwd(x, w, dy, [])
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    want = torch.autograd.grad(R.rms_norm(x64, w64), (x64, w64), dy.double())
    check("rms_norm_bwd dx", dx, want[0], rtol=3e-2, atol=3e-2)
    x64 = x.double()  # dweight against the forward's rounding of x r to bf16 (the op's sum; fp64 here)
    xh = (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype).double()
    # (a term moves by an ulp of bf16 where x r in fp32 and in fp64 round to different sides: atol covers a few)
    check("rms_norm_bwd dweight", dw, (dy.double() * xh).sum(0), rtol=1e-3, atol=6e-2)
    xs, ws_ = x.float().requires_grad_(), w.float().requires_grad_()
    eager = lambda: torch.autograd.grad(R.rms_norm(xs, ws_), (xs, ws_), dy.float())  # noqa: E731
    bb.row("rms_norm_bwd", f"rows={rows} dim={dim}", lambda: ops.rms_norm_bwd(x, w, dy, []),
           3 * rows * dim * 2 + dim * 6, eager=eager)


def bench_norm_segments(bb, dim=288, splits=(256, 272)):
    """Mamba's dt / B / C norms in one launch at decode sizes (rows = batch), graph-timed."""
    dev = bb.dev
    w = rn(dim, dev=dev, scale=0.3, shift=1.0)
    for rows in ((1, 8) if bb.smoke else (1, 8, 64)):
        x = rn(rows, dim, dev=dev)
        check("rms_norm_segments", ops.rms_norm_segments(x, w, list(splits)), R.rms_norm_segments(x, w, list(splits)))
        bb.row("rms_norm_segments", f"rows={rows} dim={dim}", lambda: ops.rms_norm_segments(x, w, list(splits)),
               2 * rows * dim * 2 + dim * 2, small=True, graph=True)
        if rows == 1 and not bb.smoke:  # where the ~5 us of one row go: one segment, and rms_norm on the same row
            bb.row("rms_norm_segments (1 segment)", f"rows={rows} dim={dim}",
                   lambda: ops.rms_norm_segments(x, w, []), 2 * rows * dim * 2 + dim * 2, small=True, graph=True)
            bb.row("rms_norm", f"rows={rows} dim={dim}", lambda: ops.rms_norm(x, w),
                   2 * rows * dim * 2 + dim * 2, small=True, graph=True)


# Jamba-v0.1's decode-step projections (N, K) (one Mamba layer, the dense MLP, attention, the LM head)
GEMV_SHAPES = [("mamba in_proj", 16384, 4096), ("mamba x_proj", 288, 8192), ("mamba dt_proj", 8192, 256),
               ("mamba out_proj", 4096, 8192), ("mlp gate|up", 14336, 4096), ("mlp down", 4096, 14336),
               ("attn q|o", 4096, 4096), ("attn k|v", 1024, 4096), ("lm_head", 65536, 4096)]


def bench_gemv(bb, shapes, rows_list):
    """jamba.gemv against F.linear (cuBLAS) at decode sizes, both timed in a CUDA graph over a rotation of weight
    copies that together exceed the L2 (so every call reads its weight from DRAM, as in a decode step).
    Floor: the weight's bytes / copy bandwidth (x and out are a few KB)."""
    dev = bb.dev
    for name, N, K in shapes:
        nw = max(2, -(-(256 << 20) // (N * K * 2))) if not bb.smoke else 2
        ws = [rn(N, K, dev=dev, scale=0.02) for _ in range(nw)]
        for M in rows_list:
            x = rn(M, K, dev=dev)
            check(f"gemv {name}", ops.gemv(x, ws[0]), R.gemv(x.float(), ws[0].float()).to(BF16))
            i = [0]

            def call(f):
                def fn():
                    f(x, ws[i[0] % nw])
                    i[0] += 1
                return fn
            ours = bb.graph_us(call(ops.gemv)) if dev.type == "cuda" else bb.time(call(ops.gemv))["median_ms"] * 1e3
            cub = bb.graph_us(call(F.linear)) if dev.type == "cuda" else bb.time(call(F.linear))["median_ms"] * 1e3
            nbytes = N * K * 2 + M * (N + K) * 2
            floor = nbytes / (bb.bw * 1e9) * 1e6
            r = dict(op="gemv", label=f"gemv {name} M={M} N={N} K={K}", shape=f"M={M} N={N} K={K}", dtype="bf16",
                     median_us=ours, bytes=nbytes, floor_us=floor, floor_binds="memory",
                     pct_of_floor=100 * floor / ours, pct_copy_bw=100 * floor / ours, cublas_us=cub,
                     cublas_pct_of_floor=100 * floor / cub, speedup_vs_cublas=cub / ours, graph_timed=dev.type == "cuda")
            lin = "F.linear (cuBLAS)" if dev.type == "cuda" else "F.linear"
            print(common.fmt_row(r["label"], ours, floor, f"{lin} {cub:7.1f} us ({r['cublas_pct_of_floor']:5.1f}% of "
                                 f"floor) | x{r['speedup_vs_cublas']:.2f}"), flush=True)
            bb.rows.append(r)
        del ws


def bench_attention(bb, lengths, B=1, H=8, NR=4, D=128):
    """jamba.decode_attention (one new token, Jamba's 8 KV heads x 4 query heads, head_dim 128) against the SDPA call
    the model made before it (modeling_jamba._sdpa: query heads as rows, a boolean key mask), both graph-timed over
    a rotation of caches that together exceed the L2. Floor: K and V bytes / copy bandwidth."""
    from jamba_ext.modeling_jamba import _sdpa
    dev = bb.dev
    for S in lengths:
        kv_bytes = 2 * B * H * S * D * 2
        nw = max(2, -(-(256 << 20) // kv_bytes)) if not bb.smoke else 2
        caches = [(rn(B, H, S, D, dev=dev), rn(B, H, S, D, dev=dev)) for _ in range(nw)]
        q = rn(B, H, NR, D, dev=dev)
        mask = torch.ones(B, S, dtype=torch.bool, device=dev)
        mask[:, S - S // 8:] = False                       # a static cache's unused tail
        k0, v0 = caches[0]
        check("decode_attention", ops.decode_attention(q, k0, v0, mask), R.decode_attention(q.float(), k0.float(),
              v0.float(), mask).to(BF16))
        i = [0]

        def call(f):
            def fn():
                k, v = caches[i[0] % nw]
                f(k, v)
                i[0] += 1
            return fn
        ours_fn = call(lambda k, v: ops.decode_attention(q, k, v, mask))
        sdpa_fn = call(lambda k, v: _sdpa(q, k, v, mask[:, None, None, :], False, False))
        timed = (lambda f: bb.graph_us(f)) if dev.type == "cuda" else (lambda f: bb.time(f)["median_ms"] * 1e3)
        ours, sdpa = timed(ours_fn), timed(sdpa_fn)
        with common.env(JAMBA_EXT_ATTN_MMA="0"):  # A/B: the CUDA-core kernel (the default before the tensor-core one)
            simt = timed(ours_fn)
        floor = kv_bytes / (bb.bw * 1e9) * 1e6
        r = dict(op="decode_attention", label=f"decode_attention B={B} HKV={H} R={NR} D={D} S={S}",
                 shape=f"B={B} HKV={H} R={NR} D={D} S={S}", dtype="bf16", median_us=ours, bytes=kv_bytes,
                 floor_us=floor, floor_binds="memory", pct_of_floor=100 * floor / ours,
                 pct_copy_bw=100 * floor / ours, sdpa_us=sdpa, simt_kernel_us=simt,
                 speedup_vs_sdpa=sdpa / ours, graph_timed=dev.type == "cuda")
        print(common.fmt_row(r["label"], ours, floor, f"SDPA (the model's call before) {sdpa:8.1f} us | "
                             f"x{r['speedup_vs_sdpa']:.1f} | CUDA-core kernel {simt:6.1f} us"), flush=True)
        bb.rows.append(r)
        del caches


def bench_loss(bb, shapes):
    """cross_entropy (the LM loss per row; training) at Jamba's 65536-word vocabulary in bf16, forward and forward +
    backward. Checked against F.cross_entropy in fp32. Floors: the logits read once (forward), read twice and the
    gradient written once (forward + backward); the exps on the SFU. Alternative: F.cross_entropy(logits.float())
    and its autograd (what the model ran before session 35, and transformers' loss)."""
    dev = bb.dev
    for N, V in shapes:
        x = rn(N, V, dev=dev, scale=3.0)
        t = torch.randint(0, V, (N,), device=dev)
        t[::7] = -100
        kept = (t != -100).sum()
        loss, lse = ops.cross_entropy(x, t)
        check("cross_entropy", loss.sum() / kept, F.cross_entropy(x.float(), t, ignore_index=-100), rtol=1e-5,
              atol=1e-5)
        d = torch.where(t != -100, 1.0 / kept, 0.0).float()
        xl = x.clone().requires_grad_()
        F.cross_entropy(xl.float(), t, ignore_index=-100).backward()
        check("cross_entropy_bwd", ops.cross_entropy_bwd(x, t, lse, d), xl.grad, rtol=1e-2, atol=1e-7)

        def ours_both():
            _, s = ops.cross_entropy(x, t)
            return ops.cross_entropy_bwd(x, t, s, d)

        def torch_both():
            xl.grad = None
            F.cross_entropy(xl.float(), t, ignore_index=-100).backward()

        nb = N * V * 2
        bb.row("cross_entropy", f"rows={N} vocab={V}", lambda: ops.cross_entropy(x, t), nb, exps=N * V,
               eager=lambda: F.cross_entropy(x.float(), t, ignore_index=-100))
        bb.row("cross_entropy fwd+bwd", f"rows={N} vocab={V}", ours_both, 3 * nb, exps=2 * N * V, eager=torch_both)
        del x, xl


def bench_moe_grad_rows(bb, shapes):
    """moe_grad_rows (training: where the grouped MoE backward starts) at Jamba-v0.1's hidden size, top-2, bf16.
    Checked against reference.py in fp32. Floor: go's gathered rows and y read, dys written (bf16; the fp32 outputs
    are small). Alternative: the torch form it replaced (index_select, weighted product, an fp32 copy, product, sum)."""
    dev = bb.dev
    for T, H in shapes:
        K = 2
        go = rn(T, H, dev=dev)
        y = rn(T * K, H, dev=dev)
        w = torch.rand(T, K, device=dev)
        slots = torch.randperm(T * K, device=dev).to(torch.int32)
        dys, dws = ops.moe_grad_rows(go, w, slots, y)
        rd, rw = R.moe_grad_rows(go, w, slots, y)
        check("moe_grad_rows dys", dys, rd, rtol=1e-2, atol=1e-2)
        check("moe_grad_rows dws", dws, rw, rtol=1e-4, atol=1e-3)
        sl = slots.long()
        tok = torch.div(sl, K, rounding_mode="floor")

        def torch_form():
            gos = go.index_select(0, tok)
            d = gos * w.reshape(-1).index_select(0, sl).to(go.dtype)[:, None]
            return d, (gos.float() * y).sum(1)

        bb.row("moe_grad_rows", f"slots={T * K} H={H}", lambda: ops.moe_grad_rows(go, w, slots, y), 3 * T * K * H * 2,
               eager=torch_form)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU when there is no GPU")
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", default="",
                    help="comma-separated families: scan,scan_bwd,conv,conv_bwd,decode,mamba_step,norm,norm_bwd,gemv,attn,loss,"
                         "moe_bwd "
                         "(default all)")
    args = ap.parse_args()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu" and not args.smoke:
        ap.error("the full benchmark needs a GPU (use --smoke on CPU)")
    if dev.type == "cuda" and not ops.has_cuda_kernels():
        sys.exit("jamba_ext was built without CUDA kernels")
    torch.manual_seed(0)
    if args.smoke:
        DI, N, K = 64, 16, 4
        scan_shapes, decode_batches, norm_shape = [(1, 32), (2, 33)], [1, 3], (16, 256)
    else:
        DI, N, K = 8192, 16, 4
        scan_shapes, decode_batches, norm_shape = [(1, 2048), (1, 8192), (1, 32768), (8, 2048)], [1, 16, 64, 256], \
            (8192, 4096)
    bb = Bench(dev, args.smoke, reps=5 if args.smoke else 30)
    print(f"device: {common.device_name(dev)} | copy bandwidth {bb.bw:.0f} GB/s | SFU ex2 rate "
          f"{(bb.sfu or 0) / 1e12:.2f}e12/s ({bb.sfu_how})", flush=True)
    only = set(filter(None, args.only.split(","))) or {"scan", "scan_bwd", "conv", "conv_bwd", "decode", "norm",
                                                        "norm_bwd", "gemv", "attn", "loss", "moe_bwd"}
    if "scan" in only:
        bench_scan(bb, scan_shapes, DI, N)
    if "scan_bwd" in only:
        bench_scan_bwd(bb, scan_shapes[:1] if args.smoke else [(1, 2048), (1, 8192)], DI, N)
    if "conv" in only:
        bench_conv(bb, scan_shapes, DI, K)
    if "conv_bwd" in only:
        bench_conv_bwd(bb, scan_shapes[:1] if args.smoke else [(1, 2048), (1, 8192)], DI, K)
    if "decode" in only:
        bench_decode(bb, decode_batches, DI, N, K)
    if "decode" in only or "mamba_step" in only:
        bench_mamba_step(bb, [1, 2] if args.smoke else [1, 2, 8], DI, N, K, 16 if args.smoke else 256)
    if "norm" in only:
        bench_norm(bb, *norm_shape)
        bench_norm_segments(bb)
    if "norm_bwd" in only:
        bench_norm_bwd(bb, *((16, 256) if args.smoke else (2048, 4096)))
    if "gemv" in only:
        bench_gemv(bb, [("smoke", 40, 264)] if args.smoke else GEMV_SHAPES, (1, 3) if args.smoke else (1, 2, 4, 8))
    if "attn" in only:
        bench_attention(bb, [64] if args.smoke else [2048, 8192, 32768, 131072])
    if "loss" in only:
        bench_loss(bb, [(16, 1000)] if args.smoke else [(2048, 65536), (8192, 65536)])
    if "moe_bwd" in only:
        bench_moe_grad_rows(bb, [(16, 64)] if args.smoke else [(2048, 4096), (8192, 4096)])
    info = common.meta(dev, copy_bandwidth_gbs=bb.bw, sfu_ex2_per_s=bb.sfu, sfu_source=bb.sfu_how,
                       smoke=args.smoke)
    path = common.write_results("bench_kernels_smoke" if args.smoke else "bench_kernels", bb.rows, info,
                                folder=common.results_dir(args.smoke, dev))
    print("wrote", path)


if __name__ == "__main__":
    main()
