"""jamba_ext.lora's PEFT adapter directories: save_lora writes adapter_config.json + adapter_model.safetensors as PEFT
does, load_lora reads them (ours and PEFT-written ones: target_modules as a list, a regular expression or "all-linear";
adapter_model.bin too), with PEFT's scale lora_alpha / r, and refuses what LoRALinear does not implement, leaving the
model as it was.

Tiny random fp32 JambaForCausalLMs on the CPU (test_lora_extra's); the PEFT tests run only where peft is installed.
"""
import contextlib
import json
import os
import pathlib
import shutil
import sys
import warnings

import pytest
import torch

from jamba_ext.lora import DEFAULT_TARGETS, LoRALinear, add_lora, load_lora, lora_state_dict, remove_lora, save_lora
from test_lora_extra import PREFIX, _ids, _logits, _model, _randomize_adapters

st = pytest.importorskip("safetensors.torch")


def _adapted(seed=0, r=4, alpha=8, **kw):
    """A model with adapters whose A and B are random (so that they move the logits)."""
    m = _model()
    add_lora(m, r=r, alpha=alpha, **kw)
    _randomize_adapters(m, seed)
    return m


def _state(model):
    """What a refused load must leave as it was: the parameters (names, values) and their requires_grad."""
    return {k: (p.detach().clone(), p.requires_grad) for k, p in model.named_parameters()}


def _same_state(model, state):
    now = dict(model.named_parameters())
    return now.keys() == state.keys() and all(torch.equal(now[k], v) and now[k].requires_grad == g
                                              for k, (v, g) in state.items())


_DROP = object()       # (_edit_config: remove the field)


def _edit_config(directory, **fields):
    p = directory / "adapter_config.json"
    cfg = json.loads(p.read_text())
    for k, v in fields.items():
        if v is _DROP:
            del cfg[k]
        else:
            cfg[k] = v
    p.write_text(json.dumps(cfg))


@pytest.mark.parametrize("r,alpha,targets", [(4, 8, DEFAULT_TARGETS), (3, 2.5, ("q_proj", "dt_proj", "lm_head"))])
def test_save_lora_then_load_lora_gives_the_same_model(tmp_path, monkeypatch, r, alpha, targets):
    """save_lora into a new nested directory given with "~" (created), load_lora from a pathlib.Path into a fresh
    copy of the base model: the same adapters (names, values, r, alpha), the same logits bit for bit (which differ
    from the base model's), the adapters trainable and the rest frozen, remove_lora giving the base model back. A
    non-integral alpha (2.5 with r = 3) survives too. Loading again into the loaded model (the same adapters there)
    overwrites them."""
    monkeypatch.setenv("HOME", str(tmp_path))
    ids = _ids()
    m = _adapted(r=r, alpha=alpha, targets=targets)
    want = _logits(m, ids)
    n = len(lora_state_dict(m)) // 2
    with pytest.warns(UserWarning, match="dt_proj") if "dt_proj" in targets else contextlib.nullcontext():
        assert save_lora(m, "~/adapters/run1") == n
    d = tmp_path / "adapters" / "run1"
    assert sorted(os.listdir(d)) == ["adapter_config.json", "adapter_model.safetensors"]
    other = _model()
    base = _logits(other, ids)
    assert not torch.equal(base, want)
    assert load_lora(other, pathlib.Path(d)) == n
    assert torch.equal(_logits(other, ids), want)
    got, sd = lora_state_dict(other), lora_state_dict(m)
    assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())
    assert all(x.r == r and x.alpha == alpha and x.scale == alpha / r for x in other.modules()
               if isinstance(x, LoRALinear))
    assert {k for k, p in other.named_parameters() if p.requires_grad} == \
        {k for k in other.state_dict() if k.endswith((".lora_a", ".lora_b"))}
    _randomize_adapters(other, 9)
    assert not torch.equal(_logits(other, ids), want)
    assert load_lora(other, d) == n                       # (adapters there already: the same ones, overwritten)
    assert torch.equal(_logits(other, ids), want)
    assert remove_lora(other) == n
    assert torch.equal(_logits(other, ids), base) and all(p.requires_grad for p in other.parameters())


