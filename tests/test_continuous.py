"""jamba_ext.continuous: continuous batching (generate_continuous, generate_many(continuous=True)). Each greedy
completion equals the prompt's own generate() whatever row it ran in, when it took the row over and how often the
cache's keys moved left; EOS ids, per-prompt budgets and stop texts end completions as generate_many does; sampling
repeats for a seed; bad arguments are refused by name. On CUDA: the decode graph gives the eager steps' tokens."""
import random

import pytest
import torch

import jamba_ext.continuous as C
from conftest import HAS_GPU, builtin_model
from jamba_ext.batch import completion, generate_many
from jamba_ext.tokenizer import ByteTokenizer


def _prompts(seed, n, longest, vocab):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(1, longest))] for _ in range(n)]


def _alone(model, prompt, budget, eos):
    with torch.inference_mode():
        row = model.generate([prompt], max_new_tokens=budget, eos_token_id=sorted(eos) or None)[0, len(prompt):]
    return completion(row.tolist(), eos)


@pytest.fixture
def shifts(monkeypatch):
    """Records (position after, running rows) for every move of the keys to the left."""
    seen, orig = [], C._Rows.shift

    def spy(self, running):
        orig(self, running)
        seen.append((self.pos, len(running)))
    monkeypatch.setattr(C._Rows, "shift", spy)
    return seen


@pytest.mark.parametrize("batch_size,seed", [(1, 0), (3, 1), (5, 2), (40, 3)])
def test_continuous_matches_each_prompt_alone(batch_size, seed, shifts):
    """30 prompts of 1-30 tokens, budgets 1-20 a prompt, two EOS ids the model picks often: every completion (and
    its finish reason) as the prompt alone gives it; rows are taken over many times, and the keys move left."""
    model = builtin_model()
    prompts = _prompts(seed, 30, 30, model.config.vocab_size)
    rng = random.Random(seed)
    budgets = [rng.randint(1, 20) for _ in prompts]
    firsts = [_alone(model, p, 3, set())[0] for p in prompts[:10]]
    eos = {firsts[0][1], firsts[1][2]}              # (tokens the model does pick: some completions stop)
    want = [_alone(model, p, b, eos) for p, b in zip(prompts, budgets)]
    got = list(C.generate_continuous(model, prompts, batch_size, max_new_tokens=budgets, eos_token_id=sorted(eos)))
    assert sorted(g[0] for g in got) == list(range(len(prompts)))
    assert {g[0]: (g[1], g[2]) for g in got} == dict(enumerate(want))
    assert {r for _, r in want} == {"stop", "length"}
    if batch_size < len(prompts):
        assert [g[0] for g in got] != list(range(len(prompts)))           # (they end out of the prompts' order)
        assert shifts, "the test should make the cache's keys move left"


def test_generate_many_continuous_as_static():
    """generate_many(continuous=True): the prompts' order (ordered) or as they end, on_batch once a prompt, the same
    completions as the static batches, per-prompt budgets in both modes."""
    model, tok = builtin_model(), ByteTokenizer()
    prompts = [tok.encode(t, add_bos=True) for t in ["hello there", "a", "the hybrid model reads", "xyz", "MoE"]]
    budgets = [4, 9, 1, 6, 3]
    static = list(generate_many(model, prompts, batch_size=2, max_new_tokens=budgets))
    assert [len(g[1]) for g in static if g[2] == "length"] == [b for b, g in zip(budgets, static) if g[2] == "length"]
    seen = []
    cont = list(generate_many(model, prompts, batch_size=2, max_new_tokens=budgets, continuous=True,
                              on_batch=seen.append))
    assert cont == static and seen == [1] * 5
    loose = list(generate_many(model, prompts, batch_size=2, max_new_tokens=budgets, continuous=True, ordered=False))
    assert sorted(loose) == static and [g[0] for g in loose] != [0, 1, 2, 3, 4]


def test_continuous_stop_strings():
    """A stop text ends a completion with the token that completes it (completion() on the prompt's own output)."""
    model, tok = builtin_model(), ByteTokenizer()
    prompts = [tok.encode(t, add_bos=True) for t in ["one", "two two", "three three three"]]
    free = [_alone(model, p, 12, set())[0] for p in prompts]
    stops = [tok.decode(free[0])[3:5], tok.decode(free[2])[6:8]]           # (texts the completions do reach)
    want = [completion(f, set(), stops, tok.decode) for f in free]
    got = list(generate_many(model, prompts, batch_size=2, continuous=True, max_new_tokens=12, eos_token_id=None,
                             stop_strings=stops, decode=tok.decode))
    assert [(t, r) for _, t, r in got] == want
    assert want[0][1] == want[2][1] == "stop" and len(want[0][0]) < 12


def test_continuous_sampling_repeats():
    model = builtin_model()
    prompts = _prompts(7, 9, 12, model.config.vocab_size)
    kw = dict(max_new_tokens=8, eos_token_id=None, do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    a = sorted(C.generate_continuous(model, prompts, 3, seed=1, **kw))
    assert a == sorted(C.generate_continuous(model, prompts, 3, seed=1, **kw))
    assert a != sorted(C.generate_continuous(model, prompts, 3, seed=2, **kw))
    assert all(len(t) == 8 and all(0 <= x < model.config.vocab_size for x in t) for _, t, _ in a)


def test_continuous_errors():
    model = builtin_model()
    run = lambda *a, **k: list(C.generate_continuous(model, *a, **k))  # noqa: E731
    with pytest.raises(ValueError, match="not num_beams"):
        run([[1, 5]], num_beams=2)
    with pytest.raises(ValueError, match="not num_beams"):
        list(generate_many(model, [[1, 5]], continuous=True, num_beams=2))
    with pytest.raises(ValueError, match="one int a prompt"):
        run([[1, 5], [1]], max_new_tokens=[3])
    with pytest.raises(ValueError, match="ints >= 1, got 0 for prompt 1"):
        run([[1, 5], [1]], max_new_tokens=[3, 0])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        run([[1, 5]], 0)
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        run([[1, 5], []])
    with pytest.raises(ValueError, match="stop_strings needs decode"):
        run([[1, 5]], stop_strings=["x"])
    with pytest.raises(ValueError, match="top_p: expected > 0 and <= 1"):
        run([[1, 5]], do_sample=True, top_p=1.5)
    assert run([]) == []


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_cuda_continuous_graph_equals_eager_and_alone(shifts):
    """On a GPU (fp32, the built-in model): the captured decode step gives the eager steps' completions, and each
    equals the prompt alone; rows are taken over while the next step runs (run-ahead) and the keys move left."""
    model = builtin_model("cuda")
    prompts = _prompts(11, 24, 40, model.config.vocab_size)
    rng = random.Random(11)
    budgets = [rng.randint(1, 24) for _ in prompts]
    graph = sorted(C.generate_continuous(model, prompts, 4, max_new_tokens=budgets, eos_token_id=None))
    eager = sorted(C.generate_continuous(model, prompts, 4, max_new_tokens=budgets, eos_token_id=None,
                                         cuda_graph=False))
    assert graph == eager and shifts
    assert [(t, r) for _, t, r in graph] == [_alone(model, p, b, set()) for p, b in zip(prompts, budgets)]
