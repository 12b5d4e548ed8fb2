"""Sampling settings of each row of a batch (a server's requests each bring their own: OpenAI's temperature, top_p,
presence_penalty and frequency_penalty, and vLLM's top_k, min_p and repetition_penalty), picked on the device by
one kernel for all rows (ops.sample_rows; no host synchronisation: the decode loop keeps running ahead of the host).

Shapes: logits (R, V), one row per sequence; the settings (R, 7) fp32; seen (R, V) bool (the row's prompt and new
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
                      the most likely token always stays; then one draw from the softmax of the scores kept
                      (a Gumbel-max draw; csrc/jamba.h has the exact rules).
A NaN logit counts as -inf in every row (never picked while the row has a finite logit); a row of NaN / -inf logits
only picks token 0 (ops.sample_rows).
"""
import math
from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

class Sampling(NamedTuple):
    """A row's settings, in the order of a row of ops.sample_rows' params (ops.SAMPLE_PARAMS)."""
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


FIELDS = Sampling._fields         # (= ops.SAMPLE_PARAMS: tests/test_row_sampling.py)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _f32(v) -> float:
    """v as the sampling kernel reads it (its params are float32): inf past float32's range, 0 below its least."""
    try:
        return torch.tensor(float(v), dtype=torch.float32).item()
    except OverflowError:                      # (an int past float64's range)
        return float("inf")


def _show(v) -> str:
    """v for a message: a huge int by its size (its repr is long, and past 4300 digits Python refuses to make it)"""
    return f"an int of ~{int(abs(v).bit_length() * 0.30103) + 1} digits" \
        if isinstance(v, int) and abs(v) >= 10 ** 20 else repr(v)


def check(values: dict, base: Sampling = Sampling()) -> Sampling:
    """The settings `values` gives (FIELDS; a None value or a missing one: base's) -> Sampling, or ValueError naming
    the field and what it takes -- also as the sampling kernel reads it, in float32 (temperature 1e39 is inf there,
    top_p 1e-46 is 0: taken as Python numbers, such a value failed the decode step of every row then running)."""
    bad = sorted(set(values) - set(FIELDS))
    if bad:
        raise ValueError(f"sampling settings: {', '.join(FIELDS)}; not {', '.join(bad)}")
    s = base._replace(**{k: v for k, v in values.items() if v is not None})
    _check_ranges(s)
    f32 = {k: _f32(v) for k, v in s._asdict().items()}
    if math.isfinite(f32["top_k"]):
        f32["top_k"] = s.top_k                 # (any finite top_k is taken: past the vocabulary it keeps every token)
    try:
        _check_ranges(Sampling(**f32))
    except ValueError as e:
        k = e.args[0].split(":")[0]
        raise ValueError(f"{e} (read as float32 by the sampler: {k} = {_show(getattr(s, k))} is out of its range "
                         "there)") from None
    return s


def _check_ranges(s: Sampling) -> None:
    if not _number(s.temperature) or not 0 <= s.temperature < float("inf"):
        raise ValueError(f"temperature: expected a number >= 0 (0: greedy), got {_show(s.temperature)}")
    if isinstance(s.top_k, bool) or not isinstance(s.top_k, int) or s.top_k < 0:
        raise ValueError(f"top_k: expected an int >= 0 (0: off), got {_show(s.top_k)}")
    if not _number(s.top_p) or not 0 < s.top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1] (1: off), got {_show(s.top_p)}")
    if not _number(s.min_p) or not 0 <= s.min_p <= 1:
        raise ValueError(f"min_p: expected a number in [0, 1] (0: off), got {_show(s.min_p)}")
    if not _number(s.repetition_penalty) or not 0 < s.repetition_penalty < float("inf"):
        raise ValueError(f"repetition_penalty: expected a number > 0 (1: off), got {_show(s.repetition_penalty)}")
    for k in ("presence_penalty", "frequency_penalty"):
        if not _number(getattr(s, k)) or not -2 <= getattr(s, k) <= 2:
            raise ValueError(f"{k}: expected a number in [-2, 2] (0: off; OpenAI's range), got {_show(getattr(s, k))}")


class RowSampler:
    """The settings of R rows as one (R, 7) fp32 tensor of ops.SAMPLE_PARAMS (made again when rows take new
    requests), and pick(): one token a row, in one kernel (ops.sample_rows: the penalties, top_k, top_p and min_p
    of each row, and a Gumbel-max draw from Philox uniforms keyed by each row's own key and counter). The host-side
    flags say which state the rows need (seen tokens for a repetition penalty, counts of new tokens for presence and
    frequency penalties)."""

    def __init__(self, rows: Sequence[Sampling], device):
        self.params = torch.tensor([list(r) for r in rows], dtype=torch.float32).to(device)
        self.any_rep = any(r.repetition_penalty != 1 for r in rows)
        self.any_count = any(r.presence_penalty or r.frequency_penalty for r in rows)

    def pick(self, logits: Tensor, seen: Optional[Tensor], counts: Optional[Tensor], rng: Tensor) -> Tensor:
        """(R,) int64: each row's token (greedy rows: the argmax of their penalised logits). seen / counts: None when
        no row needs them; rng (R, 2) int64: each row's Philox key and counter (ops.sample_rows)."""
        from . import ops
        return ops.sample_rows(logits.contiguous(), self.params, seen if self.any_rep else None,
                               counts if self.any_count else None, rng=rng)[0]


def rows_differ(rows: List[Optional[Sampling]], base: Sampling) -> bool:
    """Whether any running row (None: idle) has settings other than base."""
    return any(r is not None and r != base for r in rows)
