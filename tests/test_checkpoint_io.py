"""Checkpoint loading / saving (from_pretrained, save_pretrained, JambaConfig's) on the paths a user takes that
tests/test_model.py does not: each test here failed on the code before its fix (session 63's checkpoint audit).

Tiny fp32 configs on the CPU; the transformers comparison skips where transformers is not installed.
"""
import json
import sys
import warnings

import pytest
import torch

from conftest import import_transformers
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM

CFG = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
           mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, num_hidden_layers=4, attn_layer_period=4,
           attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=4, num_experts_per_tok=2)


def _model(**kw):
    return JambaForCausalLM.from_config(JambaConfig(**dict(CFG, **kw)), seed=0)


def _ids():
    return torch.tensor([[3, 14, 15, 92, 65, 35]])


def test_dense_transformers_checkpoint_loads(tmp_path):
    """num_experts=1 (no MoE layer: every feed-forward a dense MLP) with the default num_experts_per_tok=2 is a valid
    transformers config; it was refused ("num_experts_per_tok: expected at most num_experts (1)"), so such a
    checkpoint did not load. A config with MoE layers still refuses top-k above num_experts."""
    transformers = import_transformers()
    cfg = dict(CFG, num_experts=1)
    del cfg["num_experts_per_tok"]
    hf = transformers.JambaForCausalLM(transformers.JambaConfig(**cfg)).eval()
    hf.save_pretrained(str(tmp_path))
    ours = JambaForCausalLM.from_pretrained(str(tmp_path))
    assert ours.config.num_experts_per_tok == 2
    with torch.no_grad():
        ref = hf(_ids(), use_cache=False).logits
        assert ((ours(_ids()).logits - ref).abs().max() / ref.abs().max()).item() < 1e-4
    with pytest.raises(ValueError, match="num_experts_per_tok: expected at most num_experts"):
        JambaConfig(**dict(CFG, num_experts_per_tok=5))


def test_path_objects_and_home(tmp_path, monkeypatch):
    """pathlib.Path arguments and "~": a missing Path was a TypeError from re (not FileNotFoundError); "~/ckpt" was
    reported missing, and save_pretrained("~/ckpt") wrote into a directory literally named "~" in the working
    directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)                     # (where the old code put its "~" directory)
    m = _model()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        JambaForCausalLM.from_pretrained(tmp_path / "nope")
    m.save_pretrained("~/ckpt")
    assert (tmp_path / "home" / "ckpt" / "model.safetensors").is_file() and not (tmp_path / "~").exists()
    assert torch.equal(JambaForCausalLM.from_pretrained("~/ckpt")(_ids()).logits, m(_ids()).logits)
    assert torch.equal(JambaForCausalLM.from_pretrained(tmp_path / "home" / "ckpt")(_ids()).logits, m(_ids()).logits)
    m.config.save_pretrained("~/cfg")
    assert JambaConfig.from_pretrained("~/cfg").to_dict() == m.config.to_dict()


def test_unreadable_bin_checkpoint_names_the_file(tmp_path):
    """A pytorch_model.bin that is not a state dict (garbage bytes, or a whole pickled model) gave torch.load's
    UnpicklingError, which does not name the file; now a ValueError that does, as for the other unreadable files."""
    m = _model()
    m.config.save_pretrained(str(tmp_path))
    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a readable torch checkpoint"):
        JambaForCausalLM.from_pretrained(str(tmp_path))
    torch.save(m, str(f))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a readable torch checkpoint"):
        JambaForCausalLM.from_pretrained(str(tmp_path))
    torch.save([t.clone() for t in m.state_dict().values()], str(f))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: expected a state dict.*found a list"):
        JambaForCausalLM.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("text,why", [
    ('{"weight_map": {', "not valid JSON"),                            # (a download cut short)
    ("[1, 2]", "expected a JSON object"),
    ('{"weight_map": {"lm_head.weight": 3}}', "weight_map's values must be shard file names"),
])
def test_bad_sharded_index_names_the_file(tmp_path, text, why):
    """A malformed model.safetensors.index.json was json's JSONDecodeError, an AttributeError or a TypeError from
    os.path.join; now a ValueError naming the index file and what is wrong with it."""
    _model().save_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: " + why):
        JambaForCausalLM.from_pretrained(str(tmp_path))


def test_config_with_a_torch_dtype_object(tmp_path):
    """JambaConfig(torch_dtype=torch.bfloat16), as transformers' config takes it: save_pretrained raised json's
    TypeError, and from_pretrained(..., config=) loaded float32; now written by name and honoured."""
    m = _model()
    m.save_pretrained(str(tmp_path / "ckpt"))
    cfg = JambaConfig(**dict(CFG, torch_dtype=torch.bfloat16))
    cfg.save_pretrained(str(tmp_path / "cfg"))
    assert json.loads((tmp_path / "cfg" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert JambaConfig.from_pretrained(str(tmp_path / "cfg")).torch_dtype == "bfloat16"
    assert JambaForCausalLM.from_pretrained(str(tmp_path / "ckpt"), config=cfg).dtype == torch.bfloat16


@pytest.mark.parametrize("field,value", [("initializer_range", float("nan")), ("initializer_range", float("inf")),
                                         ("initializer_range", True), ("router_aux_loss_coef", "0.01"),
                                         ("router_aux_loss_coef", float("nan"))])
def test_config_numeric_fields_refused(field, value):
    """initializer_range NaN passed the check (from_config then made NaN weights), router_aux_loss_coef was not
    checked at all (a string failed in the training loss)."""
    with pytest.raises(ValueError, match=rf"JambaConfig\.{field}: expected"):
        JambaConfig(**dict(CFG, **{field: value}))


def test_hub_download_failure_says_no_local_directory(monkeypatch):
    """A path that is no local directory but looks like a Hub id ("ckpts/tiny", a mistyped local path) ended in the
    Hub client's error alone (offline: "check your internet connection"); now a FileNotFoundError that says the local
    directory is not there either, with the Hub's reason."""
    hub = pytest.importorskip("huggingface_hub")

    class Offline(Exception):
        pass

    def fake_download(repo_id, **kw):
        raise Offline("cannot reach the Hub")

    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    with pytest.raises(FileNotFoundError, match=r"'ckpts/tiny' is not a local directory.*Offline: cannot reach"):
        JambaForCausalLM.from_pretrained("ckpts/tiny")


