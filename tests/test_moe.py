"""MoE routing, permutation and fused expert dispatch (jamba.moe_route, jamba.moe_permute, jamba.moe_experts,
jamba_ext.moe.sparse_moe_forward) against reference.py in float64.

Tolerances: MOE_TOL below. The op rounds to the model dtype wherever HF's bf16 path does (gate, up, silu,
act, the down output, the weight, each product and the sum): about 6 roundings of 2^-9 on the way, and the
down projection sums F rounded activations, so outputs of magnitude ~1.5 (E=1: weight 1) are off by up to
~3e-2 against fp64 in bf16, by design (HF does the same). bf16 therefore gets rtol 2e-2, atol 4e-2 (the largest of ~2e5 elements reached 3.5e-2); the real
precision check on GPU is the ratio test against the same math done by torch in bf16. fp32 runs compare at
1e-5, except where the GPU accumulates long dot products in another order (fp32 GPU: 1e-4).
Routing tests use logits with gaps >= 0.25 between experts, so that the top-k choice cannot depend on
the last bit of an exp (ids are compared exactly).
"""
import re

import pytest
import torch

from conftest import HAS_GPU, LOW_DTYPES, TOL, assert_close, compile_or_skip, dtype_params, graph_replays, \
    hopper_code, randn, up
from jamba_ext import moe, ops, reference

# (tokens, H, F): H and F multiples of 8 (the tensor-core paths) but of no tile size (32/64/128), smaller
# for the large token counts to keep the CPU suite fast.
TOKEN_SHAPES = [(1, 200, 136), (7, 200, 136), (64, 136, 72), (1000, 72, 40), (8192, 24, 16)]
EXPERTS_TOPK = [(1, 1), (8, 1), (8, 2), (16, 2)]
GPU_IMPLS = ["auto", "mma", "mma64", "mma256", "wgmma", "gemv", "simt"]
MOE_TOL = {torch.float32: TOL[torch.float32], torch.bfloat16: dict(rtol=2e-2, atol=4e-2),
           torch.float16: TOL[torch.float16]}
FP32_GPU_TOL = dict(rtol=1e-4, atol=1e-4)


def tol_for(device, dtype):
    if dtype == torch.float32 and device.type == "cuda":
        return FP32_GPU_TOL
    return MOE_TOL[dtype]


def separated_logits(T, E, device, dtype):
    """(T, E) logits whose values are a random permutation of 0.37 * (0..E-1) plus noise < 0.06."""
    rank = torch.argsort(torch.rand(T, E, device=device), dim=1).float()
    return (rank * 0.37 + torch.rand(T, E, device=device) * 0.06).to(dtype)


def expert_weights(E, H, F, device, dtype):
    w_gate_up = randn(E, 2 * F, H, device=device, dtype=dtype, scale=H ** -0.5)
    w_down = randn(E, H, F, device=device, dtype=dtype, scale=F ** -0.5)
    return w_gate_up, w_down


def routed(T, E, K, device):
    """fp32 routing weights and int32 ids from our router on separated logits."""
    w, ids, offsets, slots = ops.moe_route(separated_logits(T, E, device, torch.float32), K)
    return w, ids, offsets, slots


def ref_experts(x, w, ids, w_gate_up, w_down):
    """float64 oracle; the routing weight is rounded to the model dtype first, as HF does."""
    return reference.moe_experts(up(x), w.to(x.dtype).double(), ids.long(), up(w_gate_up), up(w_down))


def assert_perm(offsets, slots, ids, E):
    ref_off, ref_slots = reference.moe_permute(ids.cpu(), E)
    assert torch.equal(offsets.cpu(), ref_off)
    assert torch.equal(slots.cpu(), ref_slots)


# ---- moe_route ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T", [0, 1, 7, 32, 33, 64, 1000, 8192])
@pytest.mark.parametrize("E,K", EXPERTS_TOPK + [(16, 1), (5, 5), (40, 3)])
def test_moe_route_matches_fp64(device, dtype, T, E, K):
    logits = separated_logits(T, E, device, dtype)
    w, ids, offsets, slots = ops.moe_route(logits, K)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and w.shape == (T, K) and ids.shape == (T, K)
    ref_w, ref_ids = reference.moe_route(up(logits), K)
    assert torch.equal(ids.long().cpu(), ref_ids.cpu())
    assert_close(w, ref_w, rtol=1e-5, atol=1e-7)
    assert_perm(offsets, slots, ids, E)


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T,E,K", [(1, 16, 2), (37, 16, 2), (9, 5, 1), (6, 4, 4)])
def test_moe_route_grad(device, dtype, T, E, K):
    """The routing weights' gradient (the softmax's backward at the chosen ids) against float64 autograd of the
    reference, on separated logits (no ties), top-1 to all E."""
    logits = separated_logits(T, E, device, dtype).requires_grad_(True)
    dw = randn(T, K, device=device)
    w, ids, _, _ = ops.moe_route(logits, K)
    (g,) = torch.autograd.grad(w, logits, dw)
    ref = up(logits.detach()).requires_grad_(True)
    ref_w, ref_ids = reference.moe_route(ref, K)
    assert torch.equal(ids.long().cpu(), ref_ids.cpu())
    (want,) = torch.autograd.grad(ref_w, ref, up(dw))
    assert g.dtype == dtype
    assert_close(g, want.to(dtype), **TOL[dtype])


def test_moe_route_no_renormalisation(device):
    """Jamba keeps the raw softmax values: the top-2 weights sum to < 1."""
    w, _, _, _ = ops.moe_route(separated_logits(33, 16, device, torch.float32), 2)
    assert (w.sum(-1) < 0.999).all()


def test_moe_route_strided_logits(device):
    big = separated_logits(20, 24, device, torch.float32)
    logits = big[:, 4:20]                                   # (20, 16), row stride 24
    w, ids, offsets, slots = ops.moe_route(logits, 2)
    ref_w, ref_ids = reference.moe_route(up(logits), 2)
    assert torch.equal(ids.long().cpu(), ref_ids.cpu())
    assert_close(w, ref_w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", dtype_params([torch.float32, torch.float16]))
@pytest.mark.parametrize("shift", [100.0, -120.0])
def test_moe_route_large_logits(device, dtype, shift):
    """Logits far from 0: exp overflows fp32 above 88 and is 0 below -104, so the softmax must subtract the row's
    maximum first (the logits above stay within +-15). bf16 is left out: its spacing at 100 (0.5) would tie the
    experts."""
    logits = (separated_logits(37, 16, device, torch.float32) + shift).to(dtype)
    w, ids, offsets, slots = ops.moe_route(logits, 2)
    ref_w, ref_ids = reference.moe_route(up(logits), 2)
    assert torch.equal(ids.long().cpu(), ref_ids.cpu())
    assert_close(w, ref_w, rtol=1e-5, atol=1e-7)
    assert_perm(offsets, slots, ids, 16)


# ---- moe_permute ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,K,E", [(0, 2, 4), (1, 1, 1), (9, 2, 8), (1000, 2, 16), (3000, 3, 5), (16384, 2, 16),
                                   (20001, 2, 16)])
def test_moe_permute_matches_reference(device, T, K, E):
    ids = torch.randint(-2, E + 3, (T, K), device=device, dtype=torch.int32)  # some ids out of range
    offsets, slots = ops.moe_permute(ids, E)
    assert_perm(offsets, slots, ids, E)
    assert torch.equal(torch.sort(slots.cpu().long()).values, torch.arange(T * K))
    # int64 ids beyond int32 stay outside [0, E) (the wrap to int32 once put 2^32 + 1 on expert 1)
    big = ids.long()
    if T > 0 and E > 1:
        big[0, 0] = 2 ** 32 + 1
        offsets, slots = ops.moe_permute(big, E)
        assert_perm(offsets, slots, big.clamp(-1, E).int(), E)


# ---- moe_experts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T,H,F", TOKEN_SHAPES, ids=[f"T{t}" for t, _, _ in TOKEN_SHAPES])
@pytest.mark.parametrize("E,K", EXPERTS_TOPK, ids=[f"E{e}k{k}" for e, k in EXPERTS_TOPK])
def test_moe_experts_matches_fp64(device, dtype, T, H, F, E, K):
    x = randn(T, H, device=device, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, device, dtype)
    w, ids, offsets, slots = routed(T, E, K, device)
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets)
    assert out.shape == (T, H) and out.dtype == dtype
    ref = ref_experts(x, w, ids, w_gate_up, w_down)
    assert_close(out, ref, **tol_for(device, dtype))
    # without the precomputed permutation (computed inside), int64 ids (torch.topk's)
    out2 = ops.moe_experts(x, w, ids.long(), w_gate_up, w_down)
    assert torch.equal(out, out2)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("impl", GPU_IMPLS + ["grouped_mm"])
@pytest.mark.parametrize("T,H,F,E,K", [(1, 200, 136, 16, 2), (37, 136, 72, 8, 2), (64, 256, 512, 16, 2),
                                       (300, 264, 200, 4, 1), (2048, 128, 96, 16, 2), (130, 1096, 1048, 4, 2)])
