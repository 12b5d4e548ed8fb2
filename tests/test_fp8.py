"""fp8 expert weights: quantize_fp8, dequant_fp8 and moe_experts_fp8 against the float64 reference (reference.py:
dequant_fp8 = e4m3(q) * scale exactly, moe_experts_fp8 = moe_experts on those weights), on CPU and CUDA.

moe_experts_fp8 runs four engines: the weight-streaming kernels that read the fp8 bytes (csrc/cpu/fp8.c up to
ops.FP8_GEMV_MAX_TOKENS = 32 tokens, csrc/cuda/moe_gemv.cu up to ops.FP8_CUDA_GEMV_MAX_TOKENS = 6); on CUDA the ring
kernels that read them too (csrc/cuda/moe.cu, F8) and on Hopper from 28 slots per expert a wgmma kernel
(csrc/cuda/moe_wgmma.cu moe_wgmma_f8ws_kernel); without it above ops.FP8_RING_MAX_TOKENS (and on the CPU above 32 tokens)
dequant_fp8 of the touched experts and moe_experts. Each is tested at token counts that select it (the ring and wgmma
tests force their engine at every token count: thresholds moved, env JAMBA_EXT_FP8_WGMMA), with H and F multiples of
16 (the CUDA kernels) and not (the CUDA fallback to the dequantizing path).
act_fp8 (fp8 activations, W8A8 on Hopper: csrc/cuda/moe_wgmma.cu moe_wgmma_gemm_q8) is tested against its own fp64
oracle, reference.moe_experts_fp8_w8a8, forced at every token count."""
import itertools

import pytest
import torch

from conftest import HAS_GPU, hopper_code, assert_close, dtype_params, graph_replays, randn
from jamba_ext import ops, reference

pytestmark = pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8_e4m3fn")

# bf16 / f16 outputs: one rounding of the output plus the roundings inside the expert (act, y, the weighted
# add), as the moe_experts tests; fp32: the weights are exact, sums in fp32
FP8_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=4e-2),
           torch.float16: dict(rtol=1e-2, atol=1e-2)}


def all_e4m3(R, K, device):
    """(R, K) float8_e4m3fn covering every finite bit pattern (0x7f / 0xff are NaN), shuffled."""
    codes = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)
    idx = torch.randint(0, codes.numel(), (R, K))
    return codes[idx].view(torch.float8_e4m3fn).to(device)


def fp8_experts(E, H, F, device):
    """Random expert weights in the scale of a trained model, quantized: (q_gu, s_gu, q_d, s_d)."""
    gu = randn(E, 2 * F, H, device=device, scale=H ** -0.5)
    dn = randn(E, H, F, device=device, scale=F ** -0.5)
    return (*ops.quantize_fp8(gu), *ops.quantize_fp8(dn))


def routed(T, E, K, device):
    logits = torch.argsort(torch.rand(T, E, device=device), dim=1).float() * 0.37
    return ops.moe_route(logits, K)


def ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d):
    """float64 oracle on the CPU; the routing weight rounded to x's dtype first, as HF does."""
    return reference.moe_experts_fp8(x.double().cpu(), w.to(x.dtype).double().cpu(), ids.long().cpu(), q_gu.cpu(),
                                     s_gu.cpu(), q_d.cpu(), s_d.cpu()).to(x.device)


def fp8_case(dev, dtype, T, H, F, E, K):
    """Random x, fp8 experts and routing; moe_experts_fp8 (the permutation given) checked against the fp64 oracle.
    Returns (out, (x, w, ids, q_gu, s_gu, q_d, s_d), (slots, offsets))."""
    x = randn(T, H, device=dev, dtype=dtype)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    w, ids, offsets, slots = routed(T, E, K, dev)
    out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
    assert out.shape == (T, H) and out.dtype == dtype
    assert_close(out, ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d), **FP8_TOL[dtype])
    return out, (x, w, ids, q_gu, s_gu, q_d, s_d), (slots, offsets)


# ---- quantize_fp8 / dequant_fp8 -----------------------------------------------------------------------------
def test_e4m3_table_matches_torch():
    """Every bit pattern through dequant_fp8 (scale 1, fp32 out) equals torch's own float8 -> float32 cast."""
    q = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).view(16, 16)
    out = ops.dequant_fp8(q, torch.ones(16), torch.float32)
    want = q.to(torch.float32)
    assert torch.equal(torch.isnan(out), torch.isnan(want)) and torch.isnan(out).sum() == 2
    finite = ~torch.isnan(want)
    assert torch.equal(out[finite], want[finite])


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("R,K", [(1, 1), (7, 33), (5, 40), (48, 64), (300, 4096 + 16)])
def test_dequant_fp8_matches_fp64(device, dtype, R, K):
    q = all_e4m3(R, K, device)
    scale = torch.rand(R, device=device) * 0.01 + 1e-4
    out = ops.dequant_fp8(q, scale, dtype)
    assert out.shape == (R, K) and out.dtype == dtype
    ref = reference.dequant_fp8(q, scale)
    # one rounding of an fp32 product: the dtype's half ulp (fp32: its own rounding of e4m3 * scale; f16: its
    # subnormals below 6.1e-5 are spaced 6e-8)
    tol = {torch.float32: dict(rtol=1e-7, atol=0), torch.bfloat16: dict(rtol=4e-3, atol=0),
           torch.float16: dict(rtol=1e-3, atol=3e-8)}[dtype]
    assert_close(out, ref, **tol)
    if device.type == "cuda":  # the same roundings as the CPU kernel, bit for bit
        assert torch.equal(out.cpu(), ops.dequant_fp8(q.cpu(), scale.cpu(), dtype))


