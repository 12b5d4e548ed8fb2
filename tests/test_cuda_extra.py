"""CUDA-only checks of the Mamba-path kernels (csrc/cuda/*.cu) beyond the device-parametrised op tests:
large and odd shapes against the float64 reference (run on the GPU), CPU-vs-CUDA agreement, bit-identical
reruns, CUDA-graph capture and replay, a tensor on cuda:1, d_inner past the 65535 grid-axis limit, and
(slow) more than 2^31 elements."""
import pytest
import torch

from conftest import STATE_TOL, TOL, assert_close, cuda_kernel_names, make_A, randn, uniform, up
from jamba_ext import ops, reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
              pytest.mark.skipif(not ops.has_cuda_kernels(), reason="built without CUDA kernels")]

DEV = torch.device("cuda")
# Long recurrences (L up to 70000) in fp32: the per-step exp2 (SFU ex2.approx, ~2 ulp) errors add up along
# slowly decaying channels, so fp32 gets 5e-5 here instead of conftest's 1e-5.
TOL_LONG = {torch.float32: dict(rtol=5e-5, atol=5e-5), torch.bfloat16: TOL[torch.bfloat16],
            torch.float16: TOL[torch.float16]}


def scan_inputs(batch, d_inner, d_state, seqlen, dtype, device=DEV, bc_layout="contig", init=True):
    """Mamba-like inputs: dt = softplus(delta + bias) ~ 0.01..0.3, A = -exp(A_log), random D, z, init.
    bc_layout: 'contig' (B, N, L) contiguous, or 'xproj' (stride 1 along N, as sliced from x_proj)."""
    u = randn(batch, d_inner, seqlen, device=device, dtype=dtype)
    z = randn(batch, d_inner, seqlen, device=device, dtype=dtype)
    delta = randn(batch, d_inner, seqlen, device=device, dtype=dtype, scale=0.5)
    if bc_layout == "contig":
        Bm = randn(batch, d_state, seqlen, device=device, dtype=dtype)
        Cm = randn(batch, d_state, seqlen, device=device, dtype=dtype)
    else:
        xp = randn(batch, seqlen, 2 * d_state + 3, device=device, dtype=dtype)
        Bm, Cm = xp[..., 3:3 + d_state].transpose(1, 2), xp[..., 3 + d_state:].transpose(1, 2)
    return dict(u=u, delta=delta, A=make_A(d_inner, d_state, device), B=Bm, C=Cm,
                D=randn(d_inner, device=device, scale=0.7, shift=0.2), z=z,
                delta_bias=uniform(d_inner, lo=-4.5, hi=-1.5, device=device), delta_softplus=True,
                initial_state=randn(batch, d_inner, d_state, device=device) if init else None)


def to(a, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}


def ref64(a):
    return reference.selective_scan(**{k: (up(v) if isinstance(v, torch.Tensor) else v) for k, v in a.items()})


def conv_inputs(batch, d_inner, seqlen, K, dtype, device=DEV, S_in=3):
    x = randn(batch, d_inner, seqlen, device=device, dtype=dtype)
    w = randn(d_inner, K, device=device, dtype=dtype, scale=0.6)
    b = randn(d_inner, device=device, dtype=dtype, scale=0.5)
    init = randn(batch, d_inner, S_in, device=device, dtype=dtype) if S_in else None
    return x, w, b, init


def decode_inputs(batch, d_inner, d_state, dtype, device=DEV, state_dtype=torch.float32):
    return dict(state=randn(batch, d_inner, d_state, device=device, dtype=state_dtype),
                x=randn(batch, d_inner, device=device, dtype=dtype),
                dt=randn(batch, d_inner, device=device, dtype=dtype, scale=0.5),
                A=make_A(d_inner, d_state, device),
                B=randn(batch, d_state, device=device, dtype=dtype),
                C=randn(batch, d_state, device=device, dtype=dtype),
                D=randn(d_inner, device=device, scale=0.7, shift=0.2),
                z=randn(batch, d_inner, device=device, dtype=dtype),
                dt_bias=uniform(d_inner, lo=-4.5, hi=-1.5, device=device), dt_softplus=True)


