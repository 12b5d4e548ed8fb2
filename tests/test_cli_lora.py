"""LoRA adapters on the command line: `train --lora R --save-lora DIR` writes them as a PEFT adapter directory,
`generate --adapter DIR` / `serve --adapter DIR` load them onto the model (merged into its weights); bad paths are one
line naming the flag and the path, exit status 2, before the weights load. Also save_lora's directory errors and file
modes, and from_pretrained recording where the weights came from (config._name_or_path, as transformers does), which
save_lora writes as base_model_name_or_path. In-process main() calls on the CPU with a small built-in model."""
import json
import os
import signal
import stat

import pytest
import torch

import jamba_ext.__main__ as cli
from conftest import refuse_weights
from jamba_ext import modeling_jamba
from jamba_ext.__main__ import main
from jamba_ext.lora import LoRALinear, add_lora, load_lora, merge_lora, save_lora
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM
from jamba_ext.tokenizer import ByteTokenizer

st = pytest.importorskip("safetensors.torch")

# layer 0: Mamba + dense MLP, layer 1: attention + MoE (4 experts, top 2); the byte tokenizer's vocabulary
SMALL = dict(cli.DEFAULT_CONFIG, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
             expert_layer_offset=1, num_experts=4)
PROMPT = "the quick"
NEW = 12


@pytest.fixture
def small(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # (a model this small gains nothing from more threads)
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", SMALL)
    yield
    torch.set_num_threads(threads)


def _train(text, *extra):
    # lr 1e-2 over 20 steps: adapters that change the greedy text (B starts at zero: a few small steps did not)
    return ["train", "--device", "cpu", "--text-file", text, "--steps", "20", "--batch", "2", "--seq-len", "16",
            "--lr", "1e-2", "--lora", "4", *extra]


def _generate(*extra):
    return ["generate", "--device", "cpu", "--prompt", PROMPT, "--max-new-tokens", str(NEW), *extra]


def _exit(capsys, argv, msgs, code=2):
    """main(argv) ends with exit status code and one line on stderr holding every one of msgs (no traceback)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code and all(m in err for m in msgs), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _cli_tokens(monkeypatch, capsys, argv):
    """The token ids the CLI's generate() call returned (the new ones), for argv."""
    seen = []
    gen = JambaForCausalLM.generate

    def record(self, *a, **k):
        out = gen(self, *a, **k)
        seen.append(out[0].tolist())
        return out
    monkeypatch.setattr(JambaForCausalLM, "generate", record)
    assert main(argv) == 0
    monkeypatch.setattr(JambaForCausalLM, "generate", gen)
    capsys.readouterr()
    assert len(seen) == 1
    return seen[0][-NEW:]


def _builtin():
    return JambaForCausalLM.from_config(JambaConfig(**SMALL), dtype="float32", seed=cli.DEFAULT_SEED)


def _greedy(model):
    ids = torch.tensor([ByteTokenizer().encode(PROMPT, add_bos=True)])
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=NEW, do_sample=False)[0, -NEW:].tolist()


def test_train_save_lora_then_generate_adapter(tmp_path, text, capsys, monkeypatch, small):
    """train --lora 4 --save-lora DIR writes the adapters (not merged: adapter_config.json + adapter_model.safetensors,
    trained B != 0); generate --adapter DIR gives the greedy tokens of the built-in model with those adapters loaded
    in-process, which differ from the base model's (an adapter silently left out fails here)."""
    out = tmp_path / "adapter"
    assert main(_train(text, "--save-lora", str(out))) == 0
    err = capsys.readouterr().err
    assert f"saved the LoRA adapters to {out} (python3 -m jamba_ext generate --adapter {out}" in err, err
    assert "written as a PEFT adapter directory by --save-lora" in err, err
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["base_model_name_or_path"]) == ("LORA", 4, 8, None)
    saved = st.load_file(str(out / "adapter_model.safetensors"))
    assert saved and all(".lora_" in k for k in saved)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())     # trained

    base = _greedy(_builtin())
    adapted = _builtin()
    load_lora(adapted, out)
    want = _greedy(adapted)                     # the adapters as modules, unmerged
    merged = _builtin()
    load_lora(merged, out)
    merge_lora(merged)
    assert _greedy(merged) == want              # (fp32: merging changes no greedy token here)
    assert want != base                         # the adapters matter for this text

    got = _cli_tokens(monkeypatch, capsys, _generate("--adapter", str(out)))
    assert got == want
    assert _cli_tokens(monkeypatch, capsys, _generate("--adapter", str(out))) == got     # run to run
    assert _cli_tokens(monkeypatch, capsys, _generate()) == base                          # no flag: the base model
    assert main(_generate("--adapter", str(out))) == 0
    err = capsys.readouterr().err
    assert f"adapter: {out} (LoRA rank 4, alpha 8, on " in err and "merged into the weights" in err, err


