"""jamba_ext.continuous: continuous batching (generate_continuous, generate_many(continuous=True)). Each greedy
completion equals the prompt's own generate() whatever row it ran in, when it took the row over and how often the
cache's keys moved left; EOS ids, per-prompt budgets and stop texts end completions as generate_many does; sampling
repeats for a seed; bad arguments are refused by name. On CUDA: the decode graph gives the eager steps' tokens."""
import random

import numpy as np
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


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_continuous_shared_prefix(batch_size, monkeypatch):
    """Prompts that share their first 20 tokens (one of them the prefix and a single token of its own): the prefix
    runs once and each prompt prefills only its own tokens, with the completions of each prompt alone (and of
    shared_prefix=False, which prefills every prompt whole)."""
    made = []
    orig = C._Rows.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        made.append(self)
    monkeypatch.setattr(C._Rows, "__init__", init)
    model = builtin_model()
    V = model.config.vocab_size
    head = _prompts(5, 1, 1, V)[0] + _prompts(6, 1, 1, V)[0]
    head = (head * 20)[:20]
    prompts = [head + t for t in _prompts(9, 11, 15, V)] + [head + [17]]
    budgets = [random.Random(i).randint(1, 12) for i in range(len(prompts))]
    want = [_alone(model, p, b, set()) for p, b in zip(prompts, budgets)]
    got = sorted(C.generate_continuous(model, prompts, batch_size, max_new_tokens=budgets, eos_token_id=None))
    assert [(t, r) for _, t, r in got] == want
    assert made[-1].prefix == head and made[-1].prefilled == 20 + sum(len(p) - 20 for p in prompts)
    whole = sorted(C.generate_continuous(model, prompts, batch_size, max_new_tokens=budgets, eos_token_id=None,
                                         shared_prefix=False))
    assert whole == got and made[-1].prefix is None and made[-1].prefilled >= sum(map(len, prompts))
    assert C.shared_prefix([[1, 2, 3], [1, 2, 4, 5], [1, 2]]) == [1] and C.shared_prefix([[4], [4]]) == []
    short = [[1, 2, 3, 4, 9], [1, 2, 3, 4, 8]]
    list(C.generate_continuous(model, short, 2, max_new_tokens=2))                  # (4 < 16 tokens: not shared)
    assert made[-1].prefix is None
    list(C.generate_continuous(model, short, 2, max_new_tokens=2, shared_prefix=True))
    assert made[-1].prefix == [1, 2, 3, 4]