def test_dequant_fp8_groups_skip_untouched(device):
    """Rows of groups with no routed rows stay as allocated (poisoned: NaN); the others are converted."""
    E, R, K = 5, 6, 32
    q = all_e4m3(E * R, K, device).view(E, R, K)
    scale = torch.rand(E, R, device=device) + 0.5
    offsets = torch.tensor([0, 3, 3, 4, 4, 9], dtype=torch.int32, device=device)  # experts 1 and 3 untouched
    out = ops.dequant_fp8(q, scale, torch.bfloat16, offsets)
    ref = reference.dequant_fp8(q, scale)
    for e in range(E):
        if e in (1, 3):
            assert torch.isnan(out[e].float()).all()
        else:
            assert_close(out[e], ref[e], rtol=4e-3, atol=0)


def test_quantize_fp8_roundtrip(device):
    w = randn(5, 3, 200, device=device, scale=0.02)
    w[1, 2] = 0.0  # an all-zero row: scale 1, codes 0
    w[0, 0, 7] = 3.0  # one outlier sets its row's scale
    q, s = ops.quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape and s.shape == w.shape[:-1]
    assert s[1, 2] == 1 and (q[1, 2].float() == 0).all()
    amax = w.abs().amax(-1)
    torch.testing.assert_close(s[amax > 0], amax[amax > 0] / 448.0)
    back = reference.dequant_fp8(q, s)
    err = (back - w.double()).abs()
    # e4m3: 3 mantissa bits (relative error <= 2^-4 of a normal value), subnormals spaced 2^-9 * scale
    bound = w.double().abs() * 2.0 ** -4 + s.double().unsqueeze(-1) * 2.0 ** -10
    assert (err <= bound).all()
    assert err.max() > 0  # it did quantize
    assert abs(back[0, 0, 7].item() - 3.0) < 1e-6  # the row maximum maps to 448 (448 * scale, scale rounded to fp32)


def test_fp8_bad_inputs(device):
    q, s = ops.quantize_fp8(randn(4, 32, device=device))
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        ops.dequant_fp8(q.view(torch.uint8), s)
    with pytest.raises(ValueError, match="scale of q"):
        ops.dequant_fp8(q, s[:3])
    with pytest.raises(ValueError, match="scale of q"):
        ops.dequant_fp8(q, s.double())
    with pytest.raises(ValueError, match="dtype"):
        ops.dequant_fp8(q, s, torch.int32)
    with pytest.raises(ValueError, match="group_offsets"):
        ops.dequant_fp8(q, s, torch.bfloat16, torch.tensor([0, 1, 2, 3], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="inf or NaN"):
        ops.quantize_fp8(torch.tensor([[1.0, float("inf")]], device=device))
    with pytest.raises(ValueError, match="float tensor"):
        ops.quantize_fp8(torch.ones(3, 4, dtype=torch.int32, device=device))


# ---- moe_experts_fp8 ------------------------------------------------------------------------------------------
# (T, H, F): CPU: up to 32 tokens the decode kernel, 33 and 64 the dequantizing path; CUDA: up to 6 tokens the
# GEMVs, then the ring kernels; H, F multiples of 16 or not (the CUDA kernels need them: else the dequantizing path),
# and of no 8 (5 x 37 x 13: the CPU decode kernel's dots over 8 interleaved partial sums end in a partial round)
FP8_SHAPES = [(1, 272, 144), (3, 272, 144), (32, 64, 48), (33, 272, 144), (64, 96, 80), (2, 40, 24), (1, 24, 8),
              (5, 37, 13)]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T,H,F", FP8_SHAPES, ids=[f"T{t}H{h}F{f}" for t, h, f in FP8_SHAPES])
@pytest.mark.parametrize("E,K", [(1, 1), (8, 2), (16, 2)])
def test_moe_experts_fp8_matches_fp64(device, dtype, T, H, F, E, K):
    out, (x, w, ids, q_gu, s_gu, q_d, s_d), _ = fp8_case(device, dtype, T, H, F, E, K)
    # without the permutation (computed inside), int64 ids; deterministic
    assert torch.equal(out, ops.moe_experts_fp8(x, w, ids.long(), q_gu, s_gu, q_d, s_d))


@pytest.mark.parametrize("T", [1, 9, 40])
def test_moe_experts_fp8_engines_agree(device, T):
    """The decode kernels and the dequantizing path give the same result up to the weights' rounding to x's
    dtype (the decode kernels apply the scale to the fp32 sum; the dequantized weights are rounded to bf16)."""
    H, F, E, K, dt = 256, 96, 8, 2, torch.bfloat16
    x = randn(T, H, device=device, dtype=dt)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, device)
    w, ids, offsets, slots = routed(T, E, K, device)
    fast = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
    deq = ops.moe_experts(x, w, ids, ops.dequant_fp8(q_gu, s_gu, dt), ops.dequant_fp8(q_d, s_d, dt), slots, offsets)
    assert_close(fast, deq, **FP8_TOL[dt])