# ---- sharded saving, duplicates, tied heads, dtypes (session 64; each failed on the code before it) --------------
def _weight_files(d):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".safetensors"))


def _index(d):
    return json.loads((d / "model.safetensors.index.json").read_text())


def _logits(m):
    with torch.no_grad():
        return m(_ids()).logits


def test_sharded_save_loads_back_here_and_in_transformers(tmp_path):
    """save_pretrained(max_shard_size=) shards as transformers 5 does (it wrote one model.safetensors whatever the size:
    Jamba-v0.1's 103 GB in one file, past the Hub's 50 GB per-file limit): model-0000i-of-0000n.safetensors plus an
    index whose weight_map names each key's shard and whose total_size counts the tensors' bytes; both loaders read it
    back (ours bit for bit, transformers' equal to the single-file save); a tensor past the limit gets its own shard."""
    from safetensors import safe_open
    m = _model()
    m.save_pretrained(tmp_path / "one")
    m.save_pretrained(tmp_path / "sh", max_shard_size="20KB")
    sh = tmp_path / "sh"
    idx = _index(sh)
    shards = sorted(set(idx["weight_map"].values()))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert _weight_files(sh) == shards                              # (no model.safetensors beside them)
    with safe_open(str(tmp_path / "one" / "model.safetensors"), "pt") as f:
        one = {k: f.get_tensor(k) for k in f.keys()}
    assert idx["weight_map"].keys() == one.keys()
    assert idx["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in one.values())
    for s in shards:
        with safe_open(str(sh / s), "pt") as f:
            keys = set(f.keys())
            assert keys == {k for k, v in idx["weight_map"].items() if v == s}
            assert sum(f.get_tensor(k).numel() * 4 for k in keys) <= 20_000
            assert all(torch.equal(f.get_tensor(k), one[k]) for k in keys)
    assert torch.equal(_logits(JambaForCausalLM.from_pretrained(sh)), _logits(m))
    m.save_pretrained(tmp_path / "big", max_shard_size=1000)          # (most tensors are past 1000 bytes)
    for s, keys in _shard_keys(tmp_path / "big").items():
        assert len(keys) == 1 or sum(one[k].numel() * 4 for k in keys) <= 1000, s
    transformers = import_transformers()
    hf_sh = transformers.JambaForCausalLM.from_pretrained(str(sh), dtype=torch.float32).eval()
    hf_one = transformers.JambaForCausalLM.from_pretrained(str(tmp_path / "one"), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf_one(_ids(), use_cache=False).logits
        assert torch.equal(hf_sh(_ids(), use_cache=False).logits, ref)
    assert ((_logits(m) - ref).abs().max() / ref.abs().max()).item() < 1e-4


def _shard_keys(d):
    out = {}
    for k, s in _index(d)["weight_map"].items():
        out.setdefault(s, []).append(k)
    return out


def test_max_shard_size_spellings():
    """transformers' spellings of a size (decimal units in any case, a fraction; the binary units its max_memory
    takes) in bytes; anything else, or a size that is not positive, is a ValueError naming the argument."""
    from jamba_ext.modeling_jamba import _shard_limit
    for spec, n in ((20_000, 20_000), ("20KB", 20_000), ("20kb", 20_000), ("0.02MB", 20_000), ("5GB", 5 * 10 ** 9),
                    ("500MB", 500 * 10 ** 6), ("2GiB", 2 << 30), ("512 MiB", 512 << 20)):
        assert _shard_limit(spec) == n, spec
    for bad in ("20 parsecs", "GB", "-5GB", 0, -1, True, 1.5, None):
        with pytest.raises(ValueError, match="max_shard_size"):
            _model().save_pretrained("/nonexistent/never/written", max_shard_size=bad)


def test_resave_leaves_no_stale_weight_files(tmp_path):
    """Saving again into the same directory with fewer shards, one file, then shards again: the earlier save's files
    that the new one does not overwrite are gone (old shards mixed with the new ones; a model.safetensors was left
    beside a sharded save), and each time the directory loads the model just saved. A file the old index did not
    list stays."""
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "notes.safetensors").write_bytes(b"not ours")
    for seed, size in ((0, "20KB"), (1, "40KB"), (2, "50GB"), (3, "40KB"), (4, "20KB")):
        m = JambaForCausalLM.from_config(JambaConfig(**CFG), seed=seed)
        m.save_pretrained(d, max_shard_size=size)
        files = _weight_files(d)
        files.remove("notes.safetensors")
        if size == "50GB":
            assert files == ["model.safetensors"] and not (d / "model.safetensors.index.json").exists()
        else:
            assert files == sorted(set(_index(d)["weight_map"].values())), (size, files)
        assert torch.equal(_logits(JambaForCausalLM.from_pretrained(d)), _logits(m)), size


def test_save_pretrained_takes_transformers_arguments(tmp_path):
    """transformers' save_pretrained arguments were a TypeError. Now: the ones that would ask for something not done
    here (a .bin file, an upload, a variant, a distributed checkpoint) and unknown ones are ValueErrors naming them;
    is_main_process=False writes nothing; token / save_peft_format / push_to_hub=False change nothing;
    save_original_format=False is per_expert=False (fused experts); state_dict= is saved in place of the model's."""
    from safetensors import safe_open
    m = _model()
    for kw, msg in ((dict(safe_serialization=False), "safetensors only"), (dict(push_to_hub=True), "push_to_hub"),
                    (dict(variant="fp16"), "variant"), (dict(distributed_checkpoint=True), "distributed_checkpoint"),
                    (dict(max_shard_sizee="1GB"), r"unexpected keyword arguments \['max_shard_sizee'\]"),
                    (dict(per_expert=True, save_original_format=False), "disagree"),
                    (dict(state_dict={"lm_head.weight": [1.0]}), r"state_dict\['lm_head.weight'\] is a list")):
        with pytest.raises(ValueError, match=msg):
            m.save_pretrained(tmp_path / "x", **kw)
    m.save_pretrained(tmp_path / "x", is_main_process=False)
    assert not (tmp_path / "x").exists()
    m.save_pretrained(tmp_path / "x", push_to_hub=False, token="t", save_peft_format=True, safe_serialization=True,
                      save_original_format=False)
    with safe_open(str(tmp_path / "x" / "model.safetensors"), "pt") as f:
        assert "model.layers.1.feed_forward.experts.gate_up_proj" in set(f.keys())
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["model.final_layernorm.weight"].mul_(3)
    m.save_pretrained(tmp_path / "y", state_dict=sd)
    back = JambaForCausalLM.from_pretrained(tmp_path / "y")
    assert torch.equal(back.model.final_layernorm.weight, sd["model.final_layernorm.weight"])


def _rewrite(f, **add):
    """The safetensors file f with the tensors `add` put in (key "__" spells ".")."""
    from safetensors.torch import load_file, save_file
    sd = load_file(str(f))
    sd.update({k.replace("__", "."): v for k, v in add.items()})
    save_file(sd, str(f), metadata={"format": "pt"})


def _two_shards(m, d, extra=(None, None)):
    """m's checkpoint in d as two shards and their index, written here (not by save_pretrained, so that the test runs
    on code that cannot shard); extra: a key of the other shard to store in shard 1 / shard 2 as well."""
    from jamba_ext.modeling_jamba import to_per_expert_state_dict
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in to_per_expert_state_dict(m.state_dict()).items()}
    keys = list(sd)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    parts = [keys[:len(keys) // 2], keys[len(keys) // 2:]]
    m.config.save_pretrained(d)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in zip(names, parts) for k in ks}}))
    for n, ks, more in zip(names, parts, extra):
        save_file({k: sd[k] for k in ks + ([more] if more else [])}, str(d / n), metadata={"format": "pt"})
    return [d / n for n in names], parts


