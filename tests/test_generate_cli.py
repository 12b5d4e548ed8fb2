"""The jamba-ext command: `python -m jamba_ext generate` on the built-in model (subprocess, as a user runs
it), on a local transformers checkpoint with a tokenizer.json, and its errors for bad --model dirs."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from jamba_ext.__main__ import main
from conftest import PACKAGE_PARENT, builtin_model, import_transformers, package_env
from jamba_ext.tokenizer import ByteTokenizer, StreamDecoder

def _run(*args):
    return subprocess.run([sys.executable, "-m", "jamba_ext", *args], capture_output=True, text=True,
                          env=package_env(), timeout=300, cwd=PACKAGE_PARENT)


def test_cli_builtin_model_smoke():
    r = _run("generate", "--prompt", "hello", "--max-new-tokens", "5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello")
    assert "tokens/s" in r.stderr and "built-in" in r.stderr
    assert "decode: 4 tokens" in r.stderr                 # CPU: no graph, no "(eager)" note


def test_cli_builtin_is_deterministic(capsys):
    outs = []
    for _ in range(2):
        assert main(["generate", "--prompt", "ab", "--max-new-tokens", "3", "--device", "cpu",
                     "--temperature", "0.7", "--seed", "3", "--progress"]) == 0
        cap = capsys.readouterr()
        outs.append(cap.out)
        assert "3/3" in cap.err                       # the progress bar was drawn on stderr
    assert outs[0] == outs[1]


def test_cli_prompt_file_and_prefill_chunk(tmp_path, capsys, monkeypatch):
    """--prompt-file reads the prompt (not echoed) and gives the tokens of the same --prompt; --prefill-chunk runs the
    prompt in chunks with the same greedy tokens; bad values fail with a message."""
    text = "The hybrid model reads a long prompt. " * 3
    f = tmp_path / "p.txt"
    f.write_text(text, encoding="utf-8")
    base = ["generate", "--max-new-tokens", "4", "--device", "cpu", "--no-progress"]
    assert main(base + ["--prompt", text]) == 0
    want = capsys.readouterr().out
    assert want.startswith(text)
    for extra in ([], ["--prefill-chunk", "8"], ["--prefill-chunk", "0"]):
        assert main(base + ["--prompt-file", str(f)] + extra) == 0
        assert capsys.readouterr().out == want[len(text):], extra
    for bad, msg in ((["--prompt-file", str(tmp_path / "missing.txt")], "prompt-file"),
                     (["--prompt", "x", "--prefill-chunk", "3"], "prefill-chunk")):
        with pytest.raises(SystemExit):
            main(base + bad)
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):                 # exactly one of --prompt / --prompt-file
        main(base + ["--prompt", "x", "--prompt-file", str(f)])
    capsys.readouterr()
    # a prompt of several chunks shows a prefill bar on stderr (then the echo): same stdout. Into a file or pipe
    # (capsys: not a terminal) the bar is a plain line at each tenth, no carriage returns; on a terminal, one line
    # redrawn
    progress = ["generate", "--max-new-tokens", "4", "--device", "cpu", "--progress", "--prefill-chunk", "8"]
    assert main(progress + ["--prompt", text]) == 0
    cap = capsys.readouterr()
    lines = re.findall(r"^prefill (\d+)/(\d+) \((\d+)%\) ", cap.err, re.M)
    assert cap.out == want and "\r" not in cap.err and 2 <= len(lines) <= 10, cap.err
    assert lines[-1][0] == lines[-1][1] and lines[-1][2] == "100", cap.err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(progress + ["--prompt", text]) == 0
    cap = capsys.readouterr()
    assert cap.out == want and re.search(r"\rprefill \[#{30}\] (\d+)/\1 ", cap.err), cap.err    # drawn to the end
    monkeypatch.undo()
    assert main(progress[:-2] + ["--prefill-chunk", "0", "--prompt", text]) == 0     # one forward: no prefill bar
    cap = capsys.readouterr()
    assert cap.out == want and "prefill [" not in cap.err
    assert main(progress[:2] + ["0"] + progress[3:] + ["--prompt", text]) == 0     # no new tokens: the echo alone
    assert capsys.readouterr().out == text + "\n"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cli_cuda_graph_decode_matches_eager():
    """On a CUDA device the CLI decodes through a CUDA graph by default; greedy fp32 text equals --no-cuda-graph's."""
    args = ("generate", "--prompt", "graph", "--max-new-tokens", "24", "--device", "cuda", "--dtype", "float32")
    g, e = _run(*args), _run(*args, "--no-cuda-graph")
    assert g.returncode == 0 and e.returncode == 0, (g.stderr, e.stderr)
    assert "decode (CUDA graph): 23 tokens" in g.stderr, g.stderr
    assert "decode (eager): 23 tokens" in e.stderr, e.stderr
    assert g.stdout == e.stdout


def _tiny_checkpoint(path, with_tokenizer=True):
    transformers = import_transformers()
    from test_model import CONFIGS, make_hf
    make_hf(CONFIGS["attn1_moe_top2"]).save_pretrained(str(path))
    if with_tokenizer:
        tokenizers = pytest.importorskip("tokenizers")
        words = ["[UNK]", "[PAD]", "[EOS]", "the", "cat", "sat", "on", "a", "mat", "dog"]
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        tok.save(str(path / "tokenizer.json"))
    return transformers


def test_cli_local_checkpoint(tmp_path):
    _tiny_checkpoint(tmp_path)
    r = _run("generate", "--model", str(tmp_path), "--prompt", "the cat sat", "--max-new-tokens", "4",
             "--device", "cpu", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the cat sat") and "tokens/s" in r.stderr


def test_cli_bad_model_dirs(tmp_path, capsys):
    def fails(args, pattern):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--prompt", "x", "--device", "cpu", *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "jamba-ext: error:" in err and pattern in err, err

    fails(["--model", str(tmp_path / "missing")], "does not exist")
    fails(["--model", str(tmp_path)], "no config.json")
    ck = tmp_path / "ck"
    _tiny_checkpoint(ck, with_tokenizer=False)
    fails(["--model", str(ck)], "no tokenizer.json")
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))   # another model: said first
    fails(["--model", str(ck)], "model_type: expected 'jamba', got 'llama'")
    _tiny_checkpoint(ck)
    os.remove(ck / "model.safetensors")
    fails(["--model", str(ck)], "no weights")
    fails(["--max-new-tokens", "-1"], "--max-new-tokens")