def test_moe_experts_fp8_expert_without_tokens_and_one_with_all(device):
    """Every token on expert 2 (top-1): the other experts' weights are never converted (dequant skips them) and
    must not matter; also at 64 tokens (the dequantizing path)."""
    H, F, E = 64, 32, 6
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, device)
    for T in (3, 64):  # the decode kernels, the dequantizing path
        x = randn(T, H, device=device, dtype=torch.bfloat16)
        logits = torch.zeros(T, E, device=device)
        logits[:, 2] = 5.0
        w, ids, offsets, slots = ops.moe_route(logits, 1)
        out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
        assert_close(out, ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d), **FP8_TOL[torch.bfloat16])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("T", [1, 2, 4, 5, 32, 64, 300])
def test_moe_experts_fp8_cuda_vs_cpu(T):
    """The CUDA engines against the CPU op on the same inputs (both against fp64 in the test above)."""
    H, F, E, K, dt = 512, 272, 16, 2, torch.bfloat16
    dev = torch.device("cuda")
    x = randn(T, H, device=dev, dtype=dt)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    w, ids, offsets, slots = routed(T, E, K, dev)
    out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
    cpu = ops.moe_experts_fp8(x.cpu(), w.cpu(), ids.cpu(), q_gu.cpu(), s_gu.cpu(), q_d.cpu(), s_d.cpu())
    assert_close(out.cpu(), cpu, **FP8_TOL[dt])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("engine", ["gemv", "ring", "wgmma"])
def test_moe_experts_fp8_bad_id_gives_nan_row_on_cuda(monkeypatch, engine):
    if engine != "gemv":  # 2 tokens through the ring kernels or the Hopper wgmma kernel
        monkeypatch.setattr(ops, "FP8_CUDA_GEMV_MAX_TOKENS", 0)
        monkeypatch.setenv("JAMBA_EXT_FP8_WGMMA", "1" if engine == "wgmma" else "0")
    if engine == "wgmma" and not hopper_code():
        pytest.skip("needs a Hopper GPU (the wgmma kernel)")
    H, F, E, K, dt = 64, 32, 4, 2, torch.bfloat16
    dev = torch.device("cuda")
    x = randn(2, H, device=dev, dtype=dt)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    w = torch.rand(2, K, device=dev)
    ids = torch.tensor([[0, 1], [2, 7]], dtype=torch.int32, device=dev)
    out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d)
    assert torch.isnan(out[1].float()).all() and not torch.isnan(out[0].float()).any()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("T,H,F", [(1, 2064, 4112), (2, 4096, 1040), (5, 528, 2576), (6, 1552, 528)])
def test_moe_experts_fp8_gemv_fast_path_same_bits(monkeypatch, T, H, F):
    """The fp8 GEMVs' dot loop takes batches of chunks that lie inside K without bound checks (csrc/cuda/gemv.cuh
    gemv_warp_dot_f8, sm_89+); JAMBA_EXT_FP8_GEMV_FAST=0 checks every chunk. Same bits either way, for K (H for
    gate_up, F for down) with and without a partial last batch of chunks, at 1-6 tokens (2 tokens: the down kernel's
    4 warps along K); and the fp64 oracle."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    x = randn(T, H, device=dev, dtype=dt)
    q_gu, s_gu, q_d, s_d = fp8_experts(8, H, F, dev)
    w, ids, _, _ = routed(T, 8, 2, dev)
    fast = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d)
    monkeypatch.setenv("JAMBA_EXT_FP8_GEMV_FAST", "0")
    checked = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d)
    assert torch.equal(fast, checked)
    assert_close(fast, ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d), **FP8_TOL[dt])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("T", [1, 32, 64])
def test_moe_experts_fp8_cuda_graph(T):
    """route + fp8 experts captured in a CUDA graph (no host sync: the dequant reads the offsets on the device),
    replayed on new inputs."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    H, F, E, K = 256, 144, 16, 2
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    router = randn(E, H, device=dev, dtype=dt)

    def fn(a):
        w, ids, offsets, slots = ops.moe_route(a @ router.t(), K)
        return ops.moe_experts_fp8(a, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)

    news = [(randn(T, H, device=dev, dtype=dt),) for _ in range(2)]
    runs = graph_replays(fn, (randn(T, H, device=dev, dtype=dt),), news)
    for (a,), (o,) in zip(news, runs):
        assert torch.equal(o, fn(a))


