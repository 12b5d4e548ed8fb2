"""Beam search for JambaForCausalLM.generate(num_beams=n > 1): transformers' algorithm and results.

Shapes: B prompts, n beams, V vocabulary, K = max(2, 1 + number of EOS ids) * n candidates kept per prompt and step,
T prompt length, M = T + max_new_tokens. The decode steps run on B * n rows (row b * n + j is beam j of prompt b); the
cache is reordered in place after every step (JambaHybridCache.reorder_rows), so a captured CUDA-graph step still
replays over it. Everything stays on the device except one flag per step (whether the search is over); on CUDA the next
step is enqueued before the host reads that flag (as generate's RUN_AHEAD), so the host's work of a step overlaps the
GPU's, and the step after the last is computed and discarded.

Semantics (transformers 4.50 on, whose vectorised beam search this follows; same sequences and scores):
- a step's scores are log_softmax(logits) in fp32, then the step's processing (logits_filters.StepFilters:
  repetition_penalty, no_repeat_ngram_size, min_new_tokens, ..., the logits_processor), the sampling filters when
  sampling (each keeping at least the EOS ids + 1 tokens), then renormalize_logits;
  a candidate's score is its beam's running sum plus that step's log-probability; at the first step only beam 0 counts;
- the K best candidates of a prompt (over its n beams x V tokens) are kept (sampling: K drawn without replacement from
  the softmax of those sums, then ordered best first); a candidate ends when its token is an EOS
  id, when it reaches M tokens, or when the stopping_criteria say so; the n best candidates that do not end run on;
- an ended candidate among the n best is a finished hypothesis, scored sum / (new tokens ** length_penalty); each
  prompt keeps its n best finished ones;
- the search of a prompt stops when no running beam can beat its worst finished hypothesis (early_stopping=False: by
  the running beam's score at the current length; "never": at the longest length when length_penalty > 0), or when
  all n hypotheses are finished (early_stopping=True); the whole search stops when every prompt has stopped;
- the result: per prompt its num_return_sequences best hypotheses, best first, cut to the longest of those returned
  and filled after each hypothesis's end with pad_token_id (its first EOS id where pad_token_id is 0 or None, -1 when
  there are no EOS ids: transformers' choice).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import modeling_jamba as _mj
from .logits_filters import StepFilters
from .modeling_jamba import _run_criteria, _TupleOutput

_NEG = -1.0e9                                   # the score of a candidate that may not be chosen (as transformers)


@dataclass
class BeamGenerateOutput(_TupleOutput):
    """generate(num_beams > 1, return_dict_in_generate=True), as transformers' GenerateBeamDecoderOnlyOutput:
    sequences (B * r, T + n); sequences_scores (B * r,) fp32 (output_scores=True): each hypothesis's length-penalised
    score; scores (output_scores=True): per step the fp32 log-probabilities after the processors, (B * num_beams, V);
    logits (output_logits=True): per step the raw fp32 logits, (B * num_beams, V); beam_indices (B * r, n) int64: per
    new token the row (b * num_beams + beam) whose sequence it extended, -1 past the hypothesis's end."""
    sequences: Optional[Tensor] = None
    sequences_scores: Optional[Tensor] = None
    scores: Optional[Tuple[Tensor, ...]] = None
    logits: Optional[Tuple[Tensor, ...]] = None
    beam_indices: Optional[Tensor] = None
    _TUPLE_FIELDS = ("sequences", "sequences_scores", "scores", "logits", "beam_indices")


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    """t (B, m, ...) -> (B, k, ...): t[b, idx[b, j]] for idx (B, k)."""
    return torch.take_along_dim(t, idx.reshape(idx.shape + (1,) * (t.dim() - 2)), dim=1)


