"""generate(num_beams > 1): beam search (jamba_ext.beam_search) against transformers' generate on the same weights.

Oracle: transformers' beam search (its vectorised form, 4.50 on) over its own model, fp32 on CPU: the same sequences,
beam indices and per-step scores / logits, sequences_scores within fp32 rounding. Cases: EOS reached mid-search
(chosen as a token the search picks, so hypotheses end at different steps), no EOS, length_penalty above / below 1 and
0, early_stopping True / False / "never", num_return_sequences, repetition_penalty and min_new_tokens, user processors
and stopping criteria, left-padded prompts of different lengths. Then: the static cache (eager) and, on CUDA, the
captured decode step give the same beams as the eager steps; bad arguments raise ValueErrors naming them.
"""
import pytest
import torch

from conftest import import_transformers
from test_model import CONFIGS, FP32_REL, _same_scores, make_pair, prompt_ids, rel_err

transformers = import_transformers()
HF_VECTORISED = tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (4, 50)
needs_hf = pytest.mark.skipif(not HF_VECTORISED, reason="transformers < 4.50 runs another beam search algorithm "
                              "(BeamSearchScorer), whose ties and length accounting differ")


def _eos_mid_search(ours, ids, **kw) -> int:
    """A token the best hypothesis picks at its 3rd new step (and not before), to use as EOS."""
    with torch.no_grad():
        seq = ours.generate(ids, eos_token_id=None, max_new_tokens=8, **kw)[0, ids.shape[1]:].tolist()
    assert seq[2] not in seq[:2], seq
    return seq[2]


def _check_same(got, want):
    assert got.sequences.tolist() == want.sequences.tolist()
    assert got.beam_indices.tolist() == want.beam_indices.tolist()
    assert rel_err(got.sequences_scores, want.sequences_scores) <= FP32_REL
    assert len(got.scores) == len(want.scores) == len(got.logits) == len(want.logits)
    for a, b in zip(got.scores, want.scores):
        assert _same_scores(a, b)
    for a, b in zip(got.logits, want.logits):
        assert rel_err(a, b) <= FP32_REL


CASES = {
    "plain": dict(num_beams=3, max_new_tokens=8),
    "no_eos": dict(num_beams=3, max_new_tokens=7, eos_token_id=None),
    "return2_lp2": dict(num_beams=4, max_new_tokens=10, num_return_sequences=2, length_penalty=2.0),
    "lp0_never": dict(num_beams=4, max_new_tokens=9, length_penalty=0.0, early_stopping="never",
                      num_return_sequences=4),
    "lp_half_never": dict(num_beams=4, max_new_tokens=9, length_penalty=0.5, early_stopping="never"),
    "early_true": dict(num_beams=2, max_new_tokens=10, early_stopping=True, num_return_sequences=2),
    "lp_neg": dict(num_beams=3, max_new_tokens=8, length_penalty=-1.0, num_return_sequences=3),
    "penalty_min_new": dict(num_beams=3, max_new_tokens=8, repetition_penalty=1.5, min_new_tokens=4),
    "one_step": dict(num_beams=2, max_new_tokens=1),
    "three_eos": dict(num_beams=3, max_new_tokens=8, num_return_sequences=3, eos_token_id=[5, 7, 40]),
}


@needs_hf
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["attn1_moe_top2", "all_moe_bias"])
def test_beam_search_matches_transformers(name, case):
    hf, ours = make_pair(CONFIGS[name])
    ids = prompt_ids(2, 9, hf.config.vocab_size)
    kw = dict(CASES[case])
    if "eos_token_id" not in kw:
        kw["eos_token_id"] = _eos_mid_search(ours, ids, num_beams=kw["num_beams"])
    out = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)
    with torch.no_grad():
        got = ours.generate(ids, **kw, **out)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, **kw, **out)
    _check_same(got, want)
    r = kw.get("num_return_sequences", 1)
    assert got.sequences.shape[0] == 2 * r and got.sequences_scores.shape == (2 * r,)
    # best first within each prompt's hypotheses
    assert (got.sequences_scores.view(2, r).diff(dim=1) <= 0).all()
    if case in ("lp0_never", "early_true", "lp_neg"):          # (seeded) EOS did end returned hypotheses
        assert (got.sequences[:, 9:] == kw["eos_token_id"]).any()
    # the plain result is the dict's sequences
    with torch.no_grad():
        assert ours.generate(ids, **kw).tolist() == got.sequences.tolist()


