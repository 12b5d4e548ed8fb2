"""CUDA-only: the benchmark variants of the memory-bound Mamba kernels (JAMBA_EXT_CONV_IMPL=new,
JAMBA_EXT_CONV_NV=2|4, JAMBA_EXT_SSU_IMPL=new; read by the launchers at each call) give bit-identical
results to the default kernels (same fp32 operations in the same order), at shapes where the persistent
grid loops over several segments / units per warp / block, and at shapes that fall back to the default."""
import pytest
import torch

from conftest import make_A, randn, uniform
from jamba_ext import ops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
              pytest.mark.skipif(not ops.has_cuda_kernels(), reason="built without CUDA kernels")]

DEV = torch.device("cuda")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# batch, d_inner, seqlen, K, S_in (None: no initial state), state_len, silu, w_f32, bias
CONV_CASES = [
    (1, 8192, 2048, 4, None, 3, True, False, True),   # the benchmark shape: several segments per warp
    (4, 700, 4104, 4, 3, 5, True, True, True),        # partial last segment, initial + final state
    (3, 5, 8, 3, 4, 12, False, False, False),         # one vector per row, final state reaches into init
    (2, 37, 1000, 2, None, 1001, True, False, True),  # final state longer than L: zero padded
    (2, 9, 37, 4, 3, 3, True, False, True),           # odd L: not a vector layout, default kernel
]


@pytest.mark.parametrize("nv", ["2", "4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("batch,d_inner,seqlen,K,S_in,state_len,silu,w_f32,bias", CONV_CASES,
                         ids=[f"B{c[0]}_DI{c[1]}_L{c[2]}_K{c[3]}" for c in CONV_CASES])
def test_causal_conv1d_impl_new_equals_default(monkeypatch, nv, dtype, batch, d_inner, seqlen, K, S_in,
                                               state_len, silu, w_f32, bias):
    wide = randn(batch, d_inner + 2, seqlen, device=DEV, dtype=dtype)
    x = wide[:, 1:1 + d_inner]  # channel slice: 16-byte aligned rows when seqlen * itemsize % 16 == 0
    wdt = torch.float32 if w_f32 else dtype
    w = randn(d_inner, K, device=DEV, dtype=wdt, scale=0.6)
    b = randn(d_inner, device=DEV, dtype=wdt, scale=0.5) if bias else None
    init = randn(batch, d_inner, S_in, device=DEV, dtype=dtype) if S_in else None
    out0, fin0 = ops.causal_conv1d(x, w, b, init, silu, state_len)
    monkeypatch.setenv("JAMBA_EXT_CONV_IMPL", "new")
    monkeypatch.setenv("JAMBA_EXT_CONV_NV", nv)
    out1, fin1 = ops.causal_conv1d(x, w, b, init, silu, state_len)
    assert torch.equal(out0, out1)
    assert torch.equal(fin0, fin1)


def _decode(batch, d_inner, dtype, layout, z=True):
    if layout == "contig":
        state = randn(batch, d_inner, 16, device=DEV)
    else:  # pad_di: DI + 3 channels per batch row, viewed from channel 1 (16-byte aligned rows)
        state = randn(batch, d_inner + 3, 16, device=DEV)[:, 1:d_inner + 1]
    return dict(state=state, x=randn(batch, d_inner, device=DEV, dtype=dtype),
                dt=randn(batch, d_inner, device=DEV, dtype=dtype, scale=0.5), A=make_A(d_inner, 16, DEV),
                B=randn(batch, 16, device=DEV, dtype=dtype), C=randn(batch, 16, device=DEV, dtype=dtype),
                D=randn(d_inner, device=DEV, scale=0.7, shift=0.2),
                z=randn(batch, d_inner, device=DEV, dtype=dtype) if z else None,
                dt_bias=uniform(d_inner, lo=-4.5, hi=-1.5, device=DEV), dt_softplus=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("batch,d_inner,layout,z", [(256, 8192, "contig", True), (1, 8192, "contig", True),
                                                    (65, 200, "contig", False), (7, 130, "pad_di", True),
                                                    (6, 3000, "pad_di", False)])
def test_selective_state_update_impl_new_equals_default(monkeypatch, dtype, batch, d_inner, layout, z):
    s = _decode(batch, d_inner, dtype, layout, z)
    st1 = s["state"].clone() if layout == "contig" else \
        torch.empty(batch, d_inner + 3, 16, device=DEV)[:, 1:d_inner + 1].copy_(s["state"])  # same layout
    y0 = ops.selective_state_update(**s)
    monkeypatch.setenv("JAMBA_EXT_SSU_IMPL", "new")
    y1 = ops.selective_state_update(**dict(s, state=st1))
    assert torch.equal(y0, y1)
    assert torch.equal(s["state"], st1)
