"""`jamba-ext train`: its argument checks (one line, exit status 2, before the weights load where they can be), the
progress lines, Ctrl-C, the saved checkpoint (ours and transformers' from_pretrained give the same logits), the loss
falling on a repetitive text and the same losses for the same seed. In-process main() calls on the CPU; most use a
smaller built-in model (SMALL: the same layer kinds, Mamba / attention / MoE, a fraction of the time)."""
import os
import re
import signal

import pytest
import torch

import jamba_ext.__main__ as cli
from conftest import TRAIN_TEXT as TEXT
from jamba_ext.__main__ import main
from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM
from jamba_ext.tokenizer import ByteTokenizer

# layer 0: Mamba + dense MLP, layer 1: attention + MoE (4 experts, top 2); the byte tokenizer's vocabulary
SMALL = dict(cli.DEFAULT_CONFIG, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
             expert_layer_offset=1, num_experts=4)


@pytest.fixture
def one_thread():
    # a model this small gains nothing from more threads, and on a busy machine torch's threads waiting for each
    # other made a step 0.25 s instead of 0.01 s
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small(monkeypatch, one_thread):
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", SMALL)


def _argv(text, *extra):
    return ["train", "--device", "cpu", "--text-file", text, "--steps", "2", "--batch", "1", "--seq-len", "8",
            *extra]


def _exit(capsys, argv, msg, code=2):
    """main(argv) ends with exit status code and one line on stderr holding msg (no traceback)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code and msg in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _losses(err):
    return [float(x) for x in re.findall(r"^step +\d+/\d+ \| loss ([0-9.]+) ", err, re.M)]


def test_train_argument_errors(tmp_path, text, capsys, small):
    """Every bad value is one line and exit status 2, before any training step (a guard: these held before)."""
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    (tmp_path / "file").write_text("x")
    for extra, msg in ((["--steps", "0"], "--steps must be >= 1"), (["--steps", "-3"], "--steps must be >= 1"),
                       (["--lr", "0"], "--lr must be"), (["--lr", "-0.001"], "--lr must be"),
                       (["--lr", "nan"], "--lr must be"), (["--lr", "inf"], "--lr must be"),
                       (["--batch", "0"], "--batch"), (["--seq-len", "1"], "--seq-len must be >= 2"),
                       (["--lora", "-1"], "--lora must be >= 1"), (["--lora-alpha", "4"], "--lora-alpha goes with"),
                       (["--lora", "2", "--lora-alpha", "nan"], "--lora-alpha must be"),
                       (["--experts-fp8"], "train adapters with --lora R"),
                       (["--experts-fp8", "--lora", "2", "--save", str(tmp_path / "o")], "--save with --experts-fp8"),
                       (["--log-every", "-1"], "--log-every must be >= 0"), (["--device", "tpu"], "--device"),
                       (["--save", str(tmp_path / "file")], "--save"),
                       (["--save", str(tmp_path / "file" / "sub")], "--save"),
                       (["--model", str(tmp_path / "missing")], "does not exist")):
        _exit(capsys, _argv(text, *extra), msg)
    for path, msg in ((tmp_path / "missing.txt", "No such file"), (tmp_path, "Is a directory"), (bad, "utf-8")):
        _exit(capsys, _argv(str(path)), msg)
    _exit(capsys, _argv(text, "--seq-len", str(len(TEXT))), f"encodes to {len(TEXT)} tokens")
    with pytest.raises(SystemExit) as e:        # argparse's own: the command's usage line, not the top level's
        main(_argv(text, "--steps", "ten"))
    assert e.value.code == 2 and "jamba-ext train: error:" in capsys.readouterr().err


def test_train_text_checks_before_the_weights(tmp_path, capsys, no_weights):
    """A text with NUL characters (a binary file that happens to be UTF-8, UTF-16 text without its byte-order mark)
    trained in silence; an empty or too short text and an unusable --save failed only after the weights were built
    (minutes for a large checkpoint). Now all one line, exit 2, first."""
    nul = tmp_path / "utf16.txt"
    nul.write_bytes("some text to train on\n".encode("utf-16-le") * 10)
    _exit(capsys, _argv(str(nul)), "holds NUL characters")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _exit(capsys, _argv(str(empty)), "is empty")
    short = tmp_path / "short.txt"
    short.write_text("abc")
    _exit(capsys, _argv(str(short)), "encodes to 3 tokens; --seq-len 8 needs at least 9")
    long = tmp_path / "t.txt"
    long.write_text(TEXT)
    _exit(capsys, _argv(str(long), "--save", str(short)), "--save")          # a file there
    # a checkpoint directory (no weights needed: they are never read): the same checks, before from_pretrained
    ck = tmp_path / "ck"
    JambaConfig(**dict(SMALL, vocab_size=100)).save_pretrained(str(ck))
    (ck / ByteTokenizer.MARKER).write_text("byte-level\n")
    _exit(capsys, _argv(str(short), "--model", str(ck)), "encodes to 3 tokens")
    _exit(capsys, _argv(str(long), "--model", str(ck)), "the tokenizer produced id 125 >= the model's vocab_size 100")


def test_train_save_path_empty_or_tilde(tmp_path, text, capsys, monkeypatch, small):
    """--save "" (an unset shell variable) trained and saved nothing, exit 0. --save=~/ck (no shell expands that "~")
    wrote the weights under $HOME but the byte tokenizer's marker under ./~/ck, so generate could not read the
    checkpoint."""
    _exit(capsys, _argv(text, "--save", ""), "--save: empty path")
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(_argv(text, "--save=~/ck")) == 0
    capsys.readouterr()
    assert {"config.json", "model.safetensors", ByteTokenizer.MARKER} <= set(os.listdir(home / "ck"))
    assert os.listdir(cwd) == []


def _checkpoint_with_tokenizer(path):
    """SMALL's weights saved with a word-level tokenizer.json (ids < 10 of its 259)."""
    tokenizers = pytest.importorskip("tokenizers")
    JambaForCausalLM.from_config(JambaConfig(**SMALL), dtype="float32", seed=1).save_pretrained(str(path))
    words = ["[UNK]", "[PAD]", "[EOS]", "the", "cat", "sat", "on", "a", "mat", "dog"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))


