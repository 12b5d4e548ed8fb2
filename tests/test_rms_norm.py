"""rms_norm and add_rms_norm (jamba.rms_norm, jamba.add_rms_norm) against reference.py in float64."""
import pytest
import torch

from conftest import (DTYPES, LOW_DTYPES, TOL, assert_close, compile_or_skip, dtype_params,
                      norm_weight, randn, ratio_check, up)
from jamba_ext import ops, reference

# (leading shape, dim): one row, 0 rows, odd dims not a multiple of any vector width, 3-D input.
SHAPES = [((1,), 7), ((0,), 64), ((5,), 1), ((3, 11), 129), ((2, 3), 1000)]
SHAPE_IDS = ["1x7", "0x64", "5x1", "3x11x129", "2x3x1000"]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("lead,dim", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("w_f32", [False, True], ids=["w_xdtype", "w_f32"])
def test_rms_norm_matches_fp64(device, dtype, lead, dim, w_f32):
    x = randn(*lead, dim, device=device, dtype=dtype, scale=2.0, shift=0.3)
    w = norm_weight(dim, device, torch.float32 if w_f32 else dtype)
    out = ops.rms_norm(x, w, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    ref = reference.rms_norm(up(x), up(w), 1e-6)
    assert_close(out, ref, **TOL[dtype])
    if dtype in LOW_DTYPES and x.numel() > 0:
        ratio_check(out, reference.rms_norm(x, w, 1e-6), ref)


@pytest.mark.parametrize("dtype", dtype_params())
def test_rms_norm_eps_matters(device, dtype):
    """Tiny activations: mean(x^2) ~ eps, so a kernel that drops or mis-scales eps is off by ~40%."""
    x = randn(4, 33, device=device, dtype=dtype, scale=1e-3)
    w = norm_weight(33, device, dtype)
    for eps in (1e-6, 1e-5):
        out = ops.rms_norm(x, w, eps)
        assert_close(out, reference.rms_norm(up(x), up(w), eps), **TOL[dtype])


@pytest.mark.parametrize("dtype", dtype_params(LOW_DTYPES))
def test_rms_norm_large_activations(device, dtype):
    """|x| ~ 300: x^2 overflows fp16 (max 65504), so the statistics must be accumulated in fp32."""
    x = randn(3, 77, device=device, dtype=dtype, scale=300.0)
    w = norm_weight(77, device, dtype)
    out = ops.rms_norm(x, w)
    assert_close(out, reference.rms_norm(up(x), up(w)), **TOL[dtype])


@pytest.mark.parametrize("dtype", dtype_params())
def test_rms_norm_1d_input(device, dtype):
    x = randn(37, device=device, dtype=dtype)
    w = norm_weight(37, device, dtype)
    out = ops.rms_norm(x, w)
    assert out.shape == (37,)
    assert_close(out, reference.rms_norm(up(x), up(w)), **TOL[dtype])


@pytest.mark.parametrize("dtype", dtype_params())
def test_rms_norm_strided_rows(device, dtype):
    """Rows with a row stride larger than dim (a column slice), and a 3-D view that cannot be flattened."""
    big = randn(6, 5, 45, device=device, dtype=dtype)
    w = norm_weight(40, device, dtype)
    x = big[:, 1, 3:43]                                  # (6, 40), row stride 225
    assert_close(ops.rms_norm(x, w), reference.rms_norm(up(x), up(w)), **TOL[dtype])
    x3 = big[:, :, 3:43].transpose(0, 1)                 # (5, 6, 40): not flattenable to rows
    out3 = ops.rms_norm(x3, w)
    assert out3.shape == x3.shape
    assert_close(out3, reference.rms_norm(up(x3), up(w)), **TOL[dtype])


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("lead,dim", SHAPES, ids=SHAPE_IDS)
def test_add_rms_norm_matches_fp64(device, dtype, lead, dim):
    x = randn(*lead, dim, device=device, dtype=dtype, scale=1.5)
    r = randn(*lead, dim, device=device, dtype=dtype, scale=3.0, shift=-0.2)
    w = norm_weight(dim, device, dtype)
    out, s = ops.add_rms_norm(x, r, w, 1e-5)
    assert out.shape == x.shape and s.shape == x.shape and s.dtype == dtype
    ref_out, ref_s = reference.add_rms_norm(up(x), up(r), up(w), 1e-5)
    assert_close(out, ref_out, **TOL[dtype])
    # the new residual is x + residual rounded once to x's dtype: exact
    torch.testing.assert_close(s, (x.float() + r.float()).to(dtype), rtol=0, atol=0)
    if dtype in LOW_DTYPES and x.numel() > 0:
        ratio_check(out, reference.add_rms_norm(x, r, w, 1e-5)[0], ref_out)


@pytest.mark.parametrize("dtype", dtype_params())
def test_add_rms_norm_strided(device, dtype):
    big_x = randn(7, 50, device=device, dtype=dtype)
    big_r = randn(7, 61, device=device, dtype=dtype)
    x, r = big_x[:, 5:45], big_r[:, 11:51]
    w = norm_weight(40, device, torch.float32)
    out, s = ops.add_rms_norm(x, r, w)
    ref_out, ref_s = reference.add_rms_norm(up(x), up(r), up(w))
    assert_close(out, ref_out, **TOL[dtype])
    assert_close(s, ref_s, **TOL[dtype])


def test_add_rms_norm_residual_other_dtype(device):
    """x bf16 with an fp32 residual: either rejected naming residual, or computed as documented (sum rounded
    to x's dtype). Never a silently wrong answer."""
    x = randn(3, 24, device=device, dtype=torch.bfloat16)
    r = randn(3, 24, device=device, dtype=torch.float32)
    w = norm_weight(24, device, torch.float32)
    try:
        out, s = ops.add_rms_norm(x, r, w)
    except ValueError as e:
        assert "residual" in str(e)
        return
    ref_out, ref_s = reference.add_rms_norm(x, r, w)
    assert_close(s, ref_s, rtol=0, atol=0)
    assert_close(out, ref_out, **TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", dtype_params(LOW_DTYPES))
@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_rms_norm_low_precision_rounds_as_hf(device, dtype, op):
    """bf16 / fp16 round where HF's JambaRMSNorm does: out = round(round(s r) w), s = round(x + residual) for
    add_rms_norm. Fewer roundings are closer to float64, so the comparisons above cannot see them; reference.py run on
    the low-precision inputs (fp32 math) rounds as HF does. The op may differ from it only where its fp32 mean of s^2
    (summed in another order) moves s r across a rounding boundary: by one ulp, in well under 1% of the elements
    (rounding s r w once instead differs in ~25% of them, normalising the unrounded sum in ~18%)."""
    x = randn(64, 1000, device=device, dtype=dtype, scale=2.0, shift=0.3)
    w = norm_weight(1000, device, dtype)
    if op == "rms_norm":
        out, want = ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6)
    else:
        r = randn(64, 1000, device=device, dtype=dtype, scale=3.0)
        out, want = ops.add_rms_norm(x, r, w, 1e-6)[0], reference.add_rms_norm(x, r, w, 1e-6)[0]
    ulp = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}[dtype]   # the dtype's largest relative spacing
    assert_close(out, want, rtol=2 * ulp, atol=0)          # one ulp (of the larger value, across a power of 2)
    differ = (out != want).float().mean().item()
    assert differ <= 0.01, f"{differ:.1%} of the elements differ from HF's rounding order"


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_rms_norm_deterministic(device, op):
    x = randn(67, 300, device=device, dtype=torch.bfloat16)
    r = randn(67, 300, device=device, dtype=torch.bfloat16)
    w = norm_weight(300, device, torch.float32)
    run = (lambda: (ops.rms_norm(x, w),)) if op == "rms_norm" else (lambda: ops.add_rms_norm(x, r, w))
    a, b = run(), run()
    for t1, t2 in zip(a, b):
        assert torch.equal(t1, t2)


# ---- opcheck / autograd --------------------------------------------------------------------------------
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_rms_norm_opcheck(device, requires_grad):
    x = randn(3, 5, 19, device=device).requires_grad_(requires_grad)
    w = norm_weight(19, device, torch.float32).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.rms_norm.default, (x, w, 1e-5))
    r = randn(3, 5, 19, device=device).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.add_rms_norm.default, (x, r, w, 1e-5))