# ---- large / odd shapes against float64 ------------------------------------------------------------------
SCAN_SHAPES = [  # batch, d_inner, seqlen
    (1, 64, 1), (3, 520, 1), (3, 64, 7), (1, 520, 7), (1, 8192, 7),
    (1, 8192, 2048), (3, 520, 2048), (1, 64, 2049), (3, 520, 2049), (1, 8192, 2049),
    (1, 64, 72), (3, 520, 264),  # 16-byte rows with a partial last chunk (fast loader, then the general one)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("batch,d_inner,seqlen", SCAN_SHAPES, ids=[f"B{b}_DI{d}_L{l}" for b, d, l in SCAN_SHAPES])
def test_selective_scan_shapes_fp64(dtype, batch, d_inner, seqlen):
    a = scan_inputs(batch, d_inner, 16, seqlen, dtype, bc_layout="xproj" if d_inner == 520 else "contig")
    out, last = ops.selective_scan(**a)
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL_LONG[dtype])
    assert_close(last, ref_last, **TOL_LONG[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_selective_scan_seqlen_70000(dtype):
    """One launch carries the state across ~1100 chunks of time."""
    a = scan_inputs(1, 64, 16, 70000, dtype)
    out, last = ops.selective_scan(**a)
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL_LONG[dtype])
    assert_close(last, ref_last, **TOL_LONG[torch.float32])


@pytest.mark.parametrize("d_state", [1, 5, 16, 33, 128, 256])
def test_selective_scan_d_state_sweep(d_state):
    """d_state not a multiple of the per-thread tile (4 / 16) and up to the limit, both thread splits."""
    for batch, d_inner in [(1, 40), (3, 300)]:
        a = scan_inputs(batch, d_inner, d_state, 97, torch.float32, bc_layout="xproj")
        out, last = ops.selective_scan(**a)
        ref_out, ref_last = ref64(a)
        assert_close(out, ref_out, **TOL_LONG[torch.float32])
        assert_close(last, ref_last, **TOL_LONG[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("batch,d_inner,seqlen", [(1, 64, 1), (3, 520, 7), (1, 8192, 2049), (3, 64, 70000)])
def test_causal_conv1d_shapes_fp64(dtype, batch, d_inner, seqlen):
    x, w, b, init = conv_inputs(batch, d_inner, seqlen, 4, dtype)
    out, fin = ops.causal_conv1d(x, w, b, init, True, 5)
    ref_out, ref_fin = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, 5)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(fin, ref_fin, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("batch,d_inner,seqlen", [(1, 64, 1), (3, 520, 7), (2, 136, 2048), (1, 64, 2049)])
def test_causal_conv1d_silu_wide_inputs(dtype, batch, d_inner, seqlen):
    """Inputs spread to +-40 so the SiLU's exponential overflows and underflows: same tolerance against float64."""
    x, w, b, init = conv_inputs(batch, d_inner, seqlen, 4, dtype)
    x = (x.float() * 12).to(dtype)
    out, fin = ops.causal_conv1d(x, w, b, init, True, 5)
    ref_out, ref_fin = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, 5)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(fin, ref_fin, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_causal_conv1d_misaligned_rows(dtype):
    """Row starts not 16-byte aligned (x sliced at an odd time offset, odd L): the scalar load/store path."""
    wide = randn(2, 37, 1031, device=DEV, dtype=dtype)
    x = wide[:, 3:34, 1:]
    w = randn(31, 3, device=DEV, dtype=torch.float32)
    out, fin = ops.causal_conv1d(x, w, None, None, False, 2)
    ref_out, ref_fin = reference.causal_conv1d(up(x), up(w), None, None, False, 2)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(fin, ref_fin, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("rows,dim", [(1, 4096), (8192, 4096), (7, 16), (300, 256), (5, 8190), (3, 40000)])
def test_rms_norm_shapes_fp64(dtype, rows, dim):
    x = randn(rows, dim, device=DEV, dtype=dtype)
    r = randn(rows, dim, device=DEV, dtype=dtype)
    w = randn(dim, device=DEV, dtype=dtype, scale=0.4, shift=1.0)
    assert_close(ops.rms_norm(x, w, 1e-6), reference.rms_norm(up(x), up(w), 1e-6), **TOL[dtype])
    out, res = ops.add_rms_norm(x, r, w, 1e-6)
    ref_out, ref_res = reference.add_rms_norm(x, r, w, 1e-6)  # sum rounded to dtype, as the op
    assert torch.equal(res, ref_res)
    assert_close(out, reference.rms_norm(up(ref_res), up(w), 1e-6), **TOL[dtype])


# ---- vector paths of conv / conv update / norm ----
ALL_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ALL_IDS = ["f32", "bf16", "f16"]


# batch, d_inner, seqlen, K, S_in (None: no initial state), state_len, silu, w_f32
CONV_VEC_CASES = [
    (2, 6, 1024, 4, 3, 4, True, False),       # one bf16 warp segment, two f32 segments
    (2, 5, 2056, 3, 5, 7, False, True),       # partial last segment, L % 8 == 0
    (1, 3, 3000, 2, None, 3001, True, False),  # final state longer than L: zero padded
    (3, 4, 8, 4, 4, 12, True, False),         # L = one bf16 vector, final state reaches into initial_state
    (2, 3, 40, 4, 3, 2, False, False),
    (1, 2, 70000, 4, 3, 3, True, True),       # many segments per row
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=ALL_IDS)
@pytest.mark.parametrize("batch,d_inner,seqlen,K,S_in,state_len,silu,w_f32", CONV_VEC_CASES,
                         ids=[f"B{c[0]}_DI{c[1]}_L{c[2]}_K{c[3]}" for c in CONV_VEC_CASES])
def test_causal_conv1d_vector_path(dtype, batch, d_inner, seqlen, K, S_in, state_len, silu, w_f32):
    """x a channel slice of a wider tensor with 16-byte aligned rows (the vector loads of the warp kernel
    when L * itemsize % 16 == 0), segment halos, initial / final state. The element-load variant: odd L and
    misaligned rows (test_causal_conv1d_misaligned_rows, tests/test_causal_conv1d.py)."""
    wide = randn(batch, d_inner + 2, seqlen, device=DEV, dtype=dtype)
    x = wide[:, 1:1 + d_inner]
    wdt = torch.float32 if w_f32 else dtype
    w = randn(d_inner, K, device=DEV, dtype=wdt, scale=0.6)
    b = randn(d_inner, device=DEV, dtype=wdt, scale=0.5)
    init = randn(batch, d_inner, S_in, device=DEV, dtype=dtype) if S_in else None
    out, fin = ops.causal_conv1d(x, w, b, init, silu, state_len)
    ref_out, ref_fin = reference.causal_conv1d(up(x), up(w), up(b), up(init), silu, state_len)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(fin, ref_fin, rtol=0, atol=0)


# batch, d_inner, seqlen, S_in: more row segments than one resident wave of warps (3168 on an H200); the last
# two: several waves of 4-segment warps with the last one rounded off (bf16 16000 / f32 32000 segments)
CONV_SCHED_CASES = [(2, 1000, 2056, 3), (3, 2000, 8, None), (2, 37, 70000, None), (1, 4000, 4096, 5),
                    (1, 4000, 4096, None)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=ALL_IDS)
@pytest.mark.parametrize("batch,d_inner,seqlen,S_in", CONV_SCHED_CASES,
                         ids=[f"B{c[0]}_DI{c[1]}_L{c[2]}_S{c[3]}" for c in CONV_SCHED_CASES])
def test_causal_conv1d_multi_wave(dtype, batch, d_inner, seqlen, S_in):
    """Launches of more than one wave of warps (the schedule's 4-segment warps, whole waves of them, then one
    segment per warp): output and final state against float64."""
    x = randn(batch, d_inner, seqlen, device=DEV, dtype=dtype)
    w = randn(d_inner, 4, device=DEV, dtype=dtype, scale=0.6)
    b = randn(d_inner, device=DEV, dtype=dtype, scale=0.5)
    init = randn(batch, d_inner, S_in, device=DEV, dtype=dtype) if S_in else None
    out, fin = ops.causal_conv1d(x, w, b, init, True, 3)
    ref_out, ref_fin = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, 3)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(fin, ref_fin, rtol=0, atol=0)


UPDATE_VEC_CASES = ["contig", "x_slice", "x_strided", "w_transposed_K3", "w_f32", "b_f32", "w_f32_b_x", "no_bias",
                    "di_odd", "state_slice", "state_slice_misaligned", "seqlen2", "w_rows_strided", "b_strided"]
# (an x inside conv_state is refused since session 61: test_errors.py test_in_place_states_must_not_overlap)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=ALL_IDS)
@pytest.mark.parametrize("case", UPDATE_VEC_CASES)
@pytest.mark.parametrize("B", [3, 33, 129])
@pytest.mark.parametrize("p16", ["0", "hf0", "auto"])
def test_causal_conv1d_update_vector_path(monkeypatch, dtype, case, B, p16):
    """The decode step in the HF cache layout (conv_state (B, DI, 4), one token): the 4-channel kernel
    (16-byte state rows, vector x / taps / bias when contiguous, element loads otherwise) and the shapes that fall
    back to the per-channel kernel (di_odd, state_slice_misaligned, seqlen2); conv_state rewritten exactly,
    neighbours of a slice untouched; every weight / bias dtype pair (one kernel instance each). Batch 129: two batch
    rows per thread from 128 rows on, the last thread with one. p16: JAMBA_EXT_CONV_UPDATE_P16 forcing the 4-channel
    threads ("0") or one 16-byte state piece per thread (the default, "auto": 2 channels in bf16 / f16, 1 in f32;
    in the model's layout, 16-bit contiguous x, taps and bias, the instance with that layout at compile time),
    "hf0": JAMBA_EXT_CONV_UPDATE_HF=0 (p16 with the layout read at run time), same bits as the 4-channel kernel."""
    monkeypatch.delenv("JAMBA_EXT_CONV_UPDATE_P16", raising=False)
    monkeypatch.delenv("JAMBA_EXT_CONV_UPDATE_HF", raising=False)
    if p16 == "0":
        monkeypatch.setenv("JAMBA_EXT_CONV_UPDATE_P16", "0")
    elif p16 == "hf0":
        monkeypatch.setenv("JAMBA_EXT_CONV_UPDATE_HF", "0")
    DI, K, S = 36, 4, 4
    if case == "di_odd":
        DI = 37
    if case == "w_transposed_K3":
        K = 3
    wdt = torch.float32 if case in ("w_f32", "w_f32_b_x") else dtype
    bdt = torch.float32 if case in ("w_f32", "b_f32") else dtype
    w = randn(K, DI, device=DEV, dtype=wdt, scale=0.6).t() if case == "w_transposed_K3" else \
        randn(DI, K, device=DEV, dtype=wdt, scale=0.6)
    if case == "w_rows_strided":  # rows of 4 taps 8 apart: one vector load per channel, not over channels
        w = randn(DI, 2 * K, device=DEV, dtype=wdt, scale=0.6)[:, K:]
    b = None if case == "no_bias" else randn(DI, device=DEV, dtype=bdt, scale=0.5)
    if case == "b_strided":  # bias with stride 2: element loads
        b = randn(2 * DI, device=DEV, dtype=bdt, scale=0.5)[::2]
    cache = None
    if case in ("state_slice", "state_slice_misaligned"):
        cache = randn(B, DI + 8, S, device=DEV, dtype=dtype)
        c0 = 4 if case == "state_slice" else 1
        state = cache[:, c0:c0 + DI]
        before = cache.clone()
    else:
        state = randn(B, DI, S, device=DEV, dtype=dtype)
    if case == "x_slice":
        x = randn(B, 2 * DI, device=DEV, dtype=dtype)[:, DI:]      # unit channel stride, batch stride 2*DI
    elif case == "x_strided":
        x = randn(B, DI, 5, device=DEV, dtype=dtype)[..., -1]       # channel stride 5
    elif case == "seqlen2":
        x = randn(B, DI, 2, device=DEV, dtype=dtype)
    else:
        x = randn(B, DI, device=DEV, dtype=dtype)
    x0, state0 = x.clone(), state.clone()
    if p16 != "0":  # the 4-channel kernel on copies first
        st4, x4 = state0.clone(), x0.clone()
        with monkeypatch.context() as m:
            m.setenv("JAMBA_EXT_CONV_UPDATE_P16", "0")
            out4 = ops.causal_conv1d_update(x4, st4, w, b, True)
    out = ops.causal_conv1d_update(x, state, w, b, True)
    ref_out, ref_state = reference.causal_conv1d_update(up(x0), up(state0), up(w), up(b), True)
    assert out.shape == x.shape
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(state, ref_state, rtol=0, atol=0)
    if p16 != "0":
        assert torch.equal(out, out4) and torch.equal(state, st4), "p16 kernel differs from the 4-channel kernel"
    if cache is not None:
        c0 = 4 if case == "state_slice" else 1
        assert torch.equal(cache[:, :c0], before[:, :c0]) and torch.equal(cache[:, c0 + DI:], before[:, c0 + DI:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("B,DI,nb", [(64, 8192, None), (64, 8200, None), (129, 8200, None), (140000, 4, "1"),
                                     (5, 520, None)])
def test_causal_conv1d_update_model_layout(monkeypatch, dtype, B, DI, nb):
    """The model's decode layout (contiguous 16-bit x, taps and bias) runs the instance with that layout at compile
    time on a (channel groups, batch tiles) grid: 256-thread blocks from 2^18 threads (batch 64 at DI 8192; DI 8200:
    a partial last block of channels), 128 below (batch 5), and the flat grid past 65535 batch tiles (140000 rows, one
    per thread). Same bits as the run-time layout instance (JAMBA_EXT_CONV_UPDATE_HF=0), and the reference."""
    monkeypatch.delenv("JAMBA_EXT_CONV_UPDATE_HF", raising=False)
    monkeypatch.delenv("JAMBA_EXT_CONV_UPDATE_P16", raising=False)
    if nb is None:
        monkeypatch.delenv("JAMBA_EXT_CONV_UPDATE_NB", raising=False)
    else:
        monkeypatch.setenv("JAMBA_EXT_CONV_UPDATE_NB", nb)
    x, state = randn(B, DI, device=DEV, dtype=dtype), randn(B, DI, 4, device=DEV, dtype=dtype)
    w, b = randn(DI, 4, device=DEV, dtype=dtype, scale=0.6), randn(DI, device=DEV, dtype=dtype, scale=0.5)
    st_rt = state.clone()
    with monkeypatch.context() as m:
        m.setenv("JAMBA_EXT_CONV_UPDATE_HF", "0")
        out_rt = ops.causal_conv1d_update(x, st_rt, w, b, True)
    ref_out, ref_state = reference.causal_conv1d_update(up(x), up(state), up(w), up(b), True)
    out = ops.causal_conv1d_update(x, state, w, b, True)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(state, ref_state, rtol=0, atol=0)
    assert torch.equal(out, out_rt) and torch.equal(state, st_rt), "model-layout instance differs from the run-time one"


# rows, dim, w_f32: row kernel with 4 vectors per thread (several rows per block when dim is small), 8
# vectors per thread (nvec in (2048, 4096]), weights loaded before / after the row sum, the two-pass fallback
NORM_VEC_CASES = [(9, 64, False), (4, 1000, False), (7, 4096, True), (6, 4096, False), (3, 16384, True),
                  (5, 20000, False), (2, 24, True)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=ALL_IDS)
@pytest.mark.parametrize("rows,dim,w_f32", NORM_VEC_CASES, ids=[f"R{c[0]}_D{c[1]}{'_wf32' if c[2] else ''}"
                                                                for c in NORM_VEC_CASES])
def test_rms_norm_vector_path(dtype, rows, dim, w_f32):
    """x and residual as row slices of wider buffers (16-byte aligned row strides): the row kernel at the dims
    that pick each variant, and the two-pass fallback; residual_out exact."""
    x = randn(rows, dim + 8, device=DEV, dtype=dtype)[:, :dim]
    r = randn(rows, dim + 16, device=DEV, dtype=dtype)[:, 8:8 + dim]
    w = randn(dim, device=DEV, dtype=torch.float32 if w_f32 else dtype, scale=0.4, shift=1.0)
    assert_close(ops.rms_norm(x, w, 1e-6), reference.rms_norm(up(x), up(w), 1e-6), **TOL[dtype])
    out, res = ops.add_rms_norm(x, r, w, 1e-6)
    ref_out, ref_res = reference.add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(res, ref_res)
    assert_close(out, reference.rms_norm(up(ref_res), up(w), 1e-6), **TOL[dtype])


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["state_f32", "state_bf16"])
@pytest.mark.parametrize("batch,d_inner", [(1, 8192), (3, 520), (64, 64), (5, 72), (256, 8192)])
def test_selective_state_update_shapes_fp64(state_dtype, batch, d_inner):
    s = decode_inputs(batch, d_inner, 16, torch.bfloat16, state_dtype=state_dtype)
    st0 = s["state"].clone()
    y = ops.selective_state_update(**s)
    ref_y, ref_state = reference.selective_state_update(**{k: (up(v) if isinstance(v, torch.Tensor) else v)
                                                          for k, v in dict(s, state=st0).items()})
    assert_close(y, ref_y, **TOL[torch.bfloat16])
    assert_close(s["state"], ref_state, **(STATE_TOL if state_dtype == torch.float32 else TOL[state_dtype]))


# ---- selective_state_update: fast path (f32 state, N = 16, 16-byte aligned state and A rows) vs general ----
def _state_view(batch, d_inner, d_state, layout):
    """(state view, the tensor holding it) in fp32. contig; cache: layer 1 of a (3, B, DI, N) cache; pad_n: rows
    padded to N + 4 (16-byte aligned, stride along DI != N); pad_di: DI + 3 channels per batch row, viewed from
    channel 1 (batch stride != DI * N); misaligned: rows start 4 bytes into a row of N + 1 (general path)."""
    if layout == "contig":
        full = randn(batch, d_inner, d_state, device=DEV)
        return full, full
    if layout == "cache":
        full = randn(3, batch, d_inner, d_state, device=DEV)
        return full[1], full
    if layout == "pad_n":
        full = randn(batch, d_inner, d_state + 4, device=DEV)
        return full[..., :d_state], full
    if layout == "pad_di":
        full = randn(batch, d_inner + 3, d_state, device=DEV)
        return full[:, 1:d_inner + 1], full
    assert layout == "misaligned"
    full = randn(batch, d_inner, d_state + 1, device=DEV)
    return full[..., 1:], full


def _ssu_check(s, full=None):
    """Runs the op on s (state updated in place) against the float64 reference; elements of `full` outside
    the state view stay untouched."""
    state = s["state"]
    st0, full0 = state.clone(), None if full is None else full.clone()
    y = ops.selective_state_update(**s)
    ref_y, ref_state = reference.selective_state_update(**{k: (up(v) if isinstance(v, torch.Tensor) else v)
                                                          for k, v in dict(s, state=st0).items()})
    assert_close(y, ref_y, **TOL[s["x"].dtype])
    assert_close(state, ref_state, **STATE_TOL)
    if full is not None:
        state.copy_(st0)  # the view back to its old values: then the whole backing tensor must be as before
        assert torch.equal(full, full0)


# batch, d_inner, d_state, state layout: batches not a multiple of the fast path's 4 rows per thread, d_inner
# not a multiple of its 64 channels per block; N = 16 (fast path when aligned) against N = 13, 8, 32 (general)
SSU_LAYOUT_CASES = [
    (1, 200, 16, "contig"), (2, 64, 16, "contig"), (3, 520, 16, "contig"), (4, 64, 16, "contig"),
    (5, 130, 16, "contig"), (8, 8192, 16, "contig"), (66, 200, 16, "contig"), (257, 64, 16, "contig"),
    (3, 130, 16, "cache"), (7, 65, 16, "pad_n"), (6, 130, 16, "pad_di"), (5, 70, 16, "misaligned"),
    (1, 1, 16, "pad_n"), (5, 130, 13, "contig"), (6, 70, 13, "pad_n"), (4, 64, 13, "pad_di"),
    (1, 70, 13, "misaligned"), (5, 70, 8, "contig"), (3, 33, 32, "pad_n"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16], ids=["bf16", "f32", "f16"])
@pytest.mark.parametrize("batch,d_inner,d_state,layout", SSU_LAYOUT_CASES,
                         ids=[f"B{b}_DI{d}_N{n}_{l}" for b, d, n, l in SSU_LAYOUT_CASES])
def test_selective_state_update_layouts_fp64(dtype, batch, d_inner, d_state, layout):
    s = decode_inputs(batch, d_inner, d_state, dtype)
    s["state"], full = _state_view(batch, d_inner, d_state, layout)
    _ssu_check(s, full)


def _A_variant(d_inner, d_state, kind):
    """A (DI, N) fp32: contig; expanded (one row, stride 0 along DI); pad (rows of N + 4, 16-byte aligned: fast
    path); transposed (stride 1 along DI: general path); misaligned (rows start 4 bytes in: general path)."""
    A = make_A(d_inner, d_state, DEV)
    if kind == "contig":
        return A
    if kind == "expanded":
        return A[:1].expand(d_inner, d_state)
    if kind == "transposed":
        return A.t().contiguous().t()
    pad = 4 if kind == "pad" else 1
    w = torch.zeros(d_inner, d_state + pad, device=DEV)
    w[:, pad:] = A
    return w[:, pad:]


SSU_ARG_CASES = ["A_expanded", "A_pad", "A_transposed", "A_misaligned", "BC_f32", "BC_xproj", "BC_transposed",
                 "x_strided", "no_D_z_bias", "no_softplus"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("batch", [1, 6, 64])
@pytest.mark.parametrize("case", SSU_ARG_CASES)
def test_selective_state_update_arg_layouts_fp64(dtype, batch, case):
    """The fast path's other inputs at N = 16: A strides (vector loads or the general path), B/C of either
    dtype and any strides (staged through shared memory), strided x/dt/z rows, optional arguments absent."""
    DI, N = 136, 16
    s = decode_inputs(batch, DI, N, dtype)
    if case.startswith("A_"):
        s["A"] = _A_variant(DI, N, case[2:])
    elif case == "BC_f32":
        s["B"], s["C"] = s["B"].float(), s["C"].float()
    elif case == "BC_xproj":  # sliced from an x_proj-like row: unit stride along N, odd offsets
        xp = randn(batch, 2 * N + 3, device=DEV, dtype=dtype)
        s["B"], s["C"] = xp[:, 3:3 + N], xp[:, 3 + N:]
    elif case == "BC_transposed":
        s["B"], s["C"] = (randn(N, batch, device=DEV, dtype=dtype).t() for _ in range(2))
    elif case == "x_strided":  # batch rows of x, dt, z inside wider rows
        for k in ("x", "dt", "z"):
            w = randn(batch, DI + 5, device=DEV, dtype=dtype, scale=0.5 if k == "dt" else 1.0)
            s[k] = w[:, 5:]
    elif case == "no_D_z_bias":
        s["D"] = s["z"] = s["dt_bias"] = None
    else:
        s["dt_softplus"] = False
        s["dt"] = uniform(batch, DI, lo=0.01, hi=0.4, device=DEV, dtype=dtype)
        s["dt_bias"] = uniform(DI, lo=0.0, hi=0.1, device=DEV)  # dt stays positive: decaying states
    _ssu_check(s)


@pytest.mark.parametrize("batch,d_inner,layout", [(1, 8192, "contig"), (6, 130, "pad_di"), (65, 200, "contig"),
                                                  (7, 65, "pad_n")])
def test_selective_state_update_fast_equals_general(batch, d_inner, layout):
    """The fast kernel does the general kernel's fp32 operations in the same order: bit-identical outputs and
    states. The same values of A with stride 1 along DI (A transposed) send the call to the general kernel."""
    s = decode_inputs(batch, d_inner, 16, torch.bfloat16)
    s["state"], _ = _state_view(batch, d_inner, 16, layout)
    st_gen = s["state"].clone()
    y_fast = ops.selective_state_update(**s)
    y_gen = ops.selective_state_update(**dict(s, state=st_gen, A=s["A"].t().contiguous().t()))
    assert torch.equal(y_fast, y_gen)
    assert torch.equal(s["state"], st_gen)


# ---- CPU vs CUDA -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cpu_cuda_agree(dtype):
    """Both backends compute in fp32 from the same inputs: outputs agree to the output dtype's rounding."""
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else TOL[dtype]
    a = scan_inputs(2, 136, 16, 300, dtype, bc_layout="xproj")
    g = ops.selective_scan(**a)
    c = ops.selective_scan(**to(a, "cpu"))
    for x, y in zip(g, c):
        assert_close(x.cpu(), y, **tol)
    x, w, b, init = conv_inputs(2, 136, 300, 4, dtype)
    g = ops.causal_conv1d(x, w, b, init, True, 4)
    c = ops.causal_conv1d(x.cpu(), w.cpu(), b.cpu(), init.cpu(), True, 4)
    for p, q in zip(g, c):
        assert_close(p.cpu(), q, **tol)
    st = randn(2, 136, 4, device=DEV, dtype=dtype)
    st_c = st.cpu()
    g = ops.causal_conv1d_update(x[..., :3], st, w, b, True)
    c = ops.causal_conv1d_update(x[..., :3].cpu(), st_c, w.cpu(), b.cpu(), True)
    assert_close(g.cpu(), c, **tol)
    assert torch.equal(st.cpu(), st_c)
    s = decode_inputs(5, 136, 16, dtype)
    sc = to(s, "cpu")
    assert_close(ops.selective_state_update(**s).cpu(), ops.selective_state_update(**sc), **tol)
    assert_close(s["state"].cpu(), sc["state"], rtol=2e-5, atol=2e-5)
    xr = randn(33, 4096, device=DEV, dtype=dtype)
    w = randn(4096, device=DEV, dtype=dtype, scale=0.4, shift=1.0)
    assert_close(ops.rms_norm(xr, w).cpu(), ops.rms_norm(xr.cpu(), w.cpu()), **tol)


# ---- determinism, graphs, devices --------------------------------------------------------------------
def _all_ops(dtype=torch.bfloat16):
    """(name, fn) pairs; fn() runs one op on fixed inputs and returns its outputs (decode ops on a fresh
    copy of their state, returned too)."""
    a = scan_inputs(2, 520, 16, 1000, dtype)
    x, w, b, init = conv_inputs(2, 520, 1000, 4, dtype)
    cs = randn(2, 520, 4, device=DEV, dtype=dtype)
    s = decode_inputs(64, 520, 16, dtype)
    xr = randn(257, 4096, device=DEV, dtype=dtype)
    rr = randn(257, 4096, device=DEV, dtype=dtype)
    wn = randn(4096, device=DEV, dtype=dtype, scale=0.4, shift=1.0)

    def conv_update():
        st = cs.clone()
        return ops.causal_conv1d_update(x[..., :1], st, w, b, True), st

    def state_update():
        st = s["state"].clone()
        return ops.selective_state_update(**dict(s, state=st)), st

    return [("selective_scan", lambda: ops.selective_scan(**a)),
            ("causal_conv1d", lambda: ops.causal_conv1d(x, w, b, init, True, 4)),
            ("causal_conv1d_update", conv_update),
            ("selective_state_update", state_update),
            ("rms_norm", lambda: (ops.rms_norm(xr, wn),)),
            ("add_rms_norm", lambda: ops.add_rms_norm(xr, rr, wn)),
            ("rms_norm_segments", lambda: (ops.rms_norm_segments(xr, wn, [256, 272, 288]),))]


def test_bit_identical_reruns():
    for name, fn in _all_ops():
        r1, r2 = fn(), fn()
        for p, q in zip(r1, r2):
            assert torch.equal(p, q), name


def test_cuda_graph_capture_replay():
    """Each op captured in a CUDA graph (torch's current stream is the capture stream) and replayed after
    its inputs changed in place gives the eager result on the new inputs."""
    dtype = torch.bfloat16
    a = scan_inputs(2, 200, 16, 300, dtype)
    x, w, b, init = conv_inputs(2, 200, 300, 4, dtype)
    cs = randn(2, 200, 3, device=DEV, dtype=dtype)
    s = decode_inputs(4, 200, 16, dtype)
    xr, rr = randn(50, 4096, device=DEV, dtype=dtype), randn(50, 4096, device=DEV, dtype=dtype)
    wn = randn(4096, device=DEV, dtype=dtype, scale=0.4, shift=1.0)
    cs_g, st_g = cs.clone(), s["state"].clone()

    def run(cs_, st_):
        return (ops.selective_scan(**a), ops.causal_conv1d(x, w, b, init, True, 4),
                ops.causal_conv1d_update(x[..., :1], cs_, w, b, True),
                ops.selective_state_update(**dict(s, state=st_)),
                ops.rms_norm(xr, wn), ops.add_rms_norm(xr, rr, wn), ops.rms_norm_segments(xr, wn, [256, 272, 288]))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as torch recommends
        run(cs.clone(), s["state"].clone())
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = run(cs_g, st_g)
    # new inputs, in place
    for t in (a["u"], a["delta"], a["z"], a["B"], x, xr, rr, s["x"], s["dt"]):
        t.copy_(torch.randn_like(t, dtype=torch.float32).to(t.dtype))
    cs_g.copy_(cs)
    st_g.copy_(s["state"])
    g.replay()
    torch.cuda.synchronize()
    cs_e, st_e = cs.clone(), s["state"].clone()
    want = run(cs_e, st_e)
    flat = lambda r: [t for o in r for t in (o if isinstance(o, (tuple, list)) else (o,))]
    for p, q in zip(flat(outs), flat(want)):
        assert torch.equal(p, q)
    assert torch.equal(cs_g, cs_e) and torch.equal(st_g, st_e)


def test_pdl_dependent_chain(monkeypatch):
    """Programmatic dependent launch (csrc/cuda/common.cuh): a kernel may be scheduled while the previous one
    runs, and must wait before touching memory. A decode-like chain where every kernel reads what the kernel
    right before it wrote (norm -> conv update -> state update -> add+norm -> route -> experts, 24 steps, states
    updated in place), eager and in a CUDA graph, gives the same bits with PDL on and off (JAMBA_EXT_PDL=0). A
    kernel that touched memory before its wait would read stale inputs here."""
    g = torch.Generator(device=DEV).manual_seed(7)
    rn = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g, device=DEV) * scale).to(torch.bfloat16)
    Bt, DI, N, E = 64, 512, 16, 8
    s0 = decode_inputs(Bt, DI, N, torch.bfloat16)
    h0, res0, cs0 = rn(Bt, DI), rn(Bt, DI), rn(Bt, DI, 4)
    wn, wc, bc = rn(DI, scale=0.2) + 1, rn(DI, 4, scale=0.5), rn(DI, scale=0.1)
    router = rn(DI, E, scale=DI ** -0.5 * 4)
    wgu, wd = rn(E, 2 * 96, DI, scale=DI ** -0.5), rn(E, DI, 96, scale=96 ** -0.5)

    def chain(h, res, cs, st):
        for _ in range(24):
            h = ops.rms_norm(h, wn)
            h = ops.causal_conv1d_update(h, cs, wc, bc, True)
            h = ops.selective_state_update(**dict(s0, state=st, x=h, z=h))
            h, res = ops.add_rms_norm(h, res, wn)
            w, ids, offsets, slots = ops.moe_route(h @ router, 2)
            h = ops.moe_experts(h, w, ids, wgu, wd, slots, offsets)
        return h, res

    def eager(pdl):
        monkeypatch.setenv("JAMBA_EXT_PDL", pdl)
        cs, st = cs0.clone(), s0["state"].clone()
        out = chain(h0, res0, cs, st)
        torch.cuda.synchronize()
        return (*out, cs, st)

    def graphed(pdl):
        monkeypatch.setenv("JAMBA_EXT_PDL", pdl)  # read at capture: the launches record it
        cs, st = cs0.clone(), s0["state"].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            chain(h0, res0, cs0.clone(), s0["state"].clone())
        torch.cuda.current_stream().wait_stream(side)
        gr = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gr):
            out = chain(h0, res0, cs, st)
        for _ in range(2):  # replay twice from the same start state: the second must repeat the first
            cs.copy_(cs0)
            st.copy_(s0["state"])
            gr.replay()
        torch.cuda.synchronize()
        return (*out, cs, st)

    want = eager("0")
    assert all(torch.isfinite(t.float()).all() for t in want)
    for name, got in (("eager, PDL", eager("1")), ("graph, PDL", graphed("1")), ("graph, no PDL", graphed("0"))):
        for i, (p, q) in enumerate(zip(got, want)):
            assert torch.equal(p, q), f"{name}: output {i} differs from eager without PDL"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tensors_on_second_gpu():
    """Tensors on cuda:1 while the current device is cuda:0: kernels run on cuda:1, on its current stream,
    and the current device is unchanged afterwards."""
    torch.cuda.set_device(0)
    d1 = torch.device("cuda:1")
    a = scan_inputs(2, 130, 16, 77, torch.float32, device=d1)
    out, last = ops.selective_scan(**a)
    assert out.device == d1 and torch.cuda.current_device() == 0
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL_LONG[torch.float32])
    x, w, b, init = conv_inputs(2, 130, 77, 4, torch.float32, device=d1)
    o, f = ops.causal_conv1d(x, w, b, init, True, 3)
    ro, rf = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, 3)
    assert_close(o, ro, **TOL[torch.float32])
    s = decode_inputs(3, 130, 16, torch.float32, device=d1)
    st0 = s["state"].clone()
    y = ops.selective_state_update(**s)
    ry, rs = reference.selective_state_update(**{k: (up(v) if isinstance(v, torch.Tensor) else v)
                                                 for k, v in dict(s, state=st0).items()})
    assert_close(y, ry, **TOL[torch.float32])
    xr = randn(9, 300, device=d1)
    wn = randn(300, device=d1)
    assert_close(ops.rms_norm(xr, wn), reference.rms_norm(up(xr), up(wn)), **TOL[torch.float32])
    assert torch.cuda.current_device() == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_more_kernels_on_second_gpu():
    """The kernels the first two-GPU test leaves out, on cuda:1 while cuda:0 is current, in bf16 (the fast
    paths: pipelined scan, vector conv / conv update, segment norms, residual norm, gemv, decode attention), on a
    side stream of cuda:1: results against float64 and the current device unchanged."""
    torch.cuda.set_device(0)
    d1 = torch.device("cuda:1")
    bf = torch.bfloat16
    side = torch.cuda.Stream(device=d1)
    with torch.cuda.stream(side):
        a = scan_inputs(1, 256, 16, 2048, bf, device=d1, bc_layout="xproj")
        out, last = ops.selective_scan(**a)
        ref_out, ref_last = ref64(a)
        x, w, b, init = conv_inputs(2, 256, 4096, 4, bf, device=d1)
        o, f = ops.causal_conv1d(x, w, b, init, True, 3)
        cs = randn(4, 256, 4, device=d1, dtype=bf)
        xu = randn(4, 256, device=d1, dtype=bf)
        cs0 = cs.clone()
        yu = ops.causal_conv1d_update(xu, cs, w, b, True)
        xr = randn(33, 96, device=d1, dtype=bf)
        wn = randn(96, device=d1, dtype=bf, scale=0.4, shift=1.0)
        seg = ops.rms_norm_segments(xr, wn, [64, 80])
        res = randn(33, 96, device=d1, dtype=bf)
        hn, hr = ops.add_rms_norm(xr, res, wn)
        xg, wg = randn(1, 4096, device=d1, dtype=bf), randn(300, 4096, device=d1, dtype=bf, scale=0.02)
        yg = ops.gemv(xg, wg)
        qa, ka, va = (randn(1, 8, n, 128, device=d1, dtype=bf) for n in (4, 700, 700))
        ya = ops.decode_attention(qa, ka, va)
    side.synchronize()
    assert torch.cuda.current_device() == 0
    assert out.device == d1 and o.device == d1 and yu.device == d1 and seg.device == d1
    assert_close(out, ref_out, **TOL_LONG[bf])
    assert_close(last, ref_last, **TOL_LONG[torch.float32])
    ro, rf = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, 3)
    assert_close(o, ro, **TOL[bf])
    ry, rs = reference.causal_conv1d_update(up(xu), up(cs0), up(w), up(b), True)
    assert_close(yu, ry, **TOL[bf])
    assert_close(cs, rs, **TOL[bf])
    assert_close(seg, reference.rms_norm_segments(up(xr), up(wn), [64, 80], 1e-6), **TOL[bf])
    rh, rr = reference.add_rms_norm(up(xr), up(res), up(wn))
    assert_close(hn, rh, **TOL[bf])
    assert_close(hr, rr, **TOL[bf])
    assert yg.device == d1 and ya.device == d1
    assert_close(yg, reference.gemv(up(xg), up(wg)), **TOL[bf])
    assert_close(ya, reference.decode_attention(up(qa), up(ka), up(va)), **TOL[bf])


