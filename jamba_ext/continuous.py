"""Continuous batching: a fixed number of rows decode together, and a row whose completion ends (an EOS id, a stop
text, or its own token budget) takes the next prompt at once, instead of idling until the longest completion of its
batch is done (what `generate_many(..., continuous=True)` and `jamba-ext generate --prompts-file F --continuous` run;
ContinuousBatcher for prompts that arrive over time).

    from jamba_ext.continuous import generate_continuous
    for i, new_ids, reason in generate_continuous(model, prompts, batch_size=16, max_new_tokens=[64, 200, ...]):
        ...                               # completions in the order they finish

How (Jamba has no positional encoding, so a sequence's keys may sit at any positions of the cache):
- one static cache of `batch_size` rows (JambaHybridCache(static=True)) and one captured decode step (CUDA graph on a
  GPU), replayed for every step of every prompt; all rows write their step's keys at one shared position `pos`;
- ContinuousBatcher takes prompts at any time (add) and runs one decode step at a time (step);
  generate_continuous adds a list of prompts, longest first, and steps until all are done;
- prompts taking over rows (the first rows too) are prefilled on a cache of their own, and their states are copied
  into the rows: the Mamba layers' conv and SSM states, and the attention layers' keys and values into positions
  pos - L .. pos - 1 of the row, with the row's key mask cleared before them (the earlier prompt's keys are never
  attended again);
- prefill_ahead (tokens, default PREFILL_AHEAD_TOKENS; 0: off): rows free up one at a time, and a prefill of one
  short prompt costs a pass over all the weights (the MoE's experts: as much as a decode step). So when a row needs
  a prompt, the queued prompts after it (up to that many tokens, and batch_size prompts) are prefilled with it, in
  left-padded groups of similar lengths (PREFILL_PAD_TOKENS), and wait, states ready, for the next rows that free up
  (without it, the prompts that take over in the same step are prefilled together, left-padded);
- prompts that share their first tokens (a chat template's system message; `shared_prefix`) run them once: each
  prompt then starts from a copy of that state, and only its own tokens are prefilled;
- a prompt longer than pos moves pos up to its length (the positions skipped are masked for every row);
- when pos + a new prompt's budget would pass the cache's end, every row's keys move left by the smallest start among
  the running rows (the cache holds max prompt + 2 x max budget positions: there is then always room);
- the next step is enqueued before the host reads this step's tokens (on a GPU, as generate() does, it runs
  meanwhile): a row that ends in this step has one more step computed and discarded, and its new prompt's state is
  copied in after it.
Supported: greedy and sampling (temperature, top_k, top_p, min_p; one kernel picks every row's token,
jamba_ext.ops.sample_rows; each prompt draws with its own Philox key -- its own seed (add(..., seed=S)), else one
made from the batcher's seed and the prompt's id -- and the index of the token in its completion as the counter, so
a prompt's draws do not depend on its row, on when it runs or on the prompts beside it), repetition_penalty
(generate()'s: a row's prompt and new tokens), min_new_tokens (no EOS id before), EOS ids, stop_strings with
decode, a token budget per prompt; with ContinuousBatcher.add, a prompt's own sampling settings (a server's
requests: temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
jamba_ext.row_sampling) and seed. Other generate() arguments raise ValueError (generate_many without continuous=True
takes them all).
"""
import collections
import numbers
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .batch import completion, push_stop, stop_decoder
from .logits_filters import penalize
from .row_sampling import RowSampler, Sampling, check as check_sampling, rows_differ
from .tokenizer import StreamDecoder

OPTIONS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "min_new_tokens",
           "eos_token_id", "stop_strings", "cuda_graph", "prefill_chunk", "shared_prefix", "prefill_ahead")
MAX_LOGPROBS = 20            # the most alternatives a prompt's logprobs may ask for (OpenAI's top_logprobs: 20)
MAX_LOGIT_BIAS = 300         # the most tokens a prompt's logit_bias may name (OpenAI's limit)
# shared_prefix=None (the default) runs the prompts' common first tokens once when there are at least this many
SHARED_PREFIX_MIN_TOKENS = 16
# prefill_ahead's default: when prompts must be prefilled for idle rows, queued prompts up to this many tokens in all
# (and batch_size prompts) are prefilled with them, and wait, states ready, for the next rows that free up: one
# forward (one pass over the weights) for several prompts instead of one each (0: only the idle rows' prompts)
PREFILL_AHEAD_TOKENS = 8192
# prompts prefilled ahead go in left-padded groups whose prompts are at most this many tokens shorter than the
# group's longest (the padding costs less than another forward would)
PREFILL_PAD_TOKENS = 512


def shared_prefix(prompts: Sequence[Sequence[int]]) -> List[int]:
    """The token ids every prompt starts with, less one where a prompt is that prefix alone (each prompt keeps at
    least one token of its own: its last position's logits give its first new token)."""
    first = list(prompts[0])
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return first[:max(n, 0)]


def _check_options(options: dict, allowed: Sequence[str], also: str) -> None:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"continuous batching takes {', '.join(allowed)}, {also}; not {', '.join(bad)} "
                         "(generate_many without continuous=True takes every generate() argument)")


