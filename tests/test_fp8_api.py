"""fp8 expert weights: what a user of the ops hits at the edges (an audit's findings; each test but the last, a
coverage check of generate on odd sizes, fails on the code before its fix in jamba_ext/ops.py).

- quantize_fp8 on rows whose largest |w| is so small that max / 448 underflows fp32 (below ~6.3e-43): the scale was
  0 and every zero weight of the row became 0 / 0 = NaN, so the layer's outputs were NaN; an empty last dim; a
  float64 input beyond float32's range (the message said "inf or NaN"); rows_per_chunk < 1.
- the ops' fake kernels (they run when any argument is on meta) returned uninitialised memory for a CPU call with
  one argument on meta (e.g. a scale left on meta by a partial load) instead of refusing the mix of devices.
- moe_experts_fp8's permutation arguments of the wrong dtype or shape: accepted unchecked at decode sizes, and
  reported against dequant_fp8's "group_offsets" (an argument the caller never passed) above them.
- a gradient asked for the fp8 weights (requires_grad set on the float8 buffers): silently None, while one asked
  for their scales is refused; both are frozen, so both are refused now.
"""
import copy

import pytest
import torch

from conftest import assert_close, randn
from jamba_ext import ops, reference
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM
from test_fp8_model import CONFIGS, prompt, rel, twin_of

pytestmark = pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8_e4m3fn")

FP8 = getattr(torch, "float8_e4m3fn", None)


def experts(E, H, F, device="cpu"):
    gu = randn(E, 2 * F, H, device=device, scale=H ** -0.5)
    dn = randn(E, H, F, device=device, scale=F ** -0.5)
    return (*ops.quantize_fp8(gu), *ops.quantize_fp8(dn))


# ---- quantize_fp8 --------------------------------------------------------------------------------------------------
def test_quantize_fp8_denormal_rows_give_no_nan(device):
    """max|row| / 448 underflows to 0 below ~6.3e-43 (448 times fp32's smallest subnormal): the scale must stay
    positive, else the row's zeros quantize to 0 / 0 = NaN and every output the row touches is NaN."""
    w = torch.zeros(4, 24, device=device)
    w[0, 0] = 1e-45                 # the smallest subnormal alone
    w[1, :] = 1e-44
    w[2, 3] = -3e-43
    w[3, 5] = 1.0                   # an ordinary row keeps its bits
    q, s = ops.quantize_fp8(w)
    assert (s > 0).all() and not torch.isnan(q.float()).any()
    back = reference.dequant_fp8(q, s)
    assert torch.isfinite(back).all()
    assert (back[w == 0] == 0).all()                                     # zeros stay zero
    assert s[3] == torch.tensor(1.0 / 448) and abs(back[3, 5] - 1) < 1e-6  # an ordinary row: max / 448, as before
    x = randn(3, 24, device=device)
    assert torch.isfinite(ops.dequant_fp8(q, s, torch.float32) @ x.T).all()


def test_quantize_fp8_empty_last_dim_and_bad_chunk():
    q, s = ops.quantize_fp8(torch.zeros(3, 0))
    assert q.shape == (3, 0) and q.dtype == FP8 and s.shape == (3,)
    q, s = ops.quantize_fp8(torch.zeros(2, 3, 0))
    assert q.shape == (2, 3, 0) and s.shape == (2, 3)
    with pytest.raises(ValueError, match="rows_per_chunk"):
        ops.quantize_fp8(torch.ones(3, 4), rows_per_chunk=0)


