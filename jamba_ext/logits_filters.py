"""Score processing of generate() beyond temperature / top_k / top_p / min_p, with transformers' semantics, on the
device (no host synchronisation, so a decode loop that runs ahead of the host keeps doing so; prefix_allowed_tokens_fn
and the user's processors excepted: they run in Python). StepFilters runs one step's processors in transformers' order
(sequence_bias, repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_length, min_new_tokens,
prefix_allowed_tokens_fn, forced_bos_token_id, forced_eos_token_id, remove_invalid_values,
exponential_decay_length_penalty, suppress_tokens, begin_suppress_tokens, the user's processors) for
greedy, sampled and beam search alike; the sampling filters below follow min_p in JambaForCausalLM._warp.

Shapes: scores (R, V) fp32, one row per sequence (or beam); seqs (R, S) int64, the tokens so far (prompt, its padding
and the new tokens, as transformers' input_ids). Filtered entries become -inf.
- seen_tokens / penalize (repetition_penalty): the scores of tokens already in the row, left padding excluded.
- ban_repeated_ngrams (no_repeat_ngram_size=n): a token that would complete an n-gram already in the row's tokens is
  banned: for every earlier n-gram whose first n - 1 tokens equal the row's last n - 1 tokens, its last token.
- typical (typical_p=mass, sampling): tokens ranked by |-log p - entropy| (closest to the expected surprise first);
  the smallest prefix of that ranking whose probability reaches mass is kept (every token as typical as the last of it),
  at least one token.
- epsilon_cut (epsilon_cutoff=e, sampling): tokens of probability < e are dropped; the most likely one stays.
- eta_cut (eta_cutoff=e, sampling): as epsilon_cut with the threshold min(e, sqrt(e) * exp(-entropy)).
- sequence_bias / bad_words_ids: a bias (-inf for a bad word) added to a sequence's last token wherever the row ends
  with the sequence's other tokens (single tokens: always).
- top_h (top_h=h, sampling, right after temperature): top-H sampling (arXiv 2509.02510) as transformers' TopHLogitsWarper:
  over the 100 most likely tokens (their probabilities renormalised), best first, a token is kept while the running
  sum of -p log p stays within h times those tokens' entropy; the most likely token always stays.
- prefix_constrain (prefix_allowed_tokens_fn=fn): row r may only take the tokens fn(r // group, its tokens so far)
  returns (group: the rows per prompt); where no row of a prompt has an allowed token left with a finite score, its
  rows take the allowed tokens at score 0 (transformers' PrefixConstrainedLogitsProcessor). The one host-side filter:
  fn runs in Python on each row every step.
"""
import numbers
from typing import Optional

import torch
from torch import Tensor

_NEG_INF = float("-inf")


def seen_tokens(seqs: Tensor, V: int, lead: Optional[Tensor] = None) -> Tensor:
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
    hit = (grams[:, :, :-1] == seqs[:, S - n + 1:][:, None, :]).all(dim=-1)      # (n = 1: every gram, all() of none)
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


def top_h(scores: Tensor, h: float, top_n: int = 100) -> Tensor:
    """Top-H filtering (see the module's docstring) of scores (R, V) fp32, h in (0, 1]. The entropy is formed as
    torch.distributions.Categorical forms it (log-probabilities clamped to the lowest float), so the kept sets equal
    transformers' bit for bit; a zero probability among the top_n gives a NaN running sum there (as in transformers),
    which keeps no token after it."""
    n = min(top_n, scores.shape[-1])
    top, idx = torch.topk(scores, n, dim=-1, largest=True, sorted=True)
    logp = top - top.logsumexp(dim=-1, keepdim=True)
    p = torch.softmax(logp, dim=-1)
    tau = (-(logp.clamp(min=torch.finfo(logp.dtype).min) * p).sum(-1) * h).unsqueeze(-1)
    sel = torch.cumsum(-p * torch.log(p), dim=-1) <= tau
    sel[:, 0] = True
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, sel)
    return scores.masked_fill(~keep, _NEG_INF)