def _budgets(max_new_tokens: Union[int, Sequence[int]], n: int) -> List[int]:
    if isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool):
        b = [max_new_tokens] * n
    else:
        b = list(max_new_tokens)
        if len(b) != n:
            raise ValueError(f"max_new_tokens: expected an int or one int a prompt ({n}), got {len(b)} values")
    for i, v in enumerate(b):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"max_new_tokens: expected ints >= 1, got {v!r} for prompt {i}")
    return b


def prompt_key(seed: int, rid: int) -> int:
    """A Philox key in [0, 2^63) made from a seed (an int >= 0) and an index (splitmix64 of both): a prompt's when it
    brings no seed (the batcher's seed and the prompt's id), a server request's choice c (its seed and c)."""
    z = (seed * 0x9E3779B97F4A7C15 + rid + 1) & (2 ** 64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2 ** 64 - 1)
    return (z ^ (z >> 31)) >> 1


class _Rows:
    """The static cache's rows and their shared write position; moves prompts' states in and keys left. With a shared
    prefix (token ids every prompt starts with), the prefix runs once, on a cache of one row (`pre`), and each prompt
    taking over a row starts from a copy of that state: only its own tokens are prefilled."""

    def __init__(self, model, cache, pad: int, prefill_chunk: Optional[int], prefix: Optional[List[int]] = None):
        from .modeling_jamba import JambaHybridCache
        self.model, self.cache, self.pad, self.chunk = model, cache, pad, prefill_chunk
        self.start = [0] * cache.batch_size          # a running row's first key position
        self.shifts = 0                              # (how often the keys moved left: tests)
        self.prefilled = 0                           # tokens prefilled (tests, and what the shared prefix saves)
        self.prefix, self.pre = prefix, None
        # the prefix's state (kept: every prompt starts from a copy), or one pad token's (a template, dropped): the
        # static cache's tensors are shaped after it, with no forward on the static cache itself
        tmpl = JambaHybridCache(model.config, 1, max_length=len(prefix) if prefix else 1)
        self._run(torch.tensor([prefix if prefix else [pad]], device=model.device), tmpl)
        self._alloc_static_like(tmpl)
        if prefix:
            self.pre = tmpl

    def _run(self, ids: torch.Tensor, cache, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ids (n, L) through `cache` after what it holds (mask (n, L): the left padding; None: none), in generate()'s
        chunks -> last-position logits (n, V)."""
        from .modeling_jamba import prefill_chunks
        for s, e in prefill_chunks(ids.shape[1], ids.shape[0], self.chunk):
            logits = self.model(ids[:, s:e], None if mask is None else mask[:, :e], cache=cache,
                                logits_to_keep=1, output_router_logits=False).logits[:, -1]
        self.prefilled += ids.numel()
        return logits

    def _alloc_static_like(self, pre) -> None:
        """The static cache's tensors, shaped after the one-row cache pre (no forward has run on the static cache)."""
        c, B = self.cache, self.cache.batch_size
        c._ensure_static(self.model.device)
        for ts, src in ((c.conv_states, pre.conv_states), (c.ssm_states, pre.ssm_states)):
            for i, t in enumerate(src):
                if t is not None:
                    ts[i] = t.new_zeros((B,) + tuple(t.shape[1:]))
        for ts, src in ((c._keys, pre._keys), (c._values, pre._values)):
            for i, t in enumerate(src):
                if t is not None:
                    ts[i] = t.new_zeros(B, t.shape[1], c.capacity, t.shape[3])

    def _from_prefix(self, n: int, length: int):
        """A cache of n rows holding the shared prefix's state (copies of pre's), room for `length` tokens in all."""
        from .modeling_jamba import JambaHybridCache
        own, pre = JambaHybridCache(self.model.config, 1, max_length=length), self.pre
        own.conv_states = [None if t is None else t.clone() for t in pre.conv_states]
        own.ssm_states = [None if t is None else t.clone() for t in pre.ssm_states]
        own._keys = [None if t is None else pre.keys(i).clone() for i, t in enumerate(pre._keys)]
        own._values = [None if t is None else pre.values(i).clone() for i, t in enumerate(pre._values)]
        own.seq_len = pre.seq_len
        if n > 1:
            own.repeat_rows(n)
        return own

    @property
    def pos(self) -> int:
        return self.cache.seq_len

    def set_pos(self, p: int) -> None:
        self.cache.seq_len = p
        self.cache.cache_position.fill_(p)

    def prefill(self, prompts: List[List[int]], cache) -> torch.Tensor:
        """The prompts (left-padded) through `cache`, in generate()'s chunks -> last-position logits (n, V)."""
        ids, mask = self.model._left_pad(prompts, self.pad, self.model.device)
        return self._run(ids, cache, mask)

    def take(self, rows: List[int], prompts: List[List[int]]) -> torch.Tensor:
        """rows take over prompts (states copied in, keys at pos - L .. pos - 1; needs pos >= the longest of them):
        prefill_groups, then place. Returns their last-position logits (len(rows), V)."""
        return self.place(rows, prompts, self.prefill_groups(prompts))

    def prefill_groups(self, prompts: List[List[int]], pad_tokens: Optional[int] = None) -> List[tuple]:
        """The prompts prefilled, each on a row of a cache of its group -> one (cache, row, last-position logits
        (1, V)) a prompt, in their order (place copies them into rows). Prompts that start with the shared prefix (and
        go past it) are prefilled from copies of its state, those of each length together (no padding: a pad between
        the prefix and a prompt's own tokens would decay the Mamba states); the others left-padded: all in one group
        (pad_tokens None), or in groups whose prompts are at most pad_tokens shorter than the group's longest
        (sorted by length; fewer padded tokens than one group when the lengths differ)."""
        P = len(self.prefix or ())
        shared = [j for j, q in enumerate(prompts) if P and len(q) > P and q[:P] == self.prefix]
        taken = set(shared)
        whole = sorted((j for j in range(len(prompts)) if j not in taken), key=lambda j: (-len(prompts[j]), j))
        groups: List[List[int]] = []
        for j in whole:
            if groups and (pad_tokens is None or len(prompts[groups[-1][0]]) - len(prompts[j]) <= pad_tokens):
                groups[-1].append(j)
            else:
                groups.append([j])
        out: List[Optional[tuple]] = [None] * len(prompts)
        from .modeling_jamba import JambaHybridCache
        for js in groups:                            # left-padded, on a cache of their own
            own = JambaHybridCache(self.model.config, len(js), max_length=len(prompts[js[0]]))
            got = self.prefill([prompts[j] for j in js], own)
            for k, j in enumerate(js):
                out[j] = (own, k, got[k:k + 1])
        by_len: Dict[int, List[int]] = {}
        for j in shared:
            by_len.setdefault(len(prompts[j]), []).append(j)
        for L, js in by_len.items():                 # from copies of the prefix's state, a group per length
            own = self._from_prefix(len(js), L)
            got = self._run(torch.tensor([prompts[j][P:] for j in js], device=self.model.device), own)
            for k, j in enumerate(js):
                out[j] = (own, k, got[k:k + 1])
        return out

    def place(self, rows: List[int], prompts: List[List[int]], staged: List[tuple]) -> torch.Tensor:
        """rows take over prompts prefilled by prefill_groups (their (cache, row, logits)): states copied in, keys at
        pos - L .. pos - 1 (needs pos >= the longest prompt). Returns their logits (len(rows), V)."""
        by_cache: Dict[int, List[int]] = {}
        for j, (own, _, _) in enumerate(staged):
            by_cache.setdefault(id(own), []).append(j)
        for js in by_cache.values():
            self._copy_in([rows[j] for j in js], [prompts[j] for j in js], staged[js[0]][0],
                          [staged[j][1] for j in js])
        return torch.cat([lg for _, _, lg in staged])

    def _copy_in(self, rows: List[int], prompts: List[List[int]], own, which: List[int]) -> None:
        """The state of rows `which` of `own` (a cache of prompts left-padded to its longest, Lg positions) into rows
        of the static cache; a prompt's keys are the last len(prompt) of its row, so the last L (the longest of these
        prompts) positions go to pos - L .. pos - 1."""
        c, L, Lg = self.cache, max(len(p) for p in prompts), own.seq_len
        idx = torch.tensor(rows, device=c.static_mask.device)
        sel = None if which == list(range(own.batch_size)) else torch.tensor(which)

        def pick(t):
            return t if sel is None else t.index_select(0, sel.to(t.device))
        for mine, theirs in ((c.conv_states, own.conv_states), (c.ssm_states, own.ssm_states)):
            for a, b in zip(mine, theirs):
                if a is not None:
                    a.index_copy_(0, idx.to(a.device), pick(b).to(a.device, a.dtype))
        p = self.pos
        for i in range(len(c._keys)):
            for buf, src in ((c._keys[i], own.keys(i)), (c._values[i], own.values(i))):
                if buf is not None:
                    buf[idx.to(buf.device), :, p - L:p] = pick(src[:, :, Lg - L:]).to(buf.device, buf.dtype)
        m = own.key_mask
        c.static_mask[idx] = False
        c.static_mask[idx, p - L:p] = True if m is None else pick(m[:, Lg - L:]).to(c.static_mask.device, torch.bool)
        for r, q in zip(rows, prompts):
            self.start[r] = p - len(q)

    def shift(self, running: Sequence[int]) -> None:
        """Every row's keys and mask move left by the smallest start among the running rows (all when none runs)."""
        c, p = self.cache, self.pos
        s = min((self.start[r] for r in running), default=p)
        if s <= 0:
            return
        n = p - s
        for bufs in (c._keys, c._values):
            for buf in bufs:
                if buf is not None and n:
                    buf[:, :, :n].copy_(buf[:, :, s:p].clone())
        if n:
            c.static_mask[:, :n] = c.static_mask[:, s:p].clone()
        c.static_mask[:, n:] = False
        self.start = [max(0, x - s) for x in self.start]
        self.set_pos(n)
        self.shifts += 1


class ContinuousBatcher:
    """Continuous batching with prompts added at any time (a server's loop, or generate_continuous's):

        bat = ContinuousBatcher(model, batch_size=16, max_prompt_tokens=4096, max_new_tokens=256)
        rid = bat.add(prompt_ids, max_new_tokens=64)      # any time; returns the request's id
        while not bat.done:
            for rid, new_ids, reason in bat.step():       # one decode step; the completions that ended in it
                ...

    step() first moves queued prompts (first in, first out) into idle rows, then runs one decode step of every row.
    The static cache holds max_prompt_tokens + 2 x max_new_tokens positions: a prompt that takes a row when pos is
    below its length moves pos up to it (the positions skipped are masked for every row), and when pos plus a new
    prompt's budget would pass the end, the keys move left (see the module's text). prefix: token ids that prompts
    share (run once; a prompt that does not start with it is prefilled whole). options: as generate_continuous's, but
    shared_prefix (give prefix instead). The state (cache, decode graph) lives until close() or the object is freed.
    """

    def __init__(self, model, batch_size: int = 16, max_prompt_tokens: int = 4096, max_new_tokens: int = 256,
                 seed: int = 0, decode: Optional[Callable[[Sequence[int]], str]] = None,
                 prefix: Optional[Sequence[int]] = None, **options):
        _check_options(options, [o for o in OPTIONS if o != "shared_prefix"], "max_new_tokens, seed, decode and prefix")
        for name, v in (("batch_size", batch_size), ("max_prompt_tokens", max_prompt_tokens),
                        ("max_new_tokens", max_new_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        stop = options.get("stop_strings") or ()
        self.stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if self.stop and decode is None:
            raise ValueError("stop_strings needs decode (token ids -> text) to find where each completion ends")
        e = options.get("eos_token_id", "config")
        self.eos = set(model._eos_ids()) if isinstance(e, str) else set() if e is None else \
            {e} if isinstance(e, int) else set(e)
        self.do_sample = bool(options.get("do_sample", False))
        self.warp = dict(do_sample=self.do_sample, temperature=options.get("temperature", 1.0),
                         top_k=options.get("top_k", 0), top_p=options.get("top_p", 1.0), min_p=options.get("min_p"))
        for k in ("temperature", "top_p"):
            if not 0 < self.warp[k] <= (1 if k == "top_p" else float("inf")):
                raise ValueError(f"{k}: expected > 0{' and <= 1' if k == 'top_p' else ''}, got {self.warp[k]!r}")
        top_k = self.warp["top_k"]
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k: expected an int >= 0 (0: off), got {top_k!r}")
        if self.warp["min_p"] is not None and not 0 <= self.warp["min_p"] <= 1:
            raise ValueError(f"min_p: expected in [0, 1] (or None: off), got {self.warp['min_p']!r}")
        self.penalty = options.get("repetition_penalty", 1.0)
        if isinstance(self.penalty, bool) or not isinstance(self.penalty, (int, float)) or not self.penalty > 0:
            raise ValueError(f"repetition_penalty: expected a number > 0 (1.0: off), got {self.penalty!r}")
        # the settings a prompt added without its own samples with (temperature 0: greedy)
        self.base = Sampling(self.warp["temperature"] if self.do_sample else 0.0, top_k, self.warp["top_p"],
                             self.warp["min_p"] or 0.0, self.penalty)
        self.min_new = options.get("min_new_tokens", 0)
        if isinstance(self.min_new, bool) or not isinstance(self.min_new, int) or self.min_new < 0:
            raise ValueError(f"min_new_tokens: expected an int >= 0, got {self.min_new!r}")
        if model.model._placement() is not None:
            raise ValueError("continuous batching runs a model on one device (this one is split over several: use "
                             "generate_many without continuous=True)")
        self.model, self.B, self.decode, self.seed = model, batch_size, decode, seed
        self.max_prompt, self.max_new = max_prompt_tokens, max_new_tokens
        self.prefix = list(prefix) if prefix else None
        self.chunk, self.cuda_graph = options.get("prefill_chunk"), options.get("cuda_graph")
        ahead = self.prefill_ahead = options.get("prefill_ahead", PREFILL_AHEAD_TOKENS)
        if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 0:
            raise ValueError(f"prefill_ahead: expected an int >= 0 (tokens; 0: off), got {ahead!r}")
        # (id, prompt, budget, stop texts, (sampling settings, logprobs, Philox key))
        self.queue: "collections.deque[tuple]" = collections.deque()
        # prompts prefilled ahead of a free row, first in first out before the queue: (queue entry, (cache, row,
        # logits)) (prefill_ahead)
        self.staged: "collections.deque[tuple]" = collections.deque()
        self.next_id = 0
        self.rows: Optional[_Rows] = None            # (made by the first step: the cache, the graph, the buffers)
        self.stepped: List[Tuple[int, int]] = []     # the last step's (id, new token) of every prompt it ran
        self.logprobs: Dict[int, list] = {}          # id -> its completion's logprobs (see add), when it has ended

    def add(self, prompt: Sequence[int], max_new_tokens: Optional[int] = None,
            stop_strings: Optional[Sequence[str]] = None, sampling: Optional[dict] = None,
            logprobs: Optional[int] = None, seed: Optional[int] = None,
            logit_bias: Optional[Dict[int, float]] = None) -> int:
        """Queues a prompt (token ids) with its budget (default: the batcher's max_new_tokens) and its own stop texts
        (default: the batcher's stop_strings; needs decode); returns its id. sampling: the prompt's own settings
        (jamba_ext.row_sampling.FIELDS: temperature (0: greedy), top_k, top_p, min_p, repetition_penalty,
        presence_penalty, frequency_penalty; those not given are the batcher's), as a server's requests bring them;
        rows of different settings pick their tokens in one pass (row_sampling.RowSampler). logprobs (an int in
        [0, MAX_LOGPROBS]; None: off): when the completion ends, self.logprobs[id] holds, for each of its tokens,
        (the token's log-probability, [(id, log-probability) of the `logprobs` most likely tokens]) under the model's
        distribution (log_softmax of its logits, before penalties, temperature and filters); pop it there. seed (an
        int in [0, 2^63); None: one made from the batcher's seed and the id): the key of the prompt's draws, with the
        token's index in its completion as the counter -- the same seed and logits draw the same tokens, whatever
        row, step or neighbours the prompt has (greedy prompts: no draws). logit_bias ({token id: a number in [-100,
        100]}, OpenAI's): added to the prompt's logits before its penalties, filters and pick (-100 bans a token in
        practice, +100 forces it); its logprobs stay the model's."""
        prompt = prompt.tolist() if isinstance(prompt, torch.Tensor) else \
            [t.item() if isinstance(t, torch.Tensor) else t for t in prompt]
        if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt):
            raise ValueError(f"prompt: expected token ids (ints), got {list(prompt)[:8]!r}")   # (5.7 was cut to 5)
        prompt = [int(t) for t in prompt]
        if not 1 <= len(prompt) <= self.max_prompt:
            raise ValueError(f"prompt: expected 1 to max_prompt_tokens = {self.max_prompt} tokens, got {len(prompt)}")
        b = self.max_new if max_new_tokens is None else max_new_tokens
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= self.max_new:
            raise ValueError(f"max_new_tokens: expected an int in [1, {self.max_new}], got {b!r}")
        stop = self.stop if stop_strings is None else \
            (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
        if stop and (self.decode is None or not all(isinstance(x, str) and x for x in stop)):
            raise ValueError("stop_strings: expected non-empty texts, and a batcher with decode (token ids -> text)")
        samp = check_sampling(sampling, self.base) if sampling else self.base
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or
                                     not 0 <= logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs: expected an int in [0, {MAX_LOGPROBS}] (or None: off), got {logprobs!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
            raise ValueError(f"seed: expected an int in [0, 2^63) (or None), got {seed!r}")
        rid, self.next_id = self.next_id, self.next_id + 1
        key = prompt_key(self.seed, rid) if seed is None else seed
        bias = self.check_logit_bias(logit_bias) if logit_bias else None
        self.queue.append((rid, prompt, b, stop, (samp, logprobs, key, bias)))
        return rid

    def check_logit_bias(self, logit_bias) -> Tuple[List[int], List[float]]:
        """A prompt's logit_bias ({token id: bias}) -> (token ids, biases), or ValueError naming what is wrong (add's
        check; a server checks a request's with it before answering)."""
        V = self.model.config.vocab_size
        if not isinstance(logit_bias, dict) or len(logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias: expected a dict of at most {MAX_LOGIT_BIAS} {{token id: bias}}")
        ids, vals = [], []
        for t, v in logit_bias.items():
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V:
                raise ValueError(f"logit_bias: token ids are ints in [0, {V}), got {t!r}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
                raise ValueError(f"logit_bias: biases are numbers in [-100, 100], got {v!r} for token {t}")
            ids.append(t)
            vals.append(float(v))
        return ids, vals

    @property
    def running(self) -> int:
        return 0 if self.rows is None else sum(s is not None for s in self.seq)

    @property
    def queued(self) -> int:
        """Prompts waiting for a row (those prefilled ahead included)."""
        return len(self.queue) + len(self.staged)

    @property
    def done(self) -> bool:
        """No prompt queued and none running."""
        return not self.queued and not self.running

    def close(self) -> None:
        """Frees the cache and the decode graph, and drops the prompts running (a later step makes them again for the
        prompts queued; those prefilled ahead go back to the queue's front, their states dropped)."""
        self.rows = self.graph = self.logits = None
        while self.staged:
            self.queue.appendleft(self.staged.pop()[0])

    def cancel(self, rid: int) -> bool:
        """Drops request rid (add's id) wherever it is: queued, prefilled ahead (its state dropped) or running (its row
        idles from the next step and takes the next queued prompt then; its completion is not returned by any step).
        True when it was found; False when it has ended already or was never added (a server calls this when a
        client goes away, which may come after the end)."""
        for i, e in enumerate(self.queue):
            if e[0] == rid:
                del self.queue[i]
                return True
        for i, (e, _) in enumerate(self.staged):
            if e[0] == rid:
                del self.staged[i]
                return True
        if self.rows is None or rid not in self.seq:
            return False
        r = self.seq.index(rid)
        self._free(r)
        self.pending.pop(r, None)
        return True

    def _free(self, r: int) -> None:
        """Row r idles from the next step (its prompt ended or was dropped); the prompt it takes next resets the
        rest."""
        self.seq[r], self.new[r], self.samp[r], self.want_lp[r], self.lps[r] = None, [], None, None, []
        self.row_text[r] = None

    def _start(self) -> None:
        from .modeling_jamba import JambaHybridCache
        m, B = self.model, self.B
        pad = m._generation_ids("pad_token_id")
        cache = JambaHybridCache(m.config, B, max_length=self.max_prompt + 2 * self.max_new, static=True)
        pad = 0 if pad is None else pad % m.config.vocab_size   # (a negative config id from the end, as generate)
        rows = _Rows(m, cache, pad, self.chunk, self.prefix)
        dev = m.device
        V = m.get_output_embeddings().weight.shape[0] if m.get_output_embeddings() is not None else m.config.vocab_size
        self.seq: List[Optional[int]] = [None] * B   # the request each row runs (None: idle)
        self.budget = [0] * B
        self.row_stop: List[tuple] = [()] * B        # each row's stop texts
        self.row_text: List[Optional[StreamDecoder]] = [None] * B    # (with stop texts) the completion's text
        self.new: List[List[int]] = [[] for _ in range(B)]
        self.prompt: List[List[int]] = [[] for _ in range(B)]
        self.samp: List[Optional[Sampling]] = [None] * B    # each running row's settings
        self.want_lp: List[Optional[int]] = [None] * B      # each running row's logprobs (None: off)
        self.lps: List[list] = [[] for _ in range(B)]       # its (logprob, top) so far
        self.sampler: Optional[RowSampler] = None       # (when rows differ from self.base)
        self.counts: Optional[torch.Tensor] = None      # (B, V) int32: each row's new tokens (presence/frequency)
        self.logits = torch.zeros(B, V, dtype=m.dtype, device=dev)
        self.pending: Dict[int, torch.Tensor] = {}   # row -> its new prompt's logits, for the next pick
        self.key = [0] * B                           # each running row's Philox key (its prompt's seed)
        self.bias: Optional[torch.Tensor] = None     # (B, V) fp32: each row's logit_bias (made on first need)
        self.biased: set = set()                     # the rows whose bias row is not all zero
        self.rng_host = torch.zeros(B, 2, dtype=torch.long, pin_memory=dev.type == "cuda")   # (key, token index)
        self.rng = torch.zeros(B, 2, dtype=torch.long, device=dev)
        self.uniform = RowSampler([self.base] * B, dev) if self.do_sample else None
        self.run_ahead = dev.type == "cuda"
        self.host = torch.empty(B, dtype=torch.long, pin_memory=self.run_ahead)
        # repetition_penalty: the tokens of each row's prompt and completion so far; min_new_tokens: each row's count
        # of new tokens, and the EOS columns masked while it is below
        self.seen = torch.zeros(B, V, dtype=torch.bool, device=dev) if self.penalty != 1.0 else None
        self.count = torch.zeros(B, dtype=torch.long, device=dev) if self.min_new and self.eos else None
        if self.count is not None:
            self.eos_cols = torch.zeros(V, dtype=torch.bool, device=dev)
            self.eos_cols[torch.tensor(sorted(e for e in self.eos if 0 <= e < V), device=dev, dtype=torch.long)] = True
        self.graph, self.rows = None, rows
        self._admit()
        use = self.cuda_graph
        if (dev.type == "cuda" if use is None else bool(use) and dev.type == "cuda"):
            from .modeling_jamba import _DecodeGraph
            self.graph = _DecodeGraph.capture(m, cache, torch.zeros(B, dtype=torch.long, device=dev))

    def _admit(self) -> None:
        """Queued prompts into idle rows (first in, first out), as many as there are idle rows: those prefilled ahead
        first, then the queue's (prefilled now, with more of the queue when prefill_ahead allows: _stage)."""
        idle = [r for r in range(self.B) if self.seq[r] is None]
        n = min(len(idle), self.queued)
        if not n:
            return
        if len(self.staged) < n:
            self._stage(n - len(self.staged))
        take = [(r, self.staged.popleft()) for r in idle[:n]]
        rows, cap = self.rows, self.rows.cache.capacity
        running = [r for r in range(self.B) if self.seq[r] is not None]
        # a new row writes its keys up to max(pos, L) + its budget - 1; a running row's room is unchanged by this
        # (pos + what it still needs fitted when it came, and a move of pos up to L <= max_prompt leaves L + that
        # <= max_prompt + max_new)
        L = max(len(e[1]) for _, (e, _) in take)
        need = max(e[2] for _, (e, _) in take)
        if max(rows.pos, L) + need > cap:
            rows.shift(running)
        if max(rows.pos, L) + need > cap:            # (after the shift pos <= max_prompt + max_new - 1: never)
            raise RuntimeError(f"continuous batching: no room in the cache ({cap} positions) at {rows.pos} for {L} + "
                               f"{need} more")
        if rows.pos < L:                             # (the positions skipped are masked for every row)
            rows.set_pos(L)
        got = rows.place([r for r, _ in take], [e[1] for _, (e, _) in take], [st for _, (_, st) in take])
        for j, (r, ((rid, q, b, stop, (samp, lp, key, bias)), _)) in enumerate(take):
            self.seq[r], self.budget[r], self.new[r], self.row_stop[r] = rid, b, [], stop
            self.row_text[r] = stop_decoder(self.decode, q) if stop else None   # (a " world" stop: "▁world" first)
            self.prompt[r], self.samp[r], self.want_lp[r], self.lps[r], self.key[r] = q, samp, lp, [], key
            self.pending[r] = got[j:j + 1]
            if self.seen is not None:
                self.seen[r] = False
                self.seen[r, torch.tensor(q, device=self.seen.device)] = True
            if self.count is not None:
                self.count[r] = 0
            if self.counts is not None:
                self.counts[r] = 0
            if r in self.biased:
                self.bias[r] = 0
                self.biased.discard(r)
            if bias is not None:
                if self.bias is None:
                    self.bias = torch.zeros(self.B, self.logits.shape[1], dtype=torch.float32,
                                            device=self.logits.device)
                ids = torch.tensor(bias[0], device=self.bias.device)
                self.bias[r].index_put_((ids,), torch.tensor(bias[1], device=self.bias.device))
                self.biased.add(r)
        self._row_settings()

    def _stage(self, n: int) -> None:
        """The queue's first n prompts prefilled (they have idle rows), and with prefill_ahead the prompts after them
        while their tokens in all stay within it and there are at most batch_size: staged, first in first out. With
        prefill_ahead, in groups of similar lengths (PREFILL_PAD_TOKENS); without it, in one left-padded group."""
        picked, ahead = [self.queue.popleft() for _ in range(n)], self.prefill_ahead
        tokens = sum(len(e[1]) for e in picked)
        while ahead and self.queue and len(picked) < self.B and tokens + len(self.queue[0][1]) <= ahead:
            tokens += len(self.queue[0][1])
            picked.append(self.queue.popleft())
        got = self.rows.prefill_groups([e[1] for e in picked], PREFILL_PAD_TOKENS if ahead else None)
        self.staged.extend(zip(picked, got))

    def _row_settings(self) -> None:
        """After rows took prompts: the per-row sampler when the running rows' settings differ from the batcher's, and
        what it needs (made on first need: seen tokens, counts of new tokens, filled for the rows that already
        run)."""
        running = [r for r in range(self.B) if self.seq[r] is not None]
        if not rows_differ([self.samp[r] for r in running], self.base):
            self.sampler = None
            return
        self.sampler = RowSampler([self.samp[r] or self.base for r in range(self.B)], self.logits.device)
        V, dev = self.logits.shape[1], self.logits.device
        if self.sampler.any_rep and self.seen is None:
            self.seen = torch.zeros(self.B, V, dtype=torch.bool, device=dev)
            for r in running:
                self.seen[r, torch.tensor(self.prompt[r] + self.new[r], device=dev)] = True
        if self.sampler.any_count and self.counts is None:
            self.counts = torch.zeros(self.B, V, dtype=torch.int32, device=dev)
            for r in running:
                if self.new[r]:
                    ids = torch.tensor(self.new[r], device=dev)
                    self.counts[r].index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))

    def step(self) -> List[Tuple[int, List[int], str]]:
        """Queued prompts into idle rows, then one decode step; returns (id, completion token ids, finish reason) of
        the completions that ended in it ([] when nothing is queued or running). Each running prompt's new token of
        the step is in self.stepped, as (id, token) (streaming)."""
        self.stepped = []
        with torch.inference_mode():
            if self.rows is None:
                if not self.queued:
                    return []
                self._start()
            else:
                self._admit()
            if not self.running:
                return []
            logits = self.logits
            if self.pending:
                rs = sorted(self.pending)
                logits[torch.tensor(rs, device=logits.device)] = \
                    torch.cat([self.pending[r] for r in rs]).to(logits.dtype)
                self.pending.clear()
            sampler = self.sampler or self.uniform   # (the rows' own settings, or the batcher's sampled ones)
            lg = logits if not self.biased else logits.float() + self.bias      # (logit_bias: before the rest)
            if self.count is not None:
                lg = lg.masked_fill((self.count < self.min_new)[:, None] & self.eos_cols, float("-inf"))
            if sampler is not None:                  # one kernel: penalties, filters, the draw
                # (each row's key and its token's index; the pinned buffer's last copy ended before the last step's
                # event, which the host waited for)
                self.rng_host.copy_(torch.tensor([[self.key[r], len(self.new[r])] for r in range(self.B)]))
                self.rng.copy_(self.rng_host, non_blocking=self.run_ahead)
                nxt = sampler.pick(lg, self.seen, self.counts, self.rng)
            else:                                    # every row greedy, with the batcher's repetition penalty
                nxt = (lg if self.seen is None else penalize(lg, self.seen, self.penalty)).argmax(-1)
            if self.seen is not None:
                self.seen.scatter_(1, nxt[:, None], True)
            if self.counts is not None:
                self.counts.scatter_add_(1, nxt[:, None], torch.ones_like(nxt[:, None], dtype=torch.int32))
            if self.count is not None:
                self.count += 1
            lp_rows = [r for r in range(self.B) if self.seq[r] is not None and self.want_lp[r] is not None]
            if lp_rows:                              # the chosen tokens' and the top ones' log-probabilities
                k = max(self.want_lp[r] for r in lp_rows)
                lsm = torch.log_softmax(logits.float(), dim=-1)
                top = torch.topk(lsm, k, dim=-1) if k else None
                # (to the host before the step's event, as the tokens: the next step keeps running meanwhile)
                lp_dev = [t.to("cpu", non_blocking=self.run_ahead) for t in
                          (lsm.gather(1, nxt[:, None])[:, 0],) + ((top.values, top.indices) if k else ())]
            self.host.copy_(nxt, non_blocking=self.run_ahead)
            ready = torch.cuda.Event() if self.run_ahead else None
            if ready is not None:
                ready.record()
            # the next step is enqueued before the host reads this one's tokens (on a GPU it runs meanwhile); a row
            # that ends now has it computed and discarded: its next prompt's state is copied in after it
            if self.graph is not None:
                self.logits = self.graph.step(nxt)
            else:
                self.logits = self.model(nxt[:, None], cache=self.rows.cache, output_router_logits=False).logits[:, -1]
            if ready is not None:
                ready.synchronize()
            toks = self.host.tolist()
            if lp_rows:
                chosen = lp_dev[0].tolist()
                tv, ti = (lp_dev[1].tolist(), lp_dev[2].tolist()) if k else ([], [])
                for r in lp_rows:
                    n = self.want_lp[r]
                    self.lps[r].append((chosen[r], list(zip(ti[r][:n], tv[r][:n])) if n else []))
        ended = []
        for r in range(self.B):
            if self.seq[r] is None:
                continue
            row, t, stop = self.new[r], toks[r], self.row_stop[r]
            row.append(t)
            self.stepped.append((self.seq[r], t))
            # (the stop texts in the completion's text as it reads after the prompt, as generate() and the server
            # read it: decoded alone, a "▁" tokenizer's first new token lost its leading space)
            hit = bool(stop) and push_stop(self.row_text[r], t, stop)
            if t in self.eos or len(row) >= self.budget[r] or hit:
                new, reason = completion(row, self.eos)          # (before an EOS id: "stop")
                ended.append((self.seq[r], new, "stop" if hit else reason))
                if self.want_lp[r] is not None:      # (cut as the completion is: before an EOS id, at a stop text)
                    self.logprobs[self.seq[r]] = self.lps[r][:len(ended[-1][1])]
                self._free(r)
        return ended


def generate_continuous(model, prompts: Sequence[Sequence[int]], batch_size: int = 16,
                        max_new_tokens: Union[int, Sequence[int]] = 32, seed: int = 0,
                        decode: Optional[Callable[[Sequence[int]], str]] = None, **options
                        ) -> Iterator[Tuple[int, List[int], str]]:
    """Yields (prompt index, completion token ids, finish reason) as completions end (not in the prompts' order; see
    the module's text). max_new_tokens: one budget for all, or one a prompt. options: do_sample, temperature, top_k,
    top_p, min_p, repetition_penalty, min_new_tokens, eos_token_id ("config": the model's; None: none), stop_strings
    (with decode: token ids -> text), cuda_graph (None: on a CUDA model), prefill_chunk, shared_prefix (None: the
    prompts' common first tokens run once when there are at least SHARED_PREFIX_MIN_TOKENS of them, as a chat
    template's system message; True: any; False: never). A ContinuousBatcher of min(batch_size, prompts) rows, the
    prompts added longest first (the first rows' left padding is short, and each later prompt fits below pos)."""
    _check_options(options, OPTIONS, "max_new_tokens, seed and decode")
    n = len(prompts)
    if n == 0:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    budget = _budgets(max_new_tokens, n)
    share = options.pop("shared_prefix", None)
    prefix = shared_prefix(prompts) if share is not False else []
    if share is None and len(prefix) < SHARED_PREFIX_MIN_TOKENS:
        prefix = []
    bat = ContinuousBatcher(model, min(batch_size, n), max(len(p) for p in prompts), max(budget), seed, decode,
                            prefix or None, **options)
    order = sorted(range(n), key=lambda i: (-len(prompts[i]), i))                  # longest first
    index = {bat.add(prompts[i], budget[i]): i for i in order}
    while not bat.done:
        for rid, tokens, reason in bat.step():
            yield index[rid], tokens, reason