def test_d_inner_past_grid_axis_limit():
    """d_inner = 70000 > 65535: every kernel puts the large dimension on grid.x."""
    DI = 70000
    a = scan_inputs(2, DI, 16, 5, torch.float32)
    out, last = ops.selective_scan(**a)
    ref_out, ref_last = ref64(a)
    assert_close(out, ref_out, **TOL_LONG[torch.float32])
    assert_close(last, ref_last, **TOL_LONG[torch.float32])
    x, w, b, init = conv_inputs(2, DI, 5, 4, torch.float32)
    o, f = ops.causal_conv1d(x, w, b, init, True, 3)
    ro, rf = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, 3)
    assert_close(o, ro, **TOL[torch.float32])
    assert_close(f, rf, rtol=0, atol=0)
    cs = randn(2, DI, 3, device=DEV)
    cs0 = cs.clone()
    o = ops.causal_conv1d_update(x[..., 0], cs, w, b, True)
    ro, rs = reference.causal_conv1d_update(up(x[..., 0]), up(cs0), up(w), up(b), True)
    assert_close(o, ro, **TOL[torch.float32])
    assert_close(cs, rs, rtol=0, atol=0)
    s = decode_inputs(2, DI, 16, torch.float32)
    st0 = s["state"].clone()
    y = ops.selective_state_update(**s)
    ry, rs = reference.selective_state_update(**{k: (up(v) if isinstance(v, torch.Tensor) else v)
                                                 for k, v in dict(s, state=st0).items()})
    assert_close(y, ry, **TOL[torch.float32])
    assert_close(s["state"], rs, **STATE_TOL)


