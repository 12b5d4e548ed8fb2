"""jamba_ext.lora beyond add / merge: remove_lora (the base model back, bit for bit, trainable as it was), the adapter
weights alone (lora_state_dict / load_lora_state_dict, under PEFT's adapter-file names) and their errors.

Tiny random fp32 JambaForCausalLMs (Mamba, attention, MoE and dense MLP layers) on the CPU.
"""
import pytest
import torch

from jamba_ext.lora import LoRALinear, add_lora, load_lora_state_dict, lora_state_dict, merge_lora, remove_lora
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM

CFG = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
           num_key_value_heads=2, attn_layer_period=3, attn_layer_offset=1, expert_layer_period=2,
           expert_layer_offset=1, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_d_conv=4,
           mamba_expand=2, pad_token_id=0, eos_token_id=2, tie_word_embeddings=False)
PREFIX = "base_model.model."


def _model(seed=0, **over):
    return JambaForCausalLM.from_config(JambaConfig(**dict(CFG, **over)), dtype=torch.float32, seed=seed).eval()


def _ids(seed=1):
    return torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(seed))


def _randomize_adapters(model, seed):
    """B starts at zero (the adapted model starts as the base one): give A and B values that move the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_a.copy_(torch.randn(m.lora_a.shape, generator=g) * 0.3)
                m.lora_b.copy_(torch.randn(m.lora_b.shape, generator=g) * 0.3)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_remove_lora_gives_the_base_model_back_bit_for_bit():
    """After adapters were added, trained a step and changed the logits, remove_lora puts the very nn.Linears back
    (weights untouched, no merge): the state dict, logits and greedy tokens equal the model's before add_lora bit for
    bit, and every parameter trains again as before (add_lora froze them all)."""
    m, ids = _model(), _ids()
    before_sd = {k: v.clone() for k, v in m.state_dict().items()}
    want = _logits(m, ids)
    want_tokens = m.generate(ids, max_new_tokens=4, eos_token_id=None)
    with torch.no_grad():
        m.model.embed_tokens.weight.requires_grad_(False)          # (frozen before add_lora: stays frozen)
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    names = add_lora(m, r=4, alpha=8)
    linears = {n: m.get_submodule(n).base for n in names}
    assert {"in_proj", "x_proj", "out_proj", "q_proj", "o_proj", "gate_proj", "down_proj"} <= \
        {n.rsplit(".", 1)[1] for n in names}
    _randomize_adapters(m, 0)
    m.train()
    m(ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1).step()
    m.eval()
    assert not torch.equal(_logits(m, ids), want)
    assert remove_lora(m) == len(names)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert all(type(m.get_submodule(n)) is torch.nn.Linear and m.get_submodule(n) is lin for n, lin in linears.items())
    sd = m.state_dict()
    assert sd.keys() == before_sd.keys() and all(torch.equal(sd[k], v) for k, v in before_sd.items())
    assert torch.equal(_logits(m, ids), want)
    assert torch.equal(m.generate(ids, max_new_tokens=4, eos_token_id=None), want_tokens)
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert not flags["model.embed_tokens.weight"] and flags["lm_head.weight"]
    assert remove_lora(m) == 0                                        # (nothing left: a no-op)


def test_remove_lora_keeps_a_tied_head_tied(tmp_path):
    """An adapted lm_head tied to the embeddings comes back tied (merge_lora unties it): same tensor, the config's
    tie_word_embeddings still set, the logits of before; save_pretrained takes the model again."""
    m, ids = _model(tie_word_embeddings=True), _ids()
    want = _logits(m, ids)
    add_lora(m, r=2, targets=["q_proj", "lm_head"])
    _randomize_adapters(m, 1)
    assert not torch.equal(_logits(m, ids), want)
    with pytest.raises(ValueError, match="merge_lora"):
        m.save_pretrained(str(tmp_path / "adapted"))
    assert remove_lora(m) > 0
    assert m.lm_head.weight is m.model.embed_tokens.weight and m.config.tie_word_embeddings
    assert torch.equal(_logits(m, ids), want)
    m.save_pretrained(str(tmp_path / "base"))


def test_merge_lora_leaves_the_weights_frozen_for_a_later_remove_lora():
    """merge_lora keeps its documented frozen parameters: a remove_lora after it (no adapters left) does not restore
    what add_lora recorded."""
    m = _model()
    add_lora(m, r=2)
    merge_lora(m)
    assert remove_lora(m) == 0
    assert not any(p.requires_grad for p in m.parameters())


def test_adapter_weights_round_trip_through_a_file(tmp_path):
    """lora_state_dict holds only the adapters, under PEFT's adapter-file names and shapes (A (r, in), B (out, r));
    written with safetensors and loaded into a fresh adapted copy of the base model, the logits equal the first
    model's bit for bit."""
    st = pytest.importorskip("safetensors.torch")
    ids = _ids()
    m = _model()
    names = add_lora(m, r=4, alpha=8)
    _randomize_adapters(m, 2)
    want = _logits(m, ids)
    sd = lora_state_dict(m)
    assert set(sd) == {f"{PREFIX}{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    for n in names:
        lin = m.get_submodule(n)
        assert sd[f"{PREFIX}{n}.lora_A.weight"].shape == (4, lin.in_features)
        assert sd[f"{PREFIX}{n}.lora_B.weight"].shape == (lin.out_features, 4)
    assert not any(t.requires_grad for t in sd.values())
    st.save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    other = _model()
    add_lora(other, r=4, alpha=8)
    assert not torch.equal(_logits(other, ids), want)
    assert load_lora_state_dict(other, st.load_file(str(tmp_path / "adapter_model.safetensors"))) == len(names)
    assert torch.equal(_logits(other, ids), want)
    assert all(torch.equal(v, sd[k]) for k, v in lora_state_dict(other).items())


def test_adapter_names_are_the_transformers_model_names():
    """The module part of each key names an nn.Linear of the same shape in transformers' Jamba (PEFT on that model
    saves its adapters under these names)."""
    pytest.importorskip("transformers")
    from test_model import CONFIGS, make_pair
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    add_lora(ours, r=2)
    for k, t in lora_state_dict(ours).items():
        assert k.startswith(PREFIX) and k.endswith((".lora_A.weight", ".lora_B.weight")), k
        lin = hf.get_submodule(k[len(PREFIX):-len(".lora_A.weight")])
        assert isinstance(lin, torch.nn.Linear), k
        assert t.shape[1 if k.endswith("lora_A.weight") else 0] == (lin.in_features if "lora_A" in k
                                                                    else lin.out_features), k


def test_adapter_state_dict_errors_name_the_problem():
    """Missing, unexpected (with a hint for PEFT's in-memory names, the model's own parameter names and a missing
    prefix), mis-shaped (naming the rank) and non-tensor entries, a model without adapters: ValueErrors naming them,
    and the adapters untouched."""
    m = _model()
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora_state_dict(m)
    with pytest.raises(ValueError, match=r"no LoRA adapters to load into: call add_lora"):
        load_lora_state_dict(m, {})
    add_lora(m, r=4, alpha=8)
    _randomize_adapters(m, 3)
    keep = {k: v.clone() for k, v in lora_state_dict(m).items()}
    good = {k: torch.zeros_like(v) for k, v in keep.items()}
    first = next(iter(good))
    dropped = {k: v for k, v in good.items() if k != first}
    extra = dict(good, **{f"{PREFIX}lm_head.lora_A.weight": torch.zeros(4, 32)})
    peft_mem = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                for k, v in good.items()}
    own = {k: v for k, v in m.state_dict().items() if ".lora_" in k}
    bare = {k[len(PREFIX):]: v for k, v in good.items()}
    r8 = _model()
    add_lora(r8, r=8, alpha=8)
    for bad, msg in ((dropped, rf"1 missing \(e.g. \['{first}'\]"),
                     (extra, r"1 unexpected \(e.g. \['base_model.model.lm_head.lora_A.weight'\]"),
                     (peft_mem, r"adapter name \('.lora_A.default.weight'\) are a PeftModel's state_dict"),
                     (own, r"'.lora_a' / '.lora_b' are the adapted model's own parameter names"),
                     (bare, r"the adapter names start with 'base_model.model.'"),
                     (lora_state_dict(r8), r"mis-shaped, e.g. .*: given \(8, 32\), the model's \(4, 32\); the adapters "
                                           r"have rank 8: add_lora\(model, r=8"),
                     (dict(good, **{first: [[0.0]]}), rf"not floating-point tensors \({first}: list\)"),
                     (dict(good, **{first: good[first].long()}), r"not floating-point tensors .*torch.int64 tensor"),
                     ([(k, v) for k, v in good.items()], r"expected a dict \{name: tensor\}, got list")):
        with pytest.raises(ValueError, match=msg):
            load_lora_state_dict(m, bad)
        assert all(torch.equal(v, keep[k]) for k, v in lora_state_dict(m).items())   # (nothing copied)
    assert load_lora_state_dict(m, {k: v.to(torch.bfloat16) for k, v in good.items()}) > 0   # (cast, as copy_)
    assert all(not v.any() and v.dtype == torch.float32 for v in lora_state_dict(m).values())
