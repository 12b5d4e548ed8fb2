"""jamba_ext.batch: offline batch generation (generate_many, what `generate --prompts-file` runs): each completion
equals the prompt's own generate(), the batches group prompts by length, results in order or as they finish, where
each completion ends and why, and bad arguments."""
import pytest
import torch

from conftest import builtin_model
from jamba_ext.batch import batches_by_length, completion, generate_many
from jamba_ext.tokenizer import ByteTokenizer


def test_batches_by_length():
    assert batches_by_length([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert batches_by_length([4, 4, 4], 8) == [[0, 1, 2]]
    assert batches_by_length([], 3) == []
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        batches_by_length([1], 0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 2.5"):
        batches_by_length([1], 2.5)


def test_completion_ends_and_reasons():
    """A row ends before the first EOS id or negative fill ("stop"), or with the token whose text completes a stop
    text (the row is pad-filled after it: "stop"), else it is the whole row ("length")."""
    tok = ByteTokenizer()
    row = tok.encode("abcdefgh", add_bos=False)
    assert completion(row, {2}) == (row, "length")
    assert completion(row[:3] + [2] + row[4:], {2}) == (row[:3], "stop")
    assert completion(row[:2] + [-1, -1], set()) == (row[:2], "stop")
    assert completion(row + [0, 0], set(), ("zz", "de"), tok.decode) == (row[:5], "stop")    # "abcde" holds "de"
    assert completion(row, set(), ("ab",), tok.decode) == (row[:2], "stop")
    assert completion(row, set(), ("hz",), tok.decode) == (row, "length")


def test_generate_many_matches_each_prompt_alone():
    """Greedy completions equal each prompt's own generate() (left padding in a batch changes no token), in the
    prompts' order; ordered=False gives the same results batch by batch, longest prompts first; on_batch counts the
    prompts."""
    model, tok = builtin_model(), ByteTokenizer()
    texts = ["hello there", "a", "the hybrid model reads a long prompt", "xyz", "Mamba and attention", "MoE"]
    prompts = [tok.encode(t, add_bos=True) for t in texts]
    eos = set(model._eos_ids())
    want = []
    for p in prompts:
        with torch.inference_mode():
            row = model.generate([p], max_new_tokens=6)[0, len(p):].tolist()
        want.append(completion(row, eos))
    seen = []
    got = list(generate_many(model, prompts, batch_size=4, max_new_tokens=6, on_batch=seen.append))
    assert [g[0] for g in got] == list(range(len(texts)))
    assert [(g[1], g[2]) for g in got] == want
    assert seen == [4, 2]
    loose = list(generate_many(model, prompts, batch_size=4, ordered=False, max_new_tokens=6))
    assert [g[0] for g in loose] == [b for batch in batches_by_length([len(p) for p in prompts], 4) for b in batch]
    assert sorted(loose) == got


def test_generate_many_eos_ids_as_generate():
    """The completions end at the EOS ids generate() stops at: the model's by default, eos_token_id's when given,
    none with eos_token_id=None (token 5 forced at every step by sequence_bias)."""
    model = builtin_model()
    prompts = [[1, 7, 9], [1, 4]]
    kw = dict(max_new_tokens=4, sequence_bias={(5,): 1e4})
    assert [r[1:] for r in generate_many(model, prompts, eos_token_id=None, **kw)] == [([5] * 4, "length")] * 2
    assert [r[1:] for r in generate_many(model, prompts, eos_token_id=[3, 5], **kw)] == [([], "stop")] * 2
    assert [r[1:] for r in generate_many(model, prompts, **kw)] == [([5] * 4, "length")] * 2   # (EOS is 2)


def test_generate_many_errors():
    model = builtin_model()
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        list(generate_many(model, [[1, 5], []]))
    with pytest.raises(ValueError, match="num_return_sequences is not supported"):
        list(generate_many(model, [[1, 5]], num_return_sequences=2))
    with pytest.raises(ValueError, match="return_dict_in_generate is not supported"):
        list(generate_many(model, [[1, 5]], return_dict_in_generate=True))
    with pytest.raises(ValueError, match="stop_strings needs decode"):
        list(generate_many(model, [[1, 5]], stop_strings=["x"]))
    assert list(generate_many(model, [])) == []


def test_completion_reads_the_stop_text_after_the_prompt():
    """completion(..., context=prompt) looks for stop texts in the completion's text as it reads after its prompt
    (tokenizer.decode_after), token by token: with a "▁" tokenizer (Jamba's) the first new token "▁world" decoded alone
    lost its leading space, so the stop text " world" never matched there (the static batch path returned that row
    "length"). Property: for random byte rows, prompts and stop texts, the completion ends at the shortest prefix
    whose decode_after text holds a stop text (checked a prefix at a time: the incremental look must agree)."""
    import random
    tokenizers = pytest.importorskip("tokenizers")
    from jamba_ext.tokenizer import decode_after
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "▁Hello": 3, "▁world": 4, "▁is": 5}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")

    def decode(ids):
        return tk.decode(list(ids))
    assert completion([4, 5, 4], set(), [" world"], decode, [3]) == ([4], "stop")
    assert completion([4, 5, 4], set(), [" is"], decode, [3]) == ([4, 5], "stop")
    assert completion([4, 5, 4], set(), ["o world"], decode, [3]) == ([4, 5, 4], "length")   # (not the prompt's)
    tok, rng = ByteTokenizer(), random.Random(0)
    pool = tok.encode("ab é€", add_bos=False) + [0xE2 + tok.offset, 0xF0 + tok.offset]
    for _ in range(300):
        row = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        prompt = [rng.choice(pool) for _ in range(rng.randint(1, 4))]
        stop = [tok.decode(row)[a:a + rng.randint(1, 3)] for a in (rng.randint(0, 6), rng.randint(0, 9))]
        stop = [s for s in stop if s] or ["zz"]
        k = next((k for k in range(1, len(row) + 1) if any(s in decode_after(tok, prompt, row[:k]) for s in stop)),
                 None)
        want = (row, "length") if k is None else (row[:k], "stop")
        assert completion(row, set(), stop, tok.decode, prompt) == want, (row, prompt, stop)
