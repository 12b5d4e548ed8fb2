"""The text paths agree: stop texts match inside the generated text only (generate(), generate_many, the continuous
batcher and the server), streamed text adds up to the final text for any bytes (StreamDecoder, the server's stream),
the server's logprobs name the tokens as the text reads (text_offset, bytes), and chat templates with transformers'
{% generation %} tags render."""
import json
import random

import pytest
import torch

import jamba_ext.continuous as C
from conftest import builtin_model
from jamba_ext import server
from jamba_ext.batch import completion, generate_many
from jamba_ext.tokenizer import ByteTokenizer, ChatTemplate, StreamDecoder, decode_after, load_chat_template
from test_server import Running

B = ByteTokenizer.offset            # byte b is token id b + B


def _byte_fallback_json() -> str:
    """tokenizer.json text of a `tokenizers` tokenizer with ByteTokenizer's ids (0/1/2 pad/bos/eos, byte b -> b + 3):
    printable ASCII bytes are plain tokens ("a"), the others byte-fallback tokens ("<0xE2>"), as in Llama-style
    vocabularies (Jamba's): its decoder turns a run of byte tokens that is not valid UTF-8 into U+FFFD, one a byte,
    so a run's text can change when the run grows."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[chr(b) if 0x21 <= b <= 0x7E else f"<0x{b:02X}>"] = B + b
    tk = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, [], byte_fallback=True))
    tk.decoder = tokenizers.decoders.Sequence([tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse()])
    tk.add_special_tokens(["<pad>", "<s>", "</s>"])
    return tk.to_str()


@pytest.fixture(scope="module")
def hf_bytes(tmp_path_factory):
    """The byte-fallback tokenizer as the CLI and the server load a checkpoint's (jamba_ext.tokenizer.HFTokenizer)."""
    from jamba_ext.tokenizer import HFTokenizer
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(_byte_fallback_json())
    tok = HFTokenizer(str(path))
    assert tok.decode(tok.encode("xa é€\n!", add_bos=False)) == "xa é€\n!"
    assert tok.encode("xa é", add_bos=False) == ByteTokenizer().encode("xa é", add_bos=False)
    return tok


