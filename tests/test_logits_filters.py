"""generate()'s score filters of jamba_ext.logits_filters against transformers: no_repeat_ngram_size (greedy, sampled,
beam search), typical_p, epsilon_cutoff, eta_cutoff and top_h (sampling), prefix_allowed_tokens_fn, and the processors
of transformers' other generate arguments.

Oracle: transformers' logits processors on the same random scores (rows with -inf entries, ties, a peaked row, every
parameter range), the same filtered entries and values; then whole generate() calls against transformers' generate on
the same weights (sequences, and the scores of every greedy / beam step and of the first sampled step).
"""
import pytest
import torch

from conftest import import_transformers
from test_model import CONFIGS, FP32_REL, _same_scores, make_pair, prompt_ids, rel_err
from jamba_ext import logits_filters as F

transformers = import_transformers()
lp = pytest.importorskip("transformers.generation.logits_process")


def _scores(R=6, V=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(R, V, generator=g) * 3
    s[1, :40] = float("-inf")                    # a row with filtered entries already
    s[2] = s[2].round()                          # ties
    s[3, 5] = 30.0                               # one token nearly certain
    return s


def _same(a, b):
    return torch.equal(torch.isinf(a), torch.isinf(b)) and torch.equal(a[torch.isfinite(a)], b[torch.isfinite(b)])


@pytest.mark.parametrize("mass", [0.05, 0.3, 0.9, 0.99])
def test_typical_matches_transformers(mass):
    for seed in range(3):
        s = _scores(seed=seed)
        assert _same(F.typical(s, mass), lp.TypicalLogitsWarper(mass)(None, s.clone()))
    assert torch.isfinite(F.typical(s, 0.05)).sum(-1).min() >= 1


@pytest.mark.parametrize("eps", [1e-4, 3e-3, 0.02, 0.3])
def test_epsilon_and_eta_match_transformers(eps):
    for seed in range(3):
        s = _scores(seed=seed)
        assert _same(F.epsilon_cut(s, eps), lp.EpsilonLogitsWarper(eps)(None, s.clone()))
        assert _same(F.eta_cut(s, eps), lp.EtaLogitsWarper(eps)(None, s.clone()))
    assert (torch.isinf(F.epsilon_cut(s, 0.3)).sum(-1) > torch.isinf(s).sum(-1)).all()   # (it did filter)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_ban_repeated_ngrams_matches_transformers(n):
    g = torch.Generator().manual_seed(n)
    banned = 0
    for S in (n - 1, n, 12, 40):
        seqs = torch.randint(0, 6 if n < 4 else 2, (5, S), generator=g)   # a small alphabet: repeated n-grams
        s = torch.randn(5, 9, generator=g)
        want = lp.NoRepeatNGramLogitsProcessor(n)(seqs, s.clone())
        assert _same(F.ban_repeated_ngrams(seqs, s, n), want), (n, S)
        banned += int(torch.isinf(want).sum())
    assert banned


@pytest.mark.parametrize("penalty", [0.7, 1.5])
def test_penalize_matches_transformers(penalty):
    """penalize(seen_tokens): transformers' RepetitionPenaltyLogitsProcessor on scores of both signs (a seen token's
    negative score multiplied by the penalty, a positive one divided)."""
    g = torch.Generator().manual_seed(4)
    for seed in range(3):
        s = _scores(seed=seed)
        seqs = torch.randint(0, 97, (6, 12), generator=g)
        seen = F.seen_tokens(seqs, 97)
        want = lp.RepetitionPenaltyLogitsProcessor(penalty)(seqs, s.clone())
        assert _same(F.penalize(s, seen, penalty), want)
        assert (seen & (s < 0)).any() and (seen & (s > 0)).any()


def _kw_same(got, want, T, steps=None):
    assert got.sequences.tolist() == want.sequences.tolist()
    for a, b in list(zip(got.scores, want.scores))[:steps]:
        assert _same_scores(a, b)


@pytest.mark.parametrize("n", [2, 3])
def test_generate_no_repeat_ngram_matches_transformers(n):
    """Greedy and beam search with no_repeat_ngram_size: transformers' sequences and scores; without it the same
    prompts do repeat an n-gram (so the ban acted: the first weight seed of 0-9 whose free run repeats one is taken, as
    transformers' random initialisation differs between releases)."""
    ids = prompt_ids(2, 6, 101, seed=5)
    out = dict(return_dict_in_generate=True, output_scores=True, eos_token_id=None, pad_token_id=0)
    mask = torch.ones_like(ids)

    def repeats(seq):
        grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
        return len(grams) != len(set(grams))

    with torch.no_grad():
        for seed in range(10):
            hf, ours = make_pair(CONFIGS["attn1_moe_top2"], seed=seed)
            free = ours.generate(ids, max_new_tokens=30, eos_token_id=None)
            if any(repeats(r) for r in free.tolist()):
                break
        assert any(repeats(r) for r in free.tolist())
        for kw in (dict(), dict(num_beams=3, num_return_sequences=2)):
            got = ours.generate(ids, max_new_tokens=30, no_repeat_ngram_size=n, **kw, **out)
            want = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=30, no_repeat_ngram_size=n,
                               **kw, **out)
            _kw_same(got, want, 6)
            assert not any(repeats(r) for r in got.sequences.tolist())
            if kw:
                assert rel_err(got.sequences_scores, want.sequences_scores) <= FP32_REL