def test_rms_norm_opcheck_bf16(device):
    x = randn(4, 21, device=device, dtype=torch.bfloat16)
    w = norm_weight(21, device, torch.bfloat16)
    torch.library.opcheck(torch.ops.jamba.rms_norm.default, (x, w, 1e-6))


# Gradients: the registered backward differentiates reference.py in fp32; compare with autograd of the
# reference in float64. fp32 gradient error of a normalisation: ~1e-6 relative, atol for near-zero entries.
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def _grads(fn, inputs):
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.manual_seed(7)
    gs = [torch.randn(o.shape, dtype=torch.float64, device=o.device) for o in outs]
    loss = sum((o.double() * g).sum() for o, g in zip(outs, gs))
    return torch.autograd.grad(loss, inputs)


def test_rms_norm_grad_matches_fp64(device):
    x = randn(2, 3, 29, device=device, scale=1.3).requires_grad_()
    w = norm_weight(29, device, torch.float32).requires_grad_()
    got = _grads(lambda a, b: ops.rms_norm(a, b, 1e-5), [x, w])
    x64, w64 = up(x).requires_grad_(), up(w).requires_grad_()
    want = _grads(lambda a, b: reference.rms_norm(a, b, 1e-5), [x64, w64])
    for g, e in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, **GRAD_TOL)