def test_empty_inputs_write_states():
    """L = 0: last_state = initial_state, final conv state = the last entries of the history."""
    a = scan_inputs(2, 33, 16, 0, torch.float32)
    out, last = ops.selective_scan(**a)
    assert out.shape == (2, 33, 0) and torch.equal(last, a["initial_state"])
    a["initial_state"] = None
    assert torch.equal(ops.selective_scan(**a)[1], torch.zeros(2, 33, 16, device=DEV))
    x, w, b, init = conv_inputs(2, 33, 0, 4, torch.bfloat16, S_in=5)
    o, f = ops.causal_conv1d(x, w, b, init, True, 3)
    assert torch.equal(f, init[..., 2:])


# ---- more than 2^31 elements (slow) ---------------------------------------------------------------------
@pytest.mark.slow
def test_selective_scan_over_2pow31_elements():
    """B*DI*L = 2 * 4100 * 262144 > 2^31 in bf16 (4.3 GB per tensor): sampled channels equal the same op
    run on just those channels (offsets past 2^31 must land on the same values)."""
    B, DI, L, N = 2, 4100, 262144, 16
    assert B * DI * L > 2 ** 31
    a = scan_inputs(B, DI, N, L, torch.bfloat16, init=True)
    out, last = ops.selective_scan(**a)
    idx = torch.tensor([0, 1, 2047, 2048, 4097, 4099], device=DEV)
    sub = dict(a, u=a["u"][:, idx].contiguous(), delta=a["delta"][:, idx].contiguous(),
               z=a["z"][:, idx].contiguous(), A=a["A"][idx].contiguous(), D=a["D"][idx].contiguous(),
               delta_bias=a["delta_bias"][idx].contiguous(), initial_state=a["initial_state"][:, idx].contiguous())
    o2, l2 = ops.selective_scan(**sub)
    assert torch.equal(out[:, idx], o2)
    assert torch.equal(last[:, idx], l2)
    del a, out, sub
    torch.cuda.empty_cache()