@pytest.mark.parametrize("T", [3, 40])
def test_moe_experts_fp8_grad(device, T):
    """dx and the routing weights' gradient against autograd through the float64 reference."""
    H, F, E, K, dt = 48, 32, 4, 2, torch.float32
    x = randn(T, H, device=device, dtype=dt).requires_grad_()
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, device)
    w, ids, _, _ = routed(T, E, K, device)
    w = w.clone().requires_grad_()
    out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d)
    g = randn(T, H, device=device)
    dx, dw = torch.autograd.grad(out, (x, w), g)
    x64, w64 = x.detach().double().cpu().requires_grad_(), w.detach().double().cpu().requires_grad_()
    ref = reference.moe_experts_fp8(x64, w64, ids.long().cpu(), q_gu.cpu(), s_gu.cpu(), q_d.cpu(),
                                    s_d.cpu())
    rdx, rdw = torch.autograd.grad(ref, (x64, w64), g.double().cpu())
    for name, got, want in (("x", dx, rdx), ("weights", dw, rdw)):  # fp32 sums: relative to the largest entry
        err, scale = (got.cpu().double() - want).abs().max().item(), want.abs().max().item()
        assert err <= 1e-5 * scale + 1e-7, f"grad of {name}: max error {err:.3e}, largest entry {scale:.3e}"


def test_moe_experts_fp8_opcheck(device):
    T, H, F, E, K = 3, 32, 16, 4, 2
    x = randn(T, H, device=device, dtype=torch.bfloat16)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, device)
    w, ids, offsets, slots = routed(T, E, K, device)
    # not test_schema: it compares the inputs before and after with arithmetic torch lacks for float8 on the CPU
    utils = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.jamba.moe_experts_fp8.default, (x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.jamba.dequant_fp8.default, (q_gu, s_gu, torch.bfloat16), test_utils=utils)
    # act_fp8 (on Hopper from ops.FP8_W8A8_MIN_TOKENS tokens the W8A8 kernel; ignored elsewhere)
    T = max(80, ops.FP8_W8A8_MIN_TOKENS)
    x = randn(T, H, device=device, dtype=torch.bfloat16)
    w, ids, offsets, slots = routed(T, E, K, device)
    torch.library.opcheck(torch.ops.jamba.moe_experts_fp8.default, (x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets),
                          {"act_fp8": True}, test_utils=utils)


def test_moe_experts_fp8_bad_inputs(device):
    T, H, F, E, K = 3, 32, 16, 4, 2
    x = randn(T, H, device=device, dtype=torch.bfloat16)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, device)
    w, ids, offsets, slots = routed(T, E, K, device)
    run = lambda **kw: ops.moe_experts_fp8(**{**dict(x=x, weights=w, expert_ids=ids, w_gate_up=q_gu, s_gate_up=s_gu,
                                                     w_down=q_d, s_down=s_d), **kw})
    with pytest.raises(ValueError, match="w_gate_up must be a torch.float8_e4m3fn"):
        run(w_gate_up=ops.dequant_fp8(q_gu, s_gu))
    with pytest.raises(ValueError, match="scale of w_down"):
        run(s_down=s_d[:, :-1])
    with pytest.raises(ValueError, match="w_down must have shape"):
        run(w_down=q_d[:, :-1])
    with pytest.raises(ValueError, match="rows"):
        run(x=x[:2])
    with pytest.raises(ValueError, match="x must be"):
        run(x=x.double())
    with pytest.raises(ValueError, match="together"):
        run(sorted_slots=slots)
    if device.type == "cpu":
        with pytest.raises(ValueError, match=r"expert_ids must be in \[0, 4\)"):
            run(expert_ids=torch.tensor([[0, 1], [2, 4], [1, 0]], dtype=torch.int32))


# ---- the CUDA ring kernels (csrc/cuda/moe.cu, moe_decode_kernel F8) ---------------------------------------------
# (T, H, F): T 1-8 / 9-16 / 17+ select the ring's 1 / 2 / 4 n-tiles of 8 tokens a pass; 300 tokens on one expert
# (E 1) take 10 passes; H, F multiples of 16 but not of the 64-k step
RING_SHAPES = [(1, 272, 144), (7, 272, 144), (12, 96, 80), (33, 272, 144), (64, 512, 272), (300, 208, 48)]


