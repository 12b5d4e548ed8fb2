"""Sampling settings of each row of a batch (a server's requests each bring their own: OpenAI's temperature, top_p,
presence_penalty and frequency_penalty, and vLLM's top_k, min_p and repetition_penalty), picked on the device in one
pass for all rows (no host synchronisation: the decode loop keeps running ahead of the host).

Shapes: logits (R, V), one row per sequence; the settings (R,) tensors; seen (R, V) bool (the row's prompt and new
tokens: repetition_penalty); counts (R, V) int32 (the row's new tokens: presence and frequency penalties).
A row's pick, in this order (transformers' for the first five, as JambaForCausalLM._warp and generate() do them):
  repetition_penalty  a seen token's logit divided by it where positive, multiplied where negative (1: off);
  presence_penalty    minus it where the token is among the row's new tokens, and frequency_penalty minus it times
                      their count (OpenAI's; 0: off);
  temperature         0: greedy (the argmax of the penalised logits; the filters below do not apply); > 0: the
                      logits in fp32 divided by it, then
  top_k               the k highest scores stay (0: off),
  top_p               the least likely tokens whose probabilities sum to at most 1 - top_p are dropped (1: off),
  min_p               tokens below min_p x the most likely one's probability are dropped (0: off);
                      the most likely token always stays; then one draw from the softmax (the batch's generator).
"""
from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


class Sampling(NamedTuple):
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(values: dict, base: Sampling = Sampling()) -> Sampling:
    """The settings `values` gives (FIELDS; a None value or a missing one: base's) -> Sampling, or ValueError naming
    the field and what it takes."""
    bad = sorted(set(values) - set(FIELDS))
    if bad:
        raise ValueError(f"sampling settings: {', '.join(FIELDS)}; not {', '.join(bad)}")
    s = base._replace(**{k: v for k, v in values.items() if v is not None})
    if not _number(s.temperature) or not 0 <= s.temperature < float("inf"):
        raise ValueError(f"temperature: expected a number >= 0 (0: greedy), got {s.temperature!r}")
    if isinstance(s.top_k, bool) or not isinstance(s.top_k, int) or s.top_k < 0:
        raise ValueError(f"top_k: expected an int >= 0 (0: off), got {s.top_k!r}")
    if not _number(s.top_p) or not 0 < s.top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1] (1: off), got {s.top_p!r}")
    if not _number(s.min_p) or not 0 <= s.min_p <= 1:
        raise ValueError(f"min_p: expected a number in [0, 1] (0: off), got {s.min_p!r}")
    if not _number(s.repetition_penalty) or not 0 < s.repetition_penalty < float("inf"):
        raise ValueError(f"repetition_penalty: expected a number > 0 (1: off), got {s.repetition_penalty!r}")
    for k in ("presence_penalty", "frequency_penalty"):
        if not _number(getattr(s, k)) or not -2 <= getattr(s, k) <= 2:
            raise ValueError(f"{k}: expected a number in [-2, 2] (0: off; OpenAI's range), got {getattr(s, k)!r}")
    return s


class RowSampler:
    """The settings of R rows as device tensors (set(): after rows take new requests), and pick(): one token a row.
    The host-side flags (which filters any row uses) decide which passes run, so rows that all leave a filter off
    never pay for it."""

    def __init__(self, rows: Sequence[Sampling], device):
        self.rows = [r if r.temperature > 0 else r._replace(top_k=0, top_p=1.0, min_p=0.0) for r in rows]  # (greedy)
        f = torch.tensor([[r.temperature, r.top_p, r.min_p, r.repetition_penalty, r.presence_penalty,
                           r.frequency_penalty] for r in self.rows], dtype=torch.float32)
        f = f.to(device)
        self.temp, self.top_p, self.min_p = f[:, 0], f[:, 1], f[:, 2]
        self.rep, self.pres, self.freq = f[:, 3:4], f[:, 4:5], f[:, 5:6]
        self.top_k = torch.tensor([r.top_k for r in self.rows], dtype=torch.long).to(device)
        ks = [r.top_k for r in self.rows if r.top_k]
        self.k_max, self.k_min = max(ks, default=0), min(ks, default=0)
        self.any_sample = any(r.temperature > 0 for r in self.rows)
        self.any_top_p = any(r.top_p < 1 for r in self.rows)
        self.any_min_p = any(r.min_p > 0 for r in self.rows)
        self.any_rep = any(r.repetition_penalty != 1 for r in self.rows)
        self.any_count = any(r.presence_penalty or r.frequency_penalty for r in self.rows)

    def penalize(self, logits: Tensor, seen: Optional[Tensor], counts: Optional[Tensor]) -> Tensor:
        """The penalised logits (fp32 where any penalty is on; seen / counts: None when no row needs them)."""
        s = logits
        if self.any_rep and seen is not None:
            s = s.float()
            s = torch.where(seen, torch.where(s < 0, s * self.rep, s / self.rep), s)
        if self.any_count and counts is not None:
            c = counts.float()
            s = s.float() - self.freq * c - self.pres * (c > 0).float()
        return s

    def scores(self, logits: Tensor) -> Tensor:
        """(R, V) fp32: the (penalised) logits over each row's temperature (1 for greedy rows), filtered by the row's
        top_k, top_p and min_p (-inf where dropped): a sampled row draws from their softmax."""
        V = logits.shape[-1]
        s = logits.float() / torch.where(self.temp > 0, self.temp, 1.0)[:, None]
        k = min(self.k_max, V)
        if k and self.k_min < V:                             # (some sampled row keeps fewer than all V)
            top = torch.topk(s, k, dim=-1).values
            kth = top.gather(1, (self.top_k.clamp(1, k) - 1)[:, None])
            kth = torch.where(((self.top_k > 0) & (self.top_k < V))[:, None], kth, float("-inf"))
            s = s.masked_fill(s < kth, float("-inf"))
        if self.any_top_p:
            srt, idx = torch.sort(s, dim=-1)
            drop = torch.softmax(srt, dim=-1).cumsum(dim=-1) <= (1 - self.top_p)[:, None]
            drop[:, -1] = False                                 # (the most likely token stays)
            s = s.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
        if self.any_min_p:
            p = torch.softmax(s, dim=-1)
            drop = p < self.min_p[:, None] * p.amax(dim=-1, keepdim=True)
            drop.scatter_(1, p.argmax(dim=-1, keepdim=True), False)
            s = s.masked_fill(drop, float("-inf"))
        return s

    def pick(self, logits: Tensor, gen: Optional[torch.Generator]) -> Tensor:
        """(R,) int64: each row's token from its (penalised) logits: greedy rows their argmax, the others one draw
        from softmax(scores) (the generator's)."""
        greedy = logits.argmax(-1)
        if not self.any_sample:
            return greedy
        drawn = torch.multinomial(torch.softmax(self.scores(logits), dim=-1), 1, generator=gen)[:, 0]
        return torch.where(self.temp > 0, drawn, greedy)


def rows_differ(rows: List[Optional[Sampling]], base: Sampling) -> bool:
    """Whether any running row (None: idle) has settings other than base."""
    return any(r is not None and r != base for r in rows)