def test_weight_stored_twice_refused(tmp_path):
    """A key in two shards, a key in a shard its index maps to another one, and one weight under two names (with and
    without "model.") loaded silently, the last one read winning; now ValueErrors naming the keys and both files."""
    m = _model()
    (first, last), (keys1, keys2) = _two_shards(m, tmp_path)
    assert torch.equal(_logits(JambaForCausalLM.from_pretrained(tmp_path)), _logits(m))     # (the layout loads)
    _two_shards(m, tmp_path, extra=(None, keys1[0]))                 # (read from shard 1, then again from shard 2)
    with pytest.raises(ValueError, match=rf"'{keys1[0]}' is stored twice: in {first} and in {last}"):
        JambaForCausalLM.from_pretrained(tmp_path)
    _two_shards(m, tmp_path, extra=(keys2[-1], None))                # (in shard 1, which the index does not say)
    with pytest.raises(ValueError, match=rf"'{keys2[-1]}' is in {first}, but .*index.json maps it to {last}"):
        JambaForCausalLM.from_pretrained(tmp_path)
    m.save_pretrained(tmp_path / "one")
    _rewrite(tmp_path / "one" / "model.safetensors", final_layernorm__weight=torch.zeros(32))
    with pytest.raises(ValueError, match=r"one weight, as 'final_layernorm.weight' and 'model.final_layernorm.weight'"
                                         r", is stored twice"):
        JambaForCausalLM.from_pretrained(tmp_path / "one")