def test_generate_adapter_merges_into_plain_projections(tmp_path, text, capsys, monkeypatch, small):
    """generate --adapter merges the adapters (merge_lora): the model that generates has plain nn.Linear projections
    only (the fast paths that need them apply), and the joint q/k/v and gate/up layouts survive the in-place merge."""
    out = tmp_path / "adapter"
    assert main(_train(text, "--save-lora", str(out), "--steps", "2")) == 0
    capsys.readouterr()
    seen = {}
    gen = JambaForCausalLM.generate

    def record(self, *a, **k):
        seen["lora"] = any(isinstance(m, LoRALinear) for m in self.modules())
        seen["joint"] = [modeling_jamba._joint_weight((m.q_proj, m.k_proj, m.v_proj)) is not None
                         for m in self.modules() if isinstance(m, modeling_jamba.JambaAttention)]
        return gen(self, *a, **k)
    monkeypatch.setattr(JambaForCausalLM, "generate", record)
    assert main(_generate("--adapter", str(out))) == 0
    assert seen["lora"] is False and seen["joint"] and all(seen["joint"]), seen


def test_train_save_lora_with_save_and_with_experts_fp8(tmp_path, text, capsys, monkeypatch, small):
    """--save and --save-lora together: the adapters (written before --save merges them) and the merged checkpoint;
    generate --adapter on the built-in model gives generate --model CHECKPOINT's tokens. --experts-fp8 (where --save
    is refused) writes the adapters too, and they load onto the fp8 model."""
    ad, ck = tmp_path / "ad", tmp_path / "ck"
    assert main(_train(text, "--save-lora", str(ad), "--save", str(ck))) == 0
    err = capsys.readouterr().err
    assert f"saved the LoRA adapters to {ad}" in err and f"saved to {ck}" in err, err
    assert (ad / "adapter_model.safetensors").is_file() and (ck / "model.safetensors").is_file()
    assert not (ck / "adapter_config.json").exists() and not (ad / "config.json").exists()
    merged = _cli_tokens(monkeypatch, capsys, _generate("--model", str(ck)))
    assert _cli_tokens(monkeypatch, capsys, _generate("--adapter", str(ad))) == merged
    assert _cli_tokens(monkeypatch, capsys, _generate()) != merged

    f8 = tmp_path / "f8"
    assert main(_train(text, "--experts-fp8", "--save-lora", str(f8))) == 0
    err = capsys.readouterr().err
    assert "(experts float8_e4m3fn)" in err and f"saved the LoRA adapters to {f8}" in err, err
    assert main(_generate("--experts-fp8", "--adapter", str(f8))) == 0
    assert "(experts float8_e4m3fn)" in capsys.readouterr().err