@needs_hf
def test_beam_search_processors_criteria_and_padding():
    """User logits processors and stopping criteria see each beam's tokens; left-padded prompts of different lengths
    (lists, padded here; transformers gets the same ids and mask)."""
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    class Ban(LogitsProcessor):          # bans token 7 and the token the beam's last token names (mod V)
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores.scatter_(1, input_ids[:, -1:] % scores.shape[1], float("-inf"))
            scores[:, 7] = float("-inf")
            return scores

    class StopAt(StoppingCriteria):      # a hypothesis ends after 5 new tokens whose sum is odd
        def __init__(self, T):
            self.T = T

        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, self.T:]
            return torch.full((input_ids.shape[0],), new.shape[1] >= 5) & (new.sum(dim=1) % 2 == 1)

    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    prompts = [prompt_ids(1, 9, 101, seed=3)[0].tolist(), prompt_ids(1, 5, 101, seed=4)[0].tolist()]
    ids, mask = ours._left_pad(prompts, 0, torch.device("cpu"))
    kw = dict(num_beams=3, max_new_tokens=9, num_return_sequences=2, eos_token_id=None, return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    with torch.no_grad():
        got = ours.generate(prompts, logits_processor=[Ban()], stopping_criteria=[StopAt(9)], **kw)
        want = hf.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0,
                           logits_processor=LogitsProcessorList([Ban()]),
                           stopping_criteria=StoppingCriteriaList([StopAt(9)]), **kw)
    _check_same(got, want)
    assert not (got.sequences[:, 9:] == 7).any()
    # the criteria ended some hypotheses early: those are filled with -1 (no EOS ids: transformers' fill)
    assert (got.sequences == -1).any() and (got.sequences[:, 9:] != -1).all(dim=1).any()


def _steered_beams(steer, batch: int, kw: dict, **ours_kw):
    """generate(num_beams=2, num_return_sequences=2, early_stopping="never") of ours and transformers' model on the
    same 9-token prompts with one steering logits processor; checked equal, ours returned"""
    from transformers import LogitsProcessorList
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(batch, 9, 101)
    kw = dict(kw, num_beams=2, num_return_sequences=2, early_stopping="never", return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    with torch.no_grad():
        got = ours.generate(ids, logits_processor=[steer], **ours_kw, **kw)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                           logits_processor=LogitsProcessorList([steer]), **kw)
    _check_same(got, want)
    return got


@needs_hf
def test_beam_search_keeps_candidates_past_the_eos_ids():
    """K = (1 + number of EOS ids) x num_beams candidates per step, so that num_beams of them go on even when the EOS
    ids are the best: a processor makes three EOS ids the first step's best tokens, then A, then B, and gives only
    B's beam a good continuation; the search must keep B (with 2 x num_beams candidates it would lose it)."""
    eos, A, B = [11, 12, 13], 20, 21

    def steer(input_ids, scores):
        scores = scores.clone()
        if input_ids.shape[1] == 9:
            scores[:] = -50.0
            scores[:, eos] = torch.tensor([-1.0, -1.1, -1.2])
            scores[:, A], scores[:, B] = -1.3, -1.4
        elif input_ids.shape[1] == 10:
            scores = torch.where(input_ids[:, -1:] == B, scores, scores - 50.0)
        return scores

    got = _steered_beams(steer, 2, dict(max_new_tokens=5, eos_token_id=eos, length_penalty=2.0))
    assert (got.sequences[:, 9] == B).all() and got.sequences.shape[1] == 14


@needs_hf
def test_beam_search_never_counts_the_longest_length():
    """early_stopping="never", length_penalty 1: once num_beams hypotheses are finished, a running beam goes on while
    its score divided by max_new_tokens (not by fewer tokens) still beats the worst of them. Steered scores: the first
    step finishes two EOS hypotheses (-1.0, -1.05) and leaves A at -2.5 (-2.5 / 3 beats -1.05, -2.5 / 2 would not);
    A C EOS then finishes at -3.1 / 3 = -1.033 and takes the second place."""
    eos, A, B, C = [11, 12], 20, 21, 22

    def steer(input_ids, scores):
        scores = torch.full_like(scores, -50.0)
        if input_ids.shape[1] == 9:
            scores[:, eos] = torch.tensor([-1.0, -1.05])
            scores[:, A], scores[:, B] = -2.5, -2.6
        elif input_ids.shape[1] == 10:
            scores[:, C] = torch.where(input_ids[:, -1] == A, -0.3, -5.0)
        else:
            scores[:, eos[0]] = -0.3
        return scores

    got = _steered_beams(steer, 1, dict(max_new_tokens=3, eos_token_id=eos, length_penalty=1.0), pad_token_id=0)
    assert got.sequences[:, 9:].tolist() == [[11, 11, 11], [A, C, 11]]     # (filled with the first EOS: pad 0)