def test_experts_both_fused_and_per_expert_refused(tmp_path):
    """A layer's experts stored fused (3-D) and per expert loaded silently (the last read won); now a ValueError
    naming the layer, the two keys and their files."""
    m = _model()
    m.save_pretrained(tmp_path)
    fused = m.model.layers[1].feed_forward.experts.down_proj.detach()
    _rewrite(tmp_path / "model.safetensors", model__layers__1__feed_forward__experts__down_proj=fused * 2)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.feed_forward\.experts is stored both fused and "
                                         r"per expert: '.*experts\.(down_proj|0\.down_proj\.weight)' in "
                                         r".*model\.safetensors"):
        JambaForCausalLM.from_pretrained(tmp_path)


def test_tied_lm_head_that_differs_is_loaded_untied_as_transformers(tmp_path):
    """tie_word_embeddings with a stored lm_head.weight unlike the embedding: the last one read filled the one tied
    tensor, silently. transformers 5 loads both as stored (untied, with a warning; 4.x used the embedding); so does
    this now: a warning, config.tie_word_embeddings False, transformers' logits, and a save / load round trip keeps
    both. A stored lm_head equal to the embedding (as .bin checkpoints hold it) stays tied, without a warning."""
    m = _model(tie_word_embeddings=True)
    m.save_pretrained(tmp_path)
    emb = m.model.embed_tokens.weight.detach().clone()
    _rewrite(tmp_path / "model.safetensors", lm_head__weight=emb.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = JambaForCausalLM.from_pretrained(tmp_path)
    assert same.lm_head.weight is same.model.embed_tokens.weight and same.config.tie_word_embeddings
    head = torch.randn_like(emb)
    _rewrite(tmp_path / "model.safetensors", lm_head__weight=head)
    with pytest.warns(UserWarning, match="lm_head.weight .* differs from model.embed_tokens.weight"):
        ours = JambaForCausalLM.from_pretrained(tmp_path)
    assert not ours.config.tie_word_embeddings
    assert torch.equal(ours.lm_head.weight, head) and torch.equal(ours.model.embed_tokens.weight, emb)
    ours.save_pretrained(tmp_path / "again")
    back = JambaForCausalLM.from_pretrained(tmp_path / "again")
    assert torch.equal(back.lm_head.weight, head) and torch.equal(_logits(back), _logits(ours))
    transformers = import_transformers()
    if int(transformers.__version__.split(".")[0]) >= 5:
        hf = transformers.JambaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
        with torch.no_grad():
            ref = hf(_ids(), use_cache=False).logits
        assert ((_logits(ours) - ref).abs().max() / ref.abs().max()).item() < 1e-4


@pytest.mark.parametrize("field,value", [("torch_dtype", "float64"), ("dtype", "bfloat61"), ("dtype", "float8_e4m3fn")])
def test_unknown_config_dtype_refused(tmp_path, field, value):
    """A dtype name in config.json that is not one the kernels run (float64, which transformers would load as such;
    a typo) loaded as float32 without a word; now a ValueError naming the field and the names taken. An explicit
    dtype= still loads."""
    _model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"config\.{field}: '{value}' is not a dtype jamba_ext runs; expected one of "
                                         r".*'bfloat16'.*'float16'.*'float32'"):
        JambaForCausalLM.from_pretrained(tmp_path)
    assert JambaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32


