"""decode_attention (jamba.decode_attention: a few query rows per KV head against a KV cache) against reference.py in
float64, against SDPA, and on the layouts the model's caches produce (a static buffer under a mask, a slice of a
doubling buffer). Tolerance: fp32 math with a fixed summation order per backend (ex2.approx on CUDA); bf16 / fp16
outputs are rounded once, and the ratio check bounds the error by twice the fp32-compute reference's."""
import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_GPU, LOW_DTYPES, TOL, assert_close, dtype_params, randn, ratio_check, up
from jamba_ext import ops, reference

# (B, HKV, R, D, S): Jamba's decode (8 KV heads, 4 query heads each, head_dim 128) at 1, 7 and 4500 keys; 1 row, D 64;
# 8 rows and D 256; 5 rows (the 8-row instance); 3 batch rows.
SHAPES = [(1, 8, 4, 128, 1), (1, 8, 4, 128, 7), (2, 3, 1, 64, 300), (3, 2, 8, 256, 1000), (1, 1, 5, 64, 4500),
          (2, 4, 4, 128, 70)]
IDS = ["jamba_s1", "jamba_s7", "b2_r1_d64", "b3_r8_d256", "r5_s4500", "b2_s70"]
ATTN_TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.bfloat16: TOL[torch.bfloat16],
            torch.float16: TOL[torch.float16]}


def make(B, H, R, D, S, device, dtype, mask_kind):
    q = randn(B, H, R, D, device=device, dtype=dtype)
    k = randn(B, H, S, D, device=device, dtype=dtype)
    v = randn(B, H, S, D, device=device, dtype=dtype, scale=2.0, shift=0.1)
    mask = None
    if mask_kind == "random":
        mask = torch.rand(B, S, device=device) > 0.4
        mask[:, -1] = True                                   # every row has a key
    elif mask_kind == "left_pad":
        mask = torch.ones(B, S, dtype=torch.bool, device=device)
        for b in range(B):
            mask[b, :min(S - 1, 3 * b)] = False
    return q, k, v, mask


def check(out, q, k, v, mask, scale=None):
    ref = reference.decode_attention(up(q), up(k), up(v), mask, scale)
    assert_close(out, ref, **ATTN_TOL[out.dtype])
    if out.dtype in LOW_DTYPES and out.numel() > 0 and k.shape[2] > 1:   # one key: out = v (the tolerance above)
        ratio_check(out, reference.decode_attention(q.float(), k.float(), v.float(), mask, scale).to(out.dtype), ref)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("B,H,R,D,S", SHAPES, ids=IDS)