@pytest.mark.parametrize("with_prefix", [False, True])
def test_take_copies_the_whole_prompts_state(with_prefix):
    """_Rows.take: each row's Mamba states, its keys and values at pos - L .. pos - 1, its key mask and the logits equal
    those of the prompt prefilled whole on a cache of its own (fp32, to rounding), with or without a shared prefix
    (prompts of two lengths: two groups)."""
    from jamba_ext.modeling_jamba import JambaHybridCache
    model = builtin_model()
    cfg = model.config
    head = [5, 9, 11, 200, 31, 7, 7, 64]
    prompts = [head + t for t in ([3, 4], [250, 6, 8, 1], [9, 9])]
    with torch.inference_mode():
        cache = JambaHybridCache(cfg, 5, max_length=40, static=True)
        rows = C._Rows(model, cache, 0, None, head if with_prefix else None)
        rows.set_pos(20)
        logits = rows.take([3, 0, 4], prompts)
        for r, p, lg in zip([3, 0, 4], prompts, logits):
            own = JambaHybridCache(cfg, 1, max_length=len(p))
            want = model(torch.tensor([p]), cache=own, logits_to_keep=1).logits[0, -1]
            assert (lg - want).norm() <= 1e-5 * want.norm()
            for i in range(cfg.num_hidden_layers):
                if own.ssm_states[i] is not None:
                    for a, b in ((cache.ssm_states[i][r], own.ssm_states[i][0]),
                                 (cache.conv_states[i][r], own.conv_states[i][0])):
                        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-7, (i, r)
                if own._keys[i] is not None:
                    for a, b in ((cache._keys[i][r, :, 20 - len(p):20], own.keys(i)[0]),
                                 (cache._values[i][r, :, 20 - len(p):20], own.values(i)[0])):
                        assert (a - b).norm() <= 1e-5 * b.norm(), (i, r)
            assert cache.static_mask[r].nonzero().flatten().tolist() == list(range(20 - len(p), 20))
            assert rows.start[r] == 20 - len(p)
    assert rows.prefilled == (len(head) + 8 if with_prefix else 1 + 3 * 12)    # (1: the template's pad token)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_prefill_groups_then_place_a_subset(with_prefix):
    """_Rows.prefill_groups with pad_tokens: prompts of lengths 3-19 go in groups whose prompts are at most pad_tokens
    shorter than the group's longest (sorted by length; with a prefix, prompts that start with it by their length);
    placing some of them later, in another order and when pos has moved on, gives each row the state, keys, mask and
    logits of the prompt prefilled alone (fp32, to rounding)."""
    from jamba_ext.modeling_jamba import JambaHybridCache
    model = builtin_model()
    cfg = model.config
    head = [5, 9, 11, 200, 31, 7]
    own = [[3, 4, 8], [250, 6, 8, 1, 4, 4, 9, 10, 11, 12, 13, 14, 15], [9] * 19, [7, 7, 7, 7], [40] * 18, [2] * 12]
    prompts = [(head + t) if with_prefix and k % 2 else t for k, t in enumerate(own)]
    with torch.inference_mode():
        cache = JambaHybridCache(cfg, 6, max_length=60, static=True)
        rows = C._Rows(model, cache, 0, None, head if with_prefix else None)
        staged = rows.prefill_groups(prompts, pad_tokens=2)
        groups = {}
        for j, (c, k, _) in enumerate(staged):
            groups.setdefault(id(c), []).append((k, len(prompts[j]), prompts[j][:len(head)] == head and with_prefix))
        sizes = sorted(sorted(n for _, n, _ in g) for g in groups.values())
        if with_prefix:      # shared: lengths 19, 10, 18 (a group each); whole: 19 / 18 together, 3 alone
            assert sizes == [[3], [10], [18], [18, 19], [19]], sizes
        else:                # 19 / 18 together, 13 / 12 together, 4 / 3 together
            assert sizes == [[3, 4], [12, 13], [18, 19]], sizes
        assert all(sorted(k for k, _, _ in g) == list(range(len(g))) for g in groups.values())
        pick, where = [4, 1, 0], [2, 5, 0]
        rows.set_pos(30)
        logits = rows.place(where, [prompts[j] for j in pick], [staged[j] for j in pick])
        for r, j, lg in zip(where, pick, logits):
            p = prompts[j]
            alone = JambaHybridCache(cfg, 1, max_length=len(p))
            want = model(torch.tensor([p]), cache=alone, logits_to_keep=1).logits[0, -1]
            assert (lg - want).norm() <= 1e-5 * want.norm()
            for i in range(cfg.num_hidden_layers):
                if alone.ssm_states[i] is not None:
                    for a, b in ((cache.ssm_states[i][r], alone.ssm_states[i][0]),
                                 (cache.conv_states[i][r], alone.conv_states[i][0])):
                        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-7, (i, r)
                if alone._keys[i] is not None:
                    for a, b in ((cache._keys[i][r, :, 30 - len(p):30], alone.keys(i)[0]),
                                 (cache._values[i][r, :, 30 - len(p):30], alone.values(i)[0])):
                        assert (a - b).norm() <= 1e-5 * b.norm(), (i, r)
            assert cache.static_mask[r].nonzero().flatten().tolist() == list(range(30 - len(p), 30))
        assert not cache.static_mask[[1, 3, 4]].any()


