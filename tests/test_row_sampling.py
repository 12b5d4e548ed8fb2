"""jamba_ext.row_sampling, and each request's own sampling settings in a ContinuousBatcher (what a server's requests
bring; the kernel itself, ops.sample_rows: tests/test_sample_rows.py). Draws follow the softmax; in one batch of
mixed settings, greedy rows give the prompt's own generate(), a repetition penalty gives generate()'s with it,
presence and frequency penalties a float64 step-by-step reference, top_k = 1 the greedy tokens; sampling repeats for
a seed; bad settings are refused by name."""
import random

import pytest
import torch

import jamba_ext.continuous as C
from conftest import builtin_model
from jamba_ext.row_sampling import RowSampler, Sampling, check

def test_pick_follows_each_rows_distribution(device):
    """4000 rows of one set of 4 logits: greedy rows give the argmax, top_k = 1 rows too, and the sampled rows' draws
    follow softmax(logits / temperature) (each count within 5 sigma); the same keys and counters draw the same,
    other counters other tokens."""
    logits = torch.tensor([1.0, 0.2, -0.5, 1.4])
    n = 4000
    rs = RowSampler([Sampling(0.8)] * (n - 2) + [Sampling(0.0), Sampling(1.0, 1)], device)
    x = logits.to(device).expand(n, 4).contiguous()
    rng = torch.stack([torch.arange(n) * 2654435761 + 3, torch.zeros(n, dtype=torch.long)], 1).to(device)
    got = rs.pick(x, None, None, rng).cpu()
    assert got[-2] == 3 and got[-1] == 3
    p = torch.softmax(logits / 0.8, -1)
    count = torch.bincount(got[:-2], minlength=4).double()
    sigma = (p * (1 - p) * (n - 2)).sqrt()
    assert ((count - p * (n - 2)).abs() < 5 * sigma).all(), (count, p * (n - 2))
    assert torch.equal(rs.pick(x, None, None, rng).cpu(), got)
    assert not torch.equal(rs.pick(x, None, None, rng + torch.tensor([0, 1], device=device)).cpu(), got)


def test_pick_never_takes_a_nan_logit(device):
    """A NaN logit counts as -inf (ops.sample_rows' rule): greedy, top_k = 1 and sampled rows pick among the finite
    logits wherever the NaN stands (at column 0 it was the greedy argmax; top_k = 1 kept a NaN alone), and a row of
    NaN only gives token 0."""
    nan = float("nan")
    rows = [[nan, 1.0, 3.0, 2.0], [0.5, nan, 3.0, nan], [nan, nan, nan, 1.0], [nan, nan, nan, nan]]
    settings = [Sampling(0.0), Sampling(0.9, 1), Sampling(1.0), Sampling(0.7, 0, 0.9, 0.05)]
    x = torch.tensor([r for r in rows for _ in settings], device=device)
    rs = RowSampler([s for _ in rows for s in settings], device)
    rng = torch.stack([torch.arange(len(x)) * 7919 + 1, torch.zeros(len(x), dtype=torch.long)], 1).to(device)
    got = rs.pick(x, None, None, rng).cpu().view(len(rows), len(settings))
    assert got[0, :2].tolist() == [2, 2] and got[1, :2].tolist() == [2, 2], got
    assert (got[2] == 3).all() and (got[3] == 0).all(), got
    assert not torch.isnan(x.cpu().view(len(rows), len(settings), 4)[:3].gather(2, got[:3, :, None])).any(), got


def _alone(model, prompt, n, **kw):
    with torch.inference_mode():
        return model.generate([prompt], max_new_tokens=n, eos_token_id=None, **kw)[0, len(prompt):].tolist()


def _alone_openai_penalties(model, prompt, n, presence, frequency):
    """Greedy with OpenAI's presence / frequency penalties on the new tokens, each step the whole sequence again,
    the penalties in float64."""
    ids, new, V = list(prompt), [], model.config.vocab_size
    for _ in range(n):
        with torch.inference_mode():
            lg = model(torch.tensor([ids], device=model.device)).logits[0, -1].double().cpu()
        c = torch.bincount(torch.tensor(new, dtype=torch.long), minlength=V).double()
        t = int((lg - frequency * c - presence * (c > 0).double()).argmax())
        ids.append(t)
        new.append(t)
    return new


SETTINGS = [None, {"repetition_penalty": 1.6}, {"temperature": 0.9, "top_k": 1},
            {"temperature": 0.8, "top_p": 0.9, "min_p": 0.05}, {"presence_penalty": 1.2, "frequency_penalty": 0.9}]


def _run(model, prompts, budgets, settings, seed=0):
    bat = C.ContinuousBatcher(model, 3, max(map(len, prompts)), max(budgets), seed, eos_token_id=None)
    ids = {bat.add(p, b, sampling=s): i for i, (p, b, s) in enumerate(zip(prompts, budgets, settings))}
    got = {}
    while not bat.done:
        for rid, tokens, _ in bat.step():
            got[ids[rid]] = tokens
    return [got[i] for i in range(len(prompts))]