def test_moe_experts_gpu_impls(impl, T, H, F, E, K):
    """Every CUDA engine on every regime (bf16 against the fp32 and fp64 references), plus a ratio check:
    our error is at most ~3x the error of the same math done by torch in bf16 (HF's slow path)."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch._grouped_mm missing")
    x = randn(T, H, device=dev, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    w, ids, offsets, slots = routed(T, E, K, dev)
    if impl == "wgmma" and not hopper_code():  # elsewhere the forced Hopper engine is an error that says why
        with pytest.raises(RuntimeError, match="impl wgmma needs a Hopper GPU"):
            ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl)
        return
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl)
    ref = ref_experts(x, w, ids, w_gate_up, w_down)
    assert_close(out, ref, **MOE_TOL[dtype])
    ref32 = reference.moe_experts(x.float(), w.to(dtype).float(), ids.long(), w_gate_up.float(), w_down.float())
    assert_close(out, ref32, **MOE_TOL[dtype])
    low = reference.moe_experts(x, w.to(dtype), ids.long(), w_gate_up, w_down)
    err = (out.double() - ref).abs().max().item()
    err_low = (low.double() - ref).abs().max().item()
    assert err <= 3 * err_low + 1e-3, f"error {err:.3e} vs bf16 torch path {err_low:.3e}"


# The wgmma engines' tile-edge cases (T, H, F, E, K, dtype): partial last tiles and W blocks of every size, k tails,
# an expert with every first choice and empty experts (E 16: _wgmma_case), k tiles wrapping the stage ring, more tiles
# than SMs, experts of 129-192 rows (merged tiles) and of more than 320 (the swap engine's chunks), f16 too
WGMMA_CASES = [(300, 264, 200, 4, 1, torch.bfloat16), (130, 1096, 1048, 4, 2, torch.bfloat16),
               (2048, 128, 96, 16, 2, torch.bfloat16), (37, 136, 72, 8, 2, torch.float16),
               (200, 72, 40, 1, 1, torch.bfloat16), (97, 136, 64, 16, 2, torch.float16),
               (1000, 256, 2048, 4, 2, torch.bfloat16), (600, 1096, 1040, 8, 2, torch.float16),
               (1200, 264, 520, 16, 2, torch.bfloat16), (900, 200, 192, 4, 2, torch.bfloat16)]


def _wgmma_case(dev, T, H, F, E, K, dtype):
    """x, the expert weights and a routing (w, ids, offsets, slots) for one of WGMMA_CASES; E == 16: lopsided, expert
    3 gets every first choice and experts 8.. none."""
    x = randn(T, H, device=dev, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    w, ids, offsets, slots = routed(T, E, K, dev)
    if E == 16:
        ids = ids.clone()
        ids[:, 0] = 3
        ids[:, 1:] = torch.randint(0, 8, (T, K - 1), device=dev, dtype=ids.dtype)
        ids[:, 1:] += (ids[:, 1:] >= 3).to(ids.dtype)
        offsets, slots = ops.moe_permute(ids, E)
    return x, w_gate_up, w_down, w, ids, offsets, slots


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_moe_wgmma_tiles(monkeypatch):
    """The wgmma engine on tile-edge cases: partial last tiles of every size, an expert with all first choices,
    empty experts, k tiles wrapping the stage ring, more tiles than SMs, f16 too; two runs bit-identical; both
    tilings (JAMBA_EXT_WGMMA_TILES=all: 128 x 256 tiles only; =tail: the <= 64-row tails as 64 x 512 tiles, as
    impl wgmma runs up to 16 slots per expert) and both 128 x 256 kernels (persistent, the default, with its
    64 x 256 half tiles for an expert's last <= 64 rows by size (down's from more slots an expert than gate_up's; both
    from the same size with JAMBA_EXT_WGMMA_HALF=b; gate_up's at every size with =G), forced on and off with
    JAMBA_EXT_WGMMA_HALF=1 / 0,
    with and without its epilogue warps, JAMBA_EXT_MOE_EPI=0, with merged tiles, JAMBA_EXT_MOE_MERGE=1, and not:
    JAMBA_EXT_WGMMA_PERSIST=0) give the same bits (the swap engine off, also where it runs by size); so do the epilogues that round a value a conversion
    (JAMBA_EXT_MOE_EPI_F2F=1; the default rounds pairs, moe_act_fast2 / moe_scaled2), with the epilogue warps and
    without; the cases include experts with 129-192 rows (merged tiles)."""
    if not hopper_code():
        pytest.skip("wgmma engine: Hopper only")
    dev = torch.device("cuda")
    n_merged = 0  # experts whose last <= 64 rows form a merged tile
    for T, H, F, E, K, dtype in WGMMA_CASES:
        x, w_gate_up, w_down, w, ids, offsets, slots = _wgmma_case(dev, T, H, F, E, K, dtype)
        monkeypatch.setenv("JAMBA_EXT_MOE_SWAP", "0")   # the tiles, also where the swap engine runs by size
        monkeypatch.setenv("JAMBA_EXT_WGMMA_TILES", "all")
        monkeypatch.setenv("JAMBA_EXT_MOE_MERGE", "0")  # merged tiles (on by size) only where asked for below
        base = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        again = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        assert torch.equal(again, base), (T, H, F, E, K, dtype)
        assert_close(base, ref_experts(x, w, ids, w_gate_up, w_down), **MOE_TOL[dtype])
        monkeypatch.setenv("JAMBA_EXT_MOE_EPI_F2F", "1")
        f2f = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.setenv("JAMBA_EXT_MOE_EPI", "0")
        f2f_noepi = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.delenv("JAMBA_EXT_MOE_EPI")
        monkeypatch.delenv("JAMBA_EXT_MOE_EPI_F2F")
        assert torch.equal(f2f, base) and torch.equal(f2f_noepi, base), ("epilogue a value a conversion", T, H, F, E,
                                                                          K, dtype)
        # every output at the same place of the same wgmma instruction in both tilings: the same bits
        monkeypatch.setenv("JAMBA_EXT_WGMMA_TILES", "tail")
        tail = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        # the 128 x 256 tiles without the persistent kernel (JAMBA_EXT_WGMMA_PERSIST=0; base ran persistent)
        monkeypatch.setenv("JAMBA_EXT_WGMMA_TILES", "all")
        monkeypatch.setenv("JAMBA_EXT_WGMMA_PERSIST", "0")
        persist = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.delenv("JAMBA_EXT_WGMMA_PERSIST")
        # the persistent kernel with and without its half tiles (an expert's last <= 64 rows as 64 x 256)
        monkeypatch.setenv("JAMBA_EXT_WGMMA_HALF", "0")
        nohalf = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.setenv("JAMBA_EXT_WGMMA_HALF", "1")
        half = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        # by size in both GEMMs from 384 slots an expert (the rule before session 66; by default down's from 1024)
        monkeypatch.setenv("JAMBA_EXT_WGMMA_HALF", "b")
        half_both = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        # gate_up's at every size, down's by size (session 67's A/B)
        monkeypatch.setenv("JAMBA_EXT_WGMMA_HALF", "G")
        half_g_all = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        # the persistent kernel without its epilogue warps (JAMBA_EXT_MOE_EPI=0: the consumers run all of gate_up's
        # epilogue), half tiles on and off; base ran with them
        monkeypatch.setenv("JAMBA_EXT_MOE_EPI", "0")
        monkeypatch.setenv("JAMBA_EXT_WGMMA_HALF", "1")
        noepi_half = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.setenv("JAMBA_EXT_WGMMA_HALF", "0")
        noepi_nohalf = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.delenv("JAMBA_EXT_MOE_EPI")
        assert torch.equal(noepi_half, base) and torch.equal(noepi_nohalf, base), ("no epilogue warps", T, H, F, E, K,
                                                                                  dtype)
        # merged tiles (an expert's last <= 64 rows in one tile with the 128 rows before them), both GEMMs
        cnt = (offsets[1:] - offsets[:-1]).tolist()
        n_merged += sum(1 for c in cnt if c > 128 and 0 < c % 128 <= 64)
        monkeypatch.setenv("JAMBA_EXT_MOE_MERGE", "1")
        merged = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.delenv("JAMBA_EXT_MOE_MERGE")  # the size rules from here on (auto)
        assert torch.equal(merged, base), ("merged tiles", T, H, F, E, K, dtype)
        monkeypatch.delenv("JAMBA_EXT_WGMMA_HALF")
        monkeypatch.delenv("JAMBA_EXT_WGMMA_TILES")
        auto = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        assert torch.equal(tail, base) and torch.equal(auto, base), ("tilings", T, H, F, E, K, dtype)
        assert torch.equal(persist, base), ("non-persistent", T, H, F, E, K, dtype)
        assert torch.equal(nohalf, base) and torch.equal(half, base) and torch.equal(half_both, base) \
            and torch.equal(half_g_all, base), ("half tiles", T, H, F, E, K, dtype)
    assert n_merged >= 3, n_merged


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_moe_swap_engine(monkeypatch):
    """The swap-AB engine (JAMBA_EXT_MOE_SWAP=1: moe_swap_kernel for both GEMMs of impl wgmma) against the fp64
    reference and the default wgmma engine: partial W blocks (F, H not multiples of 64 / 128), k tails (Kd % 64 = 8),
    experts of more than 320 rows (several chunks), an expert with every first choice and empty experts, f16 too,
    more than 32 experts; more tiles than SMs, one k tile a tile; two runs bit-identical, and bit-identical to the
    epilogues that round a value a conversion (JAMBA_EXT_MOE_EPI_F2F=1; the default rounds pairs, moe_act_fast2 /
    moe_scaled2); every chunk count 1-10 among the cases (a k16 step's wgmma is m64n(32 x chunks)k16, two past 8
    chunks); E = 40 takes the chunk scan's two rounds of 32 experts; the token rows loaded a chunk a TMA load or up to
    2 (JAMBA_EXT_MOE_SWAP_ABOX=32 / 64) bit-identical to the default's up to 4; the profiler shows the swap kernel ran."""
    if not hopper_code():
        pytest.skip("wgmma engines: Hopper only")
    dev = torch.device("cuda")
    extra = [(700, 512, 136, 2, 2, torch.bfloat16),        # 3 chunks an expert
             (1400, 2048, 1024, 8, 2, torch.bfloat16),     # ~350 rows an expert: 2 chunks
             (4000, 64, 2048, 16, 2, torch.bfloat16),      # gate_up: KT 1, ~1000 tiles
             (3000, 2048, 64, 16, 2, torch.float16),       # down: KT 1, ~400 tiles
             (5000, 136, 200, 40, 2, torch.bfloat16)]      # E > 32
    for T, H, F, E, K, dtype in WGMMA_CASES + extra:
        x, w_gate_up, w_down, w, ids, offsets, slots = _wgmma_case(dev, T, H, F, E, K, dtype)
        monkeypatch.setenv("JAMBA_EXT_MOE_SWAP", "0")
        base = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.setenv("JAMBA_EXT_MOE_SWAP", "1")
        out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        again = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        assert torch.equal(again, out), (T, H, F, E, K, dtype)
        for abox in ("32", "64"):   # A loads of a chunk / up to 2 (the default: up to 4, mixed boxes)
            monkeypatch.setenv("JAMBA_EXT_MOE_SWAP_ABOX", abox)
            boxed = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
            assert torch.equal(boxed, out), ("A boxes", abox, T, H, F, E, K, dtype)
        monkeypatch.delenv("JAMBA_EXT_MOE_SWAP_ABOX")
        monkeypatch.setenv("JAMBA_EXT_MOE_EPI_F2F", "1")
        f2f = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.delenv("JAMBA_EXT_MOE_EPI_F2F")
        assert torch.equal(f2f, out), ("epilogue a value a conversion", T, H, F, E, K, dtype)
        ref = ref_experts(x, w, ids, w_gate_up, w_down)
        assert_close(out, ref, **MOE_TOL[dtype])
        err, err_base = (out.double() - ref).abs().max().item(), (base.double() - ref).abs().max().item()
        assert err <= 2 * err_base + 1e-3, (T, H, F, E, K, dtype, err, err_base)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    assert any("moe_swap_kernel" in n for n in names), sorted(names)[:20]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("mode", ["g", "d"])