def test_adapter_config_json_has_peft_fields(tmp_path):
    """adapter_config.json holds exactly PEFT's LoraConfig fields for a plain LoRA (peft_type "LORA", task_type
    "CAUSAL_LM", r, lora_alpha as an int, lora_dropout 0.0, target_modules the adapted attribute names sorted,
    fan_in_fan_out false, bias "none", use_rslora / use_dora false, inference_mode true, ...); the base model's name
    is the argument, else the model config's _name_or_path, else null. adapter_model.safetensors holds
    lora_state_dict's tensors under PEFT's names, with the "pt" format metadata."""
    m = _adapted(r=4, alpha=8.0, targets=["v_proj", "in_proj", "q_proj"])
    assert save_lora(m, tmp_path / "a", base_model_name_or_path="ai21labs/Jamba-v0.1") == 2 + 2 + 4
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg == {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "ai21labs/Jamba-v0.1",
                   "revision": None, "inference_mode": True, "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                   "target_modules": ["in_proj", "q_proj", "v_proj"], "fan_in_fan_out": False, "bias": "none",
                   "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
                   "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}
    assert isinstance(cfg["lora_alpha"], int)
    path = str(tmp_path / "a" / "adapter_model.safetensors")
    with st.safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    saved, sd = st.load_file(path), lora_state_dict(m)
    assert saved.keys() == sd.keys() and all(torch.equal(saved[k], v) for k, v in sd.items())
    assert all(k.startswith(PREFIX) for k in saved)
    save_lora(m, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    m.config._name_or_path = "/ckpt/jamba-tiny"
    save_lora(m, tmp_path / "c")
    assert json.loads((tmp_path / "c" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "/ckpt/jamba-tiny"


def test_save_lora_names_modules_in_full_when_attribute_names_would_select_more(tmp_path):
    """Adapters on some q_proj only (one removed by hand): target_modules "q_proj" would select every q_proj in PEFT,
    so the full module names are written; load_lora adapts those alone, with the same logits."""
    ids = _ids()
    m = _adapted(targets=["q_proj", "o_proj"])
    names = [n for n, x in m.named_modules() if isinstance(x, LoRALinear)]
    dropped = next(n for n in names if n.endswith("q_proj"))
    parent, attr = dropped.rsplit(".", 1)
    setattr(m.get_submodule(parent), attr, m.get_submodule(dropped).base)
    want = _logits(m, ids)
    save_lora(m, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == \
        sorted(n for n in names if n != dropped)
    other = _model()
    assert load_lora(other, tmp_path) == len(names) - 1
    assert type(other.get_submodule(dropped)) is torch.nn.Linear
    assert torch.equal(_logits(other, ids), want)


def _peft_dir(tmp_path, targets, modules, r=8, alpha=16, seed=5, **fields):
    """An adapter directory as PEFT writes one (every LoraConfig field, extra ones ours does not write; random A and
    B) with adapters on the modules given."""
    m = _model()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for n in modules:
        lin = m.get_submodule(n)
        sd[f"{PREFIX}{n}.lora_A.weight"] = torch.randn(r, lin.in_features, generator=g) * 0.3
        sd[f"{PREFIX}{n}.lora_B.weight"] = torch.randn(lin.out_features, r, generator=g) * 0.3
    cfg = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "ai21labs/Jamba-v0.1",
           "bias": "none", "corda_config": None, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
           "inference_mode": True, "init_lora_weights": True, "layer_replication": None, "layers_pattern": None,
           "layers_to_transform": None, "loftq_config": {}, "lora_alpha": alpha, "lora_bias": False,
           "lora_dropout": 0.05, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
           "peft_type": "LORA", "peft_version": "0.15.2", "r": r, "rank_pattern": {}, "revision": None,
           "target_modules": targets, "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_dora": False,
           "use_rslora": False, **fields}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    st.save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    return sd


@pytest.mark.parametrize("targets", [["v_proj", "q_proj"], r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
                                     "all-linear", "ALL-LINEAR"])
def test_load_lora_reads_a_peft_directory_with_peft_scale(tmp_path, targets):
    """A PEFT-written directory (r = 8, lora_alpha = 16: scale 2, not 1/2; target_modules a list, a regular
    expression or "all-linear"): each adapted projection computes PEFT's base(x) + lora_alpha / r * B(A(x)) with the
    file's A and B (float64 reference), only the selected projections are adapted, and the logits move."""
    m = _model()
    every = targets in ("all-linear", "ALL-LINEAR")
    want = [n for n, x in m.named_modules() if type(x) is torch.nn.Linear and n != "lm_head" and
            (every or n.endswith(("self_attn.q_proj", "self_attn.v_proj")))]
    assert len(want) == (4 * 4 + 2 * 4 + 3 * 3 if every else 2 * 2)
    sd = _peft_dir(tmp_path, targets, want)
    base = _logits(m, _ids())
    assert load_lora(m, tmp_path) == len(want)
    adapted = {n for n, x in m.named_modules() if isinstance(x, LoRALinear)}
    assert adapted == set(want)
    g = torch.Generator().manual_seed(7)
    for n in adapted:
        lin = m.get_submodule(n)
        xin = torch.randn(3, 5, lin.in_features, generator=g)
        a, b = sd[f"{PREFIX}{n}.lora_A.weight"].double(), sd[f"{PREFIX}{n}.lora_B.weight"].double()
        ref = torch.nn.functional.linear(xin.double(), lin.base.weight.double(),
                                         None if lin.base.bias is None else lin.base.bias.double())
        ref = ref + (16 / 8) * (xin.double() @ a.t()) @ b.t()
        with torch.no_grad():
            torch.testing.assert_close(lin(xin).double(), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(m, _ids()), base, rtol=1e-3, atol=1e-3)


def test_load_lora_reads_adapter_model_bin(tmp_path):
    """Without adapter_model.safetensors, adapter_model.bin (torch.save of the same tensors; read with
    weights_only=True) gives the same model."""
    ids = _ids()
    m = _adapted()
    want = _logits(m, ids)
    save_lora(m, tmp_path)
    os.remove(tmp_path / "adapter_model.safetensors")
    torch.save({k: v.clone() for k, v in lora_state_dict(m).items()}, tmp_path / "adapter_model.bin")
    other = _model()
    assert load_lora(other, tmp_path) > 0
    assert torch.equal(_logits(other, ids), want)
    torch.save([1, 2], tmp_path / "adapter_model.bin")
    with pytest.raises(ValueError, match="the adapter weights are a list, not a dict of tensors"):
        load_lora(_model(), tmp_path)


def _expert_keys(d):
    sd = st.load_file(str(d / "adapter_model.safetensors"))
    sd[f"{PREFIX}model.layers.1.feed_forward.experts.0.gate_proj.lora_A.weight"] = torch.zeros(4, 32)
    st.save_file(sd, str(d / "adapter_model.safetensors"))


def _resave(d, change):
    sd = st.load_file(str(d / "adapter_model.safetensors"))
    change(sd)
    st.save_file(sd, str(d / "adapter_model.safetensors"))


def _widen_first_a(sd):      # rank 4 still, but the input size of another model
    k = sorted(k for k in sd if k.endswith("lora_A.weight"))[0]
    sd[k] = torch.zeros(4, sd[k].shape[1] + 1)


def _first_a_int(sd):
    k = sorted(k for k in sd if k.endswith("lora_A.weight"))[0]
    sd[k] = sd[k].long()


ALL = sorted(DEFAULT_TARGETS)
ERRORS = [   # (name, change to the good directory, exception, message)
    ("peft_type", lambda d: _edit_config(d, peft_type="ADALORA"), ValueError, r"peft_type is 'ADALORA': only LoRA"),
    ("no_r", lambda d: _edit_config(d, r=_DROP), ValueError, r"adapter_config.json: no r$"),
    ("r0", lambda d: _edit_config(d, r=0), ValueError, r"r must be an int >= 1, got 0"),
    ("alpha", lambda d: _edit_config(d, lora_alpha=-1), ValueError, r"alpha must be a finite number > 0, got -1"),
    ("rank", lambda d: _edit_config(d, r=8), ValueError, r"says r=8 but the tensors have rank 4 \(base_model"),
    ("rslora", lambda d: _edit_config(d, use_rslora=True), ValueError, r"use_rslora is True \(rank-stabilized"),
    ("dora", lambda d: _edit_config(d, use_dora=True), ValueError, r"use_dora is True \(DoRA"),
    ("bias_all", lambda d: _edit_config(d, bias="all"), ValueError, r"bias is 'all' .*supported: bias \"none\""),
    ("bias_lora_only", lambda d: _edit_config(d, bias="lora_only"), ValueError, r"bias is 'lora_only'"),
    ("lora_bias", lambda d: _edit_config(d, lora_bias=True), ValueError, r"lora_bias is True"),
    ("modules_to_save", lambda d: _edit_config(d, modules_to_save=["lm_head"]), ValueError,
     r"modules_to_save is \['lm_head'\] \(whole modules"),
    ("rank_pattern", lambda d: _edit_config(d, rank_pattern={"q_proj": 8}), ValueError, r"rank_pattern is"),
    ("alpha_pattern", lambda d: _edit_config(d, alpha_pattern={"q_proj": 8}), ValueError, r"alpha_pattern is"),
    ("layers", lambda d: _edit_config(d, layers_to_transform=[0]), ValueError, r"layers_to_transform is \[0\]"),
    ("pissa", lambda d: _edit_config(d, init_lora_weights="pissa_niter_4"), ValueError,
     r"init_lora_weights is 'pissa_niter_4': that initialization changed the base weights"),
    ("no_targets", lambda d: _edit_config(d, target_modules=None), ValueError, r"no target_modules"),
    ("targets_type", lambda d: _edit_config(d, target_modules=5), ValueError, r"target_modules must be a list"),
    ("unknown", lambda d: _edit_config(d, target_modules=ALL + ["query_key_value"]), ValueError,
     r"target_modules \['query_key_value'\] name no module of the model \(its projections: \['down_proj', "),
    ("bad_regex", lambda d: _edit_config(d, target_modules="(q_proj"), ValueError, r"not a valid regular expression"),
    ("not_linear", lambda d: _edit_config(d, target_modules=r".*\.mamba"), ValueError,
     r"select model.layers.0.mamba \(a JambaMambaMixer\) and 3 more modules that are not nn.Linears"),
    ("no_match", lambda d: _edit_config(d, target_modules=r".*\.nothing"), ValueError, r"select no nn.Linear"),
    ("fewer_targets", lambda d: _edit_config(d, target_modules=["q_proj", "v_proj"]), ValueError,
     r"keys \d+ unexpected \(e.g. \['base_model.model.model.layers.0.feed_forward.down_proj"),
    ("more_targets", lambda d: _edit_config(d, target_modules=ALL + ["dt_proj"]), ValueError,
     r"keys 8 missing \(e.g. \['base_model.model.model.layers.0.mamba.dt_proj.lora_A.weight'"),
    ("exclude", lambda d: _edit_config(d, exclude_modules=["q_proj"]), ValueError, r"keys 4 unexpected"),
    ("experts", _expert_keys, ValueError, r"1 unexpected .*adapters on the MoE experts or router"),
    ("in_size", lambda d: _resave(d, _widen_first_a), ValueError,
     r"load_lora: .*: load_lora_state_dict: 1 keys mis-shaped, e.g. .*: given \(4, 49\), the model's \(4, 48\)"),
    ("int", lambda d: _resave(d, _first_a_int), ValueError, r"not floating-point tensors .*torch.int64 tensor"),
    ("json", lambda d: (d / "adapter_config.json").write_text("{r: 4"), ValueError, r"adapter_config.json: not valid"),
    ("no_config", lambda d: os.remove(d / "adapter_config.json"), FileNotFoundError, r"no adapter_config.json in"),
    ("no_weights", lambda d: os.remove(d / "adapter_model.safetensors"), FileNotFoundError,
     r"no adapter_model.safetensors or adapter_model.bin in"),
    ("no_dir", lambda d: shutil.rmtree(d), FileNotFoundError, r"load_lora: no directory"),
]


@pytest.mark.parametrize("change,exc,msg", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_load_lora_errors_name_the_problem_and_leave_the_model(tmp_path, change, exc, msg):
    """Each bad directory (a good one, r = 4 on the default targets, changed in one way) raises an error naming the
    problem; the model keeps its parameters, values and requires_grad flags (adapters added before a failed copy
    are removed again) and has no adapters."""
    d = tmp_path / "ad"
    save_lora(_adapted(), d)
    change(d)
    m = _model()
    m.model.embed_tokens.weight.requires_grad_(False)
    state = _state(m)
    with pytest.raises(exc, match=msg):
        load_lora(m, d)
    assert _same_state(m, state)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())


def test_load_lora_into_a_model_of_other_sizes_names_the_base_model_not_the_rank(tmp_path):
    """Adapters of the right rank from a model of other sizes (hidden_size 32 here, 64 there): the error says the
    sizes differ (another base model), not "the adapters have rank 4: add_lora(model, r=4)", which the model's
    adapters already were."""
    save_lora(_adapted(), tmp_path)
    m = _model(hidden_size=64)
    state = _state(m)
    with pytest.raises(ValueError, match=r"mis-shaped, .*; the ranks agree but the projections' sizes do not") as e:
        load_lora(m, tmp_path)
    assert "add_lora(model, r=" not in str(e.value)
    assert _same_state(m, state)


def test_load_lora_into_a_model_with_other_adapters_is_refused(tmp_path):
    """Adapters there already must be the directory's (same projections, r and alpha): another r, another alpha or
    other targets are refused, the adapters untouched."""
    save_lora(_adapted(), tmp_path)
    for kw in (dict(r=2, alpha=8), dict(r=4, alpha=4), dict(r=4, alpha=8, targets=["q_proj"])):
        m = _adapted(seed=3, **kw)
        state = _state(m)
        with pytest.raises(ValueError, match=r"the model's adapters are not those of .*remove_lora\(model\) first"):
            load_lora(m, tmp_path)
        assert _same_state(m, state)


def test_save_lora_errors(tmp_path, monkeypatch):
    """No adapters, adapters of different ranks (one adapter_config.json cannot hold them) and no safetensors (for
    save_lora and load_lora: the message says how to install it) are refused; nothing is written."""
    with pytest.raises(ValueError, match="save_lora: the model has no LoRA adapters"):
        save_lora(_model(), tmp_path / "none")
    m = _adapted()
    name = next(n for n, x in m.named_modules() if isinstance(x, LoRALinear))
    parent, attr = name.rsplit(".", 1)
    setattr(m.get_submodule(parent), attr, LoRALinear(m.get_submodule(name).base, 2, 8))
    with pytest.raises(ValueError, match=r"different ranks \[2, 4\] or alphas \[8\]"):
        save_lora(m, tmp_path / "mixed")
    good = _adapted()
    save_lora(good, tmp_path / "good")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="needs safetensors: pip install safetensors"):
        save_lora(good, tmp_path / "nost")
    with pytest.raises(ImportError, match="needs safetensors: pip install safetensors"):
        load_lora(_model(), tmp_path / "good")
    assert not any((tmp_path / d).exists() for d in ("none", "mixed", "nost"))


def test_jamba_ext_exports_save_and_load_lora():
    import jamba_ext
    assert jamba_ext.save_lora is save_lora and jamba_ext.load_lora is load_lora


# ---- transformers' Jamba: our directory read by PEFT's rules (no PEFT needed), and by PEFT itself where installed ---
def test_save_lora_directory_on_transformers_jamba_by_peft_rules(tmp_path):
    """What PEFT does with save_lora's directory on transformers' Jamba (same weights), done by hand: target_modules
    select (name equal to an entry or ending in "." + one) exactly the modules the tensors name, all nn.Linears there,
    and adding lora_alpha / r * B(A(x)) to each one's output gives our adapted logits (within fp32 parity)."""
    pytest.importorskip("transformers")
    from test_model import CONFIGS, FP32_REL, make_pair, prompt_ids, rel_err
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 9, CONFIGS["attn1_moe_top2"]["vocab_size"])
    add_lora(ours, r=4, alpha=8)
    _randomize_adapters(ours, 4)
    want = _logits(ours, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # (no dt_proj adapter: no warning)
        save_lora(ours, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    sd = st.load_file(str(tmp_path / "adapter_model.safetensors"))
    named = {k[len(PREFIX):-len(".lora_A.weight")] for k in sd if k.endswith(".lora_A.weight")}
    chosen = {n for n, _ in hf.named_modules() if n in cfg["target_modules"] or
              any(n.endswith("." + t) for t in cfg["target_modules"])}
    assert chosen == named and all(type(hf.get_submodule(n)) is torch.nn.Linear for n in chosen)
    scale = cfg["lora_alpha"] / cfg["r"]
    for n in named:
        a, b = sd[f"{PREFIX}{n}.lora_A.weight"], sd[f"{PREFIX}{n}.lora_B.weight"]
        hf.get_submodule(n).register_forward_hook(lambda mod, inp, out, a=a, b=b: out + scale * inp[0] @ a.t() @ b.t())
    with torch.no_grad():
        got = hf(ids).logits
    assert rel_err(got, want) <= FP32_REL and rel_err(want, _logits(remove_lora(ours) and ours, ids)) > 1e-3


def test_save_lora_warns_that_transformers_leaves_dt_proj_adapters_out(tmp_path):
    """transformers 5's Jamba multiplies by dt_proj.weight without calling the module (PEFT's layer there goes
    unused): save_lora says so when it writes dt_proj adapters, and still writes them."""
    with pytest.warns(UserWarning, match="adapters on dt_proj: transformers 5's Jamba"):
        save_lora(_adapted(targets=["dt_proj", "q_proj"]), tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["dt_proj", "q_proj"]


def test_peft_loads_save_lora_directory_and_load_lora_reads_peft_one(tmp_path):
    """transformers' Jamba with the same weights: PeftModel.from_pretrained(save_lora's directory) gives our adapted
    logits (within fp32 parity), its LoraConfig has our r, lora_alpha and targets; PEFT's own save_pretrained of those
    adapters loads with load_lora to the same logits."""
    peft = pytest.importorskip("peft")
    from test_model import CONFIGS, FP32_REL, make_pair, prompt_ids, rel_err
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 9, CONFIGS["attn1_moe_top2"]["vocab_size"])
    with torch.no_grad():
        base = hf(ids).logits
    add_lora(ours, r=4, alpha=8)
    _randomize_adapters(ours, 4)
    want = _logits(ours, ids)
    assert rel_err(want, base) > 1e-3
    save_lora(ours, tmp_path / "ours")
    cfg = peft.LoraConfig.from_pretrained(str(tmp_path / "ours"))
    assert (cfg.r, cfg.lora_alpha, set(cfg.target_modules)) == (4, 8, set(DEFAULT_TARGETS))
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "ours")).eval()
    with torch.no_grad():
        assert rel_err(pm(input_ids=ids).logits, want) <= FP32_REL
    pm.save_pretrained(str(tmp_path / "peft"))
    other = make_pair(CONFIGS["attn1_moe_top2"])[1]
    assert load_lora(other, tmp_path / "peft") == len(lora_state_dict(ours)) // 2
    assert torch.equal(_logits(other, ids), want)