@pytest.fixture
def ring_everywhere(monkeypatch):
    monkeypatch.setattr(ops, "FP8_CUDA_GEMV_MAX_TOKENS", 0)
    monkeypatch.setattr(ops, "FP8_RING_MAX_TOKENS", 1 << 30)
    monkeypatch.setenv("JAMBA_EXT_FP8_WGMMA", "0")  # the ring kernels, not the wgmma kernel, at every size


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,H,F", RING_SHAPES, ids=[f"T{t}H{h}F{f}" for t, h, f in RING_SHAPES])
@pytest.mark.parametrize("E,K", [(1, 1), (8, 2), (16, 2)])
@pytest.mark.parametrize("mt4", ["0", "4", "24"])
def test_moe_experts_fp8_ring_matches_fp64(ring_everywhere, monkeypatch, mt4, dtype, T, H, F, E, K):
    # the NT values whose ring runs 4 m16 tiles a warp: "4" (the default), "24" (NT 2 too), "0" none (2 tiles: A/B)
    monkeypatch.setenv("JAMBA_EXT_MOE_F8_MT4", mt4)
    dev = torch.device("cuda")
    out, (x, w, ids, q_gu, s_gu, q_d, s_d), (slots, offsets) = fp8_case(dev, dtype, T, H, F, E, K)
    # the permutation made inside; deterministic (bit-identical); x a view at an 8-byte offset (copied to 16-byte
    # alignment before the kernels)
    assert torch.equal(out, ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d))
    xv = torch.empty(T * H + 4, device=dev, dtype=dtype)[4:].view(T, H).copy_(x)
    assert xv.is_contiguous() and xv.data_ptr() % 16 == 8
    assert torch.equal(out, ops.moe_experts_fp8(xv, w, ids, q_gu, s_gu, q_d, s_d))
    # against moe_experts' engines on the dequantized weights (which round each weight to x's dtype)
    deq = ops.moe_experts(x, w, ids, ops.dequant_fp8(q_gu, s_gu, dtype), ops.dequant_fp8(q_d, s_d, dtype), slots,
                          offsets)
    assert_close(out, deq, **FP8_TOL[dtype])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_moe_experts_fp8_ring_every_e4m3_value(ring_everywhere):
    """Weights drawn from every finite e4m3 bit pattern (subnormals, both zeros, the largest) with scale 1: the
    in-register conversion to bf16 / f16 must be exact for each of them."""
    check_every_e4m3(torch.device("cuda"), T=20, H=256, F=64)


def check_every_e4m3(dev, T, H, F, E=4, K=2):
    """moe_experts_fp8 against the fp64 oracle on weights drawn from every finite e4m3 bit pattern, bf16 and f16 x."""
    q_gu, q_d = all_e4m3(E * 2 * F, H, dev).view(E, 2 * F, H), all_e4m3(E * H, F, dev).view(E, H, F)
    s_gu = torch.full((E, 2 * F), 1.0 / 256, device=dev)
    s_d = torch.full((E, H), 1.0 / 64, device=dev)
    w, ids, offsets, slots = routed(T, E, K, dev)
    for dt in (torch.bfloat16, torch.float16):
        x = randn(T, H, device=dev, dtype=dt, scale=0.05)
        out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
        assert_close(out, ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d), **FP8_TOL[dt])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_moe_experts_fp8_dequant_path_above_ring(monkeypatch):
    """Above FP8_RING_MAX_TOKENS the CUDA op dequantizes the touched experts (here moved down to 16 tokens) where
    there is no wgmma kernel (on Hopper: FP8_SM90_MAX_TOKENS 0)."""
    monkeypatch.setattr(ops, "FP8_RING_MAX_TOKENS", 16)
    monkeypatch.setattr(ops, "FP8_SM90_MAX_TOKENS", 0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    T, H, F, E, K = 40, 272, 144, 8, 2
    x = randn(T, H, device=dev, dtype=dt)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    w, ids, offsets, slots = routed(T, E, K, dev)
    out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
    assert_close(out, ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d), **FP8_TOL[dt])


# ---- the Hopper wgmma kernel (csrc/cuda/moe_wgmma.cu, moe_wgmma_f8ws_kernel) ----------------------------------------
# (T, H, F): H and F multiples of 16 but not of the 64-k tile (TMA zero-fills the rest of the last k tile), F below a
# 128-output tile, an expert with several 128-row m-tiles (300 tokens on E 1), a tile row half full
WGMMA_SHAPES = [(1, 272, 144), (7, 272, 144), (33, 272, 144), (64, 512, 272), (300, 208, 48), (200, 1040, 400)]


def _hopper():
    return HAS_GPU and hopper_code()


@pytest.fixture
def wgmma_everywhere(monkeypatch):
    monkeypatch.setattr(ops, "FP8_CUDA_GEMV_MAX_TOKENS", 0)
    monkeypatch.setattr(ops, "FP8_RING_MAX_TOKENS", 1 << 30)
    monkeypatch.setenv("JAMBA_EXT_FP8_WGMMA", "1")


@pytest.mark.cuda
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (the wgmma kernel)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,H,F", WGMMA_SHAPES, ids=[f"T{t}H{h}F{f}" for t, h, f in WGMMA_SHAPES])
@pytest.mark.parametrize("E,K", [(1, 1), (8, 2), (16, 2)])
def test_moe_experts_fp8_wgmma_matches_fp64(wgmma_everywhere, monkeypatch, dtype, T, H, F, E, K):
    out, (x, w, ids, q_gu, s_gu, q_d, s_d), (slots, offsets) = fp8_case(torch.device("cuda"), dtype, T, H, F, E, K)
    assert torch.equal(out, ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d))  # deterministic
    # the ring kernels (same semantics: the scale on the fp32 sums; other summation order)
    monkeypatch.setenv("JAMBA_EXT_FP8_WGMMA", "0")
    ring = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
    assert_close(out, ring, **FP8_TOL[dtype])