@needs_hf
def test_beam_search_early_stopping_with_a_full_prompt():
    """early_stopping=True in a batch: a prompt whose num_beams hypotheses are all finished takes no more while the
    others search on (seeded case where that changes the result)."""
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(3, 6, 101, seed=1)
    kw = dict(num_beams=3, max_new_tokens=12, early_stopping=True, num_return_sequences=3,
              eos_token_id=_eos_mid_search(ours, ids, num_beams=3), return_dict_in_generate=True, output_scores=True,
              output_logits=True)
    with torch.no_grad():
        got = ours.generate(ids, **kw)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, **kw)
    _check_same(got, want)


def _hf_sorts_sampled_candidates() -> bool:
    """transformers 5.24's beam sampling orders the sampled candidates best first; 5.0-5.17 kept the draw order."""
    import inspect
    f = getattr(transformers.GenerationMixin, "_get_top_k_continuations", None)
    return f is not None and ".sort(" in inspect.getsource(f)


SAMPLING = [dict(num_beams=3, temperature=0.8, top_k=20), dict(num_beams=2, top_p=0.8, num_return_sequences=2, top_k=0),
            dict(num_beams=3, min_p=0.1, temperature=1.5, eos_token_id=None, top_k=0),
            dict(num_beams=4, top_k=3, typical_p=0.7, repetition_penalty=1.3)]


@needs_hf
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", range(len(SAMPLING)))
def test_beam_sampling_matches_transformers(case, seed):
    """do_sample=True with num_beams: each step's K candidates drawn without replacement from the accumulated scores
    after the sampling filters (each keeping the EOS ids + 1 tokens), as transformers: with its global generator seeded
    as ours, the same sequences, beam indices and per-step scores (CPU: one Mersenne Twister stream either way).
    (top_k=0 where transformers would otherwise apply its default top_k=50; ours defaults to no top_k.)"""
    if not _hf_sorts_sampled_candidates():
        pytest.skip(f"transformers {transformers.__version__} keeps sampled beam candidates in draw order (5.24 sorts "
                    "them best first, as ours)")
    hf, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 9, 101)
    kw = dict(SAMPLING[case], max_new_tokens=8, return_dict_in_generate=True, output_scores=True, output_logits=True)
    with torch.no_grad():
        torch.manual_seed(seed)
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, pad_token_id=0, **kw)
        got = ours.generate(ids, do_sample=True, seed=seed, **kw)
        again = ours.generate(ids, do_sample=True, seed=seed, **kw)
        greedy = ours.generate(ids, **{k: v for k, v in kw.items() if k not in ("temperature", "top_k", "top_p",
                                                                                "min_p", "typical_p")})
    _check_same(got, want)
    assert got.sequences.tolist() == again.sequences.tolist()          # seeded: reproducible
    assert not torch.equal(got.scores[0], greedy.scores[0])           # (the sampling filters acted)


@pytest.mark.parametrize("eos,keep", [([5, 7], 3), (None, 2), (4, 2)])
def test_beam_sampling_keeps_eos_plus_one_tokens(eos, keep, monkeypatch):
    """Beam sampling's filters keep the EOS ids + 1 tokens (2 without EOS ids), transformers' min_tokens_to_keep."""
    import jamba_ext.modeling_jamba as mj
    seen, orig = [], mj.JambaForCausalLM._warp
    monkeypatch.setattr(mj.JambaForCausalLM, "_warp", staticmethod(
        lambda *a, **kw: seen.append(kw.get("keep", 1)) or orig(*a, **kw)))
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    with torch.no_grad():
        ours.generate(prompt_ids(1, 5, 101), max_new_tokens=3, num_beams=2, do_sample=True, seed=0, top_k=10,
                      eos_token_id=eos)
    assert seen and set(seen) == {keep}