@pytest.mark.slow
def test_causal_conv1d_and_rms_norm_over_2pow31_elements():
    B, DI, L = 1, 8200, 262144
    x, w, b, init = conv_inputs(B, DI, L, 4, torch.bfloat16)
    out, fin = ops.causal_conv1d(x, w, b, init, True, 3)
    idx = torch.tensor([0, 4095, 4096, 8191, 8199], device=DEV)
    o2, f2 = ops.causal_conv1d(x[:, idx].contiguous(), w[idx], b[idx], init[:, idx].contiguous(), True, 3)
    assert torch.equal(out[:, idx], o2) and torch.equal(fin[:, idx], f2)
    del x, out
    torch.cuda.empty_cache()
    rows, dim = 2 ** 31 // 4096 + 3, 4096
    xr = randn(rows, dim, device=DEV, dtype=torch.bfloat16)
    wn = randn(dim, device=DEV, dtype=torch.bfloat16, scale=0.4, shift=1.0)
    o = ops.rms_norm(xr, wn)
    pick = torch.tensor([0, 2 ** 19, rows - 1], device=DEV)
    assert torch.equal(o[pick], ops.rms_norm(xr[pick].contiguous(), wn))
    del xr, o
    torch.cuda.empty_cache()


# ---- conv forward: segments chained within a warp (4 consecutive segments per warp, across row ends) ------
# batch, d_inner, seqlen, K, S_in, state_len, silu. A warp takes 4 consecutive segments (1024 steps in bf16/f16,
# 512 in f32) in row order: the halo is carried in registers inside a row, taps, bias and the initial-state
# halo are reloaded at a row start, and a warp's range usually ends mid-row.
CONV_CHAIN_CASES = [
    (2, 700, 8200, 4, 3, 4, True),     # bf16/f16: 9 segments of 1024 per row (17 of 512), 16-byte rows
    (2, 700, 8199, 4, 3, 3, True),     # odd L: element loads
    (3, 301, 2056, 3, None, 7, False),  # partial last segment, no initial state, final state past K-1
    (1, 5, 40, 2, 4, 45, True),        # final state longer than L: reaches into the initial state
    (2, 4, 0, 4, 3, 5, True),          # L == 0: final_state only
    (2, 4, 0, 4, 3, 0, True),          # L == 0, no final state: nothing to write
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=ALL_IDS)
@pytest.mark.parametrize("batch,d_inner,seqlen,K,S_in,state_len,silu", CONV_CHAIN_CASES,
                         ids=[f"B{c[0]}_DI{c[1]}_L{c[2]}_K{c[3]}_S{c[5]}" for c in CONV_CHAIN_CASES])
