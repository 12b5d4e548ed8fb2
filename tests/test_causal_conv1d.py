"""causal_conv1d and causal_conv1d_update (jamba.causal_conv1d, jamba.causal_conv1d_update) against
reference.py in float64, state carry-over, decode chains, opcheck, autograd and torch.compile."""
import pytest
import torch

from conftest import (LOW_DTYPES, TOL, assert_close, compile_or_skip, dtype_params,
                      randn, ratio_check, up)
from jamba_ext import ops, reference


def make_conv(batch, d_inner, seqlen, K, device, dtype, *, w3d=False, bias=True, w_f32=False, S_in=None):
    """x (B, DI, L) as a channel slice of a wider tensor; weight (DI, K) as a transposed (K, DI) buffer, or
    (DI, 1, K); bias (DI,); initial_state (B, DI, S_in) or None. All random, nonzero."""
    wide = randn(batch, d_inner + 3, seqlen, device=device, dtype=dtype)
    x = wide[:, 2:2 + d_inner]
    wdt = torch.float32 if w_f32 else dtype
    if w3d:
        w = randn(d_inner, 1, K, device=device, dtype=wdt, scale=0.6)
    else:
        w = randn(K, d_inner, device=device, dtype=wdt, scale=0.6).t()        # strides (1, DI)
    b = randn(d_inner, device=device, dtype=wdt, scale=0.5) if bias else None
    init = randn(batch, d_inner, S_in, device=device, dtype=dtype) if S_in is not None else None
    return x, w, b, init


# batch, d_inner, seqlen, K, w3d, bias, silu, w_f32, S_in (initial_state width or None), state_len
CASES = [
    (1, 5, 0, 4, False, True, True, False, None, -1),      # seqlen 0
    (2, 3, 0, 3, False, True, False, True, 2, 5),          # seqlen 0: final_state = zero-padded initial
    (0, 4, 5, 3, False, True, True, False, 2, -1),         # batch 0
    (1, 6, 1, 4, True, True, True, False, 3, -1),          # seqlen 1
    (2, 7, 2, 2, False, False, True, True, None, 0),       # seqlen 2, no final state
    (3, 5, 3, 3, True, True, False, False, 4, 3),          # state_len == K, wider initial state
    (2, 9, 37, 4, False, False, False, True, None, 4),     # odd seqlen, state_len == K
    (1, 11, 129, 4, False, True, True, False, 3, 50),      # state_len > K
    (2, 3, 5, 4, True, True, True, True, 6, 16),           # state_len > K + L, reaches into initial_state
    (2, 4, 7, 2, False, True, True, False, None, 12),      # state_len > K + L, zero-padded
    (1, 3, 2100, 4, False, True, True, True, 3, -1),       # seqlen > 2048 (two CPU chunks)
    (2, 2, 2500, 3, True, False, False, False, None, 7),   # seqlen > 2048, no bias
]
CASE_IDS = [f"B{c[0]}_DI{c[1]}_L{c[2]}_K{c[3]}{'_w3d' if c[4] else ''}{'_bias' if c[5] else ''}"
            f"{'_silu' if c[6] else ''}{'_wf32' if c[7] else ''}_Sin{c[8]}_S{c[9]}" for c in CASES]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("batch,d_inner,seqlen,K,w3d,bias,silu,w_f32,S_in,state_len", CASES, ids=CASE_IDS)
def test_causal_conv1d_matches_fp64(device, dtype, batch, d_inner, seqlen, K, w3d, bias, silu, w_f32, S_in,
                                    state_len):
    x, w, b, init = make_conv(batch, d_inner, seqlen, K, device, dtype, w3d=w3d, bias=bias, w_f32=w_f32,
                              S_in=S_in)
    out, final = ops.causal_conv1d(x, w, b, init, silu, state_len)
    S = K - 1 if state_len < 0 else state_len
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert final.shape == (batch, d_inner, S) and final.dtype == dtype
    ref_out, ref_final = reference.causal_conv1d(up(x), up(w), up(b), up(init), silu, state_len)
    assert_close(out, ref_out, **TOL[dtype])
    # the final state is a copy of inputs (or zero padding): exact
    assert_close(final, ref_final, rtol=0, atol=0)
    if dtype in LOW_DTYPES and out.numel() > 0:
        ratio_check(out, reference.causal_conv1d(x, w, b, init, silu, state_len)[0], ref_out)