def test_train_save_lora_bad_paths_fail_before_the_weights(tmp_path, text, capsys, monkeypatch, no_weights):
    """--save-lora is checked as --save is (empty, "~" expanded, made, writable, a file in its place), before the
    weights load; without --lora it names both flags; the directory of --save, or a model checkpoint's, is refused
    (transformers would read the adapter files there as an adapter for the base model)."""
    (tmp_path / "file").write_text("x")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text("{}")
    base = ["train", "--device", "cpu", "--text-file", text, "--steps", "2", "--seq-len", "8"]
    _exit(capsys, base + ["--save-lora", str(tmp_path / "a")], ["--save-lora", "--lora R"])
    _exit(capsys, base + ["--lora", "2", "--save-lora", ""], ["--save-lora: empty path"])
    for path, msg in ((str(tmp_path / "file"), "a file is there, not a directory"),
                      (str(tmp_path / "file" / "sub"), "Not a directory"), (str(ck), "holds a config.json")):
        _exit(capsys, base + ["--lora", "2", "--save-lora", path], [f"--save-lora {path!r}", msg])
    same = str(tmp_path / "out")
    _exit(capsys, base + ["--lora", "2", "--save-lora", same, "--save", same + "/"],
          [f"--save-lora {same!r}", "is --save's directory too"])
    if os.geteuid() != 0:           # (root writes anywhere)
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        _exit(capsys, base + ["--lora", "2", "--save-lora", str(ro)], [f"--save-lora {str(ro)!r}", "not writable"])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _exit(capsys, base + ["--lora", "2", "--save-lora=~/ad", "--text-file", str(tmp_path / "missing.txt")],
          ["--text-file"])
    assert not (tmp_path / "home").exists()         # (made only once the other checks passed)


def test_train_save_lora_tilde(tmp_path, text, capsys, monkeypatch, small):
    """--save-lora=~/ad (no shell expands that "~") writes under $HOME, not into ./~/ad."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(_train(text, "--steps", "1", "--save-lora=~/ad")) == 0
    capsys.readouterr()
    assert sorted(os.listdir(home / "ad")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert os.listdir(cwd) == []


def _interrupt_at(monkeypatch, step, sig):
    """sig to this process in the forward pass of the given step (1-based)."""
    forward, n = JambaForCausalLM.forward, [0]

    def fwd(self, *a, **k):
        n[0] += 1
        if n[0] == step:
            os.kill(os.getpid(), sig)
        return forward(self, *a, **k)
    monkeypatch.setattr(JambaForCausalLM, "forward", fwd)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_signal_saves_the_adapters_so_far(tmp_path, text, capsys, monkeypatch, small, sig):
    """Ctrl-C or SIGTERM during training with --save-lora: as with --save, the step in progress ends, the adapters
    trained so far are written, and the exit status is 128 + the signal."""
    _interrupt_at(monkeypatch, 3, sig)
    out = tmp_path / "ad"
    try:
        code = main(_train(text, "--steps", "50", "--save-lora", str(out)))
    except KeyboardInterrupt:       # (pytest would stop the whole run)
        pytest.fail("KeyboardInterrupt escaped from main()")
    err = capsys.readouterr().err
    assert code == 128 + sig, err
    assert f"{signal.Signals(sig).name}: stopping after step 3, then saving" in err, err
    assert f"saved the LoRA adapters (after step 3 of 50) to {out}" in err and "Traceback" not in err, err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler        # put back
    m = _builtin()
    assert load_lora(m, out) > 0


def _adapter_dirs(tmp_path, good):
    """{name: (path, message)}: adapter directories that generate --adapter must refuse."""
    (tmp_path / "a_file").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    dora = tmp_path / "dora"
    dora.mkdir()
    cfg = json.loads((good / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(dict(cfg, use_dora=True)))
    (dora / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
    return {"missing": (str(tmp_path / "missing"), "no directory"), "file": (str(tmp_path / "a_file"), "is a file"),
            "empty": (str(empty), "no adapter_config.json"),
            "no_weights": (str(no_weights), "no adapter_model.safetensors or adapter_model.bin"),
            "dora": (str(dora), "use_dora is True")}


def test_generate_adapter_bad_dirs_fail_before_the_weights(tmp_path, capsys, monkeypatch):
    """A missing --adapter directory, a file, a directory without adapter_config.json or without weights, a config
    with settings these adapters lack: one line naming --adapter and the path, exit 2, before the weights load;
    serve --adapter the same."""
    good = tmp_path / "good"
    m = _builtin()
    add_lora(m, r=2, alpha=4)
    save_lora(m, good)
    bad = _adapter_dirs(tmp_path, good)

    refuse_weights(monkeypatch)
    for path, msg in bad.values():
        _exit(capsys, _generate("--adapter", path), [f"--adapter {path!r}", msg])
    _exit(capsys, _generate("--adapter", ""), ["--adapter: empty path"])
    path, msg = bad["missing"]
    _exit(capsys, ["serve", "--device", "cpu", "--port", "0", "--adapter", path], [f"--adapter {path!r}", msg])


def test_generate_adapter_that_does_not_fit_the_model(tmp_path, capsys, small):
    """Adapters of another base model (other projection sizes), of another rank than their config says, or with
    an unreadable weights file: one line naming --adapter and the path, exit 2, no traceback."""
    other = tmp_path / "other"
    m = JambaForCausalLM.from_config(JambaConfig(**dict(SMALL, hidden_size=48)), dtype="float32", seed=0)
    add_lora(m, r=2, alpha=4)
    save_lora(m, other)
    _exit(capsys, _generate("--adapter", str(other)), [f"--adapter {str(other)!r}", "mis-shaped"])
    rank = tmp_path / "rank"
    m = _builtin()
    add_lora(m, r=2, alpha=4)
    save_lora(m, rank)
    cfg = json.loads((rank / "adapter_config.json").read_text())
    (rank / "adapter_config.json").write_text(json.dumps(dict(cfg, r=3)))
    _exit(capsys, _generate("--adapter", str(rank)),
          [f"--adapter {str(rank)!r}", "says r=3 but the tensors have rank 2"])
    (rank / "adapter_config.json").write_text(json.dumps(cfg))
    blob = (rank / "adapter_model.safetensors").read_bytes()
    (rank / "adapter_model.safetensors").write_bytes(blob[:50])
    _exit(capsys, _generate("--adapter", str(rank)), [f"--adapter {str(rank)!r}", "not a readable safetensors file"])


def test_serve_adapter_serves_the_merged_model(tmp_path, text, capsys, monkeypatch, small):
    """serve --adapter DIR: the model handed to the server has the adapters merged into its weights (the built-in
    model's weights with load_lora + merge_lora), no adapter modules."""
    from jamba_ext import server
    out = tmp_path / "ad"
    assert main(_train(text, "--steps", "2", "--save-lora", str(out))) == 0
    seen = {}

    def fake(model, tok, host, port, **kw):
        seen["model"] = model
    monkeypatch.setattr(server, "serve", fake)
    assert main(["serve", "--device", "cpu", "--port", "0", "--adapter", str(out)]) == 0
    assert f"adapter: {out} (LoRA rank 4" in capsys.readouterr().err
    want = _builtin()
    load_lora(want, out)
    merge_lora(want)
    got = seen["model"]
    assert not any(isinstance(x, LoRALinear) for x in got.modules())
    sd, base = got.state_dict(), _builtin().state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in want.state_dict().items())
    assert not torch.equal(sd["model.layers.0.mamba.in_proj.weight"], base["model.layers.0.mamba.in_proj.weight"])