@pytest.mark.parametrize("ahead", [0, 40, 100000])
def test_prefill_ahead(ahead, monkeypatch):
    """prefill_ahead: prompts beyond the idle rows are prefilled with theirs (at most batch_size, their tokens within
    the budget) and wait for the next free rows: fewer forwards than one a row taken over, the same completions as
    each prompt alone; 0 prefills only the idle rows' prompts. close() puts the prompts prefilled ahead back at the
    queue's front."""
    runs, orig = [], C._Rows._run

    def run(self, ids, cache, mask=None):
        runs.append(ids.shape)
        return orig(self, ids, cache, mask)
    monkeypatch.setattr(C._Rows, "_run", run)
    model = builtin_model()
    prompts = _prompts(21, 24, 30, model.config.vocab_size)
    budgets = [random.Random(i).randint(1, 10) for i in range(len(prompts))]
    want = [_alone(model, p, b, set()) for p, b in zip(prompts, budgets)]
    bat = C.ContinuousBatcher(model, batch_size=4, max_prompt_tokens=30, max_new_tokens=10, eos_token_id=None,
                              prefill_ahead=ahead)
    ids = [bat.add(p, b) for p, b in zip(prompts, budgets)]
    runs.clear()
    got, most = {}, 0
    while not bat.done:
        got.update({rid: (t, r) for rid, t, r in bat.step()})
        most = max(most, len(bat.staged))
        assert bat.queued == len(bat.queue) + len(bat.staged)
    assert [got[i] for i in ids] == want
    assert runs[0] == (1, 1)                          # (the first step's template: one pad token)
    runs = runs[1:]
    assert sum(n for n, _ in runs) == len(prompts)    # (each prompt prefilled once; no prefix here)
    if ahead == 0:
        assert most == 0 and len(runs) >= len(prompts) - 8, runs
    else:
        assert 0 < most <= 4 and len(runs) < len(prompts) - 8, runs
        if ahead == 40:                               # (<= 40 tokens a staging, unless the idle rows need more)
            assert all(n * L <= 4 * 30 for n, L in runs)
    if ahead > 1000:
        bat = C.ContinuousBatcher(model, batch_size=3, max_prompt_tokens=30, max_new_tokens=10, eos_token_id=None,
                                  prefill_ahead=ahead)
        ids = [bat.add(p, b) for p, b in zip(prompts[:8], [2, 3, 4, 5, 5, 5, 5, 5])]
        out = {}
        while not bat.staged:                         # (when a row frees, the next prompts are staged)
            out.update({rid: t for rid, t, _ in bat.step()})
        assert len(bat.staged) == 2 and bat.queued == 4   # (2 staged with the 1 admitted: 3 at most)
        waiting = [e[0][0] for e in bat.staged] + [e[0] for e in bat.queue]
        bat.close()
        assert not bat.staged and [e[0] for e in bat.queue] == waiting and bat.queued == 4
        while not bat.done:
            out.update({rid: t for rid, t, _ in bat.step()})
        assert sorted(out) == sorted(ids[:2] + waiting)   # (close() dropped the 2 prompts running)
        assert all(out[i] == _alone(model, prompts[i], 5, set())[0] for i in waiting)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_batcher_prompts_added_while_running(with_prefix, monkeypatch):
    """ContinuousBatcher: prompts added between steps, short and long by turns (a long one moves pos up to its length
    while other rows run; the keys move left; with a prefix, prompts without it are prefilled whole), each completion
    as the prompt alone; step() with nothing queued returns []; done; close() drops the state and a later prompt
    starts it again."""
    events, orig = [], C.ContinuousBatcher._admit

    def admit(self):
        pos, shifts, running = self.rows.pos, self.rows.shifts, self.running
        orig(self)
        events.append((self.rows.pos > pos and running > 0, self.rows.shifts > shifts))
    monkeypatch.setattr(C.ContinuousBatcher, "_admit", admit)
    model = builtin_model()
    V = model.config.vocab_size
    head = list(range(60, 80))
    bat = C.ContinuousBatcher(model, batch_size=3, max_prompt_tokens=40, max_new_tokens=12, eos_token_id=None,
                              prefix=head if with_prefix else None)
    assert bat.step() == [] and bat.done
    rng = random.Random(4)
    prompts, budgets, got = {}, {}, {}
    for wave in range(14):
        for _ in range(rng.randint(1, 3)):
            own = [rng.randrange(3, V) for _ in range(rng.randint(1, 4) if wave % 2 else rng.randint(15, 20))]
            p = (head + own) if with_prefix and rng.random() < 0.7 else own
            b = rng.randint(1, 12)
            rid = bat.add(p, b)
            prompts[rid], budgets[rid] = p, b
        for _ in range(rng.randint(1, 8)):
            got.update({rid: (t, r) for rid, t, r in bat.step()})
    while not bat.done:
        got.update({rid: (t, r) for rid, t, r in bat.step()})
    assert sorted(got) == sorted(prompts)
    assert all(got[k] == _alone(model, prompts[k], budgets[k], set()) for k in prompts)
    assert any(j for j, _ in events) and any(s for _, s in events), events     # (what the test is for)
    bat.close()
    rid = bat.add([5, 6, 7], 4)
    out = []
    while not bat.done:
        out += bat.step()
    assert out == [(rid, *_alone(model, [5, 6, 7], 4, set()))]