def _transformers_bytes():
    """The same tokenizer as transformers' (generate(stop_strings=..., tokenizer=...) needs one)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer.from_str(_byte_fallback_json())
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")


# ---- 1. stop texts: the generated text only, in every path ------------------------------------------------------
FORCED = ord("b") + B                # every path below picks this token at every step ("b" x N)
N = 5


def _every_path(prompt, stop):
    """(completion ids, finish reason) of prompt with stop texts `stop`, the token FORCED at every step, from
    generate() (its row cut by batch.completion), generate_many (static batches), the continuous batcher and the
    server (whole and streamed: their text)."""
    model, tok, hf = builtin_model(), ByteTokenizer(), _transformers_bytes()
    eos = set(model._eos_ids())
    got = {}
    with torch.inference_mode():
        row = model.generate([prompt], max_new_tokens=N, sequence_bias={(FORCED,): 1e4}, stop_strings=stop,
                             tokenizer=hf)[0, len(prompt):].tolist()
    got["generate"] = completion(row, eos, stop, tok.decode)
    ((_, new, reason),) = generate_many(model, [prompt], max_new_tokens=N, sequence_bias={(FORCED,): 1e4},
                                        stop_strings=stop, tokenizer=hf, decode=tok.decode)
    got["generate_many"] = (new, reason)
    got.update(_continuous_and_server(model, tok, prompt, stop, FORCED, 32))
    got["server"] = got["server"][:2]
    return got


def _continuous_and_server(model, tok, prompt, stop, forced, max_prompt_tokens) -> dict:
    """{"continuous": (completion ids, finish reason), "server": (text, finish reason, completion tokens),
    "server stream": (text, finish reason)} of prompt with stop texts `stop`, the token `forced` at every step (N
    at most)."""
    got = {}
    bat = C.ContinuousBatcher(model, batch_size=2, max_prompt_tokens=max_prompt_tokens, max_new_tokens=N,
                              decode=tok.decode)
    rid = bat.add(prompt, stop_strings=stop, logit_bias={forced: 100})
    while not bat.done:
        for r, new, reason in bat.step():
            assert r == rid
            got["continuous"] = (new, reason)
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=max_prompt_tokens, max_new_tokens=N)
    try:
        body = {"prompt": [prompt], "max_tokens": N, "stop": stop, "logit_bias": {str(forced): 100}}
        code, ans = srv.post("/v1/completions", body)
        assert code == 200, ans
        got["server"] = (ans["choices"][0]["text"], ans["choices"][0]["finish_reason"],
                         ans["usage"]["completion_tokens"])
        parts = [json.loads(e)["choices"][0] for e in srv.events("/v1/completions", body)[:-1]]
        got["server stream"] = ("".join(p["text"] for p in parts), parts[-1]["finish_reason"])
    finally:
        srv.stop()
    return got


@pytest.mark.parametrize("stop,n_new,reason", [
    (["ab"], N, "length"),           # the prompt ends with "a", the first new token is "b": no stop
    (["xab"], N, "length"),
    (["abb"], N, "length"),          # (the prompt's "a" and two new tokens)
    (["bb"], 2, "stop"),             # two new tokens: a stop
    (["zz", "ab", "bbb"], 3, "stop"),
])
def test_stop_text_matches_inside_the_generated_text_only(stop, n_new, reason):
    """A stop text matches inside the completion's text only (OpenAI's and vLLM's rule): the prompt's text ends with
    the first part of a stop text and the first new token's text completes it: no stop, in every path (generate()
    matched across the prompt's end); a stop text made of new tokens alone stops every path at the same token."""
    prompt = ByteTokenizer().encode("xa")
    got = _every_path(prompt, stop)
    want_ids = [FORCED] * n_new
    text = "b" * n_new
    if reason == "stop":
        cuts = [text.find(s) for s in stop if s in text]
        text = text[:min(cuts)]
    want = {"generate": (want_ids, reason), "generate_many": (want_ids, reason), "continuous": (want_ids, reason),
            "server": (text, reason), "server stream": (text, reason)}
    assert got == want


# ---- 2. streamed text == final text -----------------------------------------------------------------------------
def _streamed(tok, context, ids):
    dec = StreamDecoder(tok, context)
    pieces = [dec.push(t) for t in ids]
    return "".join(pieces) + dec.flush(), dec


def _check_stream(tok, context, ids):
    """The stream's pieces (flush included) add up to the final text of the same tokens: decode_after (the CLI's
    batch output), StreamDecoder.text() (the CLI's unstreamed print) and the server's answer text."""
    joined, dec = _streamed(tok, context, ids)
    final = decode_after(tok, context, ids)
    assert joined == final == dec.text() == server._answer_text(tok, ids, "length", None, context), \
        (context, ids, joined, final)
    return final


@pytest.mark.parametrize("which", ["bytes", "byte_fallback"])
def test_stream_pieces_add_up_to_the_final_text(which, hf_bytes):
    """Byte tokens that do not form valid UTF-8: a lone 0xE2 then ASCII, a character cut short at the end, bytes
    after a valid run of byte tokens (the byte-fallback decoder reads the whole run again), with and without a
    prompt before them."""
    tok = ByteTokenizer() if which == "bytes" else hf_bytes

    def ids(*bs):
        return [b + B for b in bs]
    cases = [ids(0xE2, 0x61), ids(0x61, 0xF0, 0x9F, 0x98), ids(0x0A, 0xE2, 0x61), ids(0xC3, 0xA9, 0xE2, 0x82),
             ids(0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0x21), ids(0xF0, 0x9F, 0x98, 0x80), ids(0xFF, 0xFE, 0x61),
             ids(0x0A, 0x0A, 0xC3), [1] + ids(0xE2) + [2] + ids(0x61)]
    for context in ([], [1] + ids(0x61), [1] + ids(0xE2), ids(0x0A), ids(0xF0, 0x9F)):
        for case in cases:
            _check_stream(tok, context, case)
    assert _check_stream(tok, [1], ids(0xE2, 0x82, 0xAC, 0x61)) == "€a"
    assert _check_stream(tok, [1], ids(0x68, 0x69)) == "hi"