def test_causal_conv1d_chained_segments_fp64(dtype, batch, d_inner, seqlen, K, S_in, state_len, silu):
    x, w, b, init = conv_inputs(batch, d_inner, seqlen, K, dtype, S_in=S_in or 0)
    x = (x.float() * 6).to(dtype)  # silu over a wide range (exp overflow and underflow)
    out, fin = ops.causal_conv1d(x, w, b, init, silu, state_len)
    ref_out, ref_fin = reference.causal_conv1d(up(x), up(w), up(b), up(init), silu, state_len)
    assert out.shape == ref_out.shape and fin.shape == ref_fin.shape
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(fin, ref_fin, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=ALL_IDS)
@pytest.mark.parametrize("wb", ["x_x", "f32_f32", "x_f32", "f32_x", "x_none"])
def test_causal_conv1d_weight_bias_dtypes_fp64(dtype, wb):
    """Every weight / bias dtype pair (the 16-byte-row forward has one kernel instance per pair, typed taps and bias
    loads; unaligned rows read them through the run-time dtype switch) on the chained-segment shapes, an odd length
    (element loads) and one with an initial state, against the float64 reference."""
    for batch, d_inner, seqlen, K, S_in, state_len, silu in CONV_CHAIN_CASES + [(1, 64, 3000, 4, 3, 3, True),
                                                                                (2, 40, 1001, 4, 3, 3, False)]:
        x, w, b, init = conv_inputs(batch, d_inner, seqlen, K, dtype, S_in=S_in or 0)
        wdt, bdt = wb.split("_")
        if wdt == "f32":
            w = w.float()
        b = None if bdt == "none" else (b.float() if bdt == "f32" else b)
        out, fin = ops.causal_conv1d(x, w, b, init, silu, state_len)
        ref_out, ref_fin = reference.causal_conv1d(up(x), up(w), up(b), up(init), silu, state_len)
        assert_close(out, ref_out, **TOL[dtype])
        assert_close(fin, ref_fin, rtol=0, atol=0)