@pytest.mark.parametrize("ahead", [0, 4096])
def test_batcher_cancel(ahead, device):
    """cancel(id): a queued prompt, a prompt prefilled ahead of a free row (ahead > 0) and a running one (mid-way
    through its budget) are dropped -- no step returns them, and the running one's row takes the next prompt -- while
    every other completion is the prompt's alone; an ended or unknown id gives False. On CUDA through the decode
    graph, whose next step is already queued when a row is dropped (fp32)."""
    model = builtin_model(device)
    prompts = _prompts(7, 6, 12, model.config.vocab_size)
    bat = C.ContinuousBatcher(model, batch_size=2, max_prompt_tokens=16, max_new_tokens=10, eos_token_id=None,
                              prefill_ahead=ahead)
    assert bat.cancel(0) is False                    # (nothing added yet)
    budgets = [10, 3, 10, 10, 10, 10]                 # (the second ends first: its row takes the next prompt)
    ids = [bat.add(p, b) for p, b in zip(prompts, budgets)]
    assert bat.cancel(ids[3]) is True                # queued
    got = {}
    for _ in range(4):
        got.update({rid: (t, r) for rid, t, r in bat.step()})
    assert bat.running == 2 and ids[0] in bat.seq and ids[2] in bat.seq and ids[1] in got
    staged = [e[0] for e, _ in bat.staged]
    assert staged == ([ids[4]] if ahead else []), staged
    if ahead:
        assert bat.cancel(staged[0]) is True         # prefilled ahead of a free row
    assert bat.cancel(ids[0]) is True                # running: 4 of its 10 tokens made
    assert bat.running == 1 and bat.cancel(ids[0]) is False
    while not bat.done:
        got.update({rid: (t, r) for rid, t, r in bat.step()})
    dropped = {ids[0], ids[3]} | ({staged[0]} if ahead else set())
    assert sorted(got) == sorted(set(ids) - dropped)
    assert all(got[i] == _alone(model, prompts[i], budgets[i], set()) for i in got)
    assert bat.cancel(ids[1]) is False               # (ended)


