"""Score filters of generate() beyond temperature / top_k / top_p / min_p, with transformers' semantics, on the device
(no host synchronisation, so a decode loop that runs ahead of the host keeps doing so).

Shapes: scores (R, V) fp32, one row per sequence (or beam); seqs (R, S) int64, the tokens so far (prompt, its padding and
the new tokens, as transformers' input_ids). Filtered entries become -inf.
- seen_tokens / penalize (repetition_penalty): the scores of tokens already in the row, left padding excluded.
- ban_repeated_ngrams (no_repeat_ngram_size=n): a token that would complete an n-gram already in the row's tokens is
  banned: for every earlier n-gram whose first n - 1 tokens equal the row's last n - 1 tokens, its last token.
- typical (typical_p=mass, sampling): tokens ranked by |-log p - entropy| (closest to the expected surprise first);
  the smallest prefix of that ranking whose probability reaches mass is kept (every token as typical as the last of it),
  at least one token.
- epsilon_cut (epsilon_cutoff=e, sampling): tokens of probability < e are dropped; the most likely one stays.
- eta_cut (eta_cutoff=e, sampling): as epsilon_cut with the threshold min(e, sqrt(e) * exp(-entropy)).
"""
import torch
from torch import Tensor

_NEG_INF = float("-inf")


def seen_tokens(seqs: Tensor, V: int, lead: "Tensor | None" = None) -> Tensor:
    """(R, V) bool: the tokens in each row of seqs (R, S), for repetition_penalty; lead (R,) int64: leading positions
    of each row that do not count (its left padding: transformers 5.24's prompt_ignore_length, from the
    attention_mask; None: every position counts, as in earlier releases with no mask)."""
    if lead is not None:
        pos = torch.arange(seqs.shape[1], device=seqs.device)
        seqs = seqs.masked_fill(pos[None, :] < lead[:, None], V)           # (to a column that is dropped)
    return torch.zeros((seqs.shape[0], V + 1), dtype=torch.bool, device=seqs.device).scatter_(1, seqs, True)[:, :V]


def penalize(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """transformers' repetition penalty: the scores of seen tokens divided by penalty where positive, multiplied
    where negative (fp32)."""
    s = scores.float()
    return torch.where(seen, torch.where(s < 0, s * penalty, s / penalty), s)


def ban_repeated_ngrams(seqs: Tensor, scores: Tensor, n: int) -> Tensor:
    R, S = seqs.shape
    if n < 1 or S < n:
        return scores
    grams = seqs.unfold(1, n, 1)                                       # (R, S - n + 1, n): every n-gram so far
    hit = (grams[:, :, :-1] == seqs[:, S - n + 1:][:, None, :]).all(dim=-1) if n > 1 else \
        torch.ones(grams.shape[:2], dtype=torch.bool, device=seqs.device)
    V = scores.shape[-1]
    last = grams[:, :, -1].clamp(0, V - 1)
    # counts, not a boolean scatter: several n-grams may name one token, with hits and misses among them
    banned = torch.zeros((R, V), dtype=torch.int32, device=scores.device).scatter_add_(1, last, hit.to(torch.int32))
    return scores.masked_fill(banned > 0, _NEG_INF)


def typical(scores: Tensor, mass: float, keep: int = 1) -> Tensor:
    logp = torch.log_softmax(scores, dim=-1)
    entropy = -(logp * logp.exp()).nansum(dim=-1, keepdim=True)
    surprise_gap = ((-logp) - entropy).abs()
    gap_sorted, order = torch.sort(surprise_gap, dim=-1)
    cum = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cum < mass).sum(dim=-1, keepdim=True).clamp(max=scores.shape[-1] - 1)
    drop_sorted = gap_sorted > gap_sorted.gather(-1, last)
    drop_sorted[:, :keep] = False
    return scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), _NEG_INF)


def _cut_below(scores: Tensor, threshold: Tensor, keep: int = 1) -> Tensor:
    """Drops tokens of probability < threshold (R, 1), except the `keep` most likely."""
    drop = scores.softmax(dim=-1) < threshold
    kth = torch.topk(scores, min(keep, scores.shape[-1]), dim=-1).values[:, -1:]
    return scores.masked_fill(drop & (scores < kth), _NEG_INF)


def epsilon_cut(scores: Tensor, eps: float, keep: int = 1) -> Tensor:
    return _cut_below(scores, torch.full((scores.shape[0], 1), eps, device=scores.device), keep)


def eta_cut(scores: Tensor, eps: float, keep: int = 1) -> Tensor:
    logp = torch.log_softmax(scores, dim=-1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1, keepdim=True)
    e = torch.tensor(eps, device=scores.device)
    return _cut_below(scores, torch.minimum(e, e.sqrt() * torch.exp(-entropy)), keep)