def test_train_save_into_its_own_model_directory(tmp_path, capsys, one_thread):
    """--model DIR --save DIR (fine-tuning a checkpoint in place) wrote the weights, then failed copying tokenizer.json
    onto itself (shutil.SameFileError): exit 2 with the checkpoint already overwritten. Now it saves, exit 0."""
    ck = tmp_path / "ck"
    _checkpoint_with_tokenizer(ck)
    words = tmp_path / "w.txt"
    words.write_text("the cat sat on a mat the dog " * 10)
    before = JambaForCausalLM.from_pretrained(str(ck)).lm_head.weight.clone()
    assert main(_argv(str(words), "--model", str(ck), "--save", str(ck))) == 0
    err = capsys.readouterr().err
    assert "saved to" in err and "error" not in err, err
    assert not torch.equal(JambaForCausalLM.from_pretrained(str(ck)).lm_head.weight, before)      # trained, saved
    assert main(["generate", "--model", str(ck), "--device", "cpu", "--prompt", "the cat", "--max-new-tokens",
                 "2"]) == 0


def test_train_save_byte_model_over_a_tokenizer_json(tmp_path, text, capsys, no_weights):
    """The built-in (byte-level) model saved into a directory holding another model's tokenizer.json: generate read
    that tokenizer.json rather than the byte marker, and garbled the text. Refused before training."""
    ck = tmp_path / "old"
    ck.mkdir()
    (ck / "tokenizer.json").write_text("{}")
    _exit(capsys, _argv(text, "--save", str(ck)), "holds a tokenizer.json")


def test_train_lora_rank_beyond_the_projections(text, capsys, small):
    """--lora 10^8 ended in an out-of-memory error (exit 1) suggesting generate's --max-new-tokens; a rank above
    every projection's min(in, out) is refused by name."""
    # (SMALL's largest such rank: x_proj's output, dt rank 2 + 2 x d_state 16 = 34, past the hidden size 32)
    _exit(capsys, _argv(text, "--lora", str(10 ** 8)), "--lora 100000000: larger than any adapted projection's rank "
          "(at most 34, ")
    _exit(capsys, _argv(text, "--lora", "35"), "give R <= 34")
    assert main(_argv(text, "--lora", "34", "--steps", "1")) == 0       # the largest rank that means something
    capsys.readouterr()


def test_train_out_of_memory_names_train_flags(text, capsys, small):
    """An allocation that cannot succeed (--batch 10^14: 800 TB of window starts, past a 47-bit address space) is one
    line, exit 1, naming train's flags (it named generate's --max-new-tokens / --batch-size)."""
    with pytest.raises(SystemExit) as e:
        main(_argv(text, "--batch", str(10 ** 14)))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert e.value.code == 1 and "Traceback" not in err, err
    assert last.startswith("jamba-ext: error: out of memory: ") and "--batch or --seq-len" in last, err
    assert "--max-new-tokens" not in last, err


def test_train_diverged_hint_fits_the_dtype(text, capsys, small):
    """A loss gone NaN in fp32 weights (a huge --lr) told the user that fp16 weights underflow; it names --lr now
    (fp16 weights still get the dtype hint). Exit 1, nothing saved."""
    with pytest.raises(SystemExit) as e:
        main(_argv(text, "--lr", "1e6", "--steps", "8", "--batch", "2"))
    err = capsys.readouterr().err
    assert e.value.code == 1 and "training diverged (a lower --lr than 1e+06 may train)" in err, err
    assert "fp16" not in err, err


