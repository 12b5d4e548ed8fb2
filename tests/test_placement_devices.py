"""Device spellings in device maps (jamba_ext.placement.canonical_device): "cuda", "cuda:0", torch.device("cuda") and 0
name one GPU while GPU 0 is current ("cuda": torch.cuda.current_device(), as torch reads it), in dicts, lists,
max_memory and hf_device_map; devices jamba_ext cannot run on, and GPUs past torch.cuda.device_count(), are refused
with a ValueError naming them.

No GPU is needed: torch.cuda.is_available / device_count / current_device are replaced (monkeypatch) and only the
maps are computed (no tensor goes to a GPU).
"""
import pytest
import torch

from jamba_ext import placement
from jamba_ext.modeling_jamba import JambaForCausalLM
from test_placement import UNITS, _model


def _fake_gpus(monkeypatch, n: int, current: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def cuda(i: int) -> torch.device:
    return torch.device("cuda", i)


@pytest.mark.parametrize("current", [0, 1])
def test_every_spelling_of_a_gpu_is_one_device(monkeypatch, current):
    """'cuda' and torch.device('cuda') are the current GPU; an int and 'cuda:i' are GPU i; CPU indices stay as
    written (the tests' stand-ins for several devices)."""
    _fake_gpus(monkeypatch, 2, current)
    for d in ("cuda", torch.device("cuda"), current, f"cuda:{current}", cuda(current)):
        got = placement.canonical_device(d)
        assert got == cuda(current) and got.index == current, d
    assert placement.canonical_device(1 - current) == cuda(1 - current)
    assert placement.canonical_device("cpu") == torch.device("cpu")
    assert placement.canonical_device("cpu:1") == torch.device("cpu", 1)


def test_a_dict_mixing_spellings_places_on_one_device(monkeypatch):
    """{unit: 'cuda', next unit: 'cuda:0', ...} is one device, as the canonical map (it was 'cuda' and 'cuda:0': two
    devices, so from_pretrained / dispatch set hf_device_map and the forward moved the state between them)."""
    _fake_gpus(monkeypatch, 2, 0)
    m = _model()
    mixed = {"model.embed_tokens": "cuda", "model.layers": "cuda:0", "model.layers.2": 0,
             "model.final_layernorm": torch.device("cuda"), "lm_head": torch.device("cuda", 0)}
    d = placement.resolve_device_map(m, mixed)
    assert d == placement.resolve_device_map(m, "cuda:0") == {u: cuda(0) for u in UNITS}
    assert len(set(d.values())) == 1                          # (from_pretrained / dispatch: the one-device path)
    assert placement.resolve_device_map(m, "cuda") == placement.resolve_device_map(m, 0) == d


def test_cuda_means_the_current_gpu(monkeypatch):
    """With GPU 1 current, 'cuda' is cuda:1 in the map and 1 in hf_device_map (both read 0 before)."""
    _fake_gpus(monkeypatch, 2, 1)
    m = _model()
    d = placement.resolve_device_map(m, {"": "cuda", "lm_head": 0})
    assert d["model.embed_tokens"] == d["model.layers.5"] == cuda(1) and d["lm_head"] == cuda(0)
    hf = placement.hf_device_map(d)
    assert hf["model.embed_tokens"] == 1 and hf["lm_head"] == 0
    assert placement.hf_device_map({"a": torch.device("cuda"), "b": torch.device("cpu")}) == {"a": 1, "b": "cpu"}
    assert placement.resolve_device_map(m, ["cuda", 0])["model.embed_tokens"] == cuda(1)   # (the list's order)


def test_repeats_are_found_across_spellings(monkeypatch):
    """A list or max_memory naming one GPU twice in different spellings is refused (it passed: 'cuda' and 'cuda:0'
    were two devices, each taking a share)."""
    _fake_gpus(monkeypatch, 2, 0)
    m = _model()
    for bad in (["cuda", "cuda:0"], [0, torch.device("cuda")], ["cuda:1", 1]):
        with pytest.raises(ValueError, match="more than once"):
            placement.resolve_device_map(m, bad)
    total = placement.module_bytes(m)
    with pytest.raises(ValueError, match=r"max_memory: cuda:0 given more than once"):
        placement.resolve_device_map(m, "balanced", {"cuda": total, 0: total})


def test_max_memory_spellings_give_one_split(monkeypatch):
    """max_memory keyed by 'cuda' / 0 / 'cuda:0' (and 1 / 'cuda:1') gives the same split on cuda:0 and cuda:1 (a key
    'cuda' stayed index-less: a device no unit of the canonical map had)."""
    _fake_gpus(monkeypatch, 2, 0)
    m = _model()
    total = placement.module_bytes(m)
    want = placement.resolve_device_map(m, "balanced", {0: total // 2, 1: total})
    assert set(want.values()) == {cuda(0), cuda(1)}
    for mm in ({"cuda": total // 2, "cuda:1": total}, {"cuda:1": total, torch.device("cuda"): total // 2}):
        assert placement.resolve_device_map(m, "balanced", mm) == want, mm


def test_gpus_that_are_not_visible(monkeypatch):
    """A GPU index past device_count, and any GPU where torch sees none, is refused naming the device and what is
    visible (from a dict, a list, one device or max_memory)."""
    m = _model()
    _fake_gpus(monkeypatch, 2, 0)
    for bad in ("cuda:2", 2, torch.device("cuda", 5), {"": "cpu", "lm_head": 3}, ["cuda:0", "cuda:7"]):
        with pytest.raises(ValueError, match=r"device_map: .* is not a visible GPU \(2 visible: cuda:0 \.\. cuda:1\)"):
            placement.resolve_device_map(m, bad)
    with pytest.raises(ValueError, match=r"max_memory: 'cuda:3' is not a visible GPU"):
        placement.resolve_device_map(m, "balanced", {"cuda:0": "1GB", "cuda:3": "1GB"})
    _fake_gpus(monkeypatch, 0)
    for bad in ("cuda", 0, torch.device("cuda")):
        with pytest.raises(ValueError, match=r"is not a visible GPU \(torch sees no GPU\)"):
            placement.resolve_device_map(m, bad)


@pytest.mark.parametrize("bad", ["mps", "xla", "meta", "mps:0", torch.device("mps"), "xpu:1"])
def test_devices_the_kernels_do_not_run_on(bad):
    """mps, xla, meta, ... are refused up front (they were taken, and the model then failed when moved there or at its
    first op: 'tensors on mps are not supported')."""
    m = _model()
    kind = torch.device(bad).type
    for dm in (bad, {"": "cpu", "lm_head": bad}, ["cpu", bad]):
        with pytest.raises(ValueError, match=rf"is a {kind} device; jamba_ext's kernels run on cpu and cuda"):
            placement.resolve_device_map(m, dm)
    with pytest.raises(ValueError, match=rf"max_memory: .* is a {kind} device"):
        placement.resolve_device_map(m, "balanced", {"cpu": "1GB", bad: "1GB"})


def test_disk_offload_is_refused_by_name():
    """accelerate's 'disk' (weights offloaded to disk) says so (it was torch's list of every device type)."""
    with pytest.raises(ValueError, match=r"'disk' \(accelerate's offload of weights to disk\) is not supported"):
        placement.resolve_device_map(_model(), {"": "cpu", "lm_head": "disk"})


def test_dispatch_and_from_pretrained_refuse_before_moving(tmp_path):
    """dispatch / from_pretrained with an unsupported device raise the ValueError (dispatch moved the units before it,
    then torch's RuntimeError stopped it half way) and leave the model where it was."""
    m = _model()
    m.save_pretrained(str(tmp_path))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="is a mps device"):
        m.dispatch({"": "cpu", "lm_head": "mps"})
    assert all(v.device.type == "cpu" and torch.equal(v, before[k]) for k, v in m.state_dict().items())
    for kw in (dict(device_map={"": "cpu", "lm_head": "xla"}), dict(device="meta")):
        with pytest.raises(ValueError, match="jamba_ext's kernels run on cpu and cuda"):
            JambaForCausalLM.from_pretrained(str(tmp_path), **kw)