def test_moe_swap_one_gemm(monkeypatch, mode):
    """JAMBA_EXT_MOE_SWAP=g / d (A/B, session 67): the swap-AB engine in gate_up / down only and the persistent
    128 x 256 tiles in the other GEMM, against the fp64 reference and the default engines; two runs bit-identical;
    the profiler shows the swap kernel of that GEMM only (moe_swap_kernel<T, true> is gate_up's) and the persistent
    kernel beside it. The default rule: down alone on the swap engine from 368 to 607 slots an expert on average (the
    same bits as "d"), both GEMMs on the tiles outside that band and the 176-303 one (the same bits as "0")."""
    if not hopper_code():
        pytest.skip("wgmma engines: Hopper only")
    dev = torch.device("cuda")
    cases = [(1400, 2048, 1024, 8, 2, torch.bfloat16), (1200, 264, 520, 16, 2, torch.bfloat16),
             (600, 1096, 1040, 8, 2, torch.float16), (900, 200, 192, 4, 2, torch.bfloat16),
             (3000, 264, 520, 16, 2, torch.bfloat16)]
    for T, H, F, E, K, dtype in cases:
        x, w_gate_up, w_down, w, ids, offsets, slots = _wgmma_case(dev, T, H, F, E, K, dtype)
        monkeypatch.setenv("JAMBA_EXT_MOE_SWAP", "0")
        base = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        monkeypatch.setenv("JAMBA_EXT_MOE_SWAP", mode)
        out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            again = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
            torch.cuda.synchronize()
        assert torch.equal(again, out), (mode, T, H, F, E, K, dtype)
        ref = ref_experts(x, w, ids, w_gate_up, w_down)
        assert_close(out, ref, **MOE_TOL[dtype])
        err, err_base = (out.double() - ref).abs().max().item(), (base.double() - ref).abs().max().item()
        assert err <= 2 * err_base + 1e-3, (mode, T, H, F, E, K, dtype, err, err_base)
        names = {e.name for e in prof.events()}
        assert _swap_gemms(names) == {"true" if mode == "g" else "false"}, (mode, sorted(names))
        assert any("moe_wgmma_persist_kernel" in n for n in names), (mode, sorted(names))
        monkeypatch.delenv("JAMBA_EXT_MOE_SWAP")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            dflt = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "wgmma")
            torch.cuda.synchronize()
        names = {e.name for e in prof.events()}
        if 368 * E <= T * K < 608 * E:   # the default engines: down alone on the swap engine
            assert _swap_gemms(names) == {"false"}, ("default in the down band", T, E, K, sorted(names))
            if mode == "d":
                assert torch.equal(dflt, out), ("default in the down band", T, H, F, E, K, dtype)
        elif not 176 * E <= T * K < 304 * E:   # the tiles in both GEMMs
            assert _swap_gemms(names) == set(), ("default outside the bands", T, E, K, sorted(names))
            assert torch.equal(dflt, base), ("default outside the bands", T, H, F, E, K, dtype)


def _swap_gemms(names):
    """Which GEMMs a profile's moe_swap_kernel launches ran: "true" gate_up, "false" down (its GATE_UP parameter)."""
    return {m.group(1) for n in names for m in [re.search(r"moe_swap_kernel<[^,<>]+, (true|false)>", n)] if m}


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("T", [1, 64, 300, 2100])
def test_moe_on_second_gpu(T):
    """Routing, permutation and the auto engines of moe_experts (decode kernel, the Hopper wgmma engine in both
    tilings, mma64 elsewhere) on cuda:1 while cuda:0 is current, on a side stream of cuda:1: against float64,
    and the current device unchanged."""
    torch.cuda.set_device(0)
    d1 = torch.device("cuda:1")
    H, F, E, K = (136, 72, 16, 2) if T < 2100 else (256, 128, 16, 2)
    side = torch.cuda.Stream(device=d1)
    with torch.cuda.stream(side):
        x = randn(T * (2 if T == 2100 else 1), H, device=d1, dtype=torch.bfloat16)
        w_gate_up, w_down = expert_weights(E, H, F, d1, torch.bfloat16)
        w, ids, offsets, slots = routed(x.shape[0], E, K, d1)
        out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "auto")
    side.synchronize()
    assert torch.cuda.current_device() == 0 and out.device == d1
    assert_close(out, ref_experts(x, w, ids, w_gate_up, w_down), **MOE_TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", dtype_params())
def test_moe_experts_odd_sizes(device, dtype):
    """H and F not multiples of 8: the SIMT path on CUDA (tensor-core paths need 16-byte rows)."""
    T, H, F, E, K = 45, 37, 23, 6, 2
    x = randn(T, H, device=device, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, device, dtype)
    w, ids, offsets, slots = routed(T, E, K, device)
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets)
    assert_close(out, ref_experts(x, w, ids, w_gate_up, w_down), **tol_for(device, dtype))


def skip_impl_not_here(device, impl):
    if device.type == "cpu" and impl != "auto":
        pytest.skip("CUDA engine")
    if device.type == "cuda" and impl == "wgmma" and not hopper_code():
        pytest.skip("the wgmma engine runs on Hopper only (elsewhere impl='wgmma' is an error)")


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", dtype_params(LOW_DTYPES))
def test_moe_experts_lopsided_routing(device, dtype, impl):
    """Every token's first choice is expert 3 (one expert gets all 1000 tokens: several m-tiles, many decode
    passes); second choices among {0, 1}; experts 2 and 4..15 get nothing."""
    skip_impl_not_here(device, impl)
    T, H, F, E = 1000, 72, 40, 16
    x = randn(T, H, device=device, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, device, dtype)
    ids = torch.stack([torch.full((T,), 3, device=device), torch.randint(0, 2, (T,), device=device)], 1).int()
    w = torch.rand(T, 2, device=device) * 0.5 + 0.1
    offsets, slots = ops.moe_permute(ids, E)
    counts = (offsets[1:] - offsets[:-1]).cpu()
    assert counts[3] == T and counts[2] == 0 and counts[4:].sum() == 0
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl)
    assert_close(out, ref_experts(x, w, ids, w_gate_up, w_down), **MOE_TOL[dtype])