@pytest.mark.parametrize("kw", [dict(typical_p=0.4), dict(epsilon_cutoff=0.02), dict(eta_cutoff=0.01),
                                dict(typical_p=0.8, epsilon_cutoff=0.005, no_repeat_ngram_size=2),
                                dict(top_p=0.7, renormalize_logits=True)])
def test_generate_sampling_filters_match_transformers(kw):
    """The first sampled step's scores after temperature / top_k and these filters, as transformers' (both runs have
    the same prefix there); the filters do drop tokens top_k alone keeps."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 9, 101)
    samp = dict(do_sample=True, temperature=0.8, top_k=50, max_new_tokens=3, return_dict_in_generate=True,
                output_scores=True)
    with torch.no_grad():
        got = ours.generate(ids, seed=1, **kw, **samp)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), **kw, **samp)
        base = ours.generate(ids, seed=1, **samp)
    assert _same_scores(got.scores[0], want.scores[0])
    assert (torch.isfinite(got.scores[0]).sum(-1) < torch.isfinite(base.scores[0]).sum(-1)).any()


def test_generate_filter_arguments_checked():
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(1, 5, 101)
    for kw, msg in ((dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"), (dict(no_repeat_ngram_size=2.5),
                    "no_repeat_ngram_size"), (dict(typical_p=0.0), "typical_p"), (dict(typical_p=1.5), "typical_p"),
                    (dict(epsilon_cutoff=1.0), "epsilon_cutoff"), (dict(eta_cutoff=-0.1), "eta_cutoff")):
        with pytest.raises(ValueError, match=msg):
            ours.generate(ids, max_new_tokens=2, do_sample=True, **kw)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_filters_in_graph_decode():
    """On the GPU, from a captured decode step: no_repeat_ngram_size (greedy and beams) gives the eager static
    decode's tokens, and the fp32 CPU run's."""
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 6, 101, seed=5)
    with torch.no_grad():
        for kw in (dict(), dict(num_beams=3)):
            cpu = ours.generate(ids, max_new_tokens=24, eos_token_id=None, no_repeat_ngram_size=2, **kw)
            m = ours.to("cuda")
            graph = m.generate(ids.cuda(), max_new_tokens=24, eos_token_id=None, no_repeat_ngram_size=2,
                               cuda_graph=True, **kw)
            eager = m.generate(ids.cuda(), max_new_tokens=24, eos_token_id=None, no_repeat_ngram_size=2,
                               cuda_graph=False, static_cache=True, **kw)
            assert graph.tolist() == eager.tolist() == cpu.tolist(), kw
            ours = m.to("cpu")


def _hf_skips_left_padding() -> bool:
    """Whether the installed transformers' repetition penalty skips the prompts' left padding (5.24 on)."""
    import inspect
    src = inspect.getsource(transformers.GenerationMixin._get_logits_processor)
    return "prompt_ignore_length" in src


@pytest.mark.parametrize("beams", [1, 3])
def test_repetition_penalty_skips_left_padding(beams):
    """repetition_penalty does not count a prompt's left padding (transformers 5.24's prompt_ignore_length): with the
    pad id chosen as the token the short prompt's continuation picks first, counting the padding would change that
    pick (the first step's scores show the pad id unpenalised, a prompt token penalised). Against transformers where
    it skips the padding too."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    short, long_ = prompt_ids(1, 5, 101, seed=7)[0].tolist(), prompt_ids(1, 9, 101, seed=8)[0].tolist()
    with torch.no_grad():
        first = int(ours.generate([short], max_new_tokens=1, eos_token_id=None)[0, -1])
        assert first not in short
        pad = first
        ids, mask = ours._left_pad([long_, short], pad, torch.device("cpu"))
        kw = dict(max_new_tokens=6, repetition_penalty=4.0, eos_token_id=None, pad_token_id=pad, num_beams=beams)
        out = ours.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True,
                            output_logits=True, **kw)
        got = out.sequences
        if beams == 1:                                 # the padding did not count against the pad token (greedy: the
            assert int(got[1, 9]) == first             # pick before is kept; a beam's best first token may differ)
        raw = out.logits[0] if beams == 1 else torch.log_softmax(out.logits[0], dim=-1)
        row = 1 * beams                                # (the short prompt's first row)
        assert out.scores[0][row, pad] == raw[row, pad]               # not penalised
        t = short[0]                                                  # a prompt token: penalised
        assert out.scores[0][row, t] == (raw[row, t] * 4.0 if raw[row, t] < 0 else raw[row, t] / 4.0)
        if _hf_skips_left_padding():
            want = hf.generate(ids, attention_mask=mask, do_sample=False, **kw)
            assert got.tolist() == want.tolist()