@pytest.mark.parametrize("dtype", dtype_params())
def test_causal_conv1d_initial_state_strided(device, dtype):
    """initial_state as a channel slice of a wider cache, weight/bias as strided views."""
    x = randn(2, 6, 9, device=device, dtype=dtype)
    cache = randn(2, 10, 5, device=device, dtype=dtype)
    init = cache[:, 3:9]                                   # (2, 6, 5), channel stride 5, batch stride 50
    wbuf = randn(6, 8, device=device, dtype=dtype)
    w = wbuf[:, 2:6]                                       # (6, 4), row stride 8
    b = randn(12, device=device, dtype=dtype)[::2]         # stride 2
    out, final = ops.causal_conv1d(x, w, b, init, True, 7)
    ref_out, ref_final = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, 7)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(final, ref_final, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("K", [2, 3, 4])
@pytest.mark.parametrize("split", [1, 3, 40])
def test_causal_conv1d_two_halves_equal_one_pass(device, dtype, K, split):
    """conv(x) == conv(x[:split]) then conv(x[split:], initial_state=final_state of the first part);
    split 1 < K-1 makes the carried state reach into the zero history."""
    x, w, b, _ = make_conv(2, 5, 67, K, device, dtype)
    full, full_final = ops.causal_conv1d(x, w, b, None, True, -1)
    o1, s1 = ops.causal_conv1d(x[..., :split], w, b, None, True, -1)
    o2, s2 = ops.causal_conv1d(x[..., split:], w, b, s1, True, -1)
    assert_close(torch.cat([o1, o2], dim=-1), full, **TOL[dtype])
    assert_close(s2, full_final, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("K", [2, 3, 4])
@pytest.mark.parametrize("extra", [0, 1, 3], ids=["S=K-1", "S=K", "S=K+2"])
def test_causal_conv1d_update_chain_equals_full(device, dtype, K, extra):
    """A chain of single-token updates from a random conv_state reproduces causal_conv1d over the whole
    sequence (with that state as initial_state) and leaves conv_state equal to its final state."""
    batch, d_inner, seqlen = 2, 7, 9
    S = K - 1 + extra
    x, w, b, state0 = make_conv(batch, d_inner, seqlen, K, device, dtype, S_in=S)
    full, full_final = ops.causal_conv1d(x, w, b, state0, True, S)
    state = state0.clone()
    outs = []
    for t in range(seqlen):
        outs.append(ops.causal_conv1d_update(x[:, :, t], state, w, b, True))
        assert outs[-1].shape == (batch, d_inner)
    got = torch.stack(outs, dim=-1)
    assert_close(got, full, **TOL[dtype])
    assert_close(state, full_final, rtol=0, atol=0)
    ref_out, ref_state = reference.causal_conv1d(up(x), up(w), up(b), up(state0), True, S)
    assert_close(got, ref_out, **TOL[dtype])
    assert_close(state, ref_state, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("silu", [False, True])
def test_causal_conv1d_update_multi_token(device, dtype, silu):
    """(B, DI, L) update with L = 3 new tokens, conv_state a slice of a wider layer cache: only the slice is
    written, and out/state match the reference."""
    batch, d_inner, K, S, L = 3, 5, 4, 4, 3
    x, w, b, _ = make_conv(batch, d_inner, L, K, device, dtype, bias=not silu)
    cache = randn(batch, d_inner + 4, S, device=device, dtype=dtype)
    state = cache[:, 1:1 + d_inner]
    state0 = state.clone()
    before = cache.clone()
    out = ops.causal_conv1d_update(x, state, w, b, silu)
    assert out.shape == x.shape
    ref_out, ref_state = reference.causal_conv1d_update(up(x), up(state0), up(w), up(b), silu)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(state, ref_state, rtol=0, atol=0)
    if dtype in LOW_DTYPES:
        ratio_check(out, reference.causal_conv1d_update(x, state0, w, b, silu)[0], ref_out)
    assert torch.equal(cache[:, :1], before[:, :1]) and torch.equal(cache[:, 1 + d_inner:], before[:, 1 + d_inner:])


@pytest.mark.parametrize("dtype", dtype_params())
def test_causal_conv1d_update_strided_x(device, dtype):
    """x of the update as the last time step of a (B, 2*DI, L) tensor: non-unit stride along DI."""
    batch, d_inner, K = 2, 6, 3
    xz = randn(batch, 2 * d_inner, 5, device=device, dtype=dtype)
    x = xz[:, :d_inner, -1]
    _, w, b, state = make_conv(batch, d_inner, 1, K, device, dtype, S_in=K - 1)
    state0 = state.clone()
    out = ops.causal_conv1d_update(x, state, w, b, True)
    ref_out, ref_state = reference.causal_conv1d_update(up(x), up(state0), up(w), up(b), True)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(state, ref_state, rtol=0, atol=0)


def test_causal_conv1d_update_x_inside_state(device):
    """x is a view into conv_state itself (the newest cached entry): either rejected naming one of them, or
    the same answer as with a separate copy of x."""
    batch, d_inner, K = 2, 5, 4
    _, w, b, state = make_conv(batch, d_inner, 1, K, device, torch.float32, S_in=K - 1)
    x = state[:, :, -1]
    state_copy, x_copy = state.clone(), x.clone()
    want = ops.causal_conv1d_update(x_copy, state_copy, w, b, True)
    try:
        got = ops.causal_conv1d_update(x, state, w, b, True)
    except ValueError as e:
        assert "conv_state" in str(e) or ": x" in str(e)
        return
    assert_close(got, want, rtol=0, atol=0)
    assert_close(state, state_copy, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_mode", ["plain", "batch_strided"])
@pytest.mark.parametrize("batch,d_inner", [(1, 5), (3, 37), (2, 1030)])
def test_causal_conv1d_update_cpu_f32_fast_path(batch, d_inner, x_mode, bias):
    """On CPU, the decode step in the HF layout in f32 (one token, 4-entry state, width 4, contiguous taps) runs a
    vectorised path over channels (update_fast_ok in csrc/cpu/causal_conv1d.c; an x inside the state's memory is
    refused since session 61: test_errors.py test_in_place_states_must_not_overlap): output and new state equal the
    general loop's (taps as a strided view) bit for bit, and the float64 reference within tolerance; chunks of 1024
    channels (d_inner 1030) and a lone batch row included."""
    gen = torch.Generator().manual_seed(batch * 1000 + d_inner)
    rn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    st, w, b = rn(batch, d_inner, 4), rn(d_inner, 4), (rn(d_inner) if bias else None)
    x = {"plain": lambda: rn(batch, d_inner), "batch_strided": lambda: rn(batch, 2 * d_inner)[:, d_inner:]}[x_mode]()
    ref_out, ref_st = reference.causal_conv1d_update(x.double(), st.double(), w.double(), b.double() if bias else None,
                                                     True)
    st_g, x_g = st.clone(), x
    w_strided = torch.zeros(d_inner, 8)
    w_strided[:, :4] = w
    out_g = ops.causal_conv1d_update(x_g, st_g, w_strided[:, :4], b, True)  # rows 8 apart: the general loop
    out = ops.causal_conv1d_update(x, st, w, b, True)
    assert torch.equal(out, out_g) and torch.equal(st, st_g)
    assert_close(out, ref_out, **TOL[torch.float32])
    assert_close(st, ref_st, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["causal_conv1d", "causal_conv1d_update"])
def test_causal_conv1d_deterministic(device, op):
    x, w, b, init = make_conv(3, 40, 700, 4, device, torch.bfloat16, S_in=3)
    if op == "causal_conv1d":
        a = ops.causal_conv1d(x, w, b, init, True, 5)
        c = ops.causal_conv1d(x, w, b, init, True, 5)
    else:
        s1, s2 = init.clone(), init.clone()
        a = (ops.causal_conv1d_update(x[..., :4], s1, w, b, True), s1)
        c = (ops.causal_conv1d_update(x[..., :4], s2, w, b, True), s2)
    for t1, t2 in zip(a, c):
        assert torch.equal(t1, t2)


# ---- opcheck / autograd --------------------------------------------------------------------------------
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_causal_conv1d_opcheck(device, requires_grad):
    x, w, b, init = make_conv(2, 5, 11, 4, device, torch.float32, S_in=3)
    for t in (x, w, b, init):
        t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.causal_conv1d.default, (x, w, b, init, True, 6))
    torch.library.opcheck(torch.ops.jamba.causal_conv1d.default, (x, w, None, None, False, -1))


def test_causal_conv1d_update_opcheck(device):
    x, w, b, state = make_conv(2, 5, 1, 3, device, torch.float32, S_in=4)
    torch.library.opcheck(torch.ops.jamba.causal_conv1d_update.default, (x[..., 0], state, w, b, True))
    torch.library.opcheck(torch.ops.jamba.causal_conv1d_update.default, (x, state, w, None, False))


def _grads(fn, inputs):
    outs = fn(*inputs)
    torch.manual_seed(11)
    gs = [torch.randn(o.shape, dtype=torch.float64, device=o.device) for o in outs]
    loss = sum((o.double() * g).sum() for o, g in zip(outs, gs))
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("state_len", [-1, 9])
def test_causal_conv1d_grad_matches_fp64(device, silu, state_len):
    """Gradients of x, weight, bias, initial_state through out and final_state vs float64 autograd of the
    reference (fp32 backward: tolerance 1e-4 relative)."""
    x, w, b, init = make_conv(2, 4, 6, 3, device, torch.float32, S_in=4)
    x, w, b, init = [t.detach().clone().requires_grad_() for t in (x, w, b, init)]
    got = _grads(lambda *a: ops.causal_conv1d(*a, silu, state_len), [x, w, b, init])
    ins64 = [up(t).requires_grad_() for t in (x, w, b, init)]
    want = _grads(lambda *a: reference.causal_conv1d(*a, silu, state_len), ins64)
    for g, e, t in zip(got, want, (x, w, b, init)):
        assert g.shape == t.shape and g.dtype == t.dtype
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)


def _max_err_ok(name, got, want, tol):
    assert got.shape == want.shape, name
    if want.numel() == 0:
        return
    scale = want.abs().max().item()
    err = (got.double() - want).abs().max().item()
    assert err <= tol * scale + 1e-6, f"grad of {name}: max error {err:.3e} > {tol:.0e} x {scale:.3e}"


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("batch,d_inner,seqlen,K,w3d,bias,silu,w_f32,S_in,state_len", CASES, ids=CASE_IDS)
def test_causal_conv1d_bwd_matches_fp64(device, dtype, batch, d_inner, seqlen, K, w3d, bias, silu, w_f32, S_in,
                                        state_len):
    """The native backward (causal_conv1d_bwd under causal_conv1d's autograd) on every case of the forward's table,
    against float64 autograd of the reference: the gradients of x (a strided channel slice), weight ((K, DI)
    transposed or (DI, 1, K), f32 or x's dtype), bias and initial_state, through out and final_state. Tolerance:
    max error <= tol x the largest gradient (fp32 2e-5; bf16 / fp16 1e-2, one rounding of each gradient)."""
    x, w, b, init = make_conv(batch, d_inner, seqlen, K, device, dtype, w3d=w3d, bias=bias, w_f32=w_f32,
                              S_in=S_in)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    out, final = ops.causal_conv1d(*leaves, silu, state_len)
    go, gf = randn(*out.shape, device=device, dtype=dtype), randn(*final.shape, device=device, dtype=dtype)
    live = [t for t in leaves if t is not None]
    got = torch.autograd.grad([out, final], live, [go, gf], allow_unused=True)
    ins64 = [up(t).requires_grad_() if t is not None else None for t in leaves]
    ro, rf = reference.causal_conv1d(*ins64, silu, state_len)
    pairs = [(o, g) for o, g in ((ro, up(go)), (rf, up(gf))) if o.requires_grad]   # at L 0 out is a constant
    live64 = [t for t in ins64 if t is not None]
    want = torch.autograd.grad([o for o, _ in pairs], live64, [g for _, g in pairs], allow_unused=True) \
        if pairs else [None] * len(live64)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    names = [n for n, t in zip(("x", "weight", "bias", "initial_state"), leaves) if t is not None]
    for name, g, e, t in zip(names, got, want, live):
        if e is None:
            e = torch.zeros(t.shape, dtype=torch.float64, device=t.device)
        g = torch.zeros_like(t) if g is None else g
        assert g.dtype == t.dtype, name
        _max_err_ok(name, g, e, tol)


@pytest.mark.parametrize("dtype", dtype_params())
def test_causal_conv1d_bwd_op_direct(device, dtype):
    """The op itself: shapes and dtypes of its outputs, dbias also without a bias, bit-identical runs, NaN-free
    (outputs are poisoned first in tests), three CUDA blocks of a row (L 5000; rows 16-byte aligned: the CUDA
    kernel's vector loads), and on CUDA the CPU op's results."""
    x, w, b, init = make_conv(2, 7, 5000, 4, device, dtype, S_in=5)
    dout = randn(*x.shape, device=device, dtype=dtype)
    r1 = ops.causal_conv1d_bwd(x, w, None, init, dout, True)
    r2 = ops.causal_conv1d_bwd(x, w, None, init, dout, True)
    dx, dw, db, dinit = r1
    assert dx.shape == x.shape and dx.dtype == x.dtype and dw.shape == (7, 4) and dw.dtype == torch.float32
    assert db.shape == (7,) and dinit.shape == init.shape and dinit.dtype == init.dtype
    for a, c in zip(r1, r2):
        assert not torch.isnan(a).any() and torch.equal(a, c)
    assert torch.count_nonzero(dinit[..., :2]) == 0   # entries before the last K-1 get nothing from out
    want = reference.causal_conv1d_bwd(up(x), up(w), None, up(init), up(dout), True)
    for name, g, e in zip(("x", "weight", "bias", "initial_state"), (dx, dw, db, dinit), want):
        _max_err_ok(name, g, e, 2e-5 if dtype == torch.float32 else 1e-2)
    pre_bias = reference.causal_conv1d(up(x), up(w), None, up(init), False)[0]   # dbias by hand, as a check of both
    s = torch.sigmoid(pre_bias)
    _max_err_ok("bias (by hand)", db, (up(dout) * s * (1 + pre_bias * (1 - s))).sum((0, 2)), 1e-4)
    if device.type == "cuda":
        rc = ops.causal_conv1d_bwd(x.cpu(), w.cpu(), None, init.cpu(), dout.cpu(), True)
        for name, g, e in zip(("dx", "dweight", "dbias", "dinit"), r1, rc):
            _max_err_ok(name, g.cpu(), e.double(), 1e-2 if g.dtype != torch.float32 else 1e-4)


def test_causal_conv1d_bwd_bad_inputs(device):
    x, w, b, init = make_conv(2, 5, 9, 4, device, torch.float32, S_in=3)
    dout = randn(*x.shape, device=device)
    with pytest.raises(ValueError, match="dout"):
        ops.causal_conv1d_bwd(x, w, b, init, dout.to(torch.float16), True)
    with pytest.raises(ValueError, match="dout"):
        ops.causal_conv1d_bwd(x, w, b, init, dout[..., :8], True)
    with pytest.raises(ValueError, match="weight"):
        ops.causal_conv1d_bwd(x, randn(5, 5, device=device), b, init, dout, True)
    with pytest.raises(ValueError, match="initial_state"):
        ops.causal_conv1d_bwd(x, w, b, init[..., :2], dout, True)
    with pytest.raises(ValueError, match="x"):
        ops.causal_conv1d_bwd(x.to(torch.int32), w, b, init, dout, True)
    with pytest.raises(ValueError, match="device"):
        ops.causal_conv1d_bwd(x, w, b, init, dout.to("meta"), True)


def test_causal_conv1d_bwd_opcheck(device):
    x, w, b, init = make_conv(2, 5, 11, 4, device, torch.float32, S_in=3)
    torch.library.opcheck(torch.ops.jamba.causal_conv1d_bwd.default,
                          (x, w, b, init, randn(*x.shape, device=device), True))
    torch.library.opcheck(torch.ops.jamba.causal_conv1d_bwd.default,
                          (x, w, None, None, randn(*x.shape, device=device), False))


@pytest.mark.filterwarnings("ignore:Input #")
def test_causal_conv1d_gradcheck_fp32(device):
    """gradcheck of the op itself (the kernels do not take float64: fp32 with loose tolerances): the
    registered backward is the derivative of the forward the kernel computes."""
    x, w, b, init = make_conv(1, 2, 4, 3, device, torch.float32, w3d=True, S_in=2)
    ins = [t.detach().clone().requires_grad_() for t in (x, w, b, init)]
    assert torch.autograd.gradcheck(lambda *a: ops.causal_conv1d(*a, True, 4), ins, eps=1e-2, atol=5e-3,
                                    rtol=5e-3, nondet_tol=0.0)


# ---- torch.compile -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_causal_conv1d_compile_fullgraph(device, backend):
    """Prefill then one decode step, compiled as one graph: the in-place state update must survive
    functionalization."""

    def step(x, x_new, w, b, state):
        out, final = ops.causal_conv1d(x, w, b, None, True, state.shape[-1])
        state.copy_(final)
        y = ops.causal_conv1d_update(x_new, state, w, b, True)
        return out, y

    x, w, b, state = make_conv(2, 6, 10, 4, device, torch.float32, S_in=3)
    x_new = randn(2, 6, device=device)
    s_eager = state.clone()
    want = step(x, x_new, w, b, s_eager)
    fn = compile_or_skip(step, backend)
    got = fn(x, x_new, w, b, state)
    for g, e in zip(got, want):
        assert_close(g, e, **TOL[torch.float32])
    assert_close(state, s_eager, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", dtype_params())
def test_causal_conv1d_large(device, dtype):
    x, w, b, init = make_conv(4, 520, 5000, 4, device, dtype, S_in=3)
    out, final = ops.causal_conv1d(x, w, b, init, True, -1)
    ref_out, ref_final = reference.causal_conv1d(up(x), up(w), up(b), up(init), True, -1)
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(final, ref_final, rtol=0, atol=0)



def test_silu_of_huge_negative_preactivations(device):
    """SiLU past the fast exponential's clamp (CPU: e^-v stops at 2^126, so v / (1 + e^-v) was -3.5 at v = -3e38
    until session 62): the conv, its decode update and the scan's z gate give silu's -0 for finite v < -88 and NaN
    at -inf, as the float64 reference."""
    x = torch.tensor([[[-3e38, -1e35, -1e33, -100.0, -87.0, float("-inf")]]], device=device)
    w = torch.tensor([[0.0, 0.0, 0.0, 1.0]], device=device)
    out, _ = ops.causal_conv1d(x, w, None, None, True)
    ref, _ = reference.causal_conv1d(up(x), up(w), None, None, True)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out[0, 0, -1])
    assert_close(out[..., :-1], ref[..., :-1], rtol=0, atol=1e-30)
    st = torch.zeros(1, 1, 3, device=device)
    upd = ops.causal_conv1d_update(x[:, :, 0], st, w, None, True)
    assert upd.abs().max().item() == 0.0
    B, DI, N, L = 1, 2, 4, 3
    u, delta = randn(B, DI, L, device=device), randn(B, DI, L, device=device)
    A = -torch.rand(DI, N, device=device) - 0.5
    Bm, Cm = randn(B, N, L, device=device), randn(B, N, L, device=device)
    z = torch.full((B, DI, L), -3e38, device=device)
    y = ops.selective_scan(u, delta, A, Bm, Cm, None, z)[0]
    assert y.abs().max().item() == 0.0
    state = torch.zeros(B, DI, N, device=device)
    ys = ops.selective_state_update(state, u[..., 0].contiguous(), delta[..., 0].contiguous(), A,
                                    Bm[..., 0].contiguous(), Cm[..., 0].contiguous(), None, z[..., 0].contiguous())
    assert ys.abs().max().item() == 0.0