@pytest.mark.parametrize("mask_kind", ["none", "random", "left_pad"])
def test_decode_attention_matches_fp64(device, dtype, B, H, R, D, S, mask_kind):
    q, k, v, mask = make(B, H, R, D, S, device, dtype, mask_kind)
    out = ops.decode_attention(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == dtype
    check(out, q, k, v, mask)


@pytest.mark.parametrize("dtype", dtype_params())
def test_decode_attention_cache_layouts(device, dtype):
    """k / v as the first S positions of a larger buffer (the dynamic cache grows by doubling), q as a view of
    (B, 1, HKV * R * D) query heads, an explicit scale, and k shifted by one element (not 16-byte aligned)."""
    B, H, R, D, S, cap = 2, 8, 4, 128, 333, 512
    kbuf, vbuf = randn(B, H, cap, D, device=device, dtype=dtype), randn(B, H, cap, D, device=device, dtype=dtype)
    k, v = kbuf[:, :, :S], vbuf[:, :, :S]
    q = randn(B, 1, H * R * D, device=device, dtype=dtype).view(B, 1, H * R, D).transpose(1, 2).reshape(B, H, R, D)
    mask = torch.rand(B, S, device=device) > 0.2
    mask[:, 0] = True
    check(ops.decode_attention(q, k, v, mask, 0.05), q, k, v, mask, 0.05)
    flat = randn(B * H * S * D + 1, device=device, dtype=dtype)
    km = flat[1:].view(B, H, S, D)                           # storage offset 1
    check(ops.decode_attention(q, km, v, None), q, km, v, None)


def test_decode_attention_no_key_gives_zero(device):
    q, k, v, mask = make(2, 2, 3, 64, 40, device, torch.float32, "random")
    mask[1] = False
    out = ops.decode_attention(q, k, v, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    check(out, q, k, v, mask)
    q0, k0, v0, _ = make(2, 2, 3, 64, 0, device, torch.bfloat16, "none")      # an empty cache
    assert torch.equal(ops.decode_attention(q0, k0, v0), torch.zeros_like(q0))


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("S", [40, 300])
def test_decode_attention_nan_propagates(device, dtype, S, monkeypatch, sentinel_outputs):
    """NaN in, NaN out, as the float64 reference (a softmax over scores with a NaN is NaN): a NaN in a query row makes
    that row NaN; a NaN in an attended key row makes every row of its (batch, head) NaN; a NaN in element d of an
    attended value row makes column d of those rows NaN. A masked key's K / V rows are never read (NaN there changes
    nothing), and a row with no key taking part stays 0 whatever q holds. S 300: up to 19 splits on CUDA, the NaN in
    one of them (the merge of the warps and of the splits must carry it); both CUDA kernels (mma: bf16 / f16)."""
    nan = float("nan")
    B, H, R, D = 3, 3, 4, 64
    q, k, v, mask = make(B, H, R, D, S, device, dtype, "random")
    mask[2] = False                                                  # batch 2: no key at all
    att0, att1 = int(mask[0].nonzero()[S // 3 % int(mask[0].sum())]), int(mask[1].nonzero()[0])
    hid1 = int((~mask[1]).nonzero()[-1])
    q[0, 0, 1, 5] = nan                                              # one query row
    k[0, 1, att0, 7] = nan                                           # an attended key: the whole head
    v[1, 2, att1, 9] = nan                                           # an attended value element: one column
    k[1, 0, hid1], v[1, 0, hid1] = nan, nan                          # a masked key's rows: nothing
    q[2, 1, 0, 0] = nan                                              # no key: 0 all the same
    want_nan = torch.zeros(B, H, R, D, dtype=torch.bool)
    want_nan[0, 0, 1], want_nan[0, 1], want_nan[1, 2, :, 9] = True, True, True
    ref = reference.decode_attention(up(q), up(k), up(v), mask)
    assert torch.equal(torch.isnan(ref).cpu(), want_nan)
    for mma in (["1", "0"] if device.type == "cuda" and dtype != torch.float32 else [None]):
        if mma is not None:
            monkeypatch.setenv("JAMBA_EXT_ATTN_MMA", mma)
        out = ops.decode_attention(q, k, v, mask)
        assert torch.equal(torch.isnan(out).cpu(), want_nan), (mma, torch.isnan(out).nonzero()[:8].tolist())
        assert torch.equal(out[2], torch.zeros_like(out[2]))
        fin = ~want_nan.to(out.device)
        assert_close(out[fin], ref[fin], **ATTN_TOL[dtype])


@pytest.mark.parametrize("dtype", dtype_params())
def test_decode_attention_large_scores(device, dtype):
    """Every score near 100 (the first coordinate of q and of each key holds a constant; the rest is random, so the
    softmax is not one-hot): exp(score) overflows fp32 above 88, so the softmax must subtract the maximum first.
    fp32: a score near 100 carries an fp32 rounding of ~1e-5, which moves the output by as much (tolerance 1e-4)."""
    q, k, v, mask = make(2, 3, 4, 64, 50, device, dtype, "random")
    q[..., 0], k[..., 0] = 40.0, 20.0                        # 40 * 20 / sqrt(64) = 100 added to every score
    out = ops.decode_attention(q, k, v, mask)
    if dtype == torch.float32:
        assert_close(out, reference.decode_attention(up(q), up(k), up(v), mask), rtol=1e-4, atol=1e-4)
    else:
        check(out, q, k, v, mask)


@pytest.mark.parametrize("dtype", dtype_params())
def test_decode_attention_matches_sdpa(device, dtype):
    """The model's call: query heads h = kv * R + r against GQA K / V under a boolean mask, as SDPA computes it."""
    B, H, R, D, S = 2, 8, 4, 128, 257
    q, k, v, mask = make(B, H, R, D, S, device, dtype, "left_pad")
    ours = ops.decode_attention(q, k, v, mask)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, None, None, :])
    assert_close(ours, want, **ATTN_TOL[dtype])


def test_decode_attention_deterministic(device):
    q, k, v, mask = make(1, 8, 4, 128, 3000, device, torch.bfloat16, "random")
    assert torch.equal(ops.decode_attention(q, k, v, mask), ops.decode_attention(q, k, v, mask))


def test_decode_attention_bad_inputs(device):
    q, k, v, mask = make(1, 2, 4, 64, 10, device, torch.bfloat16, "random")
    with pytest.raises(ValueError, match="k"):
        ops.decode_attention(q, k.float(), v)
    with pytest.raises(ValueError, match="v"):
        ops.decode_attention(q, k, v[:, :, :9])
    with pytest.raises(ValueError, match="k"):
        ops.decode_attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="key_mask"):
        ops.decode_attention(q, k, v, mask.float())
    with pytest.raises(ValueError, match="key_mask"):
        ops.decode_attention(q, k, v, mask[:, :9])
    with pytest.raises(ValueError, match="q"):
        ops.decode_attention(q[0], k, v)
    with pytest.raises(ValueError, match="scale"):
        ops.decode_attention(q, k, v, None, float("inf"))
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match="head_dim"):
            ops.decode_attention(*make(1, 2, 4, 40, 10, device, torch.bfloat16, "none")[:3])
        with pytest.raises(ValueError, match="device"):
            ops.decode_attention(q, k.cpu(), v)
    else:                                                    # any head_dim and row count on the CPU
        q2, k2, v2, _ = make(1, 2, 9, 40, 10, device, torch.float32, "none")
        check(ops.decode_attention(q2, k2, v2), q2, k2, v2, None)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_decode_attention_opcheck(device, requires_grad):
    q, k, v, mask = make(1, 2, 4, 64, 9, device, torch.float32, "random")
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.decode_attention.default, (q, k, v, mask, 0.2))
    torch.library.opcheck(torch.ops.jamba.decode_attention.default, (q.detach(), k.detach(), v.detach(), None, None))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("kernel", ["mma", "simt"])
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=["bf16", "f16"])
@pytest.mark.parametrize("B,H,R,D,S", [(1, 8, 4, 128, 1), (1, 8, 4, 128, 17), (2, 3, 8, 64, 300), (1, 2, 5, 128, 4500),
                                       (3, 1, 1, 64, 33)], ids=["s1", "s17", "r8_d64", "r5_s4500", "b3_r1"])