def _hf_case_args(free, T):
    """Processor arguments built from an unfiltered greedy run (free: (B, T + n) tokens), so each one acts."""
    a, b = free[0, T:].tolist(), free[1, T:].tolist()
    return {
        "bad_words": dict(bad_words_ids=[[a[0]], [a[1], a[2]], [b[3]]]),
        "bad_words_eos": dict(bad_words_ids=[[a[1]], [b[0]]], eos_token_id=b[0]),     # ([EOS] stays allowed)
        "suppress": dict(suppress_tokens=[a[1], b[1]], begin_suppress_tokens=[a[0]]),
        "bias": dict(sequence_bias=[[[a[4]], 6.0], [[a[0], b[2]], 9.0], [[b[0]], -3.0]]),
        "min_length": dict(min_length=T + 5, eos_token_id=[a[1], b[2]]),
        "forced_eos": dict(forced_eos_token_id=a[3], eos_token_id=a[3]),
        "renormalize": dict(renormalize_logits=True, repetition_penalty=1.4),
        "decay": dict(exponential_decay_length_penalty=(2, 1.6), eos_token_id=[a[6], b[7], a[6]]),
        "invalid": dict(remove_invalid_values=True, bad_words_ids=[[a[0]], [b[1]]]),
    }


@pytest.mark.parametrize("case", ["bad_words", "bad_words_eos", "suppress", "bias", "min_length", "forced_eos",
                                  "renormalize", "decay", "invalid"])
