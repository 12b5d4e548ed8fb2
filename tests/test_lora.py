"""jamba_ext.lora: adapters on a frozen model (the Mamba, attention and MLP projections), trained and merged."""
import pytest
import torch

from jamba_ext.lora import LoRALinear, add_lora, merge_lora
from test_model import CONFIGS, make_pair, prompt_ids, rel_err


@pytest.mark.parametrize("name", ["attn1_moe_top2", "mamba_dense"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_adapters_only_and_merges(name, checkpointing):
    """With B = 0 the adapted model gives the base logits (within fp32 rounding); a training step moves only the adapters (every base
    parameter frozen, no gradient); after it the logits change, and merge_lora gives plain nn.Linears with the same
    logits (within fp32 rounding); with and without gradient checkpointing."""
    _, ours = make_pair(CONFIGS[name])
    ids = prompt_ids(2, 11, CONFIGS[name]["vocab_size"])
    with torch.no_grad():
        base = ours(ids).logits
    base_params = {k: p.detach().clone() for k, p in ours.named_parameters()}
    names = add_lora(ours, r=4, alpha=8)
    assert names and all(isinstance(ours.get_submodule(n), LoRALinear) for n in names)
    assert any(".mamba.in_proj" in n for n in names) and any(".mamba.out_proj" in n for n in names)
    with torch.no_grad():   # (the wrapped projections run as separate modules: other GEMM shapes, fp32 rounding)
        assert rel_err(ours(ids).logits, base) <= 1e-5
    trainable = [p for p in ours.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and p.ndim == 2 for p in trainable)
    assert len(trainable) == 2 * len(names)
    ours.train()
    if checkpointing:
        ours.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        loss = ours(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if checkpointing:
        ours.gradient_checkpointing_disable()
    ours.eval()
    for k, p in ours.named_parameters():
        if "lora_" not in k:
            assert p.grad is None and torch.equal(p, base_params[k.replace(".base.", ".")]), k
    with torch.no_grad():
        adapted = ours(ids).logits
        assert rel_err(adapted, base) > 1e-4                          # the adapters learned something
        assert merge_lora(ours) == len(names)
        assert not any(isinstance(m, LoRALinear) for m in ours.modules())
        assert rel_err(ours(ids).logits, adapted) <= 1e-5
        assert ours.generate(ids, max_new_tokens=3).shape == (2, 14)   # the plain decode path again


def test_lora_update_is_scaled_by_alpha_over_r():
    """The documented update: base(x) + (alpha / r) (x A^T) B^T, and merge_lora's weight W + (alpha / r) B A (r and
    alpha chosen so that alpha / r and r / alpha differ); with B = 0 the base output exactly."""
    g = torch.Generator().manual_seed(3)
    base = torch.nn.Linear(12, 7, bias=True)
    x = torch.randn(5, 12, generator=g)
    lin = LoRALinear(base, r=4, alpha=2.0)
    assert lin.scale == 0.5
    with torch.no_grad():
        assert torch.equal(lin(x), base(x))
        lin.lora_b.copy_(torch.randn(7, 4, generator=g))
        w0 = base.weight.detach().clone()
        want = base(x) + 0.5 * (x @ lin.lora_a.t()) @ lin.lora_b.t()
        assert torch.allclose(lin(x), want, rtol=1e-5, atol=1e-6)
        merged = lin.merged()
        assert torch.allclose(merged.weight, w0 + 0.5 * lin.lora_b @ lin.lora_a, rtol=1e-5, atol=1e-6)
        assert torch.allclose(merged(x), want, rtol=1e-5, atol=1e-5)


def test_lora_bad_arguments(tmp_path):
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    add_lora(ours, r=2)
    with pytest.raises(ValueError, match="merge_lora"):                 # unmerged adapters: not a plain checkpoint
        ours.save_pretrained(str(tmp_path / "ck"))
    merge_lora(ours)
    ours.save_pretrained(str(tmp_path / "ck"))
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    with pytest.raises(ValueError, match="r must be"):
        add_lora(ours, r=0)
    with pytest.raises(ValueError, match="no nn.Linear"):
        add_lora(ours, targets=("nothing_here",))
    for kw, msg in ((dict(r=2.5), "r must be an int"), (dict(r="4"), "r must be an int"),
                    (dict(alpha="x"), "alpha must be a finite number"),
                    (dict(alpha=float("inf")), "alpha must be a finite number"),   # (its first forward was all NaN)
                    (dict(targets="q_proj,v_proj"), "targets must be a list")):   # (a str matched by substring)
        with pytest.raises(ValueError, match=msg):
            add_lora(ours, **kw)
    add_lora(ours, r=2)
    with pytest.raises(ValueError, match="has LoRA adapters already"):         # (said "no nn.Linear" before)
        add_lora(ours, r=2)


def test_top_level_names():
    import jamba_ext
    from jamba_ext import lora, modeling_jamba
    assert jamba_ext.JambaForCausalLM is modeling_jamba.JambaForCausalLM and jamba_ext.JambaConfig is \
        modeling_jamba.JambaConfig and jamba_ext.add_lora is lora.add_lora and jamba_ext.merge_lora is lora.merge_lora
    with pytest.raises(AttributeError, match="no_such_name"):
        jamba_ext.no_such_name


def test_peft_lora_on_the_model():
    """PEFT (when installed; not a test dependency) wraps the model as it wraps transformers' Jamba: get_peft_model
    (task CAUSAL_LM: its wrapper looks up prepare_inputs_for_generation and generation_config) with LoRA on Mamba and
    attention projections, a training step reaching only the adapters, its generate, merge_and_unload back to a plain
    JambaForCausalLM that decodes; the merged logits equal the adapted ones."""
    peft = pytest.importorskip("peft")
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 11, CONFIGS["attn1_moe_top2"]["vocab_size"])
    assert ours.generation_config.eos_token_id == ours.config.eos_token_id     # (PEFT's generate reads and sets it)
    pm = peft.get_peft_model(ours, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["in_proj", "out_proj", "q_proj",
                                                                                        "v_proj"], task_type="CAUSAL_LM"))
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all("lora_" in n for n, p in pm.named_parameters() if p.requires_grad)
    pm.eval()
    with torch.no_grad():
        adapted = pm(input_ids=ids).logits
        assert pm.generate(input_ids=ids, max_new_tokens=3).shape == (2, 14)   # PeftModelForCausalLM.generate
        merged = pm.merge_and_unload()
        assert type(merged).__name__ == "JambaForCausalLM"
        assert rel_err(merged(ids).logits, adapted) <= 1e-5
        assert merged.generate(ids, max_new_tokens=3).shape == (2, 14)



def test_add_lora_error_leaves_the_model_as_it_was():
    """A refused add_lora (no target found, a misspelt one, a bad rank) neither freezes the model's parameters nor
    wraps any projection (it froze every parameter before looking for the targets)."""
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    n = len(list(ours.parameters()))
    for kw in (dict(targets=("qproj",)), dict(targets=("q_proj", "vproj")), dict(r=0)):
        with pytest.raises(ValueError):
            add_lora(ours, **kw)
        assert sum(p.requires_grad for p in ours.parameters()) == n, kw
        assert not any(isinstance(m, LoRALinear) for m in ours.modules()), kw


def test_add_lora_refuses_unknown_target_names():
    """A target that names no nn.Linear of the model is refused, not skipped while other targets match (a typo left
    v_proj unadapted in silence); Jamba's own projection names are exempt (a model may lack attention or a dense
    MLP); a generator of names works (it was used up by the type check: 'no nn.Linear named one of []')."""
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    for targets, msg in ((("q_proj", "vproj"), r"\['vproj'\]"), (("q_proj", "router"), r"\['router'\]")):
        with pytest.raises(ValueError, match=msg):
            add_lora(ours, targets=targets)
    _, mamba = make_pair(CONFIGS["mamba_dense"])                                 # no attention layers: q_proj absent
    assert all(n.endswith(("in_proj", "q_proj")) for n in add_lora(mamba, targets=["in_proj", "q_proj"]))
    names = add_lora(ours, targets=(t for t in ["q_proj", "lm_head"]))
    assert names and all(n.endswith(("q_proj", "lm_head")) for n in names) and "lm_head" in names


def test_lora_linear_refuses_bad_rank_and_alpha():
    """LoRALinear itself checks r and alpha (r=0 raised ZeroDivisionError, alpha=0 gave a silent zero update)."""
    for r, alpha, msg in ((0, 1.0, "r must be"), (-2, 1.0, "r must be"), (2.0, 1.0, "r must be"),
                          (2, 0.0, "alpha must be"), (2, float("nan"), "alpha must be")):
        with pytest.raises(ValueError, match=msg):
            LoRALinear(torch.nn.Linear(4, 3), r, alpha)


def test_lora_after_the_model_changes_dtype():
    """model.to(torch.bfloat16) after add_lora (as with PEFT) turns the adapters bf16 too: the forward ran x in fp32
    against bf16 A ('expected m1 and m2 to have the same dtype'); now it runs in the adapters' dtype, a training step
    reaches them, and merge_lora gives the adapted logits."""
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 9, CONFIGS["attn1_moe_top2"]["vocab_size"])
    names = add_lora(ours, r=4, alpha=8)
    ours.to(torch.bfloat16)
    lin = ours.get_submodule(names[0])
    assert lin.lora_a.dtype == lin.lora_b.dtype == torch.bfloat16
    ours.train()
    ours(ids, labels=ids).loss.backward()
    assert lin.lora_b.grad is not None and lin.base.weight.grad is None
    ours.eval()
    with torch.no_grad():
        base = ours(ids).logits.float()
        for n in names:
            ours.get_submodule(n).lora_b.normal_(0, 0.1)
        adapted = ours(ids).logits
        assert adapted.dtype == torch.bfloat16
        moved = rel_err(adapted.float(), base)
        merge_lora(ours)
        assert moved > 0.3 and rel_err(ours(ids).logits.float(), adapted.float()) <= 0.1 * moved   # (bf16 rounding)