def test_add_rms_norm_grad_matches_fp64(device):
    x = randn(5, 31, device=device).requires_grad_()
    r = randn(5, 31, device=device, scale=2.0).requires_grad_()
    w = norm_weight(31, device, torch.float32).requires_grad_()
    got = _grads(lambda a, b, c: ops.add_rms_norm(a, b, c), [x, r, w])
    ins64 = [up(t).requires_grad_() for t in (x, r, w)]
    want = _grads(lambda a, b, c: reference.add_rms_norm(a, b, c), ins64)
    for g, e in zip(got, want):
        torch.testing.assert_close(g.double(), e, **GRAD_TOL)


@pytest.mark.filterwarnings("ignore:Input #")
def test_rms_norm_gradcheck_fp32(device):
    """gradcheck of the ops themselves (the kernels take no float64: fp32, loose tolerances), so the
    registered backward is the derivative of the forward the kernel computes."""
    x = randn(2, 6, device=device, scale=1.5).requires_grad_()
    r = randn(2, 6, device=device).requires_grad_()
    w = norm_weight(6, device, torch.float32).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.rms_norm(a, b, 1e-5), (x, w), eps=1e-2, atol=5e-3, rtol=5e-3)
    assert torch.autograd.gradcheck(lambda a, b, c: ops.add_rms_norm(a, b, c, 1e-5), (x, r, w), eps=1e-2,
                                    atol=5e-3, rtol=5e-3)


def test_rms_norm_grad_bf16(device):
    """Low-precision gradients come back in the input dtype and agree with fp64 to bf16 accuracy."""
    x = randn(4, 26, device=device, dtype=torch.bfloat16).requires_grad_()
    w = norm_weight(26, device, torch.bfloat16).requires_grad_()
    got = _grads(lambda a, b: ops.rms_norm(a, b), [x, w])
    want = _grads(lambda a, b: reference.rms_norm(a, b), [up(x).requires_grad_(), up(w).requires_grad_()])
    for g, e in zip(got, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.double(), e, rtol=2e-2, atol=2e-2)


# ---- torch.compile -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_rms_norm_compile_fullgraph(device, backend):
    def block(h, res, w1, w2):
        y, res2 = ops.add_rms_norm(h, res, w1)
        return ops.rms_norm(y * 2.0, w2), res2

    h = randn(3, 40, device=device)
    res = randn(3, 40, device=device)
    w1, w2 = norm_weight(40, device, torch.float32), norm_weight(40, device, torch.float32)
    fn = compile_or_skip(block, backend)
    got = fn(h, res, w1, w2)
    want = block(h, res, w1, w2)
    for g, e in zip(got, want):
        assert_close(g, e, **TOL[torch.float32])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", dtype_params(DTYPES))