def test_config_from_json_file_home_and_path(tmp_path, monkeypatch):
    """JambaConfig.from_json_file("~/...") was a FileNotFoundError (from_pretrained expanded "~", it did not)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _model().config.save_pretrained(tmp_path / "c")
    a = JambaConfig.from_json_file("~/c/config.json")
    assert a.to_dict() == JambaConfig.from_json_file(tmp_path / "c" / "config.json").to_dict()
    assert a.hidden_size == CFG["hidden_size"]


def test_save_without_safetensors_says_what_to_install(tmp_path, monkeypatch):
    """Without the safetensors package, save_pretrained's ImportError named only the module (loading gave the pip
    hint); now the hint too, before anything is written."""
    monkeypatch.setitem(sys.modules, "safetensors", None)           # (import safetensors... raises ImportError)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"pip install safetensors"):
        _model().save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("value", [[1.0, 2.0], {"weight": 1}])
def test_non_tensor_in_bin_checkpoint_names_key_and_file(tmp_path, value):
    """A pytorch_model.bin whose state dict holds something other than a tensor under a weight's key was an
    AttributeError ('list' object has no attribute 'shape'); now a ValueError naming the key and the file."""
    m = _model()
    m.config.save_pretrained(tmp_path)
    sd = dict(m.state_dict(), **{"model.final_layernorm.weight": value})
    torch.save(sd, str(tmp_path / "pytorch_model.bin"))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: 'model\.final_layernorm\.weight' holds a "):
        JambaForCausalLM.from_pretrained(tmp_path)


def test_no_stale_generation_config_from_an_earlier_save(tmp_path):
    """A model without a generation config of its own saved over a checkpoint that had one left the old
    generation_config.json, whose stop tokens the next load then used; now it is removed (the model's are
    config.json's), and a model with one still writes it."""
    GenerationConfig = import_transformers().GenerationConfig
    m = _model()
    m.generation_config = GenerationConfig(eos_token_id=[2, 5], pad_token_id=1)
    m.save_pretrained(tmp_path)
    assert list(JambaForCausalLM.from_pretrained(tmp_path)._eos_ids()) == [2, 5]
    plain = _model()
    plain.save_pretrained(tmp_path)
    assert not (tmp_path / "generation_config.json").exists()
    assert JambaForCausalLM.from_pretrained(tmp_path)._eos_ids() == plain.config.eos_token_ids


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_save_pretrained_weight_files_get_the_umask_mode(tmp_path, mask):
    """safetensors' save_file (0.8) writes a temporary file of mode 0600 and renames it, so a checkpoint's weights
    were unreadable to other users while its config.json was not: every shard now gets what open() gives, 0o666
    minus the umask (one file and two shards)."""
    import os
    import stat
    old = os.umask(mask)
    try:
        _model().save_pretrained(tmp_path / "one")
        _model().save_pretrained(tmp_path / "two", max_shard_size="20KB")
    finally:
        os.umask(old)
    shards = sorted(p for p in (tmp_path / "two").iterdir() if p.suffix == ".safetensors")
    assert len(shards) >= 2
    for p in [tmp_path / "one" / "model.safetensors", tmp_path / "one" / "config.json"] + shards:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o666 & ~mask, p