def test_batcher_stop_texts_per_prompt():
    """add(..., stop_strings=...): each prompt ends at its own stop texts (the batcher's when not given)."""
    model, tok = builtin_model(), ByteTokenizer()
    prompts = [tok.encode(t, add_bos=True) for t in ["one", "two two", "three three three"]]
    free = [_alone(model, p, 12, set())[0] for p in prompts]
    texts = [tok.decode(f) for f in free]
    own = [[texts[0][2:4]], None, [texts[2][5:7], "zzz"]]
    default = [texts[1][3:5]]
    bat = C.ContinuousBatcher(model, batch_size=2, max_prompt_tokens=30, max_new_tokens=12, eos_token_id=None,
                              stop_strings=default, decode=tok.decode)
    ids = [bat.add(p, stop_strings=st) for p, st in zip(prompts, own)]
    got = {}
    while not bat.done:
        got.update({rid: (t, r) for rid, t, r in bat.step()})
    want = [completion(f, set(), default if st is None else st, tok.decode) for f, st in zip(free, own)]
    assert [got[i] for i in ids] == want and all(r == "stop" for _, r in want)
    with pytest.raises(ValueError, match="stop_strings: expected non-empty texts"):
        bat.add(prompts[0], stop_strings=[""])
    with pytest.raises(ValueError, match="and a batcher with decode"):
        C.ContinuousBatcher(model, max_prompt_tokens=30, max_new_tokens=12).add([1, 2], stop_strings=["x"])


def test_batcher_errors():
    model = builtin_model()
    bat = C.ContinuousBatcher(model, batch_size=2, max_prompt_tokens=8, max_new_tokens=5)
    with pytest.raises(ValueError, match="1 to max_prompt_tokens = 8 tokens, got 9"):
        bat.add(list(range(9)))
    with pytest.raises(ValueError, match="1 to max_prompt_tokens"):
        bat.add([])
    with pytest.raises(ValueError, match=r"max_new_tokens: expected an int in \[1, 5\], got 6"):
        bat.add([1, 2], 6)
    with pytest.raises(ValueError, match=r"prompt: expected token ids \(ints\), got \[5.7, 6\]"):
        bat.add([5.7, 6])                                   # (was cut to 5, silently)
    bat.add(torch.tensor([5, 6]))                           # a tensor of ids, and numpy / tensor elements, are taken
    bat.add([np.int64(5), torch.tensor(6)])
    with pytest.raises(ValueError, match="max_prompt_tokens must be an int >= 1"):
        C.ContinuousBatcher(model, max_prompt_tokens=0)
    with pytest.raises(ValueError, match="not shared_prefix"):
        C.ContinuousBatcher(model, shared_prefix=True)
    with pytest.raises(ValueError, match="not num_beams"):
        C.ContinuousBatcher(model, num_beams=2)
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="prefill_ahead: expected an int >= 0"):
            C.ContinuousBatcher(model, prefill_ahead=bad)


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


@pytest.mark.parametrize("with_prefix", [False, True])
def test_continuous_repetition_penalty(with_prefix):
    """repetition_penalty as generate()'s: each completion equals the prompt alone with the same penalty (a row's
    seen tokens restart with each prompt taking it over), and differs from the unpenalised one for some prompt."""
    model = builtin_model()
    V = model.config.vocab_size
    head = list(range(40, 60)) if with_prefix else []
    prompts = [head + p for p in _prompts(31, 10, 12, V)]
    kw = dict(max_new_tokens=10, eos_token_id=None)
    want = []
    for p in prompts:
        with torch.inference_mode():
            row = model.generate([p], repetition_penalty=1.8, **kw)[0, len(p):].tolist()
        want.append((row, "length"))
    got = sorted(C.generate_continuous(model, prompts, 3, repetition_penalty=1.8, **kw))
    assert [(t, r) for _, t, r in got] == want
    plain = sorted(C.generate_continuous(model, prompts, 3, **kw))
    assert plain != got
    with pytest.raises(ValueError, match="repetition_penalty: expected a number > 0"):
        list(C.generate_continuous(model, prompts, 3, repetition_penalty=0, **kw))