def test_decode_attention_cuda_kernels(monkeypatch, kernel, dtype, B, H, R, D, S):
    """Both CUDA kernels for bf16 / f16 at D 64 / 128: the tensor-core one (the default there) and the CUDA-core one
    (JAMBA_EXT_ATTN_MMA=0; fp32 and D 256 always run it) against fp64; NaN in the K / V rows of masked keys changes
    nothing (masked keys are never read), a partial last tile of 16 keys, 1-8 rows."""
    if kernel == "simt":
        monkeypatch.setenv("JAMBA_EXT_ATTN_MMA", "0")
    q, k, v, mask = make(B, H, R, D, S, "cuda", dtype, "random")
    out = ops.decode_attention(q, k, v, mask)
    check(out, q, k, v, mask)
    hide = mask[:, None, :, None]
    kn, vn = torch.where(hide, k, float("nan")), torch.where(hide, v, float("nan"))
    assert torch.equal(ops.decode_attention(q, kn, vn, mask), out)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_decode_attention_long_cache_cuda_and_graph():
    """70000 keys (many keys per split) against the reference, and a CUDA-graph replay with new queries."""
    from conftest import graph_replays
    q, k, v, mask = make(1, 8, 4, 128, 70000, "cuda", torch.bfloat16, "random")
    check(ops.decode_attention(q, k, v, mask), q, k, v, mask)
    news = [(randn(1, 8, 4, 128, device="cuda", dtype=torch.bfloat16),) for _ in range(2)]
    outs = graph_replays(lambda a: ops.decode_attention(a, k[:, :, :5000], v[:, :, :5000], mask[:, :5000]), (q,), news)
    for (qn,), (o,) in zip(news, outs):
        assert torch.equal(o, ops.decode_attention(qn, k[:, :, :5000], v[:, :, :5000], mask[:, :5000]))