def test_quantize_fp8_float64_beyond_float32_names_the_range():
    """A finite float64 weight past float32's range overflows in the fp32 arithmetic: the message says so (it said
    'holds inf or NaN' of a tensor that holds neither)."""
    with pytest.raises(ValueError, match="float32"):
        ops.quantize_fp8(torch.tensor([[1e300, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="inf or NaN"):
        ops.quantize_fp8(torch.tensor([[float("nan"), 1.0]], dtype=torch.float64))


# ---- fake kernels: a meta argument among CPU tensors -----------------------------------------------------------
def test_dequant_fp8_meta_scale_among_cpu_refused():
    q, s = ops.quantize_fp8(randn(4, 32))
    with pytest.raises(ValueError, match="meta"):
        ops.dequant_fp8(q, s.to("meta"), torch.float32)
    with pytest.raises(ValueError, match="meta"):
        ops.dequant_fp8(q, s, torch.float32, torch.tensor([0, 1, 2], dtype=torch.int32, device="meta"))
    out = ops.dequant_fp8(q.to("meta"), s.to("meta"), torch.float32)     # all on meta: a shape, as before
    assert out.is_meta and out.shape == (4, 32)


@pytest.mark.parametrize("which", ["s_down", "w_down", "weights", "expert_ids"])
def test_moe_experts_fp8_meta_argument_among_cpu_refused(which):
    T, H, F, E, K = 3, 32, 16, 4, 2
    x = randn(T, H)
    q_gu, s_gu, q_d, s_d = experts(E, H, F)
    w, ids, _, _ = ops.moe_route(torch.randn(T, E), K)
    args = dict(x=x, weights=w, expert_ids=ids, w_gate_up=q_gu, s_gate_up=s_gu, w_down=q_d, s_down=s_d)
    args[which] = args[which].to("meta")
    if which == "w_down":
        args["s_down"] = args["s_down"].to("meta")
    with pytest.raises(ValueError, match="meta"):
        ops.moe_experts_fp8(**args)
    meta = {k: v.to("meta") for k, v in args.items()}
    assert ops.moe_experts_fp8(**meta).shape == (T, H)                    # all on meta: a shape, as before


# ---- moe_experts_fp8's permutation arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("T", [3, 40])  # the decode kernel (permutation unused on the CPU), the dequantizing path
def test_moe_experts_fp8_bad_permutation_named(T):
    H, F, E, K = 24, 8, 4, 2
    x = randn(T, H)
    q_gu, s_gu, q_d, s_d = experts(E, H, F)
    w, ids, offsets, slots = ops.moe_route(torch.randn(T, E), K)
    run = lambda s, o: ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, s, o)
    with pytest.raises(ValueError, match=r"expert_offsets must be int32 of shape \(5,\)"):
        run(slots, offsets.long())
    with pytest.raises(ValueError, match="expert_offsets must be int32"):
        run(slots, offsets[:-1])
    with pytest.raises(ValueError, match=rf"sorted_slots must be int32 of shape \({T * K},\)"):
        run(slots[:-1], offsets)
    with pytest.raises(ValueError, match="sorted_slots must be int32"):
        run(slots.long(), offsets)
    ref = reference.moe_experts_fp8(x.double(), w.double(), ids.long(), q_gu, s_gu, q_d, s_d)
    assert_close(run(slots, offsets), ref, rtol=1e-4, atol=1e-4)


# ---- gradients -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [3, 40])
def test_moe_experts_fp8_gradient_for_fp8_weights_refused(T):
    """The fp8 weights are frozen (docs/FP8.md): asking for their gradient raises, as for their scales; x and the
    routing weights still get theirs."""
    H, F, E, K = 24, 8, 4, 2
    q_gu, s_gu, q_d, s_d = experts(E, H, F)
    w, ids, _, _ = ops.moe_route(torch.randn(T, E), K)
    x = randn(T, H).requires_grad_()
    for name in ("w_gate_up", "w_down"):
        args = dict(x=x, weights=w, expert_ids=ids, w_gate_up=q_gu, s_gate_up=s_gu, w_down=q_d, s_down=s_d)
        args[name] = args[name].clone().requires_grad_()
        out = ops.moe_experts_fp8(**args)
        with pytest.raises(ValueError, match="frozen"):
            out.sum().backward()
    x.grad = None
    ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---- coverage without a defect found: generate on odd sizes --------------------------------------------------------
def test_generate_odd_sizes_matches_dequantized_twin():
    """H 36 and F 22 (multiples of neither 16 nor 64): greedy tokens of the fp8 model (fp32, CPU: the decode kernel
    for the steps, the dequantizing path for a 40-token prompt) equal those of an unquantized twin holding the
    dequantized weights float(q) * scale."""
    cfg = JambaConfig(**dict(CONFIGS["moe_top2"], hidden_size=36, intermediate_size=22))
    base = JambaForCausalLM.from_config(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in base.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "router" in n else p.shape[-1] ** -0.5))
    base.eval()
    model = copy.deepcopy(base).quantize_experts("fp8")
    twin = twin_of(model, base)
    with torch.no_grad():
        for length in (5, 40):
            ids = prompt(2, length, vocab=cfg.vocab_size)
            assert rel(model(ids).logits, twin(ids).logits) <= 1e-4
            out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
            assert torch.equal(out, twin.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None))
