"""jamba_ext.row_sampling, and each request's own sampling settings in a ContinuousBatcher (what a server's requests
bring). Each row's filtered scores equal JambaForCausalLM._warp with that row's settings alone; the penalties equal
a float64 computation; draws follow the softmax; in one batch of mixed settings, greedy rows give the prompt's own
generate(), a repetition penalty gives generate()'s with it, presence and frequency penalties a float64 step-by-step
reference, top_k = 1 the greedy tokens; sampling repeats for a seed; bad settings are refused by name."""
import random

import pytest
import torch

import jamba_ext.continuous as C
from conftest import builtin_model
from jamba_ext.modeling_jamba import JambaForCausalLM
from jamba_ext.row_sampling import RowSampler, Sampling, check

ROWS = [Sampling(0.7, 5), Sampling(1.3, 0, 0.9), Sampling(1.0, 0, 1.0, 0.05), Sampling(0.5, 40, 0.8, 0.02),
        Sampling(0.0, 7, 0.5, 0.3), Sampling(1.0), Sampling(2.0, 600, 0.97)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_scores_match_warp_row_by_row(device, dtype):
    """Rows of different temperature / top_k / top_p / min_p filtered in one pass: each row as _warp gives it alone
    (greedy rows: no filter); every sampled row's kept set is its own (a shared k or p would change it)."""
    V = 513
    logits = (torch.randn(len(ROWS), V, dtype=torch.float64) * 3).to(device, dtype)
    s = RowSampler(ROWS, device).scores(logits)
    kept = []
    for r, st in enumerate(ROWS):
        if st.temperature == 0:
            assert torch.isfinite(s[r]).all()
            continue
        want = JambaForCausalLM._warp(logits[r:r + 1], True, st.temperature, st.top_k, st.top_p, st.min_p or None)[0]
        assert torch.equal(torch.isfinite(s[r]), torch.isfinite(want)), r
        fin = torch.isfinite(want)
        # (CUDA divides by a scalar as a product with its reciprocal, by a tensor exactly: 1 ulp apart)
        torch.testing.assert_close(s[r][fin], want[fin], rtol=2.5e-7, atol=0)
        kept.append(int(fin.sum()))
    assert kept[0] == 5 and len(set(kept)) == len(kept) and sorted(kept)[-2] < V == kept[4]   # (row 5: no filter)


def test_penalties_against_float64(device):
    R, V = 5, 97
    rows = [Sampling(repetition_penalty=1.5), Sampling(presence_penalty=0.7), Sampling(frequency_penalty=-1.2),
            Sampling(repetition_penalty=0.8, presence_penalty=-0.5, frequency_penalty=2.0), Sampling()]
    logits = torch.randn(R, V, dtype=torch.float64) * 4
    seen = torch.rand(R, V) < 0.3
    counts = torch.randint(0, 4, (R, V), dtype=torch.int32) * (torch.rand(R, V) < 0.4)
    got = RowSampler(rows, device).penalize(logits.to(device, torch.float32), seen.to(device), counts.to(device))
    want = torch.empty_like(logits)
    for r, st in enumerate(rows):
        x = logits[r]
        x = torch.where(seen[r], torch.where(x < 0, x * st.repetition_penalty, x / st.repetition_penalty), x)
        c = counts[r].double()
        want[r] = x - st.frequency_penalty * c - st.presence_penalty * (c > 0).double()
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-6, atol=1e-5)
    assert not torch.equal(got.cpu().double(), logits.float().double())


def test_pick_follows_each_rows_distribution(device):
    """4000 rows of one set of 4 logits: greedy rows give the argmax, top_k = 1 rows too, and the sampled rows' draws
    follow softmax(logits / temperature) (each count within 5 sigma)."""
    logits = torch.tensor([1.0, 0.2, -0.5, 1.4])
    n = 4000
    rows = [Sampling(0.8)] * (n - 2) + [Sampling(0.0), Sampling(1.0, 1)]
    g = torch.Generator(device=device)
    g.manual_seed(3)
    got = RowSampler(rows, device).pick(logits.to(device).expand(n, 4).contiguous(), g).cpu()
    assert got[-2] == 3 and got[-1] == 3
    p = torch.softmax(logits / 0.8, -1)
    count = torch.bincount(got[:-2], minlength=4).double()
    sigma = (p * (1 - p) * (n - 2)).sqrt()
    assert ((count - p * (n - 2)).abs() < 5 * sigma).all(), (count, p * (n - 2))


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