@pytest.mark.parametrize("beams", [1, 3])
def test_generate_processor_arguments_match_transformers(case, beams):
    """sequence_bias, bad_words_ids (an EOS-only bad word stays allowed), suppress_tokens, begin_suppress_tokens,
    min_length, forced_eos_token_id and renormalize_logits: transformers' sequences and per-step scores, greedy and
    beam search; each changes the unfiltered tokens."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 7, 101, seed=11)
    with torch.no_grad():
        free = ours.generate(ids, max_new_tokens=10, eos_token_id=None)
        kw = dict(dict(eos_token_id=None), **_hf_case_args(free, 7)[case])
        if hasattr(transformers.GenerationConfig(), "sequence_bias") is False and case == "bias":
            pytest.skip("this transformers has no sequence_bias")
        out = dict(max_new_tokens=10, num_beams=beams, return_dict_in_generate=True, output_scores=True,
                   pad_token_id=0)
        if beams > 1:
            out["num_return_sequences"] = 2
        got = ours.generate(ids, **kw, **out)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **kw, **out)
    assert got.sequences.tolist() == want.sequences.tolist()
    assert len(got.scores) == len(want.scores)
    for a, b in zip(got.scores, want.scores):   # (-inf at the same places; a forced step's finite scores are all 0)
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        assert torch.allclose(a[torch.isfinite(a)], b[torch.isfinite(b)], rtol=FP32_REL, atol=1e-5)
    if beams == 1 and case not in ("renormalize", "invalid"):   # (those change the scores, not the picks)
        assert got.sequences.tolist() != free.tolist()
    if case == "bad_words_eos" and beams == 1:        # row 1 ends at once, at the EOS that was a bad word
        assert int(got.sequences[1, 7]) == int(free[1, 7])
    if case == "invalid":                               # bad words at the lowest float, not -inf
        assert not torch.isinf(got.scores[0]).any() and (got.scores[0] == torch.finfo(torch.float32).min).any()
    if case == "renormalize":
        assert torch.allclose(got.scores[0].exp().sum(-1), torch.ones(2 * beams), atol=1e-5)


def test_generate_processor_arguments_checked():
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(1, 5, 101)
    for kw, msg in ((dict(bad_words_ids=[]), "bad_words_ids"), (dict(bad_words_ids=[[3, 500]]), "bad_words_ids"),
                    (dict(bad_words_ids=[3]), "bad_words_ids"), (dict(suppress_tokens=[101]), "suppress_tokens"),
                    (dict(begin_suppress_tokens="a"), "begin_suppress_tokens"),
                    (dict(forced_eos_token_id=-1), "forced_eos_token_id"), (dict(sequence_bias=[[[], 1.0]]),
                    "sequence_bias"), (dict(min_length=-2), "min_length"),
                    (dict(exponential_decay_length_penalty=(2,)), "exponential_decay_length_penalty"),
                    (dict(exponential_decay_length_penalty=(2, 1.5), eos_token_id=None), "needs EOS ids"),
                    (dict(forced_bos_token_id=1000), "forced_bos_token_id")):
        with pytest.raises(ValueError, match=msg):
            ours.generate(ids, max_new_tokens=2, **kw)


def test_forced_bos_and_begin_suppress_on_a_one_token_prompt():
    """forced_bos_token_id forces the first new token of a one-token prompt; begin_suppress_tokens then act at the
    second (transformers' begin index); the same tokens and scores as transformers."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = torch.tensor([[17], [23]])
    with torch.no_grad():
        free = ours.generate(ids, max_new_tokens=3, eos_token_id=None)
        kw = dict(max_new_tokens=3, eos_token_id=None, forced_bos_token_id=9, begin_suppress_tokens=[int(free[0, 2])],
                  return_dict_in_generate=True, output_scores=True, pad_token_id=0)
        got = ours.generate(ids, **kw)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **kw)
    assert got.sequences.tolist() == want.sequences.tolist() and (got.sequences[:, 1] == 9).all()
    for a, b in zip(got.scores, want.scores):
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        assert torch.allclose(a[torch.isfinite(a)], b[torch.isfinite(b)], rtol=FP32_REL, atol=1e-5)
    assert torch.isinf(got.scores[1][0, int(free[0, 2])])
    # a longer prompt: no step is the first of the sequence, so forced_bos_token_id changes nothing (transformers too)
    ids5 = prompt_ids(2, 5, 101)
    with torch.no_grad():
        plain = ours.generate(ids5, max_new_tokens=3, eos_token_id=None)
        forced = ours.generate(ids5, max_new_tokens=3, eos_token_id=None, forced_bos_token_id=9)
        hf5 = hf.generate(ids5, attention_mask=torch.ones_like(ids5), do_sample=False, max_new_tokens=3,
                          eos_token_id=None, forced_bos_token_id=9, pad_token_id=0)
    assert forced.tolist() == plain.tolist() == hf5.tolist() and not (plain[:, 5] == 9).all()


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_sampling_filters_keep_tokens_as_transformers(keep):
    """Beam sampling keeps at least `keep` tokens through every sampling filter (transformers' min_tokens_to_keep):
    JambaForCausalLM._warp(keep=...) against transformers' warpers, on rows where one token is nearly certain (so the
    floor decides what stays)."""
    from jamba_ext.modeling_jamba import JambaForCausalLM
    warp = JambaForCausalLM._warp
    s = _scores(seed=keep)
    s[0, 7], s[4, 2] = 40.0, 25.0
    cases = [(dict(top_k=1), lp.TopKLogitsWarper(1, min_tokens_to_keep=keep)),
             (dict(top_p=0.3), lp.TopPLogitsWarper(0.3, min_tokens_to_keep=keep)),
             (dict(min_p=0.5), lp.MinPLogitsWarper(0.5, min_tokens_to_keep=keep)),
             (dict(typical_p=0.2), lp.TypicalLogitsWarper(0.2, min_tokens_to_keep=keep)),
             (dict(epsilon_cutoff=0.05), lp.EpsilonLogitsWarper(0.05, min_tokens_to_keep=keep)),
             (dict(eta_cutoff=0.05), lp.EtaLogitsWarper(0.05, min_tokens_to_keep=keep))]
    import inspect
    if "topk" not in inspect.getsource(lp.MinPLogitsWarper.__call__):   # (releases before 5.x order tied scores by
        cases = [c for c in cases if "min_p" not in c[0]]               # argsort: another tied token may stay)
    for kw, theirs in cases:
        args = dict(dict(top_k=0, top_p=1.0), **kw)
        ours = warp(s, True, 1.0, args.pop("top_k"), args.pop("top_p"), keep=keep, **args)
        assert _same(ours, theirs(None, s.clone())), kw
        assert (torch.isfinite(ours).sum(-1) >= keep).all() and torch.isfinite(ours[0]).sum() == keep, kw