def test_rms_norm_large(device, dtype):
    x = randn(8192, 4096, device=device, dtype=dtype)
    r = randn(8192, 4096, device=device, dtype=dtype)
    w = norm_weight(4096, device, dtype)
    out, s = ops.add_rms_norm(x, r, w)
    ref_out, _ = reference.add_rms_norm(up(x), up(r), up(w))
    assert_close(out, ref_out, **TOL[dtype])



# ---- rms_norm_segments: each segment of the last dim normalised on its own (Mamba's dt / B / C norms) -----
# (CUDA: rows of dim <= 384 take the register kernel, longer ones the looping kernel; 384 / 385 are the edge)
SEG_CASES = [((1,), 288, [256, 272]), ((4,), 288, [256, 272]), ((7,), 40, [3]), ((3, 5), 100, [10, 50, 99]),
             ((0,), 16, [8]), ((2,), 9, []), ((9,), 384, [1, 383]), ((3,), 385, [200]), ((2,), 544, [512, 528])]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("lead,dim,splits", SEG_CASES, ids=["1x288", "4x288", "7x40", "3x5x100", "0x16", "2x9",
                                                            "9x384", "3x385", "2x544"])
@pytest.mark.parametrize("w_f32", [False, True], ids=["w_xdtype", "w_f32"])
def test_rms_norm_segments_matches_fp64(device, dtype, lead, dim, splits, w_f32):
    x = randn(*lead, dim, device=device, dtype=dtype, scale=2.0, shift=0.3)
    w = norm_weight(dim, device, torch.float32 if w_f32 else dtype)
    out = ops.rms_norm_segments(x, w, splits, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, reference.rms_norm_segments(up(x), up(w), splits, 1e-6), **TOL[dtype])
    # the same as one rms_norm per segment (bit for bit on the CPU, where both run the same row code)
    bounds = [0] + splits + [dim]
    sep = torch.cat([ops.rms_norm(x[..., a:b], w[a:b], 1e-6) for a, b in zip(bounds[:-1], bounds[1:])], -1)
    if device.type == "cpu":
        assert torch.equal(out, sep)
    else:
        assert_close(out, sep, **TOL[dtype])


def test_rms_norm_segments_strided_rows(device):
    """x a column slice of a wider tensor (row stride > dim), as x_proj's output columns would be."""
    wide = randn(6, 300, device=device, dtype=torch.bfloat16)
    x = wide[:, 5:293]
    w = norm_weight(288, device, torch.bfloat16)
    out = ops.rms_norm_segments(x, w, [256, 272])
    assert_close(out, reference.rms_norm_segments(up(x), up(w), [256, 272]), **TOL[torch.bfloat16])


def test_rms_norm_segments_bad_inputs(device):
    x = randn(3, 20, device=device)
    w = norm_weight(20, device, torch.float32)
    for splits in ([5, 5], [12, 4], [0], [20], [25], [1, 2, 3, 4]):
        with pytest.raises(ValueError, match="split|segments"):
            ops.rms_norm_segments(x, w, splits)
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm_segments(x, w[:-1], [4])
    with pytest.raises(ValueError, match="eps"):
        ops.rms_norm_segments(x, w, [4], -1.0)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_rms_norm_segments_opcheck(device, requires_grad):
    x = randn(5, 40, device=device).requires_grad_(requires_grad)
    w = norm_weight(40, device, torch.float32).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.rms_norm_segments.default, (x, w, [8, 24], 1e-6))


# ---- rms_norm_bwd: the native gradients of the three norms ----------------------------------------------
def _scale_err_ok(name, got, want, tol):
    assert got.shape == want.shape, name
    if want.numel():
        scale, err = want.abs().max().item(), (got.double() - want).abs().max().item()
        assert err <= tol * scale + 1e-6, f"grad of {name}: max error {err:.3e} > {tol:.0e} x {scale:.3e}"