def test_train_progress_lines(text, capsys, small):
    """A line every --log-every steps: the mean loss since the last line, tokens/s, time so far and an ETA; then the
    summary line."""
    assert main(_argv(text, "--steps", "6", "--log-every", "2")) == 0
    err = capsys.readouterr().err
    lines = re.findall(r"^step +(\d)/6 \| loss [0-9.]+ \| +[0-9.]+ tok/s \| +\d+ s \| ETA (\d+) s$", err, re.M)
    assert [n for n, _ in lines] == ["2", "4", "6"] and lines[-1][1] == "0", err
    assert re.search(r"^trained 6 steps of 1 x 8 tokens in [0-9.]+ s: loss ", err, re.M), err
    assert cli._duration(59.4) == "59 s" and cli._duration(185) == "3m05s" and cli._duration(7620) == "2h07m"


def _interrupt_at(monkeypatch, step, times=1):
    """SIGINT to this process (a Ctrl-C; times of them) in the forward pass of the given step (1-based)."""
    forward, n = JambaForCausalLM.forward, [0]

    def fwd(self, *a, **k):
        n[0] += 1
        for _ in range(times if n[0] == step else 0):
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *a, **k)
    monkeypatch.setattr(JambaForCausalLM, "forward", fwd)


def _main_no_interrupt(argv):
    try:
        return main(argv)
    except KeyboardInterrupt:       # (pytest would stop the whole run)
        pytest.fail("KeyboardInterrupt escaped from main()")


def test_train_ctrl_c_saves_the_steps_done(tmp_path, text, capsys, monkeypatch, small):
    """Ctrl-C mid-training raised KeyboardInterrupt (a traceback, nothing saved). Now the step in progress ends, the
    weights so far are saved (with --save) and the exit status is 130; the checkpoint loads."""
    _interrupt_at(monkeypatch, 3)
    out = tmp_path / "ck"
    assert _main_no_interrupt(_argv(text, "--steps", "50", "--save", str(out))) == 130
    err = capsys.readouterr().err
    assert "SIGINT: stopping after step 3, then saving" in err and "Traceback" not in err, err
    assert re.search(r"^step +3/50 \| .* \| stopped$", err, re.M), err
    assert "trained 3 of 50 steps" in err and "saved (after step 3 of 50) to" in err, err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler        # put back
    JambaForCausalLM.from_pretrained(str(out))
    assert ByteTokenizer.MARKER in os.listdir(out)


def test_train_second_ctrl_c_stops_at_once(tmp_path, text, capsys, monkeypatch, small):
    """A second Ctrl-C (a step too long to wait for) stops at once: one line, exit 130, nothing saved."""
    _interrupt_at(monkeypatch, 2, times=2)
    out = tmp_path / "ck"
    assert _main_no_interrupt(_argv(text, "--steps", "50", "--save", str(out))) == 130
    err = capsys.readouterr().err
    assert err.rstrip().endswith("jamba-ext: interrupted: nothing saved") and "Traceback" not in err, err
    assert not (out / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_train_ctrl_c_while_loading(text, capsys, monkeypatch):
    """Ctrl-C before the training loop (a large checkpoint loading) is one line and exit 130, not a traceback."""
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(JambaForCausalLM, "from_config", interrupted)
    assert _main_no_interrupt(_argv(text)) == 130
    assert capsys.readouterr().err.strip() == "jamba-ext: interrupted: nothing saved"


def test_train_loss_falls_and_is_deterministic(text, capsys, small):
    """On a repetitive text the loss falls over 30 steps, and a second run with the same seed logs the same losses.
    (SMALL: the built-in model's 60 steps took 60 s on a loaded 2-core machine; test_generate_cli's
    test_cli_train_then_generate trains the built-in one.)"""
    runs = []
    for _ in range(2):
        assert main(_argv(text, "--steps", "30", "--seq-len", "16", "--lr", "1e-2", "--log-every", "1")) == 0
        runs.append(_losses(capsys.readouterr().err))
    assert len(runs[0]) == 30 and runs[0] == runs[1], runs
    assert sum(runs[0][-5:]) / 5 < sum(runs[0][:5]) / 5 - 2.0, runs


def test_train_checkpoint_loads_in_ours_and_transformers(tmp_path, text, capsys, small):
    """What --save writes loads in JambaForCausalLM.from_pretrained and in transformers' JambaForCausalLM, fp32 on the
    CPU, with the same logits."""
    from conftest import import_transformers
    transformers = import_transformers()
    out = tmp_path / "ck"
    assert main(_argv(text, "--steps", "3", "--save", str(out))) == 0
    capsys.readouterr()
    ours = JambaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    theirs = transformers.JambaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    built = JambaForCausalLM.from_config(JambaConfig(**SMALL), dtype="float32", seed=cli.DEFAULT_SEED)
    assert not torch.equal(ours.lm_head.weight, built.lm_head.weight)           # the trained weights, not the start
    ids = torch.tensor([ByteTokenizer().encode(TEXT[:40])])
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