def test_moe_experts_empty(device):
    x = randn(0, 24, device=device, dtype=torch.bfloat16)
    w_gate_up, w_down = expert_weights(4, 24, 16, device, torch.bfloat16)
    w, ids, offsets, slots = routed(0, 4, 2, device)
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets)
    assert out.shape == (0, 24)


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("T", [1, 64, 1000])
def test_moe_experts_deterministic(device, T, impl):
    """Two runs are bit-identical (no float atomics: fixed-order split-K and combine)."""
    skip_impl_not_here(device, impl)
    H, F, E, K = 136, 72, 16, 2
    x = randn(T, H, device=device, dtype=torch.bfloat16)
    w_gate_up, w_down = expert_weights(E, H, F, device, torch.bfloat16)
    w, ids, offsets, slots = routed(T, E, K, device)
    a = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl)
    b = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl)
    assert torch.equal(a, b)
    logits = randn(T, E, device=device)
    r1, r2 = ops.moe_route(logits, K), ops.moe_route(logits, K)
    assert all(torch.equal(p, q) for p, q in zip(r1, r2))


# ---- decode engines (impl gemv): moe_gemv.cu (T <= 4), moe_decode_kernel (the ring kernel) -----------------------
# T picks the ring kernel's n-tiles per pass (<= 8: 1, <= 16: 2, more: 4); H, F multiples
# of 8 but not of the 32-output tiles or the 64-k steps; (24, 16): one k step, so some k-split warps get no k at all.
DECODE_CASES = [(1, 200, 136, 16, 2), (1, 24, 16, 16, 2), (3, 264, 200, 4, 3), (4, 72, 40, 1, 1), (5, 72, 40, 1, 1),
                (8, 200, 136, 8, 1),
                (9, 136, 72, 16, 2), (16, 264, 200, 8, 2), (17, 72, 40, 16, 2), (40, 200, 136, 16, 2),
                (130, 24, 16, 8, 1)]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("t1", ["default", "ring", "mt2"])
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=["bf16", "f16"])
@pytest.mark.parametrize("T,H,F,E,K", DECODE_CASES, ids=[f"T{c[0]}H{c[1]}F{c[2]}E{c[3]}k{c[4]}" for c in DECODE_CASES])
def test_moe_decode_engine(monkeypatch, t1, dtype, T, H, F, E, K):
    """impl gemv: up to 4 tokens the GEMV kernels of moe_gemv.cu, with JAMBA_EXT_MOE_GEMV=0 (t1 "ring") and from
    5 tokens the ring kernels of moe.cu at every n-tile count, tail tiles, idle k-splits; E = 1 / 8 / 16,
    top-1/2: deterministic, and matches the fp64 reference. "mt2": the ring kernels at every token count with the
    down GEMM on 2 m16 tiles a warp (JAMBA_EXT_MOE_DEC_MT=2, the A/B of the default 1)."""
    if t1 in ("ring", "mt2"):
        monkeypatch.setenv("JAMBA_EXT_MOE_GEMV", "0")
    if t1 == "mt2":
        monkeypatch.setenv("JAMBA_EXT_MOE_DEC_MT", "2")
    dev = torch.device("cuda")
    x = randn(T, H, device=dev, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    w, ids, offsets, slots = routed(T, E, K, dev)
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "gemv")
    assert torch.equal(out, ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "gemv"))
    assert_close(out, ref_experts(x, w, ids, w_gate_up, w_down), **MOE_TOL[dtype])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("T", [3, 8, 12, 40])
def test_moe_decode_repeated_ids(T):
    """Both slots of every token on expert 2 (ids repeat within a token): expert 2 has 2T tokens, more than the
    token count that sized the pass (extra passes); the other experts get nothing."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    H, F, E = 136, 72, 4
    x = randn(T, H, device=dev, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    ids = torch.full((T, 2), 2, device=dev, dtype=torch.int32)
    w = torch.rand(T, 2, device=dev) * 0.5 + 0.1
    offsets, slots = ops.moe_permute(ids, E)
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "gemv")
    assert_close(out, ref_experts(x, w, ids, w_gate_up, w_down), **MOE_TOL[dtype])


# T == 1 runs the GEMV kernels of moe_gemv.cu (t1 "default"; H or F = 4104: a last chunk of 8 elements, 24: one
# chunk, so warps along K without work), or with JAMBA_EXT_MOE_GEMV=0 moe_decode_kernel (t1 "ring"; 4104: a half
# tail tile; 24: one k step). K = 12: twelve experts of 16 touched (more slots than the down kernel's 8 per pass).
ONE_TOKEN_CASES = [(1, 200, 136, 16, 2), (1, 24, 16, 16, 2), (1, 72, 40, 1, 1), (1, 264, 200, 16, 12),
                 (1, 24, 4104, 4, 4), (1, 4104, 24, 4, 4), (1, 4104, 4104, 4, 4)]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("t1", ["default", "ring"])
@pytest.mark.parametrize("impl", ["gemv", "auto"])
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=["bf16", "f16"])
@pytest.mark.parametrize("T,H,F,E,K", ONE_TOKEN_CASES,
                         ids=[f"T{c[0]}H{c[1]}F{c[2]}E{c[3]}k{c[4]}" for c in ONE_TOKEN_CASES])
def test_moe_decode_one_token(monkeypatch, t1, impl, dtype, T, H, F, E, K):
    """One token (the GEMV kernels, or the ring kernel with JAMBA_EXT_MOE_GEMV=0; impl auto picks gemv there):
    deterministic, matches the fp64 reference and, within the same tolerance, the same token decoded next to
    another one (T = 2: moe_decode_kernel); all K slots on one expert (K > 8: extra passes); out-of-range ids give
    a NaN row."""
    if t1 == "ring":
        monkeypatch.setenv("JAMBA_EXT_MOE_GEMV", "0")
    dev = torch.device("cuda")
    x = randn(T, H, device=dev, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    w, ids, offsets, slots = routed(T, E, K, dev)
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl)
    assert torch.equal(out, ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, impl))
    assert_close(out, ref_experts(x, w, ids, w_gate_up, w_down), **MOE_TOL[dtype])
    x2 = torch.cat([x, randn(1, H, device=dev, dtype=dtype)])
    w2, ids2 = torch.cat([w, w.flip(0)]), torch.cat([ids, ids.flip(1)])
    pair = ops.moe_experts(x2, w2, ids2, w_gate_up, w_down, impl=impl)
    assert_close(out, pair[:1], **MOE_TOL[dtype])
    # all K slots on expert E-1 (ids repeat within the token), K = 12: two passes of 8
    for k in sorted({K, 12}):
        idr = torch.full((T, k), E - 1, device=dev, dtype=torch.int32)
        wr = torch.rand(T, k, device=dev) * 0.5 + 0.1
        offr, slr = ops.moe_permute(idr, E)
        outr = ops.moe_experts(x, wr, idr, w_gate_up, w_down, slr, offr, impl)
        assert torch.equal(outr, ops.moe_experts(x, wr, idr, w_gate_up, w_down, slr, offr, impl))
        assert_close(outr, ref_experts(x, wr, idr, w_gate_up, w_down), **MOE_TOL[dtype])
    # one bad id (the other slots still run), every id bad (no tile at all): NaN rows
    for bad in (torch.cat([torch.full((T, 1), E, device=dev, dtype=torch.int32), ids[:, 1:]], 1),
                torch.full((T, K), -1, device=dev, dtype=torch.int32)):
        assert torch.isnan(ops.moe_experts(x, w, bad, w_gate_up, w_down, impl=impl)).all()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("kw", ["1,1", "2,8", "8,2", "4,4"])
@pytest.mark.parametrize("T,H,F,E,K", [(1, 4104, 2056, 4, 2), (1, 264, 4104, 16, 3), (1, 24, 16, 16, 12)],
                         ids=["H4104", "F4104", "k12"])
def test_moe_gemv_warps_along_k(monkeypatch, kw, T, H, F, E, K):
    """The one-token GEMV kernels with every warps-along-K split forced (JAMBA_EXT_MOE_GEMV="g,d"; by default it
    follows the reduction's length): the same result within rounding, deterministic, vs the fp64 reference."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    x = randn(T, H, device=dev, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    w, ids, offsets, slots = routed(T, E, K, dev)
    monkeypatch.setenv("JAMBA_EXT_MOE_GEMV", kw)
    out = ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "gemv")
    assert torch.equal(out, ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets, "gemv"))
    assert_close(out, ref_experts(x, w, ids, w_gate_up, w_down), **MOE_TOL[dtype])