def test_byte_tokenizer_and_stream_decoder():
    tok = ByteTokenizer()
    ids = tok.encode("héllo ✓")
    assert ids[0] == tok.bos_token_id and tok.decode(ids) == "héllo ✓"
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == "héllo ✓"
    assert all("\ufffd" not in p for p in pieces)      # half characters are held back
    assert torch.tensor(ids).max() < tok.vocab_size


def test_cli_train_then_generate(tmp_path, capsys):
    """`jamba-ext train` fine-tunes the built-in model on a text file: the loss falls (a repetitive text the random
    model cannot predict at first), --save writes a checkpoint with the byte-tokenizer marker, and `generate --model`
    runs it."""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    out = tmp_path / "ckpt"
    assert main(["train", "--text-file", str(text), "--steps", "16", "--batch", "2", "--seq-len", "32", "--lr", "3e-3",
                 "--device", "cpu", "--log-every", "4", "--save", str(out)]) == 0
    err = capsys.readouterr().err
    m = re.search(r"loss ([0-9.]+) \(first 4 steps\) -> ([0-9.]+) \(last 4\)", err)
    assert m and float(m.group(2)) < float(m.group(1)) - 0.5, err
    assert err.count("step ") == 4 and "tok/s" in err
    assert {"config.json", "model.safetensors", ByteTokenizer.MARKER} <= set(os.listdir(out))
    assert main(["generate", "--model", str(out), "--prompt", "the quick", "--max-new-tokens", "4", "--device",
                 "cpu"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("the quick") and str(out) in cap.err


def test_cli_generate_sampling_argument_errors(capsys):
    """Out-of-range sampling arguments end with a one-line error naming them (exit status 2), not a traceback from
    inside generate; in range, --min-p samples."""
    for argv, msg in ((["--temperature", "-1"], "--temperature must be >= 0"), (["--top-k", "-2"], "--top-k"),
                      (["--top-p", "0"], "--top-p must be in (0, 1]"), (["--top-p", "2"], "--top-p"),
                      (["--min-p", "1.5"], "--min-p must be in [0, 1]"), (["--num-beams", "0"], "--num-beams"),
                      (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size"),
                      (["--top-h", "0"], "--top-h must be in (0, 1]"), (["--top-h", "1.5"], "--top-h"),
                      (["--max-memory", "0=1GiB"], "--max-memory goes with --device-map")):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "2", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    assert main(["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "3", "--temperature", "0.8",
                 "--min-p", "0.05"]) == 0
    capsys.readouterr()
    for cmd in (["generate", "--prompt", "ab"], ["train", "--text-file", "README.md"]):
        for dev in ("gpu", "mps", "cuda:x"):        # a device torch does not know, or one we do not run on
            with pytest.raises(SystemExit) as e:
                main([*cmd, "--device", dev])
            err = capsys.readouterr().err
            assert e.value.code == 2 and f"--device: expected cpu or cuda[:N], got '{dev}'" in err, err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(SystemExit) as e:        # an unknown flag: the command's usage, not the top-level one
            main([*cmd, "--bogus"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"jamba-ext {cmd[0]}: error: unrecognized arguments: --bogus" in err, err
        assert len(err.strip().splitlines()) == 1 and f"jamba-ext {cmd[0]} --help" in err, err   # one line
    for argv in (["generate", "--dtype", "f8", "--prompt", "a"], ["generate"], ["bogus"]):   # argparse's own errors
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err, err
    assert main(["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "3", "--temperature", "0.8",
                 "--top-h", "0.4"]) == 0


def test_cli_max_memory_parsing(capsys):
    """--max-memory's DEV=SIZE pairs become generate's max_memory dict (GPU indices as ints); malformed pairs and
    sizes end with a one-line error."""
    from jamba_ext.__main__ import _max_memory
    assert _max_memory(None, None) is None
    assert _max_memory("0=40GiB, 1 = 80GB,cpu=1.5GiB", "balanced") == {0: "40GiB", 1: "80GB", "cpu": "1.5GiB"}
    assert _max_memory("cuda:1=8GiB", "auto") == {"cuda:1": "8GiB"}
    for spec, dmap, msg in (("0:40GiB", "auto", "DEVICE=SIZE pairs"), ("0=", "auto", "DEVICE=SIZE"),
                            ("0=lots", "balanced", "'lots' is not a size"), ("0=1GiB", "cuda:0", "goes with"),
                            ("0=1GiB", ["cuda:0", "cuda:1"], "goes with")):
        with pytest.raises(SystemExit) as e:
            _max_memory(spec, dmap)
        assert e.value.code == 2 and msg in capsys.readouterr().err, spec



@pytest.mark.parametrize("beams", [1, 3])
def test_cli_generate_num_beams_and_ngram_ban(beams, capsys):
    """--num-beams N prints the best hypothesis of generate(num_beams=N) (cut at its EOS) and a summary line;
    --no-repeat-ngram-size 3 is passed on (the printed text is that of generate(no_repeat_ngram_size=3), whose tokens
    repeat no 3-gram, while without it the built-in model's text does)."""
    from jamba_ext.__main__ import _load
    import argparse
    model, tok, _ = _load(argparse.Namespace(model=None, device="cpu", dtype=None, experts_fp8=False, act_fp8=False,
                                             seed=0, progress=False))
    ids, eos = tok.encode("ab"), set(model.config.eos_token_ids)

    def ours(**kw):
        with torch.no_grad():
            new = model.generate(torch.tensor([ids]), max_new_tokens=40, num_beams=beams, **kw)[0, len(ids):].tolist()
        return new[:next((i for i, t in enumerate(new) if t in eos or t < 0), len(new))]

    def grams(t):
        return [tuple(t[i:i + 3]) for i in range(len(t) - 2)]

    for flag, kw in (([], {}), (["--no-repeat-ngram-size", "3"], dict(no_repeat_ngram_size=3))):
        assert main(["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "40", "--num-beams",
                     str(beams), *flag]) == 0
        cap = capsys.readouterr()
        new = ours(**kw)
        assert cap.out == "ab" + tok.decode(new) + "\n"
        assert (len(set(grams(ids + new))) == len(grams(ids + new))) == bool(kw), (flag, new)
        assert ("beam search: 3 beams" in cap.err) == (beams == 3)
    # --temperature with --num-beams: beam sampling, seeded by --seed (the CLI's default seed is 0)
    assert main(["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "40", "--num-beams", str(beams),
                 "--temperature", "0.9", "--top-k", "20"]) == 0
    assert capsys.readouterr().out == "ab" + tok.decode(ours(do_sample=True, temperature=0.9, top_k=20, seed=0)) + "\n"
    # --progress: a bar on stderr counts the steps (of the search too), the text is the same
    assert main(["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "40", "--num-beams", str(beams),
                 "--progress"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "ab" + tok.decode(ours()) + "\n" and re.search(r"^40/40 \(100%\) ", cap.err, re.M), cap.err


def test_cli_train_errors(tmp_path, capsys):
    short = tmp_path / "s.txt"
    short.write_text("abc", encoding="utf-8")
    for argv, msg in ((["--text-file", str(short), "--seq-len", "8"], "encodes to 3 tokens"),
                      (["--text-file", str(short), "--steps", "0"], "--steps must be >= 1"),
                      (["--text-file", str(tmp_path / "missing.txt")], "--text-file"),
                      (["--text-file", str(short), "--lr", "0"], "--lr must be a finite number > 0"),
                      (["--text-file", str(short), "--lr", "inf"], "--lr must be a finite number > 0")):
        with pytest.raises(SystemExit) as e:
            main(["train", "--device", "cpu", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    # a --save directory that cannot be made fails before the training, not after it
    text = tmp_path / "t.txt"
    text.write_text("some text to train on " * 20, encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["train", "--device", "cpu", "--text-file", str(text), "--steps", "2", "--seq-len", "16",
              "--save", str(short / "sub")])                  # under a file
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--save" in err and "step" not in err and "trained" not in err, err
    # a diverged loss stops the run with exit 1 and saves nothing (fp16 weights under AdamW went NaN at step 2, then
    # were saved, exit 0)
    with pytest.raises(SystemExit) as e:
        main(["train", "--device", "cpu", "--text-file", str(text), "--steps", "3", "--seq-len", "16", "--batch", "2",
              "--dtype", "float16", "--save", str(tmp_path / "nan")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "training diverged" in err and not (tmp_path / "nan" / "config.json").exists(), err


def test_cli_train_lora(tmp_path, capsys):
    """--lora R trains adapters only (the log names them), the loss falls, and --save writes the merged model, which
    generate reads as a plain checkpoint."""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    out = tmp_path / "ckpt"
    assert main(["train", "--text-file", str(text), "--steps", "16", "--batch", "2", "--seq-len", "32", "--lr", "1e-2",
                 "--device", "cpu", "--lora", "8", "--log-every", "8", "--save", str(out)]) == 0
    err = capsys.readouterr().err
    assert "LoRA: rank 8 adapters on" in err, err
    m = re.search(r"loss ([0-9.]+) \(first 4 steps\) -> ([0-9.]+) \(last 4\)", err)
    assert m and float(m.group(2)) < float(m.group(1)) - 0.3, err
    from safetensors.torch import load_file
    assert not any("lora" in k for k in load_file(str(out / "model.safetensors")))
    assert main(["generate", "--model", str(out), "--prompt", "the quick", "--max-new-tokens", "4", "--device",
                 "cpu"]) == 0


def test_cli_train_lora_fp8_experts(tmp_path, capsys):
    """--experts-fp8 with --lora: the experts in fp8 (frozen), the adapters train and the loss falls; without --lora,
    or with --save, a clear error before any work."""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    assert main(["train", "--text-file", str(text), "--steps", "16", "--batch", "2", "--seq-len", "32", "--lr", "1e-2",
                 "--device", "cpu", "--lora", "8", "--log-every", "8", "--experts-fp8"]) == 0
    err = capsys.readouterr().err
    assert "(experts float8_e4m3fn)" in err and "LoRA: rank 8 adapters on" in err, err
    m = re.search(r"loss ([0-9.]+) \(first 4 steps\) -> ([0-9.]+) \(last 4\)", err)
    assert m and float(m.group(2)) < float(m.group(1)) - 0.3, err
    for argv, msg in ((["--experts-fp8"], "train adapters with --lora R"),
                      (["--experts-fp8", "--lora", "4", "--save", str(tmp_path / "x")], "--save with --experts-fp8")):
        with pytest.raises(SystemExit) as e:
            main(["train", "--device", "cpu", "--text-file", str(text), *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_cli_device_map_errors(capsys):
    """--device-map with --device, or without a GPU, ends with a one-line error."""
    with pytest.raises(SystemExit) as e:
        main(["generate", "--device", "cpu", "--device-map", "auto", "--prompt", "ab", "--max-new-tokens", "2"])
    assert e.value.code == 2 and "not both" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            main(["generate", "--device-map", "balanced", "--prompt", "ab", "--max-new-tokens", "2"])
        assert e.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_cli_device_map_two_gpus():
    """--device-map balanced: the built-in model over two GPUs, decoded from one CUDA graph per GPU by default (and
    eagerly with --no-cuda-graph); the greedy fp32 texts equal one GPU's eager decode, and the model line names both
    GPUs."""
    args = ("generate", "--prompt", "split", "--max-new-tokens", "24", "--dtype", "float32")
    s, one = _run(*args, "--device-map", "balanced"), _run(*args, "--device", "cuda:0", "--no-cuda-graph")
    se = _run(*args, "--device-map", "balanced", "--no-cuda-graph")
    sm = _run(*args, "--device-map", "balanced", "--max-memory", "0=1GiB,1=3GiB")
    assert s.returncode == 0 and one.returncode == 0 and se.returncode == 0, (s.stderr, one.stderr, se.stderr)
    assert sm.returncode == 0, sm.stderr
    assert "GPUs 0,1" in s.stderr and "decode (CUDA graph): 23 tokens" in s.stderr, s.stderr
    assert "decode (eager): 23 tokens" in se.stderr, se.stderr
    assert "GPUs 0,1" in sm.stderr, sm.stderr
    assert s.stdout == one.stdout == se.stdout == sm.stdout


# ---- chat templates and generation_config.json ----------------------------------------------------------------
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if tools is not none %}<|system|> tools {{ tools | tojson }}\n{% endif %}"
    "{% if documents is not none %}<|system|> docs {{ documents | length }}\n{% endif %}"
    "{% for m in messages %}\n"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m['role']) }}"
    "{% endif %}"
    "{% if loop.first and m['role'] == 'system' %}<|system|> {{ m['content'] | tojson }}\n"
    "{% else %}<|{{ m['role'] }}|> {{ m['content'] | trim }} {{ eos_token }}\n{% endif %}"
    "{% endfor %}\n   {% if add_generation_prompt %}<|assistant|>{% endif %}")   # (trim_blocks, lstrip_blocks)


def _chat_checkpoint(path, template=CHAT_TEMPLATE, jinja_file=False):
    """The tiny checkpoint with special tokens in its tokenizer and a chat template (tokenizer_config.json's, or
    chat_template.jinja)."""
    _tiny_checkpoint(path)
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.add_special_tokens(["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"])
    tok.save(str(path / "tokenizer.json"))
    eos = {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False, "rstrip": False,
           "single_word": False, "special": True}                            # (as older checkpoints write it)
    cfg = {"bos_token": "<s>", "eos_token": eos, "unk_token": "[UNK]",
           "tokenizer_class": "PreTrainedTokenizerFast"}
    if jinja_file:
        (path / "chat_template.jinja").write_text(template)
    else:
        cfg["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_chat_template_renders_as_transformers(tmp_path):
    """load_chat_template + ChatTemplate.render give transformers' apply_chat_template text (tojson without HTML
    escaping, trim_blocks / lstrip_blocks, the special tokens of tokenizer_config.json; from tokenizer_config.json and
    from chat_template.jinja), and its token ids once encoded without added special tokens; raise_exception and a
    malformed template are ValueErrors; no template: None."""
    transformers = import_transformers()
    from jamba_ext.tokenizer import ChatTemplate, load_chat_template, load_tokenizer
    msgs = [{"role": "system", "content": "be <brief> & kind, ä"}, {"role": "user", "content": "  the cat sat  "},
            {"role": "assistant", "content": "on a mat"}, {"role": "user", "content": "the dog"}]
    for jinja_file in (False, True):
        d = tmp_path / f"ck{int(jinja_file)}"
        _chat_checkpoint(d, jinja_file=jinja_file)
        hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(d))
        ours, tok = load_chat_template(str(d)), load_tokenizer(str(d))
        for gen in (True, False):
            for m in (msgs, msgs[1:2]):
                text = ours.render(m, add_generation_prompt=gen)
                assert text == hf.apply_chat_template(m, tokenize=False, add_generation_prompt=gen)
                assert tok.encode(text, add_bos=False) == hf(text, add_special_tokens=False)["input_ids"]
        docs = [{"title": "a", "text": "the cat"}]
        assert ours.render(msgs, documents=docs) == hf.apply_chat_template(msgs, tokenize=False, documents=docs,
                                                                          add_generation_prompt=True)
        assert "docs 1" in ours.render(msgs, documents=docs) and "tools" not in ours.render(msgs)
        text = ours.render(msgs)
        assert '"be <brief> & kind, ä"' in text and text.startswith("<s><|system|>") and text.endswith("<|assistant|>")
    with pytest.raises(ValueError, match="unknown role tool"):
        ours.render([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="chat template"):
        ChatTemplate("{% for m in messages %}")
    _tiny_checkpoint(tmp_path / "plain")
    assert load_chat_template(str(tmp_path / "plain")) is None
    (tmp_path / "plain" / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_chat_template(str(tmp_path / "plain"))


def test_cli_chat(tmp_path, capsys):
    """--chat: the prompt as a user message through the checkpoint's template (with --system before it), only the
    reply printed; the prefill is the templated prompt's tokens. Errors: no --model, --system without --chat, a
    checkpoint without a template."""
    transformers = import_transformers()
    _chat_checkpoint(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    base = ["generate", "--model", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "3"]
    for extra, msgs in (([], [{"role": "user", "content": "the cat"}]),
                        (["--system", "a mat"], [{"role": "system", "content": "a mat"},
                                                 {"role": "user", "content": "the cat"}])):
        assert main([*base, "--prompt", "the cat", "--chat", *extra]) == 0
        cap = capsys.readouterr()
        text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        n = len(hf(text, add_special_tokens=False)["input_ids"])
        assert f"prefill: {n} tokens" in cap.err, cap.err
        assert not cap.out.startswith("the cat") and "<|" not in cap.out, cap.out     # only the reply
    assert main([*base, "--prompt", "the cat"]) == 0
    assert capsys.readouterr().out.startswith("the cat")                 # (without --chat: the prompt echoed)
    _tiny_checkpoint(tmp_path / "plain")
    for argv, msg in ((["generate", "--prompt", "x", "--chat", "--device", "cpu"], "give --model"),
                      ([*base, "--prompt", "x", "--system", "s"], "--system goes with --chat"),
                      (["generate", "--model", str(tmp_path / "plain"), "--prompt", "x", "--chat", "--device", "cpu"],
                       "has no chat template")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_generation_config_json_sets_the_stop_tokens(tmp_path):
    """A checkpoint's generation_config.json (an instruct model's end-of-turn id among its eos_token_id) becomes
    model.generation_config, and generate() stops at its ids and pads with its pad id by default; save_pretrained
    writes it back; an explicit eos_token_id still wins; a malformed file is a ValueError."""
    _tiny_checkpoint(tmp_path, with_tokenizer=False)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5], "pad_token_id": 1,
                                                                 "bos_token_id": 1}))
    from jamba_ext.modeling_jamba import JambaForCausalLM
    m = JambaForCausalLM.from_pretrained(str(tmp_path))
    assert list(m.generation_config.eos_token_id) == [2, 5] and m.config.eos_token_id != [2, 5]
    ids = torch.tensor([[3, 4, 6, 7], [3, 4, 6, 8]])
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=4, sequence_bias={(5,): 1e4})     # 5 at once: both rows stop
        assert out.shape == (2, 5) and out[:, -1].tolist() == [5, 5]
        out = m.generate(ids, max_new_tokens=4, sequence_bias={(5,): 1e4}, eos_token_id=2)
        assert out.shape == (2, 8)
        biased = m.generate(ids[:1], max_new_tokens=3, sequence_bias=[[[5], 1e4]], min_new_tokens=1)
        assert biased[0, -1].item() == 5
    m.save_pretrained(str(tmp_path / "again"))
    again = JambaForCausalLM.from_pretrained(str(tmp_path / "again"))
    assert list(again.generation_config.eos_token_id) == [2, 5] and again._generation_ids("pad_token_id") == 1
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "end"}))
    with pytest.raises(ValueError, match="eos_token_id must be an int or a list"):
        JambaForCausalLM.from_pretrained(str(tmp_path))


def test_cli_interactive_chat(tmp_path, capsys, monkeypatch):
    """--interactive: each stdin line is the next user message; the whole conversation (the --system message, the
    earlier turns and the replies) goes through the chat template each turn (its prefill is that text's tokens);
    blank lines are skipped, /reset drops the earlier turns, /exit ends it (the lines after it are not read)."""
    import io
    transformers = import_transformers()
    _chat_checkpoint(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat\n\n/reset\nthe dog\nsat on\n/exit\nthe mat\n"))
    assert main(["generate", "--model", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--max-new-tokens",
                 "3", "--interactive", "--system", "a mat"]) == 0
    cap = capsys.readouterr()
    replies = cap.out.split("\n")[:3]
    assert cap.out.count("\n") == 3 and "(conversation reset)" in cap.err
    system = [{"role": "system", "content": "a mat"}]
    convs = [system + [{"role": "user", "content": "the cat"}], system + [{"role": "user", "content": "the dog"}],
             system + [{"role": "user", "content": "the dog"}, {"role": "assistant", "content": replies[1]},
                       {"role": "user", "content": "sat on"}]]
    want = [len(hf(hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"]) for c in convs]
    assert [int(n) for n in re.findall(r"prefill: (\d+) tokens", cap.err)] == want, cap.err
    with pytest.raises(SystemExit) as e:
        main(["generate", "--interactive", "--device", "cpu"])
    assert e.value.code == 2 and "--interactive formats the prompt" in capsys.readouterr().err


def test_cli_stop(tmp_path, capsys):
    """--stop TEXT (repeatable): the generation ends at the token that completes TEXT (transformers' stop_strings over
    the checkpoint's tokenizer); the text is the unstopped text up to there. Errors: the built-in model (no
    tokenizer.json), an empty string."""
    import_transformers()
    from test_model import _piece_tokenizer
    _tiny_checkpoint(tmp_path, with_tokenizer=False)
    _piece_tokenizer(101).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    base = ["generate", "--model", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--prompt", "abcab",
            "--max-new-tokens", "16"]
    assert main(base) == 0
    full = capsys.readouterr().out.rstrip("\n")
    assert full.startswith("abcab") and len(full) > len("abcab") + 8
    text = full[len("abcab"):]
    stop = text[5:7]
    assert main([*base, "--stop", "zzz", "--stop", stop]) == 0
    cap = capsys.readouterr()
    got = cap.out.rstrip("\n")
    cut = text.index(stop) + len(stop)                  # (the token completing it may run past its end)
    assert full.startswith(got) and len("abcab") + cut <= len(got) < len(full), (full, got, stop)
    assert int(re.search(r"total: (\d+) new tokens", cap.err).group(1)) < 16
    for argv, msg in ((["generate", "--device", "cpu", "--prompt", "ab", "--stop", "x"], "tokenizer.json"),
                      ([*base, "--stop", ""], "an empty string")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cli_interactive_chat_cuda(tmp_path, capsys, monkeypatch):
    """--interactive on a GPU: the first turn captures the decode graph, the next (the same cache bucket) replays the
    one the first kept; the replies equal --no-cuda-graph's."""
    import io
    import_transformers()
    from test_model import _piece_tokenizer
    _tiny_checkpoint(tmp_path, with_tokenizer=False)
    _piece_tokenizer(101).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "chat_template": "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>{% endif %}"}))
    argv = ["generate", "--model", str(tmp_path), "--device", "cuda", "--dtype", "float32", "--max-new-tokens", "20",
            "--interactive"]
    caps = []
    for extra in ([], ["--no-cuda-graph"]):
        monkeypatch.setattr(sys, "stdin", io.StringIO("abcab\nfed\n"))
        assert main(argv + extra) == 0
        caps.append(capsys.readouterr())
    g, e = caps
    assert "decode (CUDA graph):" in g.err and "decode (CUDA graph, kept from the last call):" in g.err, g.err
    assert g.out == e.out and len(g.out.strip()) > 0


def _jsonl(text):
    return [json.loads(line) for line in text.splitlines()]


BATCH_PROMPTS = ["hello there", "a", "the hybrid model reads a long prompt", "xyz", "Mamba and attention, mixed",
                 "MoE", "q"]


def test_cli_prompts_file_batches(tmp_path, capsys):
    """--prompts-file: a JSON object per prompt in the file's order (blank lines skipped), each completion equal to
    greedy generate() of that prompt alone (the batches are left-padded, longest prompts first: padding must not
    change a token); a .jsonl file (strings, objects, a prompt with a newline) the same; --output writes the lines
    to a file; the summary line on stderr."""
    model, tok = builtin_model(), ByteTokenizer()
    n_new = 7
    f = tmp_path / "p.txt"
    f.write_text("\n".join(BATCH_PROMPTS[:3]) + "\n\n" + "\n".join(BATCH_PROMPTS[3:]) + "\n", encoding="utf-8")
    base = ["generate", "--device", "cpu", "--max-new-tokens", str(n_new), "--batch-size", "3"]
    assert main([*base, "--prompts-file", str(f)]) == 0
    cap = capsys.readouterr()
    rows = _jsonl(cap.out)
    assert [r["index"] for r in rows] == list(range(len(BATCH_PROMPTS)))
    assert [r["prompt"] for r in rows] == BATCH_PROMPTS
    eos = set(model._eos_ids())
    for p, r in zip(BATCH_PROMPTS, rows):
        ids = tok.encode(p, add_bos=True)
        with torch.inference_mode():
            alone = model.generate([ids], max_new_tokens=n_new)[0, len(ids):].tolist()
        cut = next((k for k, t in enumerate(alone) if t in eos), None)
        want = alone if cut is None else alone[:cut]
        assert r["prompt_tokens"] == len(ids) and r["completion_tokens"] == len(want), (p, r)
        assert r["completion"] == tok.decode(want), (p, r, want)
        assert r["finish_reason"] == ("length" if cut is None else "stop")
    assert f"{len(BATCH_PROMPTS)} prompts in 3 batches of up to 3" in cap.err, cap.err
    assert re.search(r"^prompts 7/7 \(100%\) .* prompts/s$", cap.err, re.M), cap.err       # the progress lines
    j = tmp_path / "p.jsonl"
    multi = "two\nlines"
    j.write_text("\n".join([json.dumps(BATCH_PROMPTS[0]), json.dumps({"prompt": BATCH_PROMPTS[1], "id": 7}), "",
                            json.dumps({"prompt": multi})]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main([*base, "--prompts-file", str(j), "--output", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "3 prompts in 1 batch of up to 3" in cap.err
    got = _jsonl(out.read_text(encoding="utf-8"))
    assert [r["prompt"] for r in got] == [BATCH_PROMPTS[0], BATCH_PROMPTS[1], multi]
    assert got[:2] == [dict(rows[0], index=0), dict(rows[1], index=1)]
    assert got[2]["prompt_tokens"] == len(tok.encode(multi, add_bos=True))


def test_cli_prompts_file_stop_and_chat(tmp_path, capsys):
    """--prompts-file with a checkpoint's tokenizer: --stop cuts each completion as the single-prompt run does
    (finish_reason "stop"); --chat renders each prompt through the chat template (prompt_tokens is the templated
    text's length)."""
    transformers = import_transformers()
    from test_model import _piece_tokenizer
    _tiny_checkpoint(tmp_path, with_tokenizer=False)
    _piece_tokenizer(101).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    base = ["generate", "--model", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "16"]
    assert main([*base, "--prompt", "abcab"]) == 0
    text = capsys.readouterr().out.rstrip("\n")[len("abcab"):]
    stop = text[5:7]
    singles = []
    for p in ("abcab", "ba"):
        assert main([*base, "--prompt", p, "--stop", stop]) == 0
        singles.append(capsys.readouterr().out.rstrip("\n")[len(p):])
    f = tmp_path / "p.txt"
    f.write_text("abcab\nba\n")
    assert main([*base, "--prompts-file", str(f), "--stop", stop]) == 0
    rows = _jsonl(capsys.readouterr().out)
    assert [r["completion"] for r in rows] == singles
    assert main([*base, "--prompts-file", str(f), "--stop", stop, "--continuous"]) == 0
    assert _jsonl(capsys.readouterr().out) == rows
    assert rows[0]["finish_reason"] == "stop" and stop in rows[0]["completion"]
    chat = tmp_path / "chat"
    _chat_checkpoint(chat)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(chat))
    f.write_text("the cat\nthe dog sat on a mat\n")
    assert main(["generate", "--model", str(chat), "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "3",
                 "--prompts-file", str(f), "--chat", "--system", "a mat"]) == 0
    rows = _jsonl(capsys.readouterr().out)
    for r in rows:
        msgs = [{"role": "system", "content": "a mat"}, {"role": "user", "content": r["prompt"]}]
        text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert r["prompt_tokens"] == len(hf(text, add_special_tokens=False)["input_ids"])


def test_cli_prompts_file_continuous_and_budgets(tmp_path, capsys):
    """--continuous: the same JSON lines as the static batches (greedy), in the file's order; a .jsonl object's own
    "max_new_tokens" caps its completion in both modes; the summary names the rows. --stop goes through too (the
    single-prompt cut)."""
    j = tmp_path / "p.jsonl"
    budgets = [3, None, 11, 1, None, 6, 2]
    j.write_text("\n".join(json.dumps({"prompt": p} if b is None else {"prompt": p, "max_new_tokens": b})
                           for p, b in zip(BATCH_PROMPTS, budgets)) + "\n", encoding="utf-8")
    base = ["generate", "--device", "cpu", "--max-new-tokens", "9", "--batch-size", "3", "--prompts-file", str(j)]
    assert main(base) == 0
    static = _jsonl(capsys.readouterr().out)
    assert [r["completion_tokens"] for r in static if r["finish_reason"] == "length"] == \
        [9 if b is None else b for b, r in zip(budgets, static) if r["finish_reason"] == "length"]
    assert main([*base, "--continuous"]) == 0
    cap = capsys.readouterr()
    assert _jsonl(cap.out) == static and "7 prompts on 3 rows (continuous batching)" in cap.err, cap.err
    assert main([*base, "--repetition-penalty", "1.6"]) == 0
    penalised = _jsonl(capsys.readouterr().out)
    assert penalised != static
    assert main([*base, "--repetition-penalty", "1.6", "--continuous"]) == 0
    assert _jsonl(capsys.readouterr().out) == penalised
    assert main([*base, "--min-new-tokens", "5"]) == 0
    floor = _jsonl(capsys.readouterr().out)
    assert main([*base, "--min-new-tokens", "5", "--continuous"]) == 0
    assert _jsonl(capsys.readouterr().out) == floor


def test_cli_prompts_file_errors(tmp_path, capsys):
    def fails(argv, msg):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--device", "cpu", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err, err

    good = tmp_path / "p.txt"
    good.write_text("a\nb\n")
    fails(["--prompt", "x", "--batch-size", "2"], "--batch-size goes with --prompts-file")
    fails(["--prompt", "x", "--output", str(tmp_path / "o")], "--output goes with --prompts-file")
    fails(["--prompts-file", str(good), "--batch-size", "0"], "--batch-size must be >= 1")
    fails(["--prompts-file", str(tmp_path / "missing.txt")], "--prompts-file")
    fails(["--prompts-file", str(good), "--output", str(tmp_path / "no" / "dir" / "o.jsonl")], "--output")
    (tmp_path / "blank.txt").write_text("\n  \n")
    fails(["--prompts-file", str(tmp_path / "blank.txt")], "holds no prompts")
    (tmp_path / "bad.jsonl").write_text('"a"\n{"prompt": \n')
    fails(["--prompts-file", str(tmp_path / "bad.jsonl")], "line 2: not JSON")
    (tmp_path / "num.jsonl").write_text('{"text": "a"}\n')
    fails(["--prompts-file", str(tmp_path / "num.jsonl")], 'line 1: expected a JSON string or an object')
    (tmp_path / "budget.jsonl").write_text('{"prompt": "a", "max_new_tokens": 0}\n')
    fails(["--prompts-file", str(tmp_path / "budget.jsonl")], '"max_new_tokens" must be an int >= 1, got 0')
    fails(["--prompt", "x", "--continuous"], "--continuous goes with --prompts-file")
    for flag in (["--num-beams", "2"], ["--no-repeat-ngram-size", "2"], ["--max-new-tokens", "0"]):
        fails(["--prompts-file", str(good), "--continuous", *flag], f"not {flag[0]}")
    with pytest.raises(SystemExit):                 # one source of prompts
        main(["generate", "--device", "cpu", "--prompt", "x", "--prompts-file", str(good)])
    capsys.readouterr()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cli_prompts_file_cuda(tmp_path, capsys):
    """--prompts-file on a GPU (fp32): the batches decode through the CUDA graph by default; the completions equal
    --no-cuda-graph's, --continuous's and each prompt's own greedy generate() on the GPU."""
    f = tmp_path / "p.txt"
    f.write_text("\n".join(BATCH_PROMPTS) + "\n")
    base = ["generate", "--device", "cuda", "--dtype", "float32", "--max-new-tokens", "20", "--batch-size", "4",
            "--prompts-file", str(f)]
    assert main(base) == 0
    graph = _jsonl(capsys.readouterr().out)
    assert main([*base, "--no-cuda-graph"]) == 0
    eager = _jsonl(capsys.readouterr().out)
    assert graph == eager and len(graph) == len(BATCH_PROMPTS)
    assert main([*base, "--continuous"]) == 0                  # (continuous batching: its own graph, run-ahead)
    assert _jsonl(capsys.readouterr().out) == graph
    model, tok = builtin_model("cuda"), ByteTokenizer()
    eos = set(model._eos_ids())
    for p, r in zip(BATCH_PROMPTS, graph):
        ids = tok.encode(p, add_bos=True)
        with torch.inference_mode():
            alone = model.generate([ids], max_new_tokens=20, cuda_graph=False)[0, len(ids):].tolist()
        cut = next((k for k, t in enumerate(alone) if t in eos), len(alone))
        assert r["completion"] == tok.decode(alone[:cut]), (p, r)


def test_cli_prompts_file_batching_and_sampling(tmp_path, capsys, monkeypatch):
    """The batches group prompts by length, longest first (the first call is the largest, so a batch too large for
    memory fails at once); sampled runs repeat with the same --seed, and each batch draws its own numbers (the same
    prompt in four batches of one: not four equal completions)."""
    from jamba_ext.modeling_jamba import JambaForCausalLM
    tok = ByteTokenizer()
    f = tmp_path / "p.txt"
    f.write_text("\n".join(BATCH_PROMPTS) + "\n")
    seen, real = [], JambaForCausalLM.generate

    def spy(self, input_ids, **kw):
        seen.append(sorted(len(i) for i in input_ids))
        return real(self, input_ids, **kw)

    monkeypatch.setattr(JambaForCausalLM, "generate", spy)
    assert main(["generate", "--device", "cpu", "--max-new-tokens", "2", "--batch-size", "3",
                 "--prompts-file", str(f)]) == 0
    capsys.readouterr()
    lens = sorted((len(tok.encode(p, add_bos=True)) for p in BATCH_PROMPTS), reverse=True)
    assert seen == [sorted(lens[:3]), sorted(lens[3:6]), sorted(lens[6:])]
    monkeypatch.undo()
    f.write_text("ab\n" * 4)
    argv = ["generate", "--device", "cpu", "--max-new-tokens", "8", "--batch-size", "1", "--temperature", "1.0",
            "--seed", "5", "--prompts-file", str(f)]
    assert main(argv) == 0
    first = _jsonl(capsys.readouterr().out)
    assert main(argv) == 0
    assert _jsonl(capsys.readouterr().out) == first
    assert len({r["completion"] for r in first}) > 1, first


def test_cli_prompt_not_utf8():
    """A --prompt argument with bytes that are not UTF-8 (they reach Python as lone surrogates) is exit 2 with a
    message, not a traceback (--prompt-file's were already)."""
    r = subprocess.run([sys.executable, "-m", "jamba_ext", "generate", "--prompt", b"ab\xffcd", "--max-new-tokens",
                        "2", "--device", "cpu"], capture_output=True, text=True, env=package_env(), timeout=300,
                       cwd=PACKAGE_PARENT)
    assert r.returncode == 2 and "not valid UTF-8" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_prompts_file_splits_on_newlines_only(tmp_path):
    """--prompts-file: a prompt a line, lines ended by \\n (\\r\\n too); U+2028, form feeds and the like are text inside
    a prompt (str.splitlines split there), in plain files and in .jsonl lines written with ensure_ascii=False."""
    from jamba_ext.__main__ import _read_prompts
    p = tmp_path / "p.txt"
    p.write_bytes("first line\u2028still first\r\nsecond\x0cpage\n".encode("utf-8"))
    assert [t for _, t, _ in _read_prompts(str(p))] == ["first line\u2028still first", "second\x0cpage"]
    q = tmp_path / "p.jsonl"
    q.write_text(json.dumps({"prompt": "a\u2028b"}, ensure_ascii=False) + "\n" + json.dumps("c\x85d") + "\n",
                 encoding="utf-8")
    assert [t for _, t, _ in _read_prompts(str(q))] == ["a\u2028b", "c\x85d"]


def test_completion_keeps_its_leading_space_with_a_metaspace_tokenizer(tmp_path):
    """A tokenizer.json whose decoder strips the first space (Llama-style "▁" tokens, as Jamba's): a completion
    decoded alone lost its leading space ("Hello" + "world"); decode_after, the stream decoder and the server's answer
    text read it after the prompt. A ByteTokenizer reads the same either way."""
    tokenizers = pytest.importorskip("tokenizers")
    from jamba_ext import server
    from jamba_ext.tokenizer import decode_after, load_tokenizer
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "▁Hello": 3, "▁world": 4, "▁is": 5, "▁here": 6}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path))
    prompt, new = tok.encode("Hello", add_bos=False), tok.encode("world is here", add_bos=False)
    assert tok.decode(prompt + new) == "Hello world is here" and tok.decode(new) == "world is here"
    assert decode_after(tok, prompt, new) == " world is here"
    dec = StreamDecoder(tok, prompt)
    assert "".join(dec.push(t) for t in new) + dec.flush() == " world is here" == dec.text()
    assert server._answer_text(tok, new, "length", None, prompt) == " world is here"
    b = ByteTokenizer()
    assert decode_after(b, b.encode("héllo"), b.encode(" wörld", add_bos=False)) == " wörld"


def _exit2(capsys, argv, msg):
    """main(argv) ends with exit status 2 and a one-line error holding msg (no traceback)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_generate_nonfinite_sampling_values(capsys):
    """--temperature nan ran greedily in silence (nan < 0 is False, nan > 0 too); --repetition-penalty inf passed
    the CLI's check and raised a traceback from generate()."""
    base = ["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "2"]
    _exit2(capsys, base + ["--temperature", "nan"], "--temperature must be >= 0")
    _exit2(capsys, base + ["--repetition-penalty", "inf"], "--repetition-penalty must be")


def test_cli_sampling_flags_need_sampling(capsys):
    """--top-k / --top-p / --min-p / --top-h without --temperature > 0 were accepted and ignored (greedy decoding):
    refused, naming the flag; with --temperature they sample (and the defaults pass)."""
    base = ["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "2"]
    for flag, v in (("--top-k", "5"), ("--top-p", "0.5"), ("--min-p", "0.1"), ("--top-h", "0.5")):
        _exit2(capsys, base + [flag, v], f"{flag} applies when sampling")
        _exit2(capsys, base + ["--num-beams", "2", flag, v], f"{flag} applies when sampling")
        assert main(base + [flag, v, "--temperature", "0.7"]) == 0
        capsys.readouterr()
    assert main(base + ["--top-k", "0", "--top-p", "1"]) == 0          # the defaults, spelled out: off
    capsys.readouterr()


def test_cli_seed_out_of_range(tmp_path, capsys):
    """--seed outside [-2^63, 2^64) raised torch's 'Overflow when unpacking long long' (generate, train, serve) or
    failed every op of `check` (exit 1): a one-line error, exit 2, before any work."""
    text = tmp_path / "t.txt"
    text.write_text("some text to train on " * 20, encoding="utf-8")
    for cmd in (["generate", "--device", "cpu", "--prompt", "ab", "--max-new-tokens", "2"],
                ["train", "--device", "cpu", "--text-file", str(text), "--steps", "1", "--seq-len", "8"],
                ["serve", "--device", "cpu", "--port", "0"], ["check", "--device", "cpu", "--dtype", "float32"]):
        for seed in (str(2 ** 64), str(-2 ** 63 - 1)):
            _exit2(capsys, cmd + ["--seed", seed], "--seed must be an int in [-2^63, 2^64)")


def test_cli_prompts_file_budgets_with_max_new_tokens_0(tmp_path, capsys):
    """A .jsonl whose prompts have their own "max_new_tokens" beside prompts without one, with --max-new-tokens 0,
    raised a traceback from jamba_ext.continuous (budgets must be >= 1)."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "max_new_tokens": 2}\n"bb"\n', encoding="utf-8")
    _exit2(capsys, ["generate", "--device", "cpu", "--prompts-file", str(f), "--max-new-tokens", "0"],
           "--max-new-tokens 0")
    f.write_text('{"prompt": "a", "max_new_tokens": 2}\n{"prompt": "bb", "max_new_tokens": 1}\n', encoding="utf-8")
    assert main(["generate", "--device", "cpu", "--prompts-file", str(f), "--max-new-tokens", "0"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["completion_tokens"] for r in rows] == [2, 1]


def test_cli_empty_prompt_file(tmp_path, capsys):
    """An empty --prompt-file generated from the BOS token in silence (as --prompt "" does on purpose): refused."""
    f = tmp_path / "empty.txt"
    f.write_text("", encoding="utf-8")
    _exit2(capsys, ["generate", "--device", "cpu", "--prompt-file", str(f), "--max-new-tokens", "2"], "is empty")


def test_cli_train_bad_log_every_and_lora_alpha(tmp_path, capsys):
    """train --log-every -1 raised ZeroDivisionError after the first step; --lora-alpha -1 a ValueError traceback
    from add_lora; --lora-alpha without --lora was ignored."""
    text = tmp_path / "t.txt"
    text.write_text("some text to train on " * 20, encoding="utf-8")
    base = ["train", "--device", "cpu", "--text-file", str(text), "--steps", "2", "--seq-len", "8"]
    _exit2(capsys, base + ["--log-every", "-1"], "--log-every must be >= 0")
    _exit2(capsys, base + ["--lora", "2", "--lora-alpha", "-1"], "--lora-alpha must be")
    _exit2(capsys, base + ["--lora", "2", "--lora-alpha", "nan"], "--lora-alpha must be")
    _exit2(capsys, base + ["--lora-alpha", "4"], "--lora-alpha goes with --lora")


def test_cli_serve_bad_sampling_defaults(capsys, monkeypatch):
    """serve --temperature nan and --min-p 2 / nan raised tracebacks from the batcher after the model loaded;
    --repetition-penalty inf was taken (generate refuses it). All refused before the model loads, exit 2."""
    from jamba_ext import server

    def no_serve(*a, **k):
        raise AssertionError("the server was started")
    monkeypatch.setattr(server, "serve", no_serve)
    for flag, v in (("--temperature", "nan"), ("--min-p", "2"), ("--min-p", "nan"), ("--repetition-penalty", "inf"),
                    ("--top-p", "nan")):
        _exit2(capsys, ["serve", "--device", "cpu", "--port", "0", flag, v], flag)


def test_cli_stop_tokenizer_transformers_cannot_read(tmp_path, capsys):
    """--stop with a tokenizer.json whose vocabulary transformers' StopStringCriteria cannot clean (a WordLevel
    tokenizer with no decoder) raised ValueError('substring not found') from inside transformers: a one-line error
    naming --stop, exit 2."""
    import_transformers()
    _tiny_checkpoint(tmp_path)
    capsys.readouterr()                             # (transformers' lines while the checkpoint is written)
    _exit2(capsys, ["generate", "--model", str(tmp_path), "--device", "cpu", "--prompt", "the cat", "--stop", "the",
                    "--max-new-tokens", "4"], "--stop")


def test_cli_out_of_memory_is_one_line(capsys):
    """A budget whose buffers cannot be allocated (--max-new-tokens 10^14: the host token buffer alone is 800 TB, past
    a 47-bit address space, so no overcommit setting lets it through) ends with exit status 1 and one line naming the
    allocation and what to shrink, not the allocator's traceback."""
    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "x", "--max-new-tokens", str(10 ** 14)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("jamba-ext: error: out of memory: ") and "--max-new-tokens" in last, err