@pytest.mark.cuda
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (the wgmma kernel)")
def test_moe_experts_fp8_wgmma_every_e4m3_value_and_one_expert(wgmma_everywhere):
    """Every finite e4m3 bit pattern through the shared-memory conversion (exact for bf16 and f16), and a routing
    where one expert takes every token and the others none."""
    dev = torch.device("cuda")
    T, H, F, E = 150, 256, 192, 4
    check_every_e4m3(dev, T=T, H=H, F=F, E=E)
    logits = torch.zeros(T, E, device=dev)
    logits[:, 2] = 5.0
    w, ids, offsets, slots = ops.moe_route(logits, 1)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    x = randn(T, H, device=dev, dtype=torch.bfloat16)
    out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
    assert_close(out, ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d), **FP8_TOL[torch.bfloat16])


@pytest.mark.cuda
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (the wgmma kernel)")
def test_moe_experts_fp8_wgmma_default_pick_and_graph(monkeypatch):
    """At 256 tokens over 16 experts (32 slots each) the default pick is the wgmma kernel: the same bits as forcing
    it, different bits from the ring; captured in a CUDA graph and replayed on new inputs."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    T, H, F, E, K = 256, 512, 272, 16, 2
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    router = randn(E, H, device=dev, dtype=dt)

    def fn(a):
        w, ids, offsets, slots = ops.moe_route(a @ router.t(), K)
        return ops.moe_experts_fp8(a, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)

    x = randn(T, H, device=dev, dtype=dt)
    monkeypatch.delenv("JAMBA_EXT_FP8_WGMMA", raising=False)
    out = fn(x)
    monkeypatch.setenv("JAMBA_EXT_FP8_WGMMA", "1")
    assert torch.equal(out, fn(x))
    monkeypatch.setenv("JAMBA_EXT_FP8_WGMMA", "0")
    ring = fn(x)
    monkeypatch.delenv("JAMBA_EXT_FP8_WGMMA")
    assert not torch.equal(out, ring)
    assert_close(out, ring, **FP8_TOL[dt])
    news = [(randn(T, H, device=dev, dtype=dt),) for _ in range(2)]
    runs = graph_replays(fn, (randn(T, H, device=dev, dtype=dt),), news)
    for (a,), (o,) in zip(news, runs):
        assert torch.equal(o, fn(a))


def test_moe_experts_fp8_bad_permutation_args(device):
    """The C op's own checks of the permutation arguments (ops.py passes them right; on CPU they are checked and
    not needed, on CUDA they select the ring kernels)."""
    dev, dt = device, torch.bfloat16
    T, H, F, E, K = 40, 64, 32, 4, 2
    x = randn(T, H, device=dev, dtype=dt)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    w, ids, offsets, slots = routed(T, E, K, dev)
    out = torch.empty(T, H, device=dev, dtype=dt)
    act = torch.empty(T * K, F, device=dev, dtype=dt)
    base = [("out", out), ("x", x), ("weights", w.float().contiguous()), ("expert_ids", ids),
            ("w_gate_up", q_gu.view(torch.uint8)), ("s_gate_up", s_gu), ("w_down", q_d.view(torch.uint8)),
            ("s_down", s_d), ("act", act)]
    slot_out = torch.empty(T * K, H, device=dev, dtype=dt)
    no_q8 = [("act8", None), ("x_scale", None), ("act_scale", None), ("sched", None)]
    call = lambda perm, q8=no_q8: ops._call("moe_experts_fp8", dev, "moe_experts_fp8", base + perm + q8)
    with pytest.raises(ValueError, match="together"):
        call([("expert_offsets", offsets), ("sorted_slots", None), ("slot_out", slot_out)])
    with pytest.raises(ValueError, match="expert_offsets"):
        call([("expert_offsets", offsets[:-1]), ("sorted_slots", slots), ("slot_out", slot_out)])
    with pytest.raises(ValueError, match="slot_out"):
        call([("expert_offsets", offsets), ("sorted_slots", slots), ("slot_out", slot_out[:, :-1])])
    call([("expert_offsets", offsets), ("sorted_slots", slots), ("slot_out", slot_out)])
    assert_close(out, ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d), **FP8_TOL[dt])
    # the W8A8 workspaces (act_fp8): all four, with the permutation, of their shapes; the CPU refuses them
    perm = [("expert_offsets", offsets), ("sorted_slots", slots), ("slot_out", slot_out)]
    q8 = {"act8": torch.empty(T * K, F, device=dev, dtype=torch.uint8),
          "x_scale": torch.empty(T * K, device=dev), "act_scale": torch.empty(T * K, device=dev),
          "sched": torch.empty(2, device=dev, dtype=torch.int32)}
    with pytest.raises(ValueError, match="together"):
        call(perm, [(n, None if n == "act_scale" else t) for n, t in q8.items()])
    with pytest.raises(ValueError, match="together"):
        call([("expert_offsets", None), ("sorted_slots", None), ("slot_out", None)], list(q8.items()))
    with pytest.raises(ValueError, match="act8"):
        call(perm, [(n, t[:, :-1] if n == "act8" else t) for n, t in q8.items()])
    with pytest.raises(ValueError, match="x_scale"):
        call(perm, [(n, t.double() if n == "x_scale" else t) for n, t in q8.items()])
    with pytest.raises(ValueError, match="overlap"):
        call(perm, [(n, q8["x_scale"] if n == "act_scale" else t) for n, t in q8.items()])
    if dev.type == "cpu":
        with pytest.raises(RuntimeError, match="Hopper"):
            call(perm, list(q8.items()))


# ---- fp8 activations (act_fp8: W8A8 on Hopper, moe_wgmma_gemm_q8) ---------------------------------------------------
def test_quantize_rows_fp8_reference():
    """reference.quantize_rows_fp8 (the oracle of the CUDA quantization): within e4m3's rounding of every value, the
    row maximum maps to +-448, a zero row to scale 1 and zeros, NaN propagates."""
    x = randn(6, 300, dtype=torch.bfloat16)
    x[2] = 0
    x[3, 5] = -7.5  # the row's maximum
    x[4, 9] = float("nan")
    q, s = reference.quantize_rows_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape and s.dtype == torch.float32 and s.shape == (6,)
    assert s[2] == 1 and (q[2].float() == 0).all()
    assert q[3, 5].float() == -448 and torch.isclose(s[3], torch.tensor(7.5 / 448))
    assert torch.isnan(q[4].float()).any()
    fin = [0, 1, 3, 5]
    back, xf = q.double()[fin] * s[fin].double()[:, None], x[fin].double()  # (torch 2.4 indexes no fp8 on CPU)
    bound = xf.abs() * 2.0 ** -4 + s[fin].double()[:, None] * 2.0 ** -10  # 3 mantissa bits; subnormals 2^-9 apart
    assert ((back - xf).abs() <= bound).all() and (back - xf).abs().max() > 0


def test_moe_experts_fp8_act_fp8_ignored_off_hopper(device):
    """act_fp8 is a permission: where no W8A8 kernel runs (the CPU, other GPUs, the decode sizes) the result is the
    weight-only one, bit for bit."""
    dev, dt = device, torch.bfloat16
    if dev.type == "cuda" and hopper_code():
        T = ops.FP8_W8A8_MIN_TOKENS - 1  # below the W8A8 kernel's sizes
    else:
        T = 40
    x = randn(T, 272, device=dev, dtype=dt)
    q_gu, s_gu, q_d, s_d = fp8_experts(8, 272, 144, dev)
    w, ids, offsets, slots = routed(T, 8, 2, dev)
    a = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets)
    b = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets, act_fp8=True)
    assert torch.equal(a, b)
    # the public predicate says the same (jamba_ext check picks its oracle by it), and says yes from the W8A8 sizes on
    # where a W8A8 kernel exists
    assert not ops.fp8_act_applies(x, T, 144)
    hopper = dev.type == "cuda" and hopper_code()  # a Hopper GPU and a build with sm_90 code
    assert ops.fp8_act_applies(x, ops.FP8_W8A8_MIN_TOKENS, 144) == hopper
    assert not ops.fp8_act_applies(x.float(), ops.FP8_W8A8_MIN_TOKENS, 144)  # fp32 x: no W8A8 kernel


def ref_w8a8(x, w, ids, q_gu, s_gu, q_d, s_d, act_amax_ulps=0, per_slot=False):
    return reference.moe_experts_fp8_w8a8(x.cpu(), w.to(x.dtype).double().cpu(), ids.long().cpu(), q_gu.cpu(),
                                          s_gu.cpu(), q_d.cpu(), s_d.cpu(), act_amax_ulps, per_slot).to(x.device)


def w8a8_check(out, x, w, ids, q_gu, s_gu, q_d, s_d):
    """out (the W8A8 op) against its fp64 oracle. The op's act is rounded to x's dtype from fp32 sums in the tensor
    cores' order, the oracle's from fp64 sums: where a row's largest act element rounds differently, the row's act scale
    differs and its whole act row is quantized anew, so that row's output moves by e4m3 noise (a few % of its values:
    1.5-3.5% of the output scale in 1-2% of the rows on the H200, dev/w8a8_diag.py). So: every error below 6% of the
    output scale (a wrong scale or row would be ~100%), the typical row (the median of the rows' largest errors) within
    1%, and the mean error at most a third of the oracle's own distance from the weight-only result (so the
    activations were quantized: an op that skipped a quantization would sit near the weight-only result)."""
    ref8 = ref_w8a8(x, w, ids, q_gu, s_gu, q_d, s_d)
    ref16 = ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d).double()
    scale = ref8.abs().max().item()
    # each row against the oracle it is closest to among those whose act rows (one per slot of the token, each on
    # its own) take the row maximum as computed, or one unit of x's dtype down / up (the T = 1 f16 case failed on a
    # flipped maximum without them; f16 flips ~8x as often as bf16)
    ys = [ref_w8a8(x, w, ids, q_gu, s_gu, q_d, s_d, u, per_slot=True) for u in (0, -1, 1)]  # (T, K, H) each
    K = ids.shape[1]
    combos = [sum(ys[v][:, j] for j, v in enumerate(c)) for c in itertools.product(range(3), repeat=K)]
    errs = torch.stack([(out.double() - r).abs() for r in combos])
    best = errs.amax(2).argmin(0)
    err = errs[best, torch.arange(out.shape[0], device=out.device)]
    assert err.max().item() <= 6e-2 * scale, (err.max().item(), scale)
    assert err.amax(1).median().item() <= 1e-2 * scale, (err.amax(1).median().item(), scale)
    gap = (ref8 - ref16).abs().mean().item()
    assert err.mean().item() <= gap / 3, (err.mean().item(), gap)


# (T, H, F): as WGMMA_SHAPES, plus one token, 1000 tokens, and act rows longer than the quantization kernel holds in
# registers (F 16400 > 16384: the rest read again)
W8A8_SHAPES = [(1, 272, 144), (7, 272, 144), (33, 272, 144), (64, 512, 272), (300, 208, 48), (200, 1040, 400),
               (1000, 256, 128), (70, 64, 16400)]


@pytest.fixture
def w8a8_everywhere(monkeypatch):
    monkeypatch.setattr(ops, "FP8_W8A8_MIN_TOKENS", 1)  # the W8A8 kernel at every token count (any T runs)


@pytest.mark.cuda
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (the W8A8 kernel)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,H,F", W8A8_SHAPES, ids=[f"T{t}H{h}F{f}" for t, h, f in W8A8_SHAPES])
@pytest.mark.parametrize("E,K", [(1, 1), (8, 2), (16, 2)])
def test_moe_experts_fp8_w8a8_matches_fp64(w8a8_everywhere, dtype, T, H, F, E, K):
    dev = torch.device("cuda")
    x = randn(T, H, device=dev, dtype=dtype)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    w, ids, offsets, slots = routed(T, E, K, dev)
    out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets, act_fp8=True)
    assert out.shape == (T, H) and out.dtype == dtype
    w8a8_check(out, x, w, ids, q_gu, s_gu, q_d, s_d)
    # deterministic, and the same without the permutation given
    assert torch.equal(out, ops.moe_experts_fp8(x, w, ids.long(), q_gu, s_gu, q_d, s_d, act_fp8=True))


@pytest.mark.cuda
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (the W8A8 kernel)")
def test_moe_experts_fp8_w8a8_tile_forms_same_bits(w8a8_everywhere, monkeypatch):
    """The persistent kernel's tile forms compute every output at the same place of the same wgmma: half tiles (an
    expert's last <= 64 rows; JAMBA_EXT_WGMMA_HALF) and the epilogue warps (JAMBA_EXT_MOE_EPI=0: without) give the same
    bits; one expert takes every token (5 m-tiles, a 20-row tail) and the others none; rows scaled by 1e-3 and 1e3."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    T, H, F, E = 532, 256, 192, 4
    logits = torch.zeros(T, E, device=dev)
    logits[:, 1] = 5.0
    w, ids, offsets, slots = ops.moe_route(logits, 1)
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    x = randn(T, H, device=dev, dtype=dt)
    x[::3] *= 1e-3
    x[1::3] *= 1e3
    outs = []
    for half, epi in (("0", "1"), ("1", "1"), ("1", "0"), ("0", "0")):
        monkeypatch.setenv("JAMBA_EXT_WGMMA_HALF", half)
        monkeypatch.setenv("JAMBA_EXT_MOE_EPI", epi)
        outs.append(ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets, act_fp8=True))
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    w8a8_check(outs[0], x, w, ids, q_gu, s_gu, q_d, s_d)