# ---- the model entry ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", dtype_params())
def test_sparse_moe_forward_matches_fp64(device, dtype):
    T, H, F, E, K = 50, 64, 48, 8, 2
    x = randn(2, T // 2, H, device=device, dtype=dtype)
    router = randn(E, H, device=device, dtype=dtype, scale=2.0)
    w_gate_up, w_down = expert_weights(E, H, F, device, dtype)
    out, logits = moe.sparse_moe_forward(x, router, w_gate_up, w_down, K)
    assert out.shape == x.shape and logits.shape == (T, E)
    ref_logits = torch.nn.functional.linear(x.reshape(T, H), router)
    assert torch.equal(logits, ref_logits)
    ref_w, ref_ids = reference.moe_route(logits.float(), K)     # fp32 softmax, ties to the lower id
    ref = reference.moe_experts(up(x.reshape(T, H)), ref_w.to(dtype).double(), ref_ids, up(w_gate_up), up(w_down))
    assert_close(out.reshape(T, H), ref, **tol_for(device, dtype))


# ---- torch integration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_moe_opcheck(device, requires_grad):
    T, H, F, E, K = 11, 24, 16, 4, 2
    logits = randn(T, E, device=device).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.moe_route.default, (logits, K))
    w, ids, offsets, slots = routed(T, E, K, device)
    torch.library.opcheck(torch.ops.jamba.moe_permute.default, (ids, E))
    x = randn(T, H, device=device).requires_grad_(requires_grad)
    w_gate_up, w_down = expert_weights(E, H, F, device, torch.float32)
    w_gate_up.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.jamba.moe_experts.default, (x, w, ids, w_gate_up, w_down, slots, offsets, "auto"))
    torch.library.opcheck(torch.ops.jamba.moe_experts.default, (x, w, ids, w_gate_up, w_down, None, None, "auto"))


def test_moe_experts_grad_matches_reference(device):
    """Autograd goes through reference.moe_experts (correct, not fast)."""
    T, H, F, E, K = 9, 16, 8, 4, 2
    x = randn(T, H, device=device).requires_grad_(True)
    w_gate_up, w_down = expert_weights(E, H, F, device, torch.float32)
    w, ids, offsets, slots = routed(T, E, K, device)
    ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets).sum().backward()
    x2 = x.detach().double().requires_grad_(True)
    reference.moe_experts(x2, w.double(), ids.long(), up(w_gate_up), up(w_down)).sum().backward()
    assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


def skewed(ids):
    """Experts 3 and up get nothing, expert 0 most slots (top-1 / top-2 ids of E >= 3 experts)."""
    ids = torch.where(ids >= 3, torch.zeros_like(ids), ids)
    ids[:, -1] = torch.where(ids[:, 0] == 1, torch.full_like(ids[:, -1], 2), torch.ones_like(ids[:, -1]))
    ids[:, 0] = torch.where(ids[:, 0] == ids[:, -1], torch.zeros_like(ids[:, 0]), ids[:, 0])
    return ids


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("K,skew", [(2, False), (1, False), (2, True)], ids=["top2", "top1", "top2_skewed"])
@pytest.mark.parametrize("H,F", [(24, 20), (32, 24)], ids=["h24f20", "h32f24"])
def test_moe_experts_all_grads(device, dtype, K, skew, H, F):
    """The eager backward (routed rows only, torch GEMMs in x's dtype) against float64 autograd of the reference:
    the gradients of x, the routing weights and both weight tensors; top-1 and top-2; a routing where some experts
    get no token and one gets most (skewed). bf16 / fp16: the GEMM inputs are rounded to x's dtype, so a few per cent
    of the largest gradient. H 32 / F 24 in bf16 on Hopper runs the grouped form (torch._grouped_mm; F 20 rows are
    not whole 16-byte pieces, so H 24 / F 20 runs the per-expert loop there too)."""
    T, E = 37, 5
    x = randn(T, H, device=device, dtype=dtype)
    w_gate_up, w_down = expert_weights(E, H, F, device, dtype)
    w, ids, _, _ = routed(T, E, K, device)
    if skew:
        ids = skewed(ids)
    grouped = ops._moe_grouped_grads_ok(x, w_gate_up, w_down)
    on_hopper = device.type == "cuda" and dtype == torch.bfloat16 and hopper_code()
    assert grouped == (on_hopper and H % 8 == 0 and F % 8 == 0 and hasattr(torch, "_grouped_mm"))
    leaves = [x.clone().requires_grad_(True), w.clone().requires_grad_(True),
              w_gate_up.clone().requires_grad_(True), w_down.clone().requires_grad_(True)]
    go = randn(T, H, device=device, dtype=dtype)
    out = ops.moe_experts(leaves[0], leaves[1], ids, leaves[2], leaves[3])
    got = torch.autograd.grad(out, leaves, go)
    ref_leaves = [up(x).requires_grad_(True), w.detach().to(dtype).double().requires_grad_(True),
                  up(w_gate_up).requires_grad_(True), up(w_down).requires_grad_(True)]
    ref = reference.moe_experts(ref_leaves[0], ref_leaves[1], ids.long(), ref_leaves[2], ref_leaves[3])
    want = torch.autograd.grad(ref, ref_leaves, up(go))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for name, g, e, leaf in zip(["x", "weights", "w_gate_up", "w_down"], got, want, leaves):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        scale = e.abs().max().item()
        err = (g.double() - e).abs().max().item()
        assert err <= tol * scale + 1e-7, f"grad of {name}: max error {err:.3e} > {tol:.0e} x {scale:.3e}"


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("T,skew", [(1, False), (300, False), (300, True)], ids=["t1", "t300", "t300_skewed"])
def test_moe_grouped_grads_match_loop(T, skew):
    """On Hopper in bf16 the training forms run torch._grouped_mm: moe_experts_trainable (the model's call: forward
    through grouped GEMMs keeping gate_up and the expert outputs) and moe_experts' recomputing grouped backward. Each
    gives two bit-identical runs, gradients within bf16 rounding of the per-expert loop's (the same products; GEMM
    kernels and dx's rounding order differ) and of float64 autograd of the reference, at sizes that give
    torch._grouped_mm several tiles per expert, and empty experts (skewed: zero weight gradients there). Without
    autograd recording moe_experts_trainable is moe_experts (bit-identical)."""
    if not (hopper_code() and hasattr(torch, "_grouped_mm")):
        pytest.skip("the grouped training forms run on Hopper only")
    H, F, E, K = 136, 200, 8, 2
    dt = torch.bfloat16
    x = randn(T, H, device="cuda", dtype=dt)
    w_gate_up, w_down = expert_weights(E, H, F, "cuda", dt)
    w, ids, offsets, slots = routed(T, E, K, "cuda")
    if skew:
        ids = skewed(ids)
        offsets, slots = ops.moe_permute(ids, E)
    go = randn(T, H, device="cuda", dtype=dt)
    assert ops._moe_grouped_grads_ok(x, w_gate_up, w_down)
    with torch.no_grad():
        assert torch.equal(ops.moe_experts_trainable(x, w, ids, w_gate_up, w_down, slots, offsets),
                           ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets))

    def grads(fn):
        leaves = [x.clone().requires_grad_(True), w.clone().requires_grad_(True),
                  w_gate_up.clone().requires_grad_(True), w_down.clone().requires_grad_(True)]
        out = fn(leaves[0], leaves[1], ids, leaves[2], leaves[3], slots, offsets)
        return out, torch.autograd.grad(out, leaves, go)

    out_s, saved = grads(ops.moe_experts_trainable)
    assert type(out_s.grad_fn).__name__ == "_MoeExpertsSavedBackward"
    assert torch.equal(grads(ops.moe_experts_trainable)[1][0], saved[0])
    out_g, grouped = grads(ops.moe_experts)
    assert torch.equal(grads(ops.moe_experts)[1][2], grouped[2])
    ops.MOE_BACKWARD_GROUPED = False
    try:
        loop = grads(ops.moe_experts)[1]
    finally:
        ops.MOE_BACKWARD_GROUPED = True
    ref_leaves = [up(x).requires_grad_(True), w.detach().to(dt).double().requires_grad_(True),
                  up(w_gate_up).requires_grad_(True), up(w_down).requires_grad_(True)]
    ref_out = reference.moe_experts(ref_leaves[0], ref_leaves[1], ids.long(), ref_leaves[2], ref_leaves[3])
    want = torch.autograd.grad(ref_out, ref_leaves, up(go))
    assert_close(out_s, out_g, rtol=2e-2, atol=2e-2 * out_g.abs().max().item())
    for name, a, b, c, e in zip(["x", "weights", "w_gate_up", "w_down"], saved, grouped, loop, want):
        scale = e.abs().max().item()
        for form, g in (("trainable", a), ("grouped", b), ("loop", c)):
            err = (g.double() - e).abs().max().item()
            assert err <= 3e-2 * scale + 1e-7, f"{form} grad of {name}: max error {err:.3e} > 3e-2 x {scale:.3e}"
        for form, g in (("trainable", a), ("grouped", b)):
            err = (g.double() - c.double()).abs().max().item()
            assert err <= 2e-2 * scale, f"{form} grad of {name} vs the loop's: {err:.3e} > 2e-2 x {scale:.3e}"
    if skew:  # experts without rows: zero weight gradients
        for g in (saved, grouped):
            assert not g[2][3:].any() and not g[3][3:].any()


@pytest.mark.parametrize("backend", ["aot_eager"])
def test_moe_compile(device, backend):
    T, H, F, E, K = 13, 24, 16, 4, 2
    x = randn(T, H, device=device)
    router = randn(E, H, device=device)
    w_gate_up, w_down = expert_weights(E, H, F, device, torch.float32)
    fn = compile_or_skip(moe.sparse_moe_forward, backend)
    got, _ = fn(x, router, w_gate_up, w_down, K)
    want, _ = moe.sparse_moe_forward(x, router, w_gate_up, w_down, K)
    assert_close(got, want, **TOL[torch.float32])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("T", [1, 64, 300])
