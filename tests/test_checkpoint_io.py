"""Checkpoint loading / saving (from_pretrained, save_pretrained, JambaConfig's) on the paths a user takes that
tests/test_model.py does not: each test here failed on the code before its fix (session 63's checkpoint audit).

Tiny fp32 configs on the CPU; the transformers comparison skips where transformers is not installed.
"""
import json

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