def test_mixed_requests_in_one_batch(device):
    """12 prompts over 3 rows (rows taken over as completions end), each with the settings of SETTINGS in turn."""
    model = builtin_model(str(device))
    rng = random.Random(5)
    V = model.config.vocab_size
    prompts = [[rng.randrange(3, V) for _ in range(rng.randint(1, 20))] for _ in range(12)]
    budgets = [rng.randint(4, 14) for _ in prompts]
    settings = [SETTINGS[i % len(SETTINGS)] for i in range(len(prompts))]
    for i, s in enumerate(settings):    # (repetition-penalty prompts hold tokens the model then gives: their penalty
        while s and "repetition_penalty" in s and not set(_alone(model, prompts[i], budgets[i])) & set(prompts[i]):
            prompts[i] = [rng.randrange(3, V) for _ in range(rng.randint(10, 30))]               # counts)
    got = _run(model, prompts, budgets, settings)
    for i, (p, b, s) in enumerate(zip(prompts, budgets, settings)):
        if s is None or s.get("top_k") == 1:
            assert got[i] == _alone(model, p, b), i
        elif "repetition_penalty" in s:
            assert got[i] == _alone(model, p, b, repetition_penalty=1.6), i
            assert got[i] != _alone(model, p, b), i            # (the penalty changes this completion)
        elif "presence_penalty" in s:
            assert got[i] == _alone_openai_penalties(model, p, b, 1.2, 0.9), i
        else:
            assert len(got[i]) == b and all(0 <= t < V for t in got[i])
    assert got == _run(model, prompts, budgets, settings)           # (sampling repeats for the seed)
    sampled = [i for i, s in enumerate(settings) if s and "top_p" in s]
    other = _run(model, prompts, budgets, settings, seed=1)
    assert [got[i] for i in sampled] != [other[i] for i in sampled]


def test_settings_refused_by_name():
    from jamba_ext import ops, row_sampling
    assert row_sampling.FIELDS == ops.SAMPLE_PARAMS          # (a Sampling is a row of the kernel's params)
    assert check({}) == Sampling()
    assert check({"top_p": 0.5, "temperature": None}, Sampling(0.7)) == Sampling(0.7, 0, 0.5)
    for bad, msg in (({"temperature": -0.1}, "temperature"), ({"temperature": True}, "temperature"),
                     ({"top_k": 1.5}, "top_k"), ({"top_p": 0}, "top_p"), ({"min_p": 1.5}, "min_p"),
                     ({"repetition_penalty": 0}, "repetition_penalty"), ({"presence_penalty": 2.5}, "presence_penalty"),
                     ({"frequency_penalty": "1"}, "frequency_penalty"), ({"seed": 1}, "not seed")):
        with pytest.raises(ValueError, match=msg):
            check(bad)
    bat = C.ContinuousBatcher(builtin_model(), 2, 8, 4)
    with pytest.raises(ValueError, match="top_p: expected a number in"):
        bat.add([5, 6], sampling={"top_p": 2})
    assert bat.done
    # in range as Python numbers, out of it in the kernel's float32 params (inf / 0 there: the decode step of every
    # running row failed); still-finite large values are taken
    for bad in ({"temperature": 1e39}, {"temperature": 10 ** 5000}, {"top_p": 1e-46}, {"repetition_penalty": 1e-46},
                {"repetition_penalty": 1e39}, {"top_k": 10 ** 39}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}: .*read as float32 by the sampler"):
            check(bad)
        with pytest.raises(ValueError, match="float32"):
            bat.add([5, 6], sampling=bad)
    assert bat.done
    assert check({"temperature": 3e38, "top_k": 10 ** 30}) == Sampling(3e38, 10 ** 30)


def test_logprobs_of_each_completion(device):
    """logprobs: for each completion token, its log-probability and the k most likely tokens' under the model's own
    distribution (log_softmax of a whole-sequence forward at that position, float64 compare), for the prompts that
    ask (k = 0 / 3 / 5; the last one sampled), beside a sampled prompt that does not ask, with an EOS id that cuts a
    completion short."""
    model = builtin_model(str(device))
    rng = random.Random(9)
    V = model.config.vocab_size
    prompts = [[rng.randrange(3, V) for _ in range(rng.randint(2, 12))] for _ in range(6)]
    eos = _alone(model, prompts[2], 3)[2]              # (prompt 2 stops at its third token)
    bat = C.ContinuousBatcher(model, 2, 12, 8, 0, eos_token_id=eos)
    asks = [3, None, 3, 0, None, 5]
    ids = {bat.add(p, 8, sampling={"temperature": 1.2} if i in (4, 5) else None, logprobs=k): i
           for i, (p, k) in enumerate(zip(prompts, asks))}
    got, lps = {}, {}
    while not bat.done:
        for rid, tokens, _ in bat.step():
            got[ids[rid]] = tokens
            if rid in bat.logprobs:
                lps[ids[rid]] = bat.logprobs.pop(rid)
    assert sorted(lps) == [0, 2, 3, 5] and not bat.logprobs and len(got[2]) == 2
    for i in lps:
        assert len(lps[i]) == len(got[i])
        seq = prompts[i] + got[i]
        with torch.inference_mode():
            ref = torch.log_softmax(model(torch.tensor([seq], device=device)).logits[0].double(), -1).cpu()
        for j, (lp, top) in enumerate(lps[i]):
            row = ref[len(prompts[i]) - 1 + j]
            assert abs(lp - row[got[i][j]].item()) < 1e-4, (i, j)
            want = torch.topk(row, asks[i])
            assert [t for t, _ in top] == want.indices.tolist(), (i, j)
            assert all(abs(v - w) < 1e-4 for (_, v), w in zip(top, want.values.tolist()))
    with pytest.raises(ValueError, match="logprobs: expected an int in"):
        bat.add([5, 6], 2, logprobs=21)