# ---- the pipelined scan (N <= 16, selective_scan.cu) on its fast and general paths ---------------------------
PC_SCAN_CASES = [  # batch, d_inner, seqlen, B/C layout
    (1, 64, 1, "contig"), (2, 72, 37, "xproj"), (1, 64, 136, "xproj"), (2, 64, 70, "contig"),
    (3, 520, 264, "contig"), (1, 128, 2048, "xproj"), (1, 64, 2050, "contig"),
    (2, 72, 136, "nfast"), (1, 128, 2048, "nfast"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_selective_scan_pipelined_fp64(monkeypatch, dtype):
    """The pipelined kernel on the fast and general paths (aligned / odd L, L % 4 != 0 (scalar stores), partial
    chunks, channels past DI, B/C t-fast, n-fast unaligned (xproj) and aligned (nfast: the fast converter's
    g-fast walk), L = 1), with and without initial state / z / D / bias, and softplus inputs past +-20.
    JAMBA_EXT_SCAN_IMPL=pc keeps the bf16 cases that the g4 kernel would take on the pipelined kernel."""
    monkeypatch.setenv("JAMBA_EXT_SCAN_IMPL", "pc")
    for batch, d_inner, seqlen, layout in PC_SCAN_CASES:
        for case in ("full", "bare", "wide"):
            a = scan_inputs(batch, d_inner, 16, seqlen, dtype, bc_layout="contig" if layout == "nfast" else layout,
                            init=case != "bare")
            if layout == "nfast":  # (B, L, N) contiguous, passed as its (B, N, L) transpose: 16-byte aligned rows
                a.update(B=a["B"].transpose(1, 2).contiguous().transpose(1, 2),
                         C=a["C"].transpose(1, 2).contiguous().transpose(1, 2))
            if case == "bare":
                a.update(z=None, D=None, delta_bias=None)
            elif case == "wide":
                a["delta"] = (a["delta"].float() * 60).to(dtype)  # softplus inputs to about +-100
            out, last = ops.selective_scan(**a)
            ref_out, ref_last = ref64(a)
            assert_close(out, ref_out, **TOL_LONG[dtype])
            assert_close(last, ref_last, **TOL_LONG[torch.float32])


G4_CASES = [  # batch, d_inner, seqlen, B/C layout: L % 8 == 0, d_inner % 32 == 0 (selective_scan_g4_kernel)
    (1, 32, 8, "contig"), (2, 64, 40, "contig"), (1, 96, 136, "nfast"), (3, 64, 264, "nfast"),
    (1, 32, 2056, "contig"), (2, 8192, 72, "nfast"), (1, 64, 4096, "nfast"),
]


@pytest.mark.parametrize("case", ["full", "bare", "wide"])
def test_selective_scan_g4_fp64(monkeypatch, case):
    """The bf16 fast kernel (4 lanes per channel, B/C staged as bf16): one chunk shorter than 32 steps, tails of
    8 / 16 / 24 steps after full chunks, the 3-stage ring wrapping, B/C t-fast and n-fast (the model's x_proj
    slices), d_inner 8192; with and without initial state / z / D / bias, softplus inputs past +-20; against the
    float64 reference and against the pipelined kernel (JAMBA_EXT_SCAN_IMPL=pc); the profiler
    checks which kernel ran."""
    dtype = torch.bfloat16
    for batch, d_inner, seqlen, layout in G4_CASES:
        a = scan_inputs(batch, d_inner, 16, seqlen, dtype, init=case != "bare")
        if layout == "nfast":  # (B, L, N) contiguous, passed as its (B, N, L) transpose
            a.update(B=a["B"].transpose(1, 2).contiguous().transpose(1, 2),
                     C=a["C"].transpose(1, 2).contiguous().transpose(1, 2))
        if case == "bare":
            a.update(z=None, D=None, delta_bias=None)
        elif case == "wide":
            a["delta"] = (a["delta"].float() * 60).to(dtype)
        monkeypatch.delenv("JAMBA_EXT_SCAN_IMPL", raising=False)
        res = {}
        names = cuda_kernel_names(lambda: res.update(g4=ops.selective_scan(**a)))
        assert any("selective_scan_g4_kernel" in n for n in names), (batch, d_inner, seqlen, layout, names)
        out, last = res["g4"]
        ref_out, ref_last = ref64(a)
        assert_close(out, ref_out, **TOL_LONG[dtype])
        assert_close(last, ref_last, **TOL_LONG[torch.float32])
        monkeypatch.setenv("JAMBA_EXT_SCAN_IMPL", "pc")
        out_pc, last_pc = ops.selective_scan(**a)
        assert_close(out, out_pc, **TOL_LONG[dtype])
        assert_close(last, last_pc, **TOL_LONG[torch.float32])


def test_selective_scan_g4_declines():
    """Calls the g4 kernel does not take go to the pipelined kernel (L % 8, d_inner % 32, unaligned n-fast B/C,
    f16, softplus off, B t-fast with C n-fast), still correct."""
    for batch, d_inner, seqlen, layout, dtype in [(1, 64, 36, "contig", torch.bfloat16),
                                                  (1, 40, 64, "contig", torch.bfloat16),
                                                  (1, 64, 64, "xproj", torch.bfloat16),
                                                  (1, 64, 64, "contig", torch.float16),
                                                  (2, 64, 72, "no_softplus", torch.bfloat16),
                                                  (1, 64, 64, "mixed", torch.bfloat16)]:
        a = scan_inputs(batch, d_inner, 16, seqlen, dtype, bc_layout="xproj" if layout == "xproj" else "contig")
        if layout == "no_softplus":
            a.update(delta=(a["delta"].float().abs() * 0.1).to(dtype), delta_bias=None, delta_softplus=False)
        elif layout == "mixed":
            a["C"] = a["C"].transpose(1, 2).contiguous().transpose(1, 2)
        res = {}
        names = cuda_kernel_names(lambda: res.update(o=ops.selective_scan(**a)))
        assert not any("selective_scan_g4_kernel" in n for n in names), (batch, d_inner, seqlen, layout, dtype)
        ref_out, ref_last = ref64(a)
        assert_close(res["o"][0], ref_out, **TOL_LONG[dtype])
        assert_close(res["o"][1], ref_last, **TOL_LONG[torch.float32])