BWD_CASES = [("rms_norm", None), ("add_rms_norm", None), ("segments", [5, 6]), ("segments", [256, 272])]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("lead,dim", SHAPES + [((70,), 288)], ids=SHAPE_IDS + ["70x288"])
@pytest.mark.parametrize("kind,splits", BWD_CASES, ids=["norm", "add", "seg3", "seg_dtBC"])
@pytest.mark.parametrize("w_f32", [False, True], ids=["w_xdtype", "w_f32"])
def test_norm_bwd_matches_fp64(device, dtype, lead, dim, kind, splits, w_f32):
    """rms_norm_bwd under the three norms' autograd against float64 autograd of the reference: x as a strided row
    slice, every dtype, weight in x's dtype or f32, add_rms_norm through both outputs, Mamba's dt / B / C segments.
    Max error <= tol x the largest gradient (fp32 2e-5; bf16 / fp16 1e-2: each gradient rounded once)."""
    if kind == "segments" and (dim <= splits[-1] or not lead[0]):
        pytest.skip("split points must lie inside the row")
    x = randn(*lead, dim + 3, device=device, dtype=dtype, scale=1.3)[..., 1:dim + 1].requires_grad_()
    _check_norm_grads(kind, splits, x, w_f32)


def _check_norm_grads(kind, splits, x, w_f32):
    """The norm's gradients (x, the residual for add_rms_norm, the weight) through autograd against float64 autograd
    of the reference; max error <= tol x the largest gradient (fp32 2e-5; bf16 / fp16 1e-2)."""
    device, dtype, dim = x.device, x.dtype, x.shape[-1]
    w = norm_weight(dim, device, torch.float32 if w_f32 else dtype).requires_grad_()
    r = randn(*x.shape, device=device, dtype=dtype).requires_grad_()
    if kind == "rms_norm":
        fn, ref, ins = (lambda a, b: (ops.rms_norm(a, b, 1e-5),)), (lambda a, b: (reference.rms_norm(a, b, 1e-5),)), \
            [x, w]
    elif kind == "add_rms_norm":
        fn, ref, ins = (lambda a, c, b: ops.add_rms_norm(a, c, b)), (lambda a, c, b: reference.add_rms_norm(a, c, b)), \
            [x, r, w]
    else:
        fn = lambda a, b: (ops.rms_norm_segments(a, b, splits),)                # noqa: E731
        ref = lambda a, b: (reference.rms_norm_segments(a, b, splits),)         # noqa: E731
        ins = [x, w]
    outs = fn(*ins)
    gs = [randn(*o.shape, device=device, dtype=dtype) for o in outs]
    got = torch.autograd.grad(outs, ins, gs)
    ins64 = [up(t).requires_grad_() for t in ins]
    want = torch.autograd.grad(ref(*ins64), ins64, [up(g) for g in gs], allow_unused=True)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    for i, (g, e, t) in enumerate(zip(got, want, ins)):
        assert g.dtype == t.dtype
        _scale_err_ok(f"input {i}", g, torch.zeros_like(up(t)) if e is None else e, tol)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("kind,splits", BWD_CASES, ids=["norm", "add", "seg3", "seg_dtBC"])
@pytest.mark.parametrize("w_f32", [False, True], ids=["w_xdtype", "w_f32"])
def test_norm_bwd_aligned_rows(device, dtype, kind, splits, w_f32):
    """Whole, 16-byte aligned rows (the CUDA kernels' vector path when the segment ends are whole vectors too: all
    but seg3) against float64 autograd, 70 rows of 4096 (the model's hidden size) or 288 (dt / B / C)."""
    dim = 288 if kind == "segments" else 4096
    _check_norm_grads(kind, splits, randn(70, dim, device=device, dtype=dtype, scale=1.3).requires_grad_(), w_f32)


@pytest.mark.parametrize("dtype", dtype_params())
def test_rms_norm_bwd_op_direct(device, dtype):
    """The op: output shapes and dtypes, bit-identical runs (dweight sums rows in a fixed order; 300 rows = 10 CUDA
    row groups), NaN-free (outputs poisoned in tests), and on CUDA the CPU op's results."""
    x = randn(300, 520, device=device, dtype=dtype)
    w = norm_weight(520, device, torch.float32)
    dy = randn(300, 520, device=device, dtype=dtype)
    a, b = ops.rms_norm_bwd(x, w, dy, [256, 272]), ops.rms_norm_bwd(x, w, dy, [256, 272])
    assert a[0].shape == x.shape and a[0].dtype == dtype and a[1].shape == (520,) and a[1].dtype == torch.float32
    for u, v in zip(a, b):
        assert not torch.isnan(u).any() and torch.equal(u, v)
    want = reference.rms_norm_bwd(up(x), up(w), up(dy), [256, 272])
    _scale_err_ok("dx (reference.rms_norm_bwd)", a[0], want[0], 2e-5 if dtype == torch.float32 else 1e-2)
    if device.type == "cuda":
        c = ops.rms_norm_bwd(x.cpu(), w.cpu(), dy.cpu(), [256, 272])
        _scale_err_ok("dx", a[0].cpu(), c[0].double(), 1e-2 if dtype != torch.float32 else 1e-5)
        # bf16 / fp16: round(x r) may land on the other side of a rounding boundary (r in fp32 here, in double on
        # the CPU), which moves one term of a column sum by an ulp of the dtype
        _scale_err_ok("dweight", a[1].cpu(), c[1].double(), 1e-3 if dtype != torch.float32 else 1e-5)