def _adapted():
    m = _builtin()
    add_lora(m, r=2, alpha=4)
    return m


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_save_lora_files_get_the_umask_mode(tmp_path, mask):
    """safetensors' save_file wrote adapter_model.safetensors with mode 0600 (a temporary file renamed): now both
    files get what open() gives, 0o666 minus the umask; a second save replaces the files, leaving no temporary one."""
    old = os.umask(mask)
    try:
        save_lora(_adapted(), tmp_path / "ad")
        save_lora(_adapted(), tmp_path / "ad")
    finally:
        os.umask(old)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "ad" / name).st_mode) == 0o666 & ~mask, name
    assert sorted(os.listdir(tmp_path / "ad")) == ["adapter_config.json", "adapter_model.safetensors"]


def test_save_lora_directory_errors_name_the_path(tmp_path):
    """A directory argument that is a file, or under a file, or a weights name taken by a directory: an OSError
    naming the path (makedirs said only "[Errno 17] File exists"; safetensors raised its own SafetensorError), and
    no temporary file left behind."""
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"save_lora: '{f}' is a file, not a directory"):
        save_lora(_adapted(), f)
    with pytest.raises(OSError, match=f"save_lora: cannot write the adapter directory '{f / 'sub'}'"):
        save_lora(_adapted(), f / "sub")
    d = tmp_path / "taken"
    (d / "adapter_model.safetensors").mkdir(parents=True)
    with pytest.raises(OSError, match=f"save_lora: cannot write the adapter directory '{d}'"):
        save_lora(_adapted(), d)
    assert os.listdir(d) == ["adapter_model.safetensors"]
    if os.geteuid() != 0:           # (root writes anywhere)
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match=f"save_lora: cannot write the adapter directory '{ro}'"):
            save_lora(_adapted(), ro)