@pytest.mark.cuda
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (the W8A8 kernel)")
def test_moe_experts_fp8_w8a8_bad_id_and_graph(w8a8_everywhere):
    """An expert id outside [0, E) gives the token a NaN row (the other rows stay right); the op captured in a CUDA
    graph replays new inputs with the bits of eager calls."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    T, H, F, E, K = 96, 512, 272, 8, 2
    q_gu, s_gu, q_d, s_d = fp8_experts(E, H, F, dev)
    x = randn(T, H, device=dev, dtype=dt)
    w, ids, _, _ = routed(T, E, K, dev)
    bad = ids.clone()
    bad[5, 1] = E
    out = ops.moe_experts_fp8(x, w, bad, q_gu, s_gu, q_d, s_d, act_fp8=True)
    assert torch.isnan(out[5].float()).all()
    good = torch.ones(T, dtype=torch.bool, device=dev)
    good[5] = False
    assert torch.equal(out[good], ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, act_fp8=True)[good])

    def fn(a):
        return ops.moe_experts_fp8(a, w, ids, q_gu, s_gu, q_d, s_d, act_fp8=True)

    news = [(randn(T, H, device=dev, dtype=dt),) for _ in range(2)]
    runs = graph_replays(fn, (randn(T, H, device=dev, dtype=dt),), news)
    for (a,), (o,) in zip(news, runs):
        assert torch.equal(o, fn(a))