@pytest.mark.parametrize("which", ["bytes", "byte_fallback"])
def test_stream_pieces_add_up_random_bytes(which, hf_bytes):
    """Property: for 3000 random byte strings (seed 0; bytes drawn mostly from UTF-8 lead and continuation bytes,
    ASCII and byte-fallback ASCII, so that characters are cut, run on and interleave), streamed pieces + flush ==
    the final text, after a random prompt tail."""
    tok = ByteTokenizer() if which == "bytes" else hf_bytes
    rng = random.Random(0)
    pool = [0x61, 0x20, 0x0A, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xFF, 0xED, 0xA0, 0xE0]
    for _ in range(3000):
        n = rng.randint(0, 14)
        bs = [rng.choice(pool) if rng.random() < 0.85 else rng.randrange(256) for _ in range(n)]
        context = [1] + [rng.choice(pool) + B for _ in range(rng.randint(0, 5))]
        _check_stream(tok, context, [b + B for b in bs])


def test_server_stream_equals_the_whole_answer_with_byte_fallback_tokens(hf_bytes):
    """The server's stream (byte-fallback tokenizer, the random model's bytes: characters cut and runs of byte
    tokens) adds up to the whole answer's text, with and without a stop text."""
    model = builtin_model()
    srv = Running(model, hf_bytes, batch_size=3, max_prompt_tokens=40, max_new_tokens=24)
    try:
        for prompt in ["hello", "a", "xyz", "the model", "é", "Mamba", "MoE"]:
            for stop in (None, ["\x03"]):
                body = {"prompt": prompt, "max_tokens": 24, "stop": stop}
                code, whole = srv.post("/v1/completions", body)
                assert code == 200
                parts = [json.loads(e)["choices"][0] for e in srv.events("/v1/completions", body)[:-1]]
                assert "".join(p["text"] for p in parts) == whole["choices"][0]["text"], (prompt, stop)
                assert parts[-1]["finish_reason"] == whole["choices"][0]["finish_reason"]
    finally:
        srv.stop()


# ---- 3. logprobs: tokens, text_offset, bytes --------------------------------------------------------------------
def _check_legacy(lp, text):
    offs = lp["text_offset"]
    assert all(0 <= a <= b <= len(text) for a, b in zip(offs, offs[1:] + [len(text)])), offs
    assert "".join(lp["tokens"]) == text
    for t, o in zip(lp["tokens"], offs):
        assert text[o:o + len(t)] == t


def test_logprobs_tokens_offsets_and_bytes_of_split_characters():
    """A completion "a€b" + a character cut short ("a", 0xE2 0x82 0xAC, "b", 0xF0 0x9F): the legacy tokens are the
    text as it reads token by token (a token that is only the start of a character is "", the one that completes it
    carries it; the cut character's U+FFFD goes to the last token), so they add up to the text and text_offset
    indexes it; chat's bytes are each token's own raw bytes (together: the completion's bytes)."""
    tok = ByteTokenizer()
    raw = b"a\xe2\x82\xacb\xf0\x9f"
    ids = [b + B for b in raw]
    text = server._answer_text(tok, ids, "length", None, [1])
    assert text == "a€b\ufffd"
    lps = [(-0.1 * (i + 1), [(t, -0.1 * (i + 1))]) for i, t in enumerate(ids)]
    lp = server._logprobs_answer(tok, ids, lps, False, [1])
    assert lp["tokens"] == ["a", "", "", "€", "b", "", "\ufffd"]
    assert lp["text_offset"] == [0, 1, 1, 1, 2, 3, 3]
    _check_legacy(lp, text)
    assert [list(d) for d in lp["top_logprobs"]] == [[t] for t in lp["tokens"]]    # (each its own alternative)
    chat = server._logprobs_answer(tok, ids, lps, True, [1])["content"]
    assert [c["bytes"] for c in chat] == [[b] for b in raw]
    assert [c["token"] for c in chat] == lp["tokens"]
    assert all(c["top_logprobs"][0]["bytes"] == c["bytes"] for c in chat)


