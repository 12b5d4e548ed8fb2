"""CUDA-only checks of fast paths that the other tests reach only with inputs where a fault cannot show, or not at all
(found by the mutation test dev/mutation_cuda.py). Fresh random inputs against reference.py in float64, as elsewhere."""
import pytest
import torch

from conftest import TOL, assert_close, cuda_kernel_names, dtype_params, make_A, norm_weight, randn, uniform, up
from jamba_ext import ops, reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
              pytest.mark.skipif(not ops.has_cuda_kernels(), reason="built without CUDA kernels")]

DEV = torch.device("cuda")


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("rows,dim,w_f32", [(4, 4096, False), (9, 64, True), (3, 16384, True), (2, 24000, False)],
                         ids=["R4_D4096", "R9_D64_wf32", "R3_D16384_wf32", "R2_D24000"])
def test_rms_norm_row_kernel_eps(dtype, rows, dim, w_f32):
    """Tiny activations (mean(x^2) ~ eps) on 16-byte rows, so that rms_norm / add_rms_norm run rms_norm_row_kernel
    (4 and 8 vectors a thread, several rows a block at dim 64; the two-pass kernel past 4096 vectors a row): a kernel
    that drops or mis-scales eps is off by ~40%. test_rms_norm_eps_matters (tests/test_rms_norm.py) has dim 33, which
    only the two-pass kernel takes."""
    x = randn(rows, dim, device=DEV, dtype=dtype, scale=1e-3)
    r = randn(rows, dim, device=DEV, dtype=dtype, scale=1e-3)
    w = randn(dim, device=DEV, dtype=torch.float32 if w_f32 else dtype, scale=0.4, shift=1.0)
    row_kernel = dim // (16 // x.element_size()) <= 8 * 512
    for eps in (1e-6, 1e-5):
        res = {}
        names = cuda_kernel_names(lambda: res.update(out=ops.rms_norm(x, w, eps)))
        assert any("rms_norm_row_kernel" in n for n in names) == row_kernel, names
        assert_close(res["out"], reference.rms_norm(up(x), up(w), eps), **TOL[dtype])
        out, res_out = ops.add_rms_norm(x, r, w, eps)
        _, ref_res = reference.add_rms_norm(x, r, w, eps)
        assert torch.equal(res_out, ref_res)
        assert_close(out, reference.rms_norm(up(ref_res), up(w), eps), **TOL[dtype])


def _scale_close(name, got, want, tol):
    """max error <= tol x the largest |want| (the backward tests' bound: sums of many fp32 terms)"""
    assert not torch.isnan(got).any(), f"{name}: NaN (an element was not written?)"
    assert got.shape == want.shape, name
    scale, err = want.abs().max().item(), (got.double() - want.double()).abs().max().item()
    assert err <= tol * scale + 1e-6, f"{name}: max error {err:.3e} > {tol:.0e} x {scale:.3e}"


@pytest.mark.parametrize("dtype", dtype_params([torch.float32, torch.bfloat16]))
def test_rms_norm_bwd_many_row_groups(dtype):
    """rms_norm_bwd over 2000 rows: dweight's 63 row-group partials (32 rows each) summed by jamba_cuda_sum_mid
    (sum_mid.cu), whose warps take its 4-loads loop only with more than 24 partials (the other tests have at most 300
    rows: 10); the model's dt / B / C segments, against the float64 reference."""
    rows, dim, splits = 2000, 288, [256, 272]
    x = randn(rows, dim, device=DEV, dtype=dtype, scale=1.3)
    w = norm_weight(dim, DEV, torch.float32)
    dy = randn(rows, dim, device=DEV, dtype=dtype)
    res = {}
    names = cuda_kernel_names(lambda: res.update(g=ops.rms_norm_bwd(x, w, dy, splits)))
    assert any("sum_mid_kernel" in n for n in names), names
    dx, dw = res["g"]
    want_dx, want_dw = reference.rms_norm_bwd(up(x), up(w), up(dy), splits)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    _scale_close("dx", dx, want_dx, tol)
    _scale_close("dweight", dw, want_dw, tol)


def test_selective_scan_bwd_many_channel_blocks():
    """selective_scan_bwd at d_inner 808: dB and dC summed over 26 blocks of 32 channels by jamba_cuda_sum_mid (more
    than 24 partials: its 4-loads loop; the other tests have d_inner <= 70), 2 chunks of 256 steps, every input; every
    gradient against float64 autograd of the reference (fp32: 1e-4 of the largest, as test_selective_scan_bwd.py)."""
    B, DI, N, L = 1, 808, 16, 300
    u = randn(B, DI, L, device=DEV)
    delta = randn(B, DI, L, device=DEV, scale=0.5)
    A = make_A(DI, N, DEV)
    Bm, Cm = randn(B, N, L, device=DEV), randn(B, N, L, device=DEV)
    D = randn(DI, device=DEV, scale=0.7, shift=0.2)
    z = randn(B, DI, L, device=DEV)
    dbias = uniform(DI, lo=-4.5, hi=-1.5, device=DEV)
    init = randn(B, DI, N, device=DEV)
    dout, dlast = randn(B, DI, L, device=DEV), randn(B, DI, N, device=DEV)
    args = (u, delta, A, Bm, Cm, D, z, dbias, True, init, dout, dlast)
    got = ops.selective_scan_bwd(*args)
    want = reference.selective_scan_bwd(*[up(a) if isinstance(a, torch.Tensor) else a for a in args])
    for name, g, e in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial_state"], got, want):
        _scale_close(name, g, e, 1e-4)


@pytest.mark.parametrize("dtype", dtype_params())
def test_dequant_fp8_grid_stride_passes(dtype):
    """dequant_fp8 on 12 M weights: more 8- / 16-byte chunks (1.5 M / 0.8 M) than one wave of threads (the launch caps
    the grid at 8 blocks of 256 per SM: 270 k threads on an H200), so the kernels' grid-stride loops take more than one
    pass and their unrolled chunks u >= 1 (DQ_U8 / DQ_U) take part; tests/test_fp8.py's largest case (300 x 4112: 154 k
    chunks) and the MoE's dequantizing path there fit in one pass. Bitwise against the CPU op, within one rounding of
    the float64 reference, and with group offsets (untouched groups stay as allocated: NaN)."""
    E, R, K = 6, 500, 4096
    codes = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)  # 0x7f / 0xff: NaN
    q = codes[torch.randint(0, codes.numel(), (E, R, K))].view(torch.float8_e4m3fn).to(DEV)
    scale = torch.rand(E, R, device=DEV) * 0.01 + 1e-4
    out = ops.dequant_fp8(q, scale, dtype)
    tol = {torch.float32: dict(rtol=1e-7, atol=0), torch.bfloat16: dict(rtol=4e-3, atol=0),
           torch.float16: dict(rtol=1e-3, atol=3e-8)}[dtype]
    assert_close(out, reference.dequant_fp8(q, scale), **tol)
    assert torch.equal(out.cpu(), ops.dequant_fp8(q.cpu(), scale.cpu(), dtype))
    offsets = torch.tensor([0, 3, 3, 9, 9, 9, 12], dtype=torch.int32, device=DEV)  # groups 1, 3 and 4 untouched
    grouped = ops.dequant_fp8(q, scale, dtype, offsets)
    for e in range(E):
        if e in (1, 3, 4):
            assert torch.isnan(grouped[e].float()).all(), e
        else:
            assert torch.equal(grouped[e], out[e]), e