def test_from_pretrained_records_name_or_path(tmp_path, monkeypatch):
    """from_pretrained sets config._name_or_path and model.name_or_path to the path given ("~" expanded; a Hub id
    as given, not its download directory), over a config.json's own _name_or_path, as transformers does; save_lora
    writes it as base_model_name_or_path; save_pretrained does not write it into config.json."""
    ck = tmp_path / "ck"
    _builtin().save_pretrained(str(ck))
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps(dict(cfg, _name_or_path="/elsewhere")))
    m = JambaForCausalLM.from_pretrained(str(ck))
    assert m.config._name_or_path == str(ck) and m.name_or_path == str(ck)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert JambaForCausalLM.from_pretrained("~/ck").config._name_or_path == str(ck)
    monkeypatch.setattr(modeling_jamba, "resolve_checkpoint", lambda p: str(ck))     # (no download)
    hub = JambaForCausalLM.from_pretrained("org/jamba-tiny")
    assert hub.config._name_or_path == "org/jamba-tiny" and hub.name_or_path == "org/jamba-tiny"
    add_lora(hub, r=2, alpha=4)
    save_lora(hub, tmp_path / "ad")
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "org/jamba-tiny"
    merge_lora(hub)
    hub.save_pretrained(str(tmp_path / "again"))
    assert "_name_or_path" not in json.loads((tmp_path / "again" / "config.json").read_text())


def test_train_model_save_lora_names_the_base(tmp_path, text, capsys, monkeypatch, small):
    """train --model DIR --lora R --save-lora AD: adapter_config.json's base_model_name_or_path is DIR (absolute:
    the adapters are read from elsewhere), and generate --model DIR --adapter AD takes them."""
    ck = tmp_path / "ck"
    _builtin().save_pretrained(str(ck))
    (ck / ByteTokenizer.MARKER).write_text("byte-level\n")
    monkeypatch.chdir(tmp_path)
    assert main(_train(text, "--model", "ck", "--save-lora", "ad")) == 0
    err = capsys.readouterr().err
    assert "(python3 -m jamba_ext generate --model ck --adapter ad --prompt ...)" in err, err
    base = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(ck)
    got = _cli_tokens(monkeypatch, capsys, _generate("--model", "ck", "--adapter", "ad"))
    assert got == _cli_tokens(monkeypatch, capsys, _generate("--adapter", "ad"))      # (ck: the built-in weights)
    assert got != _cli_tokens(monkeypatch, capsys, _generate("--model", "ck"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_generate_adapter_on_cuda_graph_decode(tmp_path, text, capsys, monkeypatch, small):
    """generate --adapter on a GPU (the CUDA-graph decode by default; fp32, as in
    test_cli_cuda_graph_decode_matches_eager): the merged adapters change the greedy tokens, and the graph replay gives
    the eager decode's tokens."""
    out = tmp_path / "adapter"
    assert main(_train(text, "--save-lora", str(out))) == 0
    capsys.readouterr()
    cuda = ["--device", "cuda", "--dtype", "float32"]      # (the last --device wins over _generate's cpu)
    graph = _cli_tokens(monkeypatch, capsys, _generate("--adapter", str(out)) + cuda)
    eager = _cli_tokens(monkeypatch, capsys, _generate("--adapter", str(out), "--no-cuda-graph") + cuda)
    base = _cli_tokens(monkeypatch, capsys, _generate() + cuda)
    assert graph == eager and graph != base, (graph, eager, base)