def test_beam_search_static_cache_same_beams():
    """The static cache (the mode a CUDA graph replays), eagerly: the same beams as the dynamic cache."""
    _, ours = make_pair(CONFIGS["all_moe_bias"])
    ids = prompt_ids(3, 7, 101)
    kw = dict(num_beams=3, max_new_tokens=8, num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        kw["eos_token_id"] = _eos_mid_search(ours, ids, num_beams=3)
        a = ours.generate(ids, static_cache=False, **kw)
        b = ours.generate(ids, static_cache=True, cuda_graph=False, **kw)
    assert a.sequences.tolist() == b.sequences.tolist() and a.beam_indices.tolist() == b.beam_indices.tolist()
    assert rel_err(a.sequences_scores, b.sequences_scores) <= FP32_REL


def test_beam_search_bad_arguments():
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(1, 5, 101)
    for kw, msg in ((dict(num_beams=2, streamer=lambda t: None), "streamer"),
                    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 > num_beams=2"),
                    (dict(num_beams=0), "num_beams"), (dict(num_beams=2.0), "num_beams"),
                    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
                    (dict(num_beams=2, length_penalty="long"), "length_penalty")):
        with pytest.raises(ValueError, match=msg):
            ours.generate(ids, max_new_tokens=3, **kw)
    with torch.no_grad():   # no new tokens: the prompt, num_return_sequences times
        assert ours.generate(ids, max_new_tokens=0, num_beams=2, num_return_sequences=2).tolist() == \
            ids.repeat(2, 1).tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_beam_search_graph_equals_eager(dtype, monkeypatch):
    """On the GPU: the captured decode step (reordered in place between replays) gives the beams of the eager static
    steps, bit for bit (same kernels), with the next step enqueued before the host reads the stop flag (the default)
    or not; in fp32 also the CPU run's beams."""
    import jamba_ext.modeling_jamba as mj
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(2, 9, 101)

    def push_eos(input_ids, scores):          # from the 4th new token on EOS (id 5) is certain: every beam ends
        if input_ids.shape[1] >= 9 + 3:
            scores = scores.clone()
            scores[:, 5] = 0.0
        return scores

    kw = dict(num_beams=4, max_new_tokens=20, num_return_sequences=2, eos_token_id=5, logits_processor=[push_eos],
              return_dict_in_generate=True, output_scores=True)
    steps, orig = [], mj.JambaForCausalLM._decode_step
    monkeypatch.setattr(mj.JambaForCausalLM, "_decode_step", lambda self, *a: steps.append(1) or orig(self, *a))
    with torch.no_grad():
        cpu = ours.generate(ids, **kw)
        assert cpu.sequences.shape[1] == 9 + 4 and len(steps) == 3      # (the search ended there, 16 steps early)
        ours = ours.to(device="cuda", dtype=dtype)
        steps.clear()
        graph = ours.generate(ids.cuda(), cuda_graph=True, **kw)
        assert ours._decode_graph_info["captured"] and len(steps) == 4  # (one step enqueued ahead, discarded)
        eager = ours.generate(ids.cuda(), cuda_graph=False, static_cache=True, **kw)
        monkeypatch.setattr(mj, "RUN_AHEAD", False)
        steps.clear()
        waiting = ours.generate(ids.cuda(), cuda_graph=True, **kw)
        assert len(steps) == 3
    assert graph.sequences.tolist() == eager.sequences.tolist() == waiting.sequences.tolist()
    assert torch.equal(graph.sequences_scores, eager.sequences_scores)
    if dtype == torch.float32:
        assert graph.sequences.tolist() == cpu.sequences.tolist()
        assert rel_err(graph.sequences_scores.cpu(), cpu.sequences_scores) <= 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_beam_sampling_graph_equals_eager():
    """Beam sampling on the GPU (a CUDA generator): the captured decode step gives the eager static steps' beams for
    one seed (same kernels, same draws), and another seed other beams."""
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ours = ours.cuda()
    ids = prompt_ids(2, 9, 101).cuda()
    kw = dict(num_beams=3, max_new_tokens=12, do_sample=True, temperature=0.9, top_k=30, num_return_sequences=2)
    with torch.no_grad():
        graph = ours.generate(ids, seed=5, cuda_graph=True, **kw)
        assert ours._decode_graph_info["captured"]
        eager = ours.generate(ids, seed=5, cuda_graph=False, static_cache=True, **kw)
        other = ours.generate(ids, seed=6, cuda_graph=True, **kw)
    assert graph.tolist() == eager.tolist() and graph.tolist() != other.tolist()


def test_beam_search_early_stopping_must_be_a_bool_or_never():
    """early_stopping=1 (or 1.0, 0) passes generate()'s `in (True, False, "never")` check by equality, yet the search
    tests `is True`: 1 would silently act as False. Anything but True, False or "never" is refused, naming it."""
    _, ours = make_pair(CONFIGS["attn1_moe_top2"])
    ids = prompt_ids(1, 5, 101)
    for v in (1, 1.0, 0):
        with pytest.raises(ValueError, match="early_stopping"):
            with torch.no_grad():
                ours.generate(ids, max_new_tokens=3, num_beams=2, early_stopping=v)


def test_beam_search_refuses_more_return_sequences_than_beams():
    """beam_search() itself (not only generate()) refuses num_return_sequences outside [1, num_beams] with a ValueError
    naming it (it failed in a reshape / an empty max() at the end of the search, after all the steps)."""
    from jamba_ext.beam_search import beam_search
    from jamba_ext.logits_filters import StepFilters
    ids, logits = prompt_ids(2, 4, 101), torch.randn(2, 101)
    filt = StepFilters(101, torch.device("cpu"), 4, 5, [])
    args = (None, logits, None, None, ids, 2, 1, [], None, 1.0, False)
    with torch.no_grad():
        assert beam_search(*args, 2, filt, None, False, False, False).shape == (4, 5)      # (the search ran)
        for r in (3, 0):
            with pytest.raises(ValueError, match="num_return_sequences"):
                beam_search(*args, r, filt, None, False, False, False)
