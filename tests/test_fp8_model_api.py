"""fp8 experts in the model: what a user of quantize_experts / from_pretrained(experts_dtype="fp8") hits at the
edges (an audit's findings, each test failing on the code before its fix, jamba_ext/modeling_jamba.py).

- quantize_experts(None) quantized to fp8, though None means "unquantized" everywhere else (from_pretrained's
  experts_dtype, the error message's list); act_fp8="no" (any non-bool) was taken as bool("no") = True.
- an inf / NaN expert weight: quantize_experts raised "quantize_fp8: w holds inf or NaN", naming no layer, and left
  the model broken: the MoE layers before it quantized, that layer's gate_up_proj fp8 beside a float down_proj (its
  forward failed in moe_experts, save_pretrained refused the "fp8" model); load_state_dict and
  from_pretrained(experts_dtype="fp8") named neither the key nor the file.
"""
import copy

import pytest
import torch

from jamba_ext.modeling_jamba import JambaForCausalLM
from test_fp8_model import experts_of, make_model, prompt

pytestmark = pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8_e4m3fn")


def test_quantize_experts_refuses_none_and_non_bool_act_fp8():
    model = make_model()
    with pytest.raises(ValueError, match="dtype"):
        model.quantize_experts(None)
    for bad in ("no", "False", 1, None):
        with pytest.raises(ValueError, match="act_fp8"):
            model.quantize_experts("fp8", act_fp8=bad)
    assert not model.experts_fp8                     # nothing changed by the refused calls
    assert model.quantize_experts("fp8", act_fp8=False).experts_fp8
    assert not any(m.act_fp8 for m in experts_of(model))


def test_quantize_experts_nan_names_the_weight_and_changes_nothing():
    model = make_model()
    with torch.no_grad():
        experts_of(model)[1].down_proj[2, 5, 7] = float("nan")   # the last MoE layer (layer 3), expert 2
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"layers\.3\.feed_forward\.experts\.down_proj, expert 2.*inf or NaN"):
        model.quantize_experts()
    assert not model.experts_fp8                     # layer 1 included: checked before anything was quantized
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in after:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, equal_nan=True)
    # the module itself (JambaExperts.quantize_fp8_) refuses without going half fp8 either
    ex = experts_of(model)[1]
    with pytest.raises(ValueError, match="down_proj, expert 2"):
        ex.quantize_fp8_()
    assert isinstance(ex.gate_up_proj, torch.nn.Parameter) and ex.gate_up_proj.dtype == torch.float32
    with torch.no_grad():
        ex.down_proj[2, 5, 7] = 0.0
        assert torch.isfinite(model(prompt(1, 5)).logits).all()      # still a working unquantized model
    assert model.quantize_experts().experts_fp8


def test_load_nan_into_fp8_names_the_key(tmp_path):
    base = make_model()
    with torch.no_grad():
        experts_of(base)[0].gate_up_proj[1, 2, 3] = float("inf")
    fp8 = make_model(seed=3).quantize_experts()
    with pytest.raises(ValueError, match=r"layers\.1\.feed_forward\.experts\.gate_up_proj, expert 1.*inf or NaN"):
        fp8.load_state_dict(base.state_dict())
    base.save_pretrained(str(tmp_path))              # per-expert keys on disk
    with pytest.raises(ValueError, match=r"experts\.1\.(gate|up)_proj\.weight in model\.safetensors.*inf or NaN"):
        JambaForCausalLM.from_pretrained(str(tmp_path), experts_dtype="fp8")
    base.save_pretrained(str(tmp_path), per_expert=False)   # the fused layout
    with pytest.raises(ValueError, match=r"experts\.gate_up_proj in model\.safetensors, expert 1.*inf or NaN"):
        JambaForCausalLM.from_pretrained(str(tmp_path), experts_dtype="fp8")