@pytest.mark.parametrize("h", [0.05, 0.3, 0.6, 1.0])
def test_top_h_matches_transformers(h):
    """top_h against transformers' TopHLogitsWarper (release 5.x with top-H): the same kept tokens and values, on rows
    with -inf entries among the top 100 (their NaN running sums), ties and a peaked row, and at V > 100."""
    if not hasattr(lp, "TopHLogitsWarper"):
        pytest.skip("this transformers has no TopHLogitsWarper")
    dropped = 0
    for seed, V in ((0, 97), (1, 97), (2, 300)):
        s = _scores(V=V, seed=seed)
        got = F.top_h(s, h)
        assert _same(got, lp.TopHLogitsWarper(top_h=h)(None, s.clone())), (seed, V)
        assert torch.isfinite(got).sum(-1).min() >= 1
        dropped += int((torch.isinf(got) & torch.isfinite(s)).sum())
    assert dropped                                          # (it filtered)


def test_generate_top_h_matches_transformers():
    """generate(do_sample=True, top_h=...): the first sampled step's scores as transformers' (greedy prefix equal), with
    and without top_k after it, and in beam sampling (transformers gives top_h no min_tokens_to_keep)."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    if not hasattr(transformers.GenerationConfig(), "top_h"):
        pytest.skip("this transformers has no top_h")
    ids = prompt_ids(2, 9, 101)
    samp = dict(do_sample=True, temperature=0.7, max_new_tokens=3, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        for kw in (dict(top_h=0.4, top_k=0), dict(top_h=0.3, top_k=20), dict(top_h=0.5, top_k=0, num_beams=2)):
            got = ours.generate(ids, seed=1, **kw, **samp)
            want = hf.generate(ids, attention_mask=torch.ones_like(ids), **kw, **samp)
            base = ours.generate(ids, seed=1, **dict(kw, top_h=None), **samp)
            assert _same_scores(got.scores[0], want.scores[0]), kw
            assert (torch.isfinite(got.scores[0]).sum(-1) < torch.isfinite(base.scores[0]).sum(-1)).all(), kw
    for bad in (0.0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="top_h"):
            ours.generate(ids, max_new_tokens=2, do_sample=True, top_h=bad)


def _prefix_fn(a, b):
    """An entity rule for two prompts: after token a[0] comes a[1]; batch 1 never takes b[0] or b[1]... (every id < 101)."""
    everything = list(range(101))

    def fn(batch_id, input_ids):
        assert input_ids.dim() == 1
        last = int(input_ids[-1])
        if last == a[0]:
            return [a[1]]
        if batch_id == 1:
            return [t for t in everything if t not in (b[0], b[1])]
        return [a[0], a[2], a[3], b[2]]                     # batch 0: a small vocabulary
    return fn


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_prefix_allowed_tokens_fn_matches_transformers(beams):
    """prefix_allowed_tokens_fn: transformers' sequences and per-step scores, greedy and beam search (3 beams, 2 returned,
    batch ids per prompt); the rule is seen in the output (batch 0 draws only from its tokens, a[0] is followed by a[1])."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 7, 101, seed=11)
    with torch.no_grad():
        free = ours.generate(ids, max_new_tokens=10, eos_token_id=None)
        a, b = free[0, 7:].tolist(), free[1, 7:].tolist()
        fn = _prefix_fn(a, b)
        out = dict(max_new_tokens=10, num_beams=beams, return_dict_in_generate=True, output_scores=True,
                   pad_token_id=0, eos_token_id=None)
        if beams > 1:
            out["num_return_sequences"] = 2
        got = ours.generate(ids, prefix_allowed_tokens_fn=fn, **out)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, prefix_allowed_tokens_fn=fn,
                           **out)
    assert got.sequences.tolist() == want.sequences.tolist()
    assert len(got.scores) == len(want.scores)
    for x, y in zip(got.scores, want.scores):
        assert torch.equal(torch.isinf(x), torch.isinf(y))
        assert torch.allclose(x[torch.isfinite(x)], y[torch.isfinite(y)], rtol=FP32_REL, atol=1e-5)
    rows0 = got.sequences[: (2 if beams > 1 else 1), 7:]
    assert set(rows0.flatten().tolist()) <= {a[0], a[1], a[2], a[3], b[2]}
    for r in got.sequences[:, 7:].tolist():
        assert all(r[j + 1] == a[1] for j in range(len(r) - 1) if r[j] == a[0])
    assert got.sequences.tolist() != [r for r in free.tolist() for _ in range(2 if beams > 1 else 1)]


