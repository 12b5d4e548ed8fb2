"""CUDA-only checks of fast paths that the other tests reach only with inputs where a fault cannot show (found by the
mutation test dev/mutation_cuda.py). Fresh random inputs against reference.py in float64, as elsewhere."""
import pytest
import torch

from conftest import TOL, assert_close, cuda_kernel_names, randn, up
from jamba_ext import ops, reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
              pytest.mark.skipif(not ops.has_cuda_kernels(), reason="built without CUDA kernels")]

DEV = torch.device("cuda")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "bf16", "f16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
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