def prefix_constrain(scores: Tensor, seqs: Tensor, fn, group: int) -> Tensor:
    """prefix_allowed_tokens_fn (see the module's docstring): scores (R, V) -> fp32 (R, V); seqs (R, S) the rows'
    tokens so far, each passed to fn as transformers passes it (a 1-D tensor on the scores' device)."""
    R, V = scores.shape
    mask = torch.full((R, V), _NEG_INF)                 # built on the host: one copy to the device
    for r in range(R):
        allowed = fn(r // group, seqs[r])
        try:
            n = len(allowed)
        except TypeError:                              # (an int, a 0-d tensor, ...: not a list)
            raise ValueError(f"prefix_allowed_tokens_fn returned {allowed!r:.40} for batch id {r // group} (row {r}): "
                             "expected a list of token ids") from None
        if n == 0:
            raise ValueError(f"prefix_allowed_tokens_fn returned no token for batch id {r // group} (row {r}): the "
                             "constraint cannot be met; it must return a non-empty list of token ids")
        allowed = torch.as_tensor(allowed, dtype=torch.long).reshape(-1).cpu()
        if allowed.numel() and (int(allowed.min()) < 0 or int(allowed.max()) >= V):
            raise ValueError(f"prefix_allowed_tokens_fn returned token ids outside [0, {V}) for batch id {r // group}")
        mask[r, allowed] = 0.0
    mask = mask.to(scores.device)
    out = scores.float() + mask
    dead = out.amax(dim=-1).isneginf().view(R // group, group).all(dim=-1, keepdim=True)
    return torch.where(dead.repeat_interleave(group, dim=0), mask, out)


def _bias_table(spec, V: int, device, what: str):
    """A sequence_bias spec ({tuple(ids): bias} or [[ids, bias], ...]) -> (length-1 bias (V,) fp32, [(prefixes (G, L-1),
    last ids (G,), biases (G,)) per prefix length L-1]). A sequence named twice takes its last bias (transformers makes
    a dict of the list)."""
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        items = [tuple(x) if isinstance(x, (list, tuple)) else (x,) for x in spec]
    else:
        raise ValueError(f"{what}: expected a dict {{tuple of token ids: bias}} or a list of [token ids, bias] pairs, "
                         f"got {spec!r:.80}")
    table = {}
    for item in items:
        ids, b = item if len(item) == 2 else (list(item), None)
        if not isinstance(ids, (list, tuple)) or len(item) != 2 or not ids or not all(_is_id(t, V) for t in ids):
            shape = " (each entry: [token ids, bias])" if what == "sequence_bias" else ""
            raise ValueError(f"{what}: {ids!r:.80} is not a non-empty list of token ids in [0, {V}){shape}")
        if isinstance(b, bool) or not isinstance(b, numbers.Real):
            raise ValueError(f"{what}: the bias of {list(ids)!r:.80} is not a number: {b!r:.40}")
        table[tuple(int(t) for t in ids)] = float(b)
    one = torch.zeros(V, dtype=torch.float32, device=device)
    groups = {}
    for ids, b in table.items():
        if len(ids) == 1:
            one[ids[0]] = b
        else:
            groups.setdefault(len(ids) - 1, []).append((list(ids), b))
    multi = [(torch.tensor([i[:-1] for i, _ in g], device=device), torch.tensor([i[-1] for i, _ in g], device=device),
              torch.tensor([b for _, b in g], dtype=torch.float32, device=device)) for g in groups.values()]
    return one, multi


def _apply_bias(scores: Tensor, seqs: Optional[Tensor], table) -> Tensor:
    one, multi = table
    bias = one.expand(scores.shape[0], -1).clone()
    for prefixes, last, b in multi:
        P = prefixes.shape[1]
        if P > seqs.shape[1]:
            continue                                   # (a prefix longer than the sequence cannot match)
        hit = (seqs[:, None, -P:] == prefixes[None]).all(dim=-1)                   # (R, G)
        bias.index_add_(1, last, torch.where(hit, b, torch.zeros_like(b)))
    return scores.float() + bias


class StepFilters:
    """One generate() step's score processing before the sampling filters, in transformers' order: sequence_bias,
    repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_length, min_new_tokens, prefix_allowed_tokens_fn
    (rows in groups of prefix_group per prompt), forced_bos_token_id (a
    one-token prompt's first step), forced_eos_token_id, remove_invalid_values, exponential_decay_length_penalty
    ((start, factor): from new token start + 1 on, each EOS score s gains |s| * (factor ** (i - start) - 1)),
    suppress_tokens, begin_suppress_tokens, then the user's logits_processor (run by `run_processors`).
    T: prompt length; M: T + max_new_tokens; eos: the EOS ids (min_length / min_new_tokens act only with some, as in
    transformers); lead (R,): each row's left padding, which repetition_penalty skips. A filter left at its default
    is skipped. Call f(scores (R, V), seqs (R, T + i) or None, i, seen=None): seen (R, V) bool, kept by the caller,
    replaces seen_tokens(seqs) for the repetition penalty; seqs is needed when f.needs_seqs."""

    def __init__(self, V: int, device, T: int, M: int, eos: list, *, sequence_bias=None, repetition_penalty=1.0,
                 lead=None, no_repeat_ngram_size=0, bad_words_ids=None, min_length=0, min_new_tokens=0,
                 forced_eos_token_id=None, suppress_tokens=None, begin_suppress_tokens=None, logits_processor=None,
                 run_processors=None, forced_bos_token_id=None, remove_invalid_values=False,
                 exponential_decay_length_penalty=None, prefix_allowed_tokens_fn=None, prefix_group=1):
        self.V, self.T, self.M = V, T, M
        if prefix_allowed_tokens_fn is not None and not callable(prefix_allowed_tokens_fn):
            raise ValueError("prefix_allowed_tokens_fn: expected a callable (batch_id, input_ids) -> list of token ids, "
                             f"got {type(prefix_allowed_tokens_fn).__name__}")
        self.prefix_fn, self.prefix_group = prefix_allowed_tokens_fn, prefix_group
        self.penalty, self.lead, self.ngram = repetition_penalty, lead, no_repeat_ngram_size
        self.eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
        self.min_length, self.min_new = min_length, min_new_tokens
        self.processors, self.run_processors = logits_processor, run_processors
        self.seq_bias = None if not sequence_bias else _bias_table(sequence_bias, V, device, "sequence_bias")
        self.bad = None
        if bad_words_ids is not None:
            if not isinstance(bad_words_ids, (list, tuple)) or not bad_words_ids or \
                    any(not isinstance(w, (list, tuple)) for w in bad_words_ids):
                raise ValueError(f"bad_words_ids: expected a non-empty list of token-id lists, got {bad_words_ids!r}")
            words = [list(w) for w in bad_words_ids if list(w) not in [[e] for e in eos]]   # (EOS stays allowed)
            self.bad = _bias_table([(w, float("-inf")) for w in words], V, device, "bad_words_ids") if words else None
        ids = lambda x, what: None if x is None else torch.tensor(_ids(x, V, what), dtype=torch.long,  # noqa: E731
                                                                  device=device)
        self.forced_eos = ids(forced_eos_token_id, "forced_eos_token_id")
        self.forced_bos = ids(forced_bos_token_id, "forced_bos_token_id")
        self.remove_invalid = bool(remove_invalid_values)
        self.decay = None
        if exponential_decay_length_penalty is not None:
            d = exponential_decay_length_penalty
            if not isinstance(d, (list, tuple)) or len(d) != 2 or not isinstance(d[0], int) or d[0] < 0 or \
                    not isinstance(d[1], (int, float)):
                raise ValueError("exponential_decay_length_penalty: expected (start index >= 0, decay factor), got "
                                 f"{d!r}")
            if self.eos_t is None:
                raise ValueError("exponential_decay_length_penalty raises the EOS scores: it needs EOS ids")
            self.decay = (int(d[0]), float(d[1]))
            self.decay_eos = torch.unique(self.eos_t)           # (each EOS id raised once, as transformers)
        # begin_suppress_tokens act at the first new token, the second when a forced BOS opens a one-token prompt
        self.begin_step = 1 if (T == 1 and forced_bos_token_id is not None) else 0
        self.suppress = ids(suppress_tokens, "suppress_tokens")
        self.begin_suppress = ids(begin_suppress_tokens, "begin_suppress_tokens")
        self.needs_seqs = bool(no_repeat_ngram_size or logits_processor is not None or self.prefix_fn is not None
                               or (self.seq_bias is not None and self.seq_bias[1])
                               or (self.bad is not None and self.bad[1]))

    def __call__(self, scores: Tensor, seqs: Optional[Tensor], i: int, seen: Optional[Tensor] = None) -> Tensor:
        if self.seq_bias is not None:
            scores = _apply_bias(scores, seqs, self.seq_bias)
        if self.penalty != 1.0:
            scores = penalize(scores, seen if seen is not None else seen_tokens(seqs, self.V, self.lead), self.penalty)
        if self.ngram:
            scores = ban_repeated_ngrams(seqs, scores.float(), self.ngram)
        if self.bad is not None:
            scores = _apply_bias(scores, seqs, self.bad)
        if self.eos_t is not None and (self.T + i < self.min_length or i < self.min_new):
            scores = scores.index_fill(1, self.eos_t, _NEG_INF)
        if self.prefix_fn is not None:
            scores = prefix_constrain(scores, seqs, self.prefix_fn, self.prefix_group)
        if self.forced_bos is not None and self.T + i == 1:
            scores = torch.full_like(scores, _NEG_INF).index_fill(1, self.forced_bos, 0.0)
        if self.forced_eos is not None and self.T + i == self.M - 1:
            scores = torch.full_like(scores, _NEG_INF).index_fill(1, self.forced_eos, 0.0)
        if self.remove_invalid:
            s32 = scores.float()
            big = torch.finfo(torch.float32).max
            scores = torch.nan_to_num(s32, nan=0.0, posinf=big, neginf=-big)
        if self.decay is not None and i > self.decay[0]:
            scores = scores.float()
            e = scores.index_select(1, self.decay_eos)
            add = torch.where(torch.isfinite(e), e.abs() * (self.decay[1] ** (i - self.decay[0]) - 1), 0.0)
            scores = scores.index_add(1, self.decay_eos, add)
        if self.suppress is not None:
            scores = scores.index_fill(1, self.suppress, _NEG_INF)
        if self.begin_suppress is not None and i == self.begin_step:
            scores = scores.index_fill(1, self.begin_suppress, _NEG_INF)
        if self.processors is not None:
            scores = self.run_processors(self.processors, seqs, scores.float())
        return scores


def _is_id(t, V: int) -> bool:
    """t is a token id in [0, V): a Python or numpy integer, not a bool."""
    return isinstance(t, numbers.Integral) and not isinstance(t, bool) and 0 <= t < V


def _ids(x, V: int, what: str) -> list:
    """An int or a list of ints, each a token id in [0, V) -> list; else a ValueError naming `what`."""
    one = isinstance(x, numbers.Integral) and not isinstance(x, bool)
    xs = [x] if one else list(x) if isinstance(x, (list, tuple)) else None
    if xs is None or not all(_is_id(t, V) for t in xs):
        raise ValueError(f"{what}: expected a token id or a list of them in [0, {V}), got {x!r}")
    return [int(t) for t in xs]