def test_moe_cuda_graph(T):
    """route + experts captured in a CUDA graph (no host sync), replayed on new inputs (auto engines on Hopper:
    the decode kernel at 1 token, wgmma with 64 x 512 tail tiles at 64, 128 x 256 tiles only at 300)."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    H, F, E, K = 136, 72, 16, 2
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    router = randn(E, H, device=dev, dtype=dtype)
    fn = lambda a: moe.sparse_moe_forward(a, router, w_gate_up, w_down, K)[0]
    news = [(randn(T, H, device=dev, dtype=dtype),) for _ in range(2)]
    runs = graph_replays(fn, (randn(T, H, device=dev, dtype=dtype),), news)
    for (a,), (o,) in zip(news, runs):
        assert torch.equal(o, fn(a))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_moe_swap_cuda_graph(monkeypatch):
    """The swap-AB engine (forced) in a CUDA graph (routing, gather, both GEMMs, combine): replays on new inputs
    equal eager runs bit for bit, lopsided routings too (an expert in several chunks, empty experts)."""
    if not hopper_code():
        pytest.skip("wgmma engines: Hopper only")
    monkeypatch.setenv("JAMBA_EXT_MOE_SWAP", "1")
    dev, dtype = torch.device("cuda"), torch.bfloat16
    T, H, F, E, K = 1500, 264, 520, 16, 2
    w_gate_up, w_down = expert_weights(E, H, F, dev, dtype)
    router = randn(E, H, device=dev, dtype=dtype)
    fn = lambda a: moe.sparse_moe_forward(a, router, w_gate_up, w_down, K)[0]
    lop = randn(T, H, device=dev, dtype=dtype)
    lop[:, :8] = 8.0  # most tokens on the same few experts: chunks of several sizes, empty experts
    news = [(randn(T, H, device=dev, dtype=dtype),), (lop,), (randn(T, H, device=dev, dtype=dtype),)]
    runs = graph_replays(fn, (randn(T, H, device=dev, dtype=dtype),), news)
    for (a,), (o,) in zip(news, runs):
        assert torch.equal(o, fn(a))
    monkeypatch.setenv("JAMBA_EXT_MOE_SWAP_ABOX", "32")   # a load a chunk captured too
    runs = graph_replays(fn, (randn(T, H, device=dev, dtype=dtype),), news)
    for (a,), (o,) in zip(news, runs):
        assert torch.equal(o, fn(a))


# ---- bad inputs -----------------------------------------------------------------------------------------
def test_moe_bad_inputs(device):
    T, H, F, E, K = 6, 24, 16, 4, 2
    dt = torch.bfloat16
    x = randn(T, H, device=device, dtype=dt)
    w_gate_up, w_down = expert_weights(E, H, F, device, dt)
    w, ids, offsets, slots = routed(T, E, K, device)
    run = lambda **kw: ops.moe_experts(**{**dict(x=x, weights=w, expert_ids=ids, w_gate_up=w_gate_up,
                                                w_down=w_down), **kw})
    with pytest.raises(ValueError, match="w_down"):
        run(w_down=w_down[:, :, :-1].contiguous())
    with pytest.raises(ValueError, match="w_gate_up"):
        run(w_gate_up=w_gate_up[:, :-1].contiguous())
    with pytest.raises(ValueError, match="w_gate_up"):
        run(w_gate_up=w_gate_up.float())
    with pytest.raises(ValueError, match="w_down"):
        run(w_down=w_down.transpose(1, 2).contiguous().transpose(1, 2))   # right shape, not contiguous
    with pytest.raises(ValueError, match="expert_ids"):
        run(expert_ids=ids.float())
    with pytest.raises(ValueError, match="expert_ids"):
        run(expert_ids=ids[:-1])
    if device.type == "cpu":   # (an id beyond int32 is not wrapped onto an expert: on CPU the error names it)
        with pytest.raises(ValueError, match="expert_ids must be expert indices, got 4294967297"):
            run(expert_ids=torch.where(torch.arange(T * K).view(T, K) == 3, 2 ** 32 + 1, ids.long()))
    with pytest.raises(ValueError, match="x"):
        run(x=x.to(torch.int32))
    with pytest.raises(ValueError, match="sorted_slots"):
        run(sorted_slots=slots[:-1], expert_offsets=offsets)
    if device.type == "cpu":   # values (CPU only: on CUDA a host read): a bad slot was torch's IndexError
        with pytest.raises(ValueError, match=rf"sorted_slots must be slot indices in \[0, {T * K}\)"):
            run(sorted_slots=torch.where(slots == 0, T * K + 3, slots).to(slots.dtype), expert_offsets=offsets)
        with pytest.raises(ValueError, match="expert_offsets must rise from 0"):
            run(sorted_slots=slots, expert_offsets=offsets.flip(0).contiguous())
    with pytest.raises(ValueError, match="impl"):
        run(impl="fast")
    for name in ("w_down", "weights"):        # one argument on meta among the others: uninitialised memory before
        with pytest.raises(ValueError, match="meta"):
            run(**{name: dict(w_down=w_down, weights=w)[name].to("meta")})
    with pytest.raises(ValueError, match="top_k"):
        ops.moe_route(randn(T, E, device=device), E + 1)
    with pytest.raises(ValueError, match="top_k"):
        ops.moe_route(randn(T, E, device=device), 0)
    for bad in (-1, 2.0):                     # (a negative size or a type error from inside the allocation before)
        with pytest.raises(ValueError, match="top_k must be an int >= 1"):
            ops.moe_route(randn(T, E, device=device), bad)
    with pytest.raises(ValueError, match="router_logits"):
        ops.moe_route(randn(2, T, E, device=device), 1)
    with pytest.raises(ValueError, match="router_logits"):
        ops.moe_route(randn(T, E, device=device).to(torch.int32), 1)
    with pytest.raises(ValueError, match="num_experts"):
        ops.moe_permute(ids, 0)


def test_moe_experts_sched_workspace_checks():
    """The C check of the optional tile-counter workspace (ops.moe_experts always passes a good one; the C API
    takes it from any caller): int32, at least 2 elements, contiguous, not overlapping an operand."""
    T, H, F, E, K = 5, 16, 8, 4, 2
    dt = torch.bfloat16
    x = randn(T, H, dtype=dt)
    w_gate_up, w_down = expert_weights(E, H, F, torch.device("cpu"), dt)
    w, ids, offsets, slots = routed(T, E, K, torch.device("cpu"))
    out, slot_out, act = torch.empty(T, H, dtype=dt), torch.empty(T * K, H, dtype=dt), torch.empty(T * K, F, dtype=dt)

    def call(sched):
        ops._call("moe_experts", x.device, "moe_experts",
                  [("out", out), ("x", x), ("weights", w.float().contiguous()), ("expert_ids", ids),
                   ("expert_offsets", offsets), ("sorted_slots", slots), ("w_gate_up", w_gate_up),
                   ("w_down", w_down), ("act", act), ("slot_out", slot_out), ("sched", sched)], 0)
    for bad, msg in [(torch.zeros(2, dtype=torch.int64), "int32"), (torch.zeros(1, dtype=torch.int32), "at least 2"),
                     (torch.zeros(4, dtype=torch.int32)[::2], "contiguous"), (ids.view(-1)[:2], "overlap")]:
        with pytest.raises(ValueError, match="sched.*" + msg):
            call(bad)
    with pytest.raises(RuntimeError, match="in torch"):  # a good one passes the checks (CPU: GEMMs in torch)
        call(torch.zeros(2, dtype=torch.int32))


def test_moe_expert_ids_out_of_range(device):
    """CPU: ValueError naming expert_ids. CUDA: no host sync allowed, so the bad token's row is NaN and the
    others are right."""
    T, H, F, E, K = 6, 24, 16, 4, 2
    x = randn(T, H, device=device, dtype=torch.bfloat16)
    w_gate_up, w_down = expert_weights(E, H, F, device, torch.bfloat16)
    w, ids, _, _ = routed(T, E, K, device)
    bad = ids.clone()
    bad[2, 1] = E
    bad[4, 0] = -1
    if device.type == "cpu":
        with pytest.raises(ValueError, match="expert_ids"):
            ops.moe_experts(x, w, bad, w_gate_up, w_down)
        return
    out = ops.moe_experts(x, w, bad, w_gate_up, w_down)
    assert torch.isnan(out[2]).all() and torch.isnan(out[4]).all()
    good = [0, 1, 3, 5]
    assert_close(out[good], ref_experts(x, w, ids, w_gate_up, w_down)[good], **MOE_TOL[torch.bfloat16])


# ---- silu_mul / moe_combine: the pieces around torch GEMMs (the CPU path; grouped_mm on CUDA) --------------
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("shape", [(1, 2), (7, 272), (300, 144), (5, 26), (2, 3, 48), (0, 16)])
def test_silu_mul_matches_fp64(device, dtype, shape):
    """Odd F (element path), F multiple of 8 (16-byte path), 3-d input, M 0; inputs to +-24 so exp overflows."""
    gu = randn(*shape, device=device, dtype=torch.float32).mul(8).to(dtype)
    out = ops.silu_mul(gu)
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    assert_close(out, reference.silu_mul(up(gu)), **TOL[dtype])
    # HF's two torch ops in the model dtype: the same roundings (one ulp apart at most where exp differs)
    g, u = gu.chunk(2, dim=-1)
    assert_close(out, torch.nn.functional.silu(g) * u, rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("dtype", dtype_params())
def test_silu_mul_strided_rows(device, dtype):
    """gate_up a column slice of a wider tensor (row stride > 2F): read in place."""
    wide = randn(37, 100, device=device, dtype=dtype)
    gu = wide[:, 4:68]
    out = ops.silu_mul(gu)
    assert_close(out, reference.silu_mul(up(gu)), **TOL[dtype])


@pytest.mark.parametrize("dtype", dtype_params(LOW_DTYPES))
def test_silu_mul_rounds_as_hf(device, dtype):
    """bf16 / fp16 round where HF's two ops do: round(round(silu(g)) * u). The tolerances above (one ulp) cannot tell
    it from one rounding of silu(g) * u, which differs from HF's in ~27% of the elements; ours may differ only where
    its expf and torch's exp put silu(g) on two sides of a rounding boundary (well under 1%)."""
    gu = randn(300, 544, device=device, dtype=dtype, scale=3.0)
    out = ops.silu_mul(gu)
    g, u = gu.chunk(2, dim=-1)
    hf = torch.nn.functional.silu(g) * u
    assert_close(out, hf, rtol=2 ** -7, atol=1e-6)
    differ = (out != hf).float().mean().item()
    assert differ <= 0.01, f"{differ:.1%} of the elements differ from HF's silu(g) * u in {dtype}"