def test_token_bytes(hf_bytes, tmp_path):
    """token_bytes: a byte token's one byte (ByteTokenizer, byte-fallback "<0xE2>"), a plain token's text, a "▁"
    token's text with its space, a byte-level ("Ġ") token's bytes, b"" for a special token."""
    tokenizers = pytest.importorskip("tokenizers")
    from jamba_ext.tokenizer import HFTokenizer, token_bytes
    b = ByteTokenizer()
    assert [token_bytes(b, t) for t in (0xE2 + B, ord("a") + B, 1, 2)] == [b"\xe2", b"a", b"", b""]
    assert [token_bytes(hf_bytes, t) for t in (0xE2 + B, 0x0A + B, ord("a") + B, 1, 2)] == \
        [b"\xe2", b"\n", b"a", b"", b""]
    meta = tokenizers.Tokenizer(tokenizers.models.BPE({"<s>": 0, "\u2581world": 1, "<0xE2>": 2, "ab": 3}, [],
                                                      byte_fallback=True))
    meta.decoder = tokenizers.decoders.Sequence([tokenizers.decoders.Replace("\u2581", " "),
                                                 tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse(),
                                                 tokenizers.decoders.Strip(" ", 1, 0)])
    meta.add_special_tokens(["<s>"])
    level = tokenizers.Tokenizer(tokenizers.models.BPE({"\u0120w\u00c3\u00a9": 0, "\u00e2\u0124": 1}, []))
    level.decoder = tokenizers.decoders.ByteLevel()
    for name, tk, want in (("meta", meta, [b"", b" world", b"\xe2", b"ab"]), ("level", level, [" wé".encode(),
                                                                                              b"\xe2\x82"])):
        tk.save(str(tmp_path / f"{name}.json"))
        tok = HFTokenizer(str(tmp_path / f"{name}.json"))
        assert [token_bytes(tok, t) for t in range(len(want))] == want, name


def test_logprobs_answers_through_the_server():
    """/v1/completions with echo (the prompt's own tokens: "x€é") and logprobs: tokens add up to the text, offsets
    index it; /v1/chat/completions with the token 0xE2 forced: bytes are [226], the tokens add up to the content."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=40, max_new_tokens=8,
                  chat_template=ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}"))
    try:
        code, ans = srv.post("/v1/completions", {"prompt": "x€é", "max_tokens": 3, "echo": True, "logprobs": 1})
        assert code == 200, ans
        ch = ans["choices"][0]
        assert ch["text"].startswith("x€é")
        _check_legacy(ch["logprobs"], ch["text"])
        assert ch["logprobs"]["tokens"][:7] == ["", "x", "", "", "€", "", "é"]
        assert ch["logprobs"]["text_offset"][:7] == [0, 0, 1, 1, 1, 2, 2]
        code, ans = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                                      "logprobs": True, "top_logprobs": 2,
                                                      "logit_bias": {str(0xE2 + B): 100}})
        assert code == 200, ans
        content = ans["choices"][0]["logprobs"]["content"]
        assert [c["bytes"] for c in content] == [[0xE2]] * 3
        assert "".join(c["token"] for c in content) == ans["choices"][0]["message"]["content"] == "\ufffd" * 3
    finally:
        srv.stop()


# ---- 4. {% generation %} tags -----------------------------------------------------------------------------------
GEN_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>"
                "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}</s>{% endgeneration %}"
                "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_template_with_generation_tags(tmp_path):
    """transformers' assistant-mask tags, {% generation %} ... {% endgeneration %}: taken, their body rendered as if
    they were not there (from a string and from a checkpoint's chat_template.jinja)."""
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"}]
    plain = GEN_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    want = "<|user|>hi<|assistant|>hello</s><|user|>more<|assistant|>"
    assert ChatTemplate(plain).render(msgs) == want
    assert ChatTemplate(GEN_TEMPLATE).render(msgs) == want
    assert ChatTemplate(GEN_TEMPLATE).render(msgs, add_generation_prompt=False) == want[:-len("<|assistant|>")]
    (tmp_path / "chat_template.jinja").write_text(GEN_TEMPLATE)
    assert load_chat_template(str(tmp_path)).render(msgs) == want
    scoped = "{% set x = 1 %}{% generation %}{% set x = 2 %}{{ x }}{% endgeneration %}{{ x }}"
    assert ChatTemplate(scoped).render(msgs) == "21"              # (a set inside stays inside, as in transformers)
    hf = _transformers_bytes()
    for t in (GEN_TEMPLATE, scoped):
        hf.chat_template = t
        assert ChatTemplate(t).render(msgs) == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="chat template"):
        ChatTemplate("{% generation %}unclosed")


