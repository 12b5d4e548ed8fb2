"""gemv (jamba.gemv: out = x @ weight^T + bias for a few rows of x) against reference.py in float64.

Error model: fp32 sums of K products are off by at most ~K ulp of sum_k |x_k w_k| and typically sqrt(K) ulp;
the bound used is 8 sqrt(K) ulp of that absolute sum, plus, for bf16 / fp16 outputs, one rounding (and the
ratio check: at most twice the error of the fp32-compute reference rounded once, which a kernel that sums in
bf16 / fp16 fails)."""
import math

import pytest
import torch

from conftest import HAS_GPU, LOW_DTYPES, dtype_params, randn, ratio_check, up
from jamba_ext import ops, reference

EPS32 = 2.0 ** -24
ROUND = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}

# (M, N, K): one element; odd sizes (not a multiple of any vector width: the element kernel on CUDA); K a multiple
# of 8 but not of a 256-element chunk; M = 3 and 5 (partial x-row groups), 8, 11 (two groups); empty M / N / K.
SHAPES = [(1, 1, 1), (1, 7, 13), (3, 40, 264), (1, 300, 2056), (8, 64, 256), (5, 33, 1024), (11, 20, 72),
          (2, 9, 4104), (0, 5, 16), (2, 0, 16), (2, 5, 0)]