@pytest.mark.parametrize("dtype", dtype_params(LOW_DTYPES))
@pytest.mark.parametrize("splits", [[], [256, 272]], ids=["norm", "seg_dtBC"])
def test_rms_norm_bwd_dweight_rounds_x_r(device, dtype, splits):
    """bf16 / fp16: dweight = sum_m dy * round(x r), the forward's rounded x r (csrc/jamba.h), not dy * x r (closer to
    float64: the tolerances above cannot tell), against reference.rms_norm_bwd run on the low-precision inputs (fp32
    math, rounding where the forward does). Where the op's r and the reference's put x r on two sides of a rounding
    boundary one term moves by an ulp, so 99% of the columns (not all) must agree within 1e-5 of the largest; without
    the rounding the typical column is 3e-5 (fp16) to 3e-4 (bf16) off."""
    x = randn(70, 520, device=device, dtype=dtype, scale=1.3)
    w = norm_weight(520, device, dtype)
    dy = randn(70, 520, device=device, dtype=dtype)
    _, dw = ops.rms_norm_bwd(x, w, dy, splits)
    _, want = reference.rms_norm_bwd(x, w, dy, splits)
    err = (dw.double() - want.double()).abs() / want.abs().max().item()
    close = (err <= 1e-5).float().mean().item()
    assert close >= 0.99, f"only {close:.1%} of dweight's columns agree (max error {err.max().item():.2e})"


def test_rms_norm_bwd_bad_inputs(device):
    x, w, dy = randn(4, 16, device=device), norm_weight(16, device, torch.float32), randn(4, 16, device=device)
    with pytest.raises(ValueError, match="dy"):
        ops.rms_norm_bwd(x, w, dy[:, :8], [])
    with pytest.raises(ValueError, match="dy"):
        ops.rms_norm_bwd(x, w, dy.half(), [])
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm_bwd(x, w[:8], dy, [])
    with pytest.raises(ValueError, match="split"):
        ops.rms_norm_bwd(x, w, dy, [8, 4])
    with pytest.raises(ValueError, match="eps"):
        ops.rms_norm_bwd(x, w, dy, [], -1.0)
    with pytest.raises(ValueError, match="device"):
        ops.rms_norm_bwd(x, w, dy.to("meta"), [])


def test_rms_norm_bwd_opcheck(device):
    x, w, dy = randn(5, 40, device=device), norm_weight(40, device, torch.float32), randn(5, 40, device=device)
    torch.library.opcheck(torch.ops.jamba.rms_norm_bwd.default, (x, w, dy, [8, 24], 1e-6))
    torch.library.opcheck(torch.ops.jamba.rms_norm_bwd.default, (x, w, dy, [], 1e-5))


def test_rms_norm_zero_width_rows_backward(device):
    """Rows of width 0: the forward takes them (an empty result), so the backward must too (it stopped at the segment
    check, "1 to 4 segments, got 0", until session 62)."""
    x = torch.randn(3, 0, device=device, requires_grad=True)
    w = torch.randn(0, device=device, requires_grad=True)
    ops.rms_norm(x, w).sum().backward()
    assert x.grad.shape == (3, 0) and w.grad.shape == (0,)
    r = torch.randn(3, 0, device=device, requires_grad=True)
    out, s = ops.add_rms_norm(x, r, w)
    (out.sum() + s.sum()).backward()
    assert r.grad.shape == (3, 0)