def test_generate_prefix_allowed_tokens_fn_unsatisfiable_and_checked():
    """Where every allowed token of a prompt's rows is already at -inf (here banned by bad_words_ids) the rows take the
    allowed tokens at score 0, as transformers; sampling with 2 return sequences groups rows per prompt (batch id r // 2,
    transformers 5.24's grouping); an empty list, ids out of range or a non-callable raise ValueError."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 6, 101, seed=3)
    seen = []

    def fn(batch_id, input_ids):
        seen.append(batch_id)
        return [5, 6] if batch_id == 0 else list(range(101))
    kw = dict(max_new_tokens=3, return_dict_in_generate=True, output_scores=True, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        got = ours.generate(ids, prefix_allowed_tokens_fn=fn, bad_words_ids=[[5], [6]], **kw)
        assert got.scores[0][0, 5] == 0 and got.scores[0][0, 6] == 0 and torch.isinf(got.scores[0][0]).sum() == 99
        import inspect
        if "isneginf" in inspect.getsource(lp.PrefixConstrainedLogitsProcessor.__call__):  # (5.24; earlier releases
            want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,  # leave such rows at -inf)
                               prefix_allowed_tokens_fn=fn, bad_words_ids=[[5], [6]], **kw)
            assert got.sequences.tolist() == want.sequences.tolist()
            assert _same_scores(got.scores[0], want.scores[0])
        seen.clear()
        samp = dict(do_sample=True, top_k=0, num_return_sequences=2, max_new_tokens=2, return_dict_in_generate=True,
                    output_scores=True)
        g2 = ours.generate(ids, seed=2, prefix_allowed_tokens_fn=fn, **samp)
        assert seen[:4] == [0, 0, 1, 1]
        assert torch.isfinite(g2.scores[0][:2]).sum(-1).tolist() == [2, 2] and torch.isfinite(g2.scores[0][2:]).all()
        if tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (5, 24):   # (its row grouping)
            w2 = hf.generate(ids, attention_mask=torch.ones_like(ids), prefix_allowed_tokens_fn=fn, **samp)
            assert _same_scores(g2.scores[0], w2.scores[0])
    for bad, msg in ((lambda b, x: [], "no token"), (lambda b, x: [3, 101], "outside"), (5, "callable")):
        with pytest.raises(ValueError, match=msg):
            ours.generate(ids, max_new_tokens=2, prefix_allowed_tokens_fn=bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_prefix_allowed_tokens_and_top_h_in_graph_decode():
    """On the GPU, from a captured decode step: prefix_allowed_tokens_fn (greedy and 3 beams; the function gets rows
    on the GPU) gives the eager static decode's tokens and the fp32 CPU run's; top_h sampling gives the eager tokens
    with the same seed."""
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 6, 101, seed=5)
    devs = set()
    with torch.no_grad():
        free = ours.generate(ids, max_new_tokens=20, eos_token_id=None)
        a, b = free[0, 6:].tolist(), free[1, 6:].tolist()
        inner = _prefix_fn(a, b)

        def fn(batch_id, input_ids):
            devs.add(input_ids.device.type)
            return inner(batch_id, input_ids)
        for kw in (dict(), dict(num_beams=3)):
            base = dict(max_new_tokens=20, eos_token_id=None, prefix_allowed_tokens_fn=fn, **kw)
            cpu = ours.generate(ids, **base)
            m = ours.to("cuda")
            graph = m.generate(ids.cuda(), cuda_graph=True, **base)
            eager = m.generate(ids.cuda(), cuda_graph=False, static_cache=True, **base)
            assert graph.tolist() == eager.tolist() == cpu.tolist(), kw
            assert graph.tolist() != free.tolist()
            ours = m.to("cpu")
        assert devs == {"cpu", "cuda"}
        m = ours.to("cuda")
        samp = dict(max_new_tokens=20, do_sample=True, top_h=0.4, seed=7, eos_token_id=None)
        graph = m.generate(ids.cuda(), cuda_graph=True, **samp)
        eager = m.generate(ids.cuda(), cuda_graph=False, static_cache=True, **samp)
        assert graph.tolist() == eager.tolist()
        ours = m.to("cpu")


def test_generate_prefix_allowed_tokens_fn_left_padded_matches_transformers():
    """prefix_allowed_tokens_fn on left-padded prompts (the function sees the padding, as in transformers), greedy and
    2 beams: transformers' sequences and scores."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 7, 101, seed=13)
    ids[0, :3] = 0
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    lens = []

    def fn(batch_id, input_ids):
        lens.append(int((input_ids == 0).sum()))
        return [t for t in range(3, 101) if (t + batch_id + int(input_ids[-1])) % 3]
    with torch.no_grad():
        for beams in (1, 2):
            kw = dict(max_new_tokens=6, num_beams=beams, return_dict_in_generate=True, output_scores=True,
                      pad_token_id=0, eos_token_id=None, prefix_allowed_tokens_fn=fn)
            got = ours.generate(ids, attention_mask=mask, **kw)
            want = hf.generate(ids, attention_mask=mask, do_sample=False, **kw)
            assert got.sequences.tolist() == want.sequences.tolist(), beams
            for x, y in zip(got.scores, want.scores):
                assert torch.equal(torch.isinf(x), torch.isinf(y))
                assert torch.allclose(x[torch.isfinite(x)], y[torch.isfinite(y)], rtol=FP32_REL, atol=1e-5)
    assert max(lens) >= 3                                   # (the padded row's pads were passed)