def check(out, x, w, b):
    """out against the float64 reference within the error model above."""
    assert not torch.isnan(out).any(), "output has NaN (an element was not written?)"
    ref = reference.gemv(up(x), up(w), up(b))
    K = x.shape[-1]
    absum = up(x).abs() @ up(w).abs().T + (up(b).abs() if b is not None else 0.0)
    bound = 8 * math.sqrt(max(K, 1)) * EPS32 * absum + ROUND[out.dtype] * ref.abs() + 1e-30
    err = (out.double() - ref).abs()
    assert (err <= bound).all(), f"max err / bound {(err / bound).max().item():.3g}"
    if out.dtype in LOW_DTYPES and out.numel() > 0 and K > 0:
        ratio_check(out, reference.gemv(x.float(), w.float(), None if b is None else b.float()).to(out.dtype), ref)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("M,N,K", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("bias", ["none", "xdtype", "f32"])
def test_gemv_matches_fp64(device, dtype, M, N, K, bias):
    x = randn(M, K, device=device, dtype=dtype)
    w = randn(N, K, device=device, dtype=dtype, scale=0.5, shift=0.05)
    b = None if bias == "none" else randn(N, device=device, dtype=dtype if bias == "xdtype" else torch.float32)
    out = ops.gemv(x, w, b)
    assert out.shape == (M, N) and out.dtype == dtype and out.device == x.device
    check(out, x, w, b)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("M,N,K", [(1, 288, 8192), (4, 1000, 4096), (1, 4096, 256), (2, 130, 14336)],
                         ids=["x_proj", "4x1000x4096", "dt_proj", "2x130x14336"])
def test_gemv_model_shapes(device, dtype, M, N, K):
    """Jamba-v0.1's decode projections (Mamba x_proj, dt_proj) and long K: the K-sliced warps of the vector kernel."""
    x = randn(M, K, device=device, dtype=dtype)
    w = randn(N, K, device=device, dtype=dtype, scale=0.02)
    b = randn(N, device=device, dtype=dtype) if K == 256 else None
    check(ops.gemv(x, w, b), x, w, b)


@pytest.mark.parametrize("dtype", dtype_params())
def test_gemv_views(device, dtype):
    """x as a 3-D tensor and as a column slice (row stride > K), the weight as rows of a fused buffer (row stride
    > K), and x shifted by one element (not 16-byte aligned: the element kernel on CUDA)."""
    wbig = randn(2, 70, 520, device=device, dtype=dtype)
    w = wbig[1, 3:67, 8:520]                                   # (64, 512), row stride 520
    x3 = randn(2, 3, 512, device=device, dtype=dtype)
    out3 = ops.gemv(x3, w)
    assert out3.shape == (2, 3, 64)
    check(out3.reshape(6, 64), x3.reshape(6, 512), w, None)
    xs = randn(5, 600, device=device, dtype=dtype)[:, 16:528]  # row stride 600
    check(ops.gemv(xs, w), xs, w, None)
    flat = randn(4 * 512 + 1, device=device, dtype=dtype)
    xm = flat[1:].view(4, 512)                                 # storage offset 1
    check(ops.gemv(xm, w), xm, w, None)


def test_gemv_deterministic(device):
    x = randn(3, 4104, device=device, dtype=torch.bfloat16)
    w = randn(777, 4104, device=device, dtype=torch.bfloat16)
    assert torch.equal(ops.gemv(x, w), ops.gemv(x, w))


def test_gemv_bad_inputs(device):
    x = randn(2, 16, device=device, dtype=torch.bfloat16)
    w = randn(5, 16, device=device, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="weight"):
        ops.gemv(x, w.float())
    with pytest.raises(ValueError, match="weight"):
        ops.gemv(x, randn(5, 17, device=device, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="weight"):
        ops.gemv(x, randn(16, device=device, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bias"):
        ops.gemv(x, w, randn(4, device=device, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bias"):
        ops.gemv(x, w, randn(5, device=device, dtype=torch.float16))
    with pytest.raises(ValueError, match="x"):
        ops.gemv(randn(16, 2, device=device, dtype=torch.bfloat16).T, w)        # stride 2 along K
    with pytest.raises(ValueError, match="weight"):
        ops.gemv(x, randn(16, 5, device=device, dtype=torch.bfloat16).T)
    with pytest.raises(ValueError, match="dtype"):
        ops.gemv(x.to(torch.float64), w.to(torch.float64))
    if device.type == "cuda":
        with pytest.raises(ValueError, match="device"):
            ops.gemv(x, w.cpu())


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_gemv_opcheck(device, requires_grad):
    x = randn(3, 24, device=device).requires_grad_(requires_grad)
    w = randn(10, 24, device=device).requires_grad_(requires_grad)
    b = randn(10, device=device).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.gemv.default, (x, w, b))
    torch.library.opcheck(torch.ops.jamba.gemv.default, (x.detach().bfloat16(), w.detach().bfloat16(), None))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", dtype_params())
def test_gemv_cuda_matches_cpu_and_graph(dtype):
    """The CUDA op agrees with the CPU op (different fp32 summation orders: within the error model), and replays
    from a CUDA graph with new inputs."""
    from conftest import graph_replays
    x = randn(3, 8192, dtype=dtype)
    w = randn(300, 8192, dtype=dtype, scale=0.05)
    b = randn(300, dtype=torch.float32)
    got = ops.gemv(x.cuda(), w.cuda(), b.cuda()).cpu()
    check(got, x, w, b)
    cpu = ops.gemv(x, w, b)
    assert (got.double() - cpu.double()).abs().max() <= 2 * (cpu.double() - reference.gemv(up(x), up(w), up(b))
                                                              ).abs().max() + 1e-3
    xs, ws = x.cuda(), w.cuda()
    news = [(randn(3, 8192, dtype=dtype).cuda(), None) for _ in range(2)]
    outs = graph_replays(lambda a, ww: ops.gemv(a, ww), (xs, ws), news)
    for (xn, _), (o,) in zip(news, outs):
        assert torch.equal(o, ops.gemv(xn, ws))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("M,N,K", [(2, 4096, 8192), (8, 288, 8192), (5, 8192, 256), (7, 1000, 4104), (3, 17, 40),
                                   (8, 4096, 14336), (4, 23, 8)],
                         ids=["out_proj", "x_proj", "dt_proj", "odd_n_k", "tiny", "down", "k8"])
@pytest.mark.parametrize("mode", ["default", "ring", "vec1", "wide"])
def test_gemv_cuda_tensor_core_rows(dtype, M, N, K, mode, monkeypatch):
    """2-8 rows in bf16 / f16 run on the tensor-core kernel gemv_ring_kernel (rows of 16 weights, x rows as the
    product's 8 columns, K in a permuted order, weights staged through a per-warp cp.async ring) from N 512 on, and
    from 5 rows at N >= 256, and 1 row at N 512-8192; mode "ring" (JAMBA_EXT_GEMV_MMA=ring) at any N and rows, "vec1"
    / "wide" the A/B rules (1 row on the vec kernel / only 2-8 rows at N >= 512). Within the error model, with a
    bias, deterministic, and close to the CUDA-core kernel (JAMBA_EXT_GEMV_MMA=0) on the same inputs; N not a multiple of 16 and K not of 32
    or 128 included (partial row tiles and steps), K-sliced warps at long K."""
    dev = torch.device("cuda")
    if mode != "default":
        monkeypatch.setenv("JAMBA_EXT_GEMV_MMA", mode)
    for m in (1, M):
        x = randn(m, K, device=dev, dtype=dtype)
        w = randn(N, K, device=dev, dtype=dtype, scale=K ** -0.5)
        b = randn(N, device=dev, dtype=torch.float32)
        got = ops.gemv(x, w, b)
        check(got, x, w, b)
        assert torch.equal(got, ops.gemv(x, w, b)), "not deterministic"
        monkeypatch.setenv("JAMBA_EXT_GEMV_MMA", "0")
        vec = ops.gemv(x, w, b)
        if mode == "default":
            monkeypatch.delenv("JAMBA_EXT_GEMV_MMA")
        else:
            monkeypatch.setenv("JAMBA_EXT_GEMV_MMA", mode)
        check(vec, x, w, b)
        ref = reference.gemv(up(x), up(w), up(b))
        tol = 2 * ((vec.double() - ref).abs().max() + (got.double() - ref).abs().max()) + 1e-6
        assert (got.double() - vec.double()).abs().max() <= tol