def test_continuous_min_new_tokens():
    """min_new_tokens as generate()'s: no EOS id before it (the count restarts with each prompt taking a row); the
    completions equal each prompt alone, and some end later than without it."""
    model = builtin_model()
    prompts = _prompts(41, 12, 10, model.config.vocab_size)
    free = [_alone(model, p, 6, set())[0] for p in prompts]
    # EOS ids: tokens picked at once (early stops), and one a prompt picks as its 4th token and not before (the first
    # EOS that min_new_tokens=4 lets through)
    eos = {free[0][0], free[1][0]}
    k = next(k for k in range(2, len(prompts))
             if free[k][3] not in eos and not set(free[k][:3]) & ({free[k][3]} | eos))
    eos = sorted(eos | {free[k][3]})
    kw = dict(max_new_tokens=9, eos_token_id=eos)
    want = []
    for p in prompts:
        with torch.inference_mode():
            row = model.generate([p], min_new_tokens=4, **kw)[0, len(p):].tolist()
        want.append(completion(row, set(eos)))
    got = sorted(C.generate_continuous(model, prompts, 4, min_new_tokens=4, **kw))
    assert [(t, r) for _, t, r in got] == want
    early = sorted(C.generate_continuous(model, prompts, 4, **kw))
    assert min(len(t) for _, t, _ in early) < 4 <= min(len(t) for _, t, _ in got)
    with pytest.raises(ValueError, match="min_new_tokens: expected an int >= 0"):
        list(C.generate_continuous(model, prompts, 4, min_new_tokens=-1, **kw))


def test_continuous_sampling_repeats():
    model = builtin_model()
    prompts = _prompts(7, 9, 12, model.config.vocab_size)
    kw = dict(max_new_tokens=8, eos_token_id=None, do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    a = sorted(C.generate_continuous(model, prompts, 3, seed=1, **kw))
    assert a == sorted(C.generate_continuous(model, prompts, 3, seed=1, **kw))
    assert a != sorted(C.generate_continuous(model, prompts, 3, seed=2, **kw))
    assert all(len(t) == 8 and all(0 <= x < model.config.vocab_size for x in t) for _, t, _ in a)
    # the token's index in its completion is the draw's counter: at a huge temperature the pick is the argmax of the
    # noise alone, so one counter for every step would give one token over and over
    hot = C.generate_continuous(model, prompts[:3], 3, seed=1, max_new_tokens=8, eos_token_id=None, do_sample=True,
                                temperature=1e6)
    assert all(len(set(t)) > 2 for _, t, _ in hot), hot


def test_continuous_sampling_does_not_depend_on_the_batch():
    """Each prompt draws with its own key (its seed, else one from the batcher's seed and its id) and its token
    index as the counter: at batch 1, 2 and 5 (other rows, other steps; fp32) each prompt's sampled completion is
    the same; add(seed=S) gives the same completion for the same prompt and S, in any row and batcher; another S
    another one."""
    model = builtin_model()
    prompts = _prompts(8, 7, 12, model.config.vocab_size)
    kw = dict(max_new_tokens=10, eos_token_id=None, do_sample=True, temperature=1.5, top_k=0, top_p=0.98)
    runs = [sorted(C.generate_continuous(model, prompts, b, seed=3, **kw)) for b in (1, 2, 5)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0] != sorted(C.generate_continuous(model, prompts, 2, seed=4, **kw))

    def seeded(batch_size, order, seeds):
        bat = C.ContinuousBatcher(model, batch_size, 12, 10, seed=0, eos_token_id=None, do_sample=True,
                                  temperature=1.5)
        ids = {bat.add(prompts[i], 10 - i % 3, seed=seeds[i]): i for i in order}
        out = {}
        while not bat.done:
            out.update({ids[rid]: t for rid, t, _ in bat.step()})
        return out
    seeds = [11, 12, 13, 11, 12, 13, 99]
    a = seeded(1, range(7), seeds)
    b = seeded(3, [6, 2, 4, 0, 5, 1, 3], seeds)
    assert a == b
    c = seeded(3, range(7), [s + 1 for s in seeds])
    assert sum(a[i] != c[i] for i in range(7)) >= 5
    twin = seeded(2, [0, 1], [5, 5])                   # (the same prompt and seed in two rows at once)
    bat = C.ContinuousBatcher(model, 2, 12, 10, eos_token_id=None, do_sample=True, temperature=1.5)
    x, y = bat.add(prompts[0], 10, seed=5), bat.add(prompts[0], 10, seed=5)
    out = {}
    while not bat.done:
        out.update({rid: t for rid, t, _ in bat.step()})
    assert out[x] == out[y] == twin[0]
    for bad in (-1, 2 ** 63, 1.5, True):
        with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\^63\)"):
            bat.add(prompts[0], 3, seed=bad)