def test_sequence_bias_repeated_sequence_last_wins_as_transformers():
    """sequence_bias as a list naming one sequence twice: the last bias counts, for a multi-token sequence as for a
    single token (transformers turns the list into a dict), not the sum of the two."""
    g = torch.Generator().manual_seed(9)
    s = torch.randn(3, 10, generator=g)
    seqs = torch.tensor([[1, 5, 2], [4, 1, 2], [4, 2, 1]])
    spec = [[[2, 3], 1.0], [[3], -2.0], [[2, 3], 4.0], [[3], 0.5], [[1, 2, 4], 2.0], [[1, 2, 4], -1.5]]
    got = F.StepFilters(10, "cpu", 3, 8, [], sequence_bias=spec)(s.clone(), seqs, 0)
    want = lp.SequenceBiasLogitsProcessor(spec)(seqs, s.clone())
    assert _same(got, want)
    assert got[0, 3] == s[0, 3] + 4.0 + 0.5 and got[1, 4] == s[1, 4] - 1.5


def test_sequence_bias_bad_words_and_prefix_fn_errors_name_the_argument():
    """A malformed sequence_bias (an entry that is not [token ids, bias], a dict key that is not a tuple of ids, a bias
    that is not a number) or a prefix_allowed_tokens_fn that returns a bare id raises a ValueError naming the argument
    (not a TypeError from inside); numpy integer ids are taken, as transformers takes them."""
    import numpy as np
    for bad in ([[5, -1.0]], [[[5], "x"]], [[[5], 1.0, 2.0]], {(5,): None}, [[5]], 3, "ab", {5: 1.0}, [[[5], True]]):
        with pytest.raises(ValueError, match="sequence_bias"):
            F.StepFilters(10, "cpu", 3, 8, [], sequence_bias=bad)
    s, seqs = torch.randn(2, 10), torch.tensor([[1, 2, 3], [3, 5, 1]])
    for ret in (5, torch.tensor(5), object()):
        with pytest.raises(ValueError, match="prefix_allowed_tokens_fn"):
            F.prefix_constrain(s, seqs, lambda b, x, ret=ret: ret, 1)
    i64 = np.int64
    plain = F.StepFilters(10, "cpu", 3, 8, [], sequence_bias={(1, 3): 2.0, (4,): -1.0}, bad_words_ids=[[5], [3, 6]],
                          suppress_tokens=[7])
    numpy = F.StepFilters(10, "cpu", 3, 8, [], sequence_bias={(i64(1), i64(3)): 2.0, (i64(4),): -1.0},
                          bad_words_ids=[[i64(5)], [i64(3), i64(6)]], suppress_tokens=[i64(7)])
    assert _same(plain(s.clone(), seqs, 0), numpy(s.clone(), seqs, 0))
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    with pytest.raises(ValueError, match="sequence_bias"):
        ours.generate(prompt_ids(1, 5, 101), max_new_tokens=2, sequence_bias=[[5, -1.0]])