# ---- 5. a stop text with a leading space, "▁" tokens ------------------------------------------------------------
@pytest.mark.parametrize("stop,n_new", [([" world"], 1), (["world"], 1), (["world world"], 2), (["d w"], 2),
                                        (["o world"], N), ([" is"], N)])
def test_stop_text_with_a_leading_space_after_the_prompt_in_every_path(tmp_path, stop, n_new):
    """A "▁" tokenizer (Metaspace pre-tokenizer and decoder, as Jamba's: a text decoded alone loses its first
    space), the prompt "Hello", the first new token "▁world" (forced at every step) and a stop text " world":
    generate(stop_strings) stopped there and the server's text kept the space, but the static batch path and the
    continuous path (and so the server's token count) decoded the new tokens without the prompt before them
    ("world"): no stop (the batch path: "length" with one token), or a stop one token late (" world world"). Now
    every path reads the completion after its prompt (tokenizer.StreamDecoder) and stops at the same token with the
    same text; a stop text across the prompt's end ("o world") still does not match (the text is the completion's
    only), and one that the text never holds runs to the budget."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from jamba_ext.tokenizer import load_tokenizer
    # ("▁abcdef": transformers' StopStringCriteria reads each token's text behind the text "abcdef")
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "▁Hello": 3, "▁world": 4, "▁is": 5, "▁here": 6, "▁abcdef": 7}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="<s>",
                                              eos_token="</s>")
    model, world = builtin_model(), vocab["▁world"]
    prompt = tok.encode("Hello", add_bos=False)
    assert prompt == [vocab["▁Hello"]] and tok.decode([world]) == "world" and tok.decode(prompt + [world]) == \
        "Hello world"
    reason = "stop" if n_new < N else "length"
    want_ids, want_text = [world] * n_new, "".join([" world"] * n_new)
    if reason == "stop":
        want_text = want_text[:min(want_text.find(s) for s in stop if s in want_text)]
    got = {}
    with torch.inference_mode():
        row = model.generate([prompt], max_new_tokens=N, sequence_bias={(world,): 1e4}, stop_strings=stop,
                             tokenizer=hf)[0, len(prompt):].tolist()
    got["generate"] = row                  # (one prompt: it ends where its stop criterion stopped it)
    ((_, new, why),) = generate_many(model, [prompt], max_new_tokens=N, sequence_bias={(world,): 1e4},
                                     stop_strings=stop, tokenizer=hf, decode=tok.decode)
    got["generate_many"] = (new, why)
    ((_, new, why),) = generate_many(model, [prompt], max_new_tokens=N, sequence_bias={(world,): 1e4},
                                     stop_strings=stop, tokenizer=hf, decode=tok.decode, eos_token_id=None)
    got["generate_many, no EOS ids"] = (new, why)
    got.update(_continuous_and_server(model, tok, prompt, stop, world, 8))
    want = {"generate": want_ids, "generate_many": (want_ids, reason),
            "generate_many, no EOS ids": (want_ids, reason), "continuous": (want_ids, reason),
            "server": (want_text, reason, n_new), "server stream": (want_text, reason)}
    assert got == want