def test_logit_bias_per_prompt(device):
    """add(logit_bias=...): +100 on a token makes a greedy prompt give it every step, -100 on the token a prompt alone
    would give first bans it from the whole completion (and the rest follows the biased logits); the other prompts
    in the batch, and a prompt that later takes a biased row, give their own completions; bad biases refused. On
    CUDA through the decode graph (fp32)."""
    model = builtin_model(device)
    V = model.config.vocab_size
    prompts = _prompts(12, 6, 10, V)
    alone = [_alone(model, p, 6, set())[0] for p in prompts]
    banned = alone[1][0]
    bat = C.ContinuousBatcher(model, 2, 10, 6, eos_token_id=None)
    ids = [bat.add(prompts[0], 6, logit_bias={17: 100}), bat.add(prompts[1], 6, logit_bias={banned: -100, 5: 0.5})]
    ids += [bat.add(p, 6) for p in prompts[2:]]
    out = {}
    while not bat.done:
        out.update({rid: t for rid, t, _ in bat.step()})
    assert out[ids[0]] == [17] * 6
    assert banned not in out[ids[1]] and out[ids[1]] != alone[1]
    with torch.inference_mode():                      # (greedy on the biased logits, step by step)
        seq, want = list(prompts[1]), []
        for _ in range(6):
            lg = model(torch.tensor([seq], device=model.device), logits_to_keep=1).logits[0, -1].float()
            lg[banned] -= 100
            lg[5] += 0.5
            want.append(int(lg.argmax()))
            seq.append(want[-1])
    assert out[ids[1]] == want
    assert [out[i] for i in ids[2:]] == alone[2:]
    for bad, msg in (({V: 1.0}, "token ids are ints"), ({3: 101}, r"numbers in \[-100, 100\]"),
                     ({"3": 1.0}, "token ids are ints"), ([3], "expected a dict"),
                     ({i: 1.0 for i in range(301)}, "at most 300")):
        with pytest.raises(ValueError, match=msg):
            bat.add(prompts[0], 3, logit_bias=bad)


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
    with pytest.raises(ValueError, match="top_k: expected an int >= 0"):
        run([[1, 5]], do_sample=True, top_k=-1)
    with pytest.raises(ValueError, match=r"min_p: expected in \[0, 1\]"):
        run([[1, 5]], do_sample=True, min_p=2.0)
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


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("penalty", [1.0, 1.7])
def test_cuda_continuous_shared_prefix(penalty):
    """On a GPU (fp32): prompts sharing a 24-token prefix, through the decode graph, each as the prompt alone (with
    a repetition penalty too)."""
    model = builtin_model("cuda")
    V = model.config.vocab_size
    head = [x for p in _prompts(21, 3, 30, V) for x in p][:24]
    prompts = [head + t for t in _prompts(22, 14, 20, V)]
    budgets = [random.Random(i).randint(1, 16) for i in range(len(prompts))]
    got = sorted(C.generate_continuous(model, prompts, 5, max_new_tokens=budgets, eos_token_id=None,
                                       repetition_penalty=penalty))
    want = []
    for p, b in zip(prompts, budgets):
        with torch.inference_mode():
            want.append(model.generate([p], max_new_tokens=b, eos_token_id=None,
                                       repetition_penalty=penalty)[0, len(p):].tolist())
    assert [t for _, t, _ in got] == want