def beam_search(model, logits: Tensor, cache, graph, input_ids: Tensor, num_beams: int, max_new_tokens: int,
                eos: list, pad: Optional[int], length_penalty: float, early_stopping, num_return_sequences: int,
                filt: StepFilters, stopping_criteria, return_dict_in_generate: bool, output_scores: bool,
                output_logits: bool, renormalize_logits: bool = False, warp=None,
                gen: Optional[torch.Generator] = None):
    """The search after the prefill. logits (B, V): the prompts' last logits; cache: the prefilled state of the B
    prompts (made B * num_beams rows here); graph: a _DecodeGraph over it (captured by the caller after the rows were
    repeated) or None; input_ids (B, T); filt: the step's score processing (logits_filters.StepFilters over B * n
    rows, applied to the log-probabilities, as transformers' processors in its beam search); warp: beam sampling's
    filters (temperature, top_k, ... on the log-probabilities) or None; gen: the generator that samples candidates
    (beam sampling)."""
    n, dev = num_beams, logits.device
    # (the search tests `is True`, so early_stopping=1, which equals True, would silently act as False: checked here
    # for direct calls; generate() checks it the same way before its prefill)
    if not (isinstance(early_stopping, bool) or (isinstance(early_stopping, str) and early_stopping == "never")):
        raise ValueError(f"early_stopping: expected True, False or 'never', got {early_stopping!r}")
    if not 1 <= num_return_sequences <= n:
        raise ValueError(f"num_return_sequences={num_return_sequences}: beam search returns 1 to num_beams={n} "
                         "hypotheses per prompt")
    B, T = input_ids.shape
    M, V = T + max_new_tokens, logits.shape[-1]
    K = max(2, 1 + len(eos)) * n
    fill = (pad or eos[0]) if eos else -1
    eos_t = filt.eos_t                                          # (B n rows' EOS ids, or None)
    logits = logits.repeat_interleave(n, dim=0)                                          # (B n, V)
    run_seq = torch.full((B, n, M), fill, dtype=torch.long, device=dev)
    run_seq[:, :, :T] = input_ids[:, None]
    fin_seq = run_seq.clone()
    run_idx = torch.full((B, n, max_new_tokens), -1, dtype=torch.long, device=dev)
    fin_idx = run_idx.clone()
    run_score = torch.zeros((B, n), dtype=torch.float32, device=dev)
    run_score[:, 1:] = _NEG                               # the beams are copies at first: only beam 0 counts
    fin_score = torch.full((B, n), _NEG, dtype=torch.float32, device=dev)
    finished = torch.zeros((B, n), dtype=torch.bool, device=dev)
    open_ = torch.ones((B, 1), dtype=torch.bool, device=dev)  # a running beam may still beat a finished hypothesis
    top_n = torch.arange(K, device=dev) < n                     # the candidates that may become hypotheses
    row0 = (torch.arange(B, device=dev) * n)[:, None]           # (B, 1): the first row of each prompt's beams
    keep_scores, keep_logits = return_dict_in_generate and output_scores, return_dict_in_generate and output_logits
    scores_out, logits_out = [], []
    all_scores = () if keep_scores else None
    ahead = (_mj.RUN_AHEAD if _mj.RUN_AHEAD is not None else True) and dev.type == "cuda"
    go_h = torch.zeros(1, dtype=torch.bool, pin_memory=ahead)
    for i in range(max_new_tokens):
        cur = T + i                                             # tokens per sequence before this step
        lf = logits.to(torch.float32, copy=True)
        if keep_logits:
            logits_out.append(lf)
        lp = torch.log_softmax(lf, dim=-1)
        seqs = run_seq[:, :, :cur].reshape(B * n, cur)
        lp = filt(lp, seqs, i)
        if warp is not None:
            lp = warp(lp)
        if renormalize_logits:
            lp = torch.log_softmax(lp, dim=-1)
        if keep_scores:
            scores_out.append(lp.clone())
            all_scores = tuple(scores_out)
        acc = (lp.view(B, n, V) + run_score[:, :, None]).view(B, n * V)
        if warp is not None:             # beam sampling: K candidates drawn without replacement, then best first
            top_i = torch.multinomial(torch.softmax(acc, dim=-1), K, generator=gen)
            top_score, order = acc.gather(1, top_i).sort(dim=1, descending=True)
            top_i = top_i.gather(1, order)
        else:
            top_score, top_i = torch.topk(acc, K, dim=1)                                  # (B, K), best first
        beam, tok = top_i // V, top_i % V
        cand_seq = _gather(run_seq, beam)                                                 # (B, K, M)
        cand_seq[:, :, cur] = tok
        cand_idx = _gather(run_idx, beam)
        cand_idx[:, :, i] = beam + row0
        ends = torch.full_like(tok, cur + 1 >= M, dtype=torch.bool)
        if eos_t is not None:
            ends |= torch.isin(tok, eos_t)
        if stopping_criteria is not None:
            ends |= _run_criteria(stopping_criteria, cand_seq[:, :, :cur + 1].reshape(B * K, cur + 1),
                                  all_scores).view(B, K)
        # the n best candidates that go on
        go_score = top_score + ends.to(torch.float32) * _NEG
        nxt = torch.topk(go_score, n, dim=1).indices
        run_seq, run_score, run_idx = _gather(cand_seq, nxt), _gather(go_score, nxt), _gather(cand_idx, nxt)
        # the ended candidates among the n best join the finished hypotheses if they beat them
        new_fin = ends & top_n
        hyp = top_score / float(cur + 1 - T) ** length_penalty
        if early_stopping is True:
            hyp = hyp + (finished.all(dim=1, keepdim=True)).to(torch.float32) * _NEG
        hyp = hyp + (~open_).to(torch.float32) * _NEG
        hyp = hyp + (~new_fin).to(torch.float32) * _NEG
        best = torch.topk(torch.cat((fin_score, hyp), dim=1), n, dim=1).indices
        fin_seq = _gather(torch.cat((fin_seq, cand_seq), dim=1), best)
        fin_score = _gather(torch.cat((fin_score, hyp), dim=1), best)
        fin_idx = _gather(torch.cat((fin_idx, cand_idx), dim=1), best)
        finished = _gather(torch.cat((finished, new_fin), dim=1), best)
        # can a running beam still beat the worst finished hypothesis?
        length = (M - T) if (early_stopping == "never" and length_penalty > 0.0) else (cur + 1 - T)
        best_running = run_score[:, :1] / float(length) ** length_penalty
        worst = torch.where(finished, fin_score.min(dim=1, keepdim=True).values, _NEG)
        open_ = open_ & (best_running > worst).any(dim=1, keepdim=True)
        go_on = (open_.any() & ~(finished.all() & (early_stopping is True)) & ~ends.all()).reshape(1)
        if i + 1 == max_new_tokens:
            break
        if ahead:                        # the flag travels to the host while the next step is enqueued behind it
            go_h.copy_(go_on, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        elif not bool(go_on):
            break
        cache.reorder_rows(run_idx[:, :, i].reshape(-1), T)    # each surviving beam's row came from there (the
        #                                                        prompt's positions are alike in all of its beams)
        logits = model._decode_step(run_seq[:, :, cur].reshape(-1), cache, graph)
        if ahead:
            ready.synchronize()          # the step just enqueued keeps the GPU busy while this step's flag is read
            if not bool(go_h):
                break                    # (that step is discarded)
    r = num_return_sequences
    seqs = fin_seq[:, :r].reshape(B * r, M)
    idx = fin_idx[:, :r].reshape(B * r, max_new_tokens)
    new = int((idx >= 0).sum(dim=1).max())
    seqs, idx = seqs[:, :T + new], idx[:, :new]
    if not return_dict_in_generate:
        return seqs
    return BeamGenerateOutput(seqs, fin_score[:, :r].reshape(-1) if output_scores else None,
                              tuple(scores_out) if keep_scores else None, tuple(logits_out) if keep_logits else None,
                              idx)