def test_silu_mul_bad_inputs(device):
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_mul(randn(4, 7, device=device))
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_mul(randn(4, 8, device=device).to(torch.int32))
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_mul(randn(8, 4, device=device).t())   # unit stride along rows, not along the last axis


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("shape", [(1, 2), (7, 272), (300, 144), (5, 26), (2, 3, 48), (0, 16)])
def test_silu_mul_bwd_matches_fp64(device, dtype, shape):
    """The gradient of silu_mul: against reference.silu_mul_bwd in float64, that against float64 autograd of
    silu(g) * u (so the formula itself is checked), and on CUDA against the CPU op. Odd F (element path), F a
    multiple of 8 (16-byte path), 3-d input, M 0; inputs to +-24 (exp overflows)."""
    gu = randn(*shape, device=device, dtype=torch.float32).mul(8).to(dtype)
    d = randn(*shape[:-1], shape[-1] // 2, device=device, dtype=dtype)
    got = ops.silu_mul_bwd(gu, d)
    assert got.shape == gu.shape and got.dtype == dtype
    want = reference.silu_mul_bwd(up(gu), up(d))
    assert_close(got, want, **TOL[dtype])
    g64 = up(gu).requires_grad_(True)
    g, u = g64.chunk(2, dim=-1)
    (auto,) = torch.autograd.grad(torch.nn.functional.silu(g) * u, g64, up(d))
    assert_close(want, auto, rtol=1e-12, atol=1e-12)
    if device.type == "cuda":
        assert_close(got.cpu(), ops.silu_mul_bwd(gu.cpu(), d.cpu()), **TOL[dtype])


@pytest.mark.parametrize("dtype", dtype_params())
def test_silu_mul_bwd_strided_rows(device, dtype):
    """gate_up and dout column slices of wider tensors (row strides > their widths): read in place."""
    gu = randn(37, 100, device=device, dtype=dtype)[:, 4:68]
    d = randn(37, 50, device=device, dtype=dtype)[:, 8:40]
    assert_close(ops.silu_mul_bwd(gu, d), reference.silu_mul_bwd(up(gu), up(d)), **TOL[dtype])


def test_silu_mul_bwd_bad_inputs(device):
    gu = randn(4, 8, device=device)
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_mul_bwd(randn(4, 7, device=device), randn(4, 3, device=device))
    with pytest.raises(ValueError, match="dout"):
        ops.silu_mul_bwd(gu, randn(4, 5, device=device))
    with pytest.raises(ValueError, match="dout"):
        ops.silu_mul_bwd(gu, randn(4, 4, device=device, dtype=torch.float16))
    with pytest.raises(ValueError, match="dout"):
        ops.silu_mul_bwd(gu, randn(4, 4, device=device).t())   # unit stride along rows
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_mul_bwd(gu.to(torch.int32), randn(4, 4, device=device).to(torch.int32))
    with pytest.raises(ValueError, match="device"):
        ops.silu_mul_bwd(gu, randn(4, 4, device="meta"))


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T,H,E,K", [(1, 8, 4, 2), (7, 24, 8, 2), (64, 13, 16, 2), (300, 40, 4, 1), (5, 16, 5, 3)])
def test_moe_combine_matches_fp64(device, dtype, T, H, E, K):
    """y in sorted order (as the grouped GEMMs leave it), H odd (element path) and multiple of 8."""
    w, ids, offsets, slots = routed(T, E, K, device)
    y = randn(T * K, H, device=device, dtype=dtype)
    out = ops.moe_combine(y, w, ids, slots, E)
    ref = reference.moe_combine(up(y), w.to(dtype).double(), ids, slots)
    assert_close(out, ref, **MOE_TOL[dtype])
    o2 = ops.moe_combine(y, w, ids.long(), slots, E)   # int64 ids (torch.topk's) are accepted
    assert torch.equal(out, o2)


@pytest.mark.parametrize("dtype", dtype_params(LOW_DTYPES))
@pytest.mark.parametrize("K", [2, 3])
def test_moe_combine_rounds_as_hf(device, dtype, K):
    """bf16 / fp16 round where HF's MoE block does: o_j = round(y_j * round(w_j)) (the fp32 routing weight cast to the
    model dtype first), out = round(round(o_0 + o_1) + o_2), j ascending. The float64 comparison above (2e-2) cannot
    see a missing rounding; the same products and sums done by torch in the dtype give the exact bits."""
    T, H, E = 33, 40, 8
    w, ids, offsets, slots = routed(T, E, K, device)
    y = randn(T * K, H, device=device, dtype=dtype)
    out = ops.moe_combine(y, w, ids, slots, E)
    pos = torch.empty(T * K, dtype=torch.long, device=device)
    pos[slots.long()] = torch.arange(T * K, device=device)
    rows = y[pos].view(T, K, H)                                     # expert outputs in slot order
    want = rows[:, 0] * w[:, 0, None].to(dtype)
    for j in range(1, K):
        want = want + rows[:, j] * w[:, j, None].to(dtype)
    assert torch.equal(out, want)


def test_moe_combine_bad_inputs(device):
    T, H, E, K = 6, 16, 4, 2
    w, ids, offsets, slots = routed(T, E, K, device)
    y = randn(T * K, H, device=device)
    with pytest.raises(ValueError, match="y"):
        ops.moe_combine(y[:-1], w, ids, slots, E)
    with pytest.raises(ValueError, match="sorted_slots"):
        ops.moe_combine(y, w, ids, slots[:-1], E)
    with pytest.raises(ValueError, match="sorted_slots"):
        ops.moe_combine(y, w, ids, slots.long(), E)
    with pytest.raises(ValueError, match="weights"):
        ops.moe_combine(y, w[:, :1], ids, slots, E)
    with pytest.raises(ValueError, match="num_experts"):
        ops.moe_combine(y, w, ids, slots, 0)
    bad = ids.clone()
    bad[3, 1] = E
    if device.type == "cpu":
        with pytest.raises(ValueError, match="expert_ids"):
            ops.moe_combine(y, w, bad, slots, E)
        with pytest.raises(ValueError, match="permutation"):
            ops.moe_combine(y, w, ids, torch.zeros_like(slots), E)
    else:
        out = ops.moe_combine(y, w, bad, slots, E)
        assert torch.isnan(out[3]).all() and not torch.isnan(out[[0, 1, 2, 4, 5]]).any()


def test_silu_mul_moe_combine_opcheck(device):
    T, H, E, K = 11, 24, 4, 2
    torch.library.opcheck(torch.ops.jamba.silu_mul.default, (randn(T, 2 * H, device=device),))
    torch.library.opcheck(torch.ops.jamba.silu_mul.default, (randn(T, 2 * H, device=device).requires_grad_(True),))
    torch.library.opcheck(torch.ops.jamba.silu_mul_bwd.default, (randn(T, 2 * H, device=device),
                                                                  randn(T, H, device=device)))
    w, ids, offsets, slots = routed(T, E, K, device)
    torch.library.opcheck(torch.ops.jamba.moe_combine.default, (randn(T * K, H, device=device), w, ids, slots, E))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_moe_grouped_mm_expert_ids_out_of_range():
    """The torch._grouped_mm engine with bad ids: NaN rows for those tokens (rows of y past expert_offsets[E]
    are never written by the grouped GEMMs), the others right."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch._grouped_mm missing")
    dev = torch.device("cuda")
    T, H, F, E, K = 40, 64, 32, 4, 2
    x = randn(T, H, device=dev, dtype=torch.bfloat16)
    w_gate_up, w_down = expert_weights(E, H, F, dev, torch.bfloat16)
    w, ids, _, _ = routed(T, E, K, dev)
    bad = ids.clone()
    bad[2, 1] = E
    bad[30, 0] = -1
    out = ops.moe_experts(x, w, bad, w_gate_up, w_down, impl="grouped_mm")
    assert torch.isnan(out[2]).all() and torch.isnan(out[30]).all()
    good = [t for t in range(T) if t not in (2, 30)]
    assert_close(out[good], ref_experts(x, w, ids, w_gate_up, w_down)[good], **MOE_TOL[torch.bfloat16])


@pytest.mark.parametrize("T,E,K", [(1, 16, 2), (7, 8, 2), (32, 16, 2), (21, 64, 3), (3, 5, 5), (33, 16, 2)])
def test_moe_route_nan_row_and_ties(device, T, E, K):
    """Decode sizes (on CUDA one launch for routing and permutation up to 64 slots and 64 experts; 33 x 2 slots:
    two launches) with a NaN logits row (ids -1 -> the bad bucket) and a row of tied logits (lower ids first):
    the permutation equals moe_permute's of the returned ids and the reference's."""
    logits = separated_logits(T, E, device, torch.float32)
    logits[T // 2] = float("nan")
    if T > 2:
        logits[0, :] = 1.0
    w, ids, offsets, slots = ops.moe_route(logits, K)
    if device.type == "cuda":
        assert (ids[T // 2] == -1).all() and torch.isnan(w[T // 2]).all()
        if T > 2:
            assert torch.equal(ids[0].cpu(), torch.arange(K, dtype=torch.int32))
    assert_perm(offsets, slots, ids, E)
    o2, s2 = ops.moe_permute(ids, E)
    assert torch.equal(offsets, o2) and torch.equal(slots, s2)


@pytest.mark.parametrize("dtype", dtype_params())
def test_silu_mul_moe_combine_grad(device, dtype):
    """silu_mul's autograd runs silu_mul_bwd, moe_combine's goes through reference.py."""
    gu = randn(5, 12, device=device, dtype=dtype).requires_grad_(True)
    go = randn(5, 6, device=device, dtype=dtype)
    ops.silu_mul(gu).backward(go)
    g2 = up(gu.detach()).requires_grad_(True)
    reference.silu_mul(g2).backward(up(go))
    assert gu.grad.dtype == dtype
    assert_close(gu.grad, g2.grad, **TOL[dtype])
    T, H, E, K = 6, 8, 4, 2
    w, ids, offsets, slots = routed(T, E, K, device)
    y = randn(T * K, H, device=device).requires_grad_(True)
    ops.moe_combine(y, w, ids, slots, E).square().sum().backward()
    y2 = y.detach().double().requires_grad_(True)
    reference.moe_combine(y2, w.double(), ids, slots).square().sum().backward()
    assert_close(y.grad, y2.grad, rtol=1e-5, atol=1e-6)


# ---- moe_grad_rows (the start of the grouped backward) -------------------------------------------------------
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T,H,K", [(1, 8, 1), (7, 13, 2), (64, 136, 2), (33, 4096, 2), (5, 24, 3)],
                         ids=["1x8k1", "7x13k2-odd", "64x136k2", "33x4096k2", "5x24k3"])
@pytest.mark.parametrize("with_y", [True, False], ids=["y", "noy"])
def test_moe_grad_rows_matches_fp64(device, dtype, T, H, K, with_y):
    """dys (one product rounded once: within half an ulp of the fp64 value of the same rounded weight) and dws (an
    fp32 dot over H: within 8 sqrt(H) fp32 ulp of the sum of |products|), against reference.py in float64, on a real
    permutation (moe_route / moe_permute, so slots of one token land far apart); go as a column slice (row stride >
    H) for the 16-byte path on CUDA, H = 13 for the element path."""
    E = 5
    ids = torch.randint(0, E, (T, K), device=device, dtype=torch.int32)
    _, slots = ops.moe_permute(ids, E)
    w = torch.rand(T, K, device=device).to(dtype).float()       # exactly representable: the op rounds it to dtype
    go = randn(T, H + 16, device=device, dtype=dtype)[:, 8:8 + H]
    y = randn(T * K, H, device=device, dtype=dtype) if with_y else None
    dys, dws = ops.moe_grad_rows(go, w, slots, y)
    rdys, rdws = reference.moe_grad_rows(up(go), w.double(), slots, up(y))
    assert dys.shape == (T * K, H) and dys.dtype == dtype
    half_ulp = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]  # unit roundoff
    err = (dys.double() - rdys).abs()
    assert (err <= half_ulp * rdys.abs() * 1.0001 + (2.0 ** -25 if dtype == torch.float16 else 0.0)).all(), \
        err.max().item()
    if with_y:
        g = up(go).index_select(0, torch.div(slots.long(), K, rounding_mode="floor"))
        bound = 8 * H ** 0.5 * 2.0 ** -24 * (g * up(y)).abs().sum(1) + 1e-30
        assert dws.dtype == torch.float32 and ((dws.double() - rdws).abs() <= bound).all()
    else:
        assert dws.numel() == 0


def test_moe_grad_rows_bad_inputs(device):
    T, H, K = 6, 16, 2
    go = randn(T, H, device=device, dtype=torch.bfloat16)
    w = torch.rand(T, K, device=device)
    slots = torch.randperm(T * K, device=device).to(torch.int32)
    with pytest.raises(ValueError, match="sorted_slots"):
        ops.moe_grad_rows(go, w, slots.long())
    with pytest.raises(ValueError, match="sorted_slots"):
        ops.moe_grad_rows(go, w, slots[:-1])
    with pytest.raises(ValueError, match="weights"):
        ops.moe_grad_rows(go, w[:-1], slots[:-2])
    with pytest.raises(ValueError, match="y"):
        ops.moe_grad_rows(go, w, slots, randn(T * K, H, device=device))             # dtype differs from go's
    with pytest.raises(ValueError, match="y"):
        ops.moe_grad_rows(go, w, slots, randn(T * K, H + 1, device=device, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="go"):
        ops.moe_grad_rows(randn(H, T, device=device, dtype=torch.bfloat16).T, w, slots)   # stride along H
    bad = slots.clone()
    bad[3] = T * K
    if device.type == "cpu":
        with pytest.raises(ValueError, match=r"sorted_slots\[3\]"):
            ops.moe_grad_rows(go, w, bad)
    else:
        dys, dws = ops.moe_grad_rows(go, w, bad, randn(T * K, H, device=device, dtype=torch.bfloat16))
        assert torch.isnan(dys[3]).all() and torch.isnan(dws[3]) and torch.isfinite(dys[[0, 1, 2, 4]]).all()


def test_moe_grad_rows_opcheck(device):
    go = randn(5, 24, device=device)
    slots = torch.randperm(10, device=device).to(torch.int32)
    w = torch.rand(5, 2, device=device)
    torch.library.opcheck(torch.ops.jamba.moe_grad_rows.default, (go, w, slots, randn(10, 24, device=device)))
    torch.library.opcheck(torch.ops.jamba.moe_grad_rows.default, (go.bfloat16(), w, slots, None))


def test_moe_grouped_grads_cpu_matches_loop():
    """The grouped backward's own code (the permutation, moe_grad_rows for dL/d(expert output) and the routing weights'
    gradient, the scatter back to slot order) on the CPU, where torch._grouped_mm runs on this torch: every gradient
    equal to the per-expert loop's (the routing weights' within fp32 summation order), with an empty expert. The GPU
    test above covers the same on Hopper."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("no torch._grouped_mm")
    T, H, F, E, K = 37, 64, 48, 5, 2
    x, go = randn(T, H, dtype=torch.bfloat16), randn(T, H, dtype=torch.bfloat16)
    w, ids, _, _ = routed(T, E, K, "cpu")
    ids = torch.where(ids == 4, torch.zeros_like(ids), ids)          # expert 4 gets no rows
    w_gate_up, w_down = expert_weights(E, H, F, "cpu", torch.bfloat16)
    need = (True, True, False, True, True)
    try:
        got = ops._moe_grouped_grads(go, x, w, ids, w_gate_up, w_down, need)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._grouped_mm does not run on the CPU here: {e}")
    want = ops._moe_sparse_grads(go, x, w, ids, w_gate_up, w_down, need)
    for name, a, b in zip(["x", "weights", "w_gate_up", "w_down"], got, want):
        if name == "weights":
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
        else:
            assert torch.equal(a, b), name
    assert not got[2][4].any() and not got[3][4].any()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_moe_grad_rows_cuda_graph():
    """moe_grad_rows captured in a CUDA graph (no host synchronisation) and replayed on new inputs: each replay equals
    the eager op."""
    T, H, K, E = 40, 136, 2, 6

    def new():
        ids = torch.randint(0, E, (T, K), device="cuda", dtype=torch.int32)
        return (randn(T, H, device="cuda", dtype=torch.bfloat16), torch.rand(T, K, device="cuda"),
                ops.moe_permute(ids, E)[1], randn(T * K, H, device="cuda", dtype=torch.bfloat16))

    news = [new() for _ in range(2)]
    runs = graph_replays(lambda g, w, sl, y: ops.moe_grad_rows(g, w, sl, y), new(), news)
    for args, got in zip(news, runs):
        for a, b in zip(got, ops.moe_grad_rows(*args)):
            assert torch.equal(a, b)
