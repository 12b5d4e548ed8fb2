"""Continuous batching for offline generation: a fixed number of rows decode together, and a row whose completion
ends (an EOS id, a stop text, or its own token budget) takes the next prompt at once, instead of idling until the
longest completion of its batch is done (what `generate_many(..., continuous=True)` and `jamba-ext generate
--prompts-file F --continuous` run).

    from jamba_ext.continuous import generate_continuous
    for i, new_ids, reason in generate_continuous(model, prompts, batch_size=16, max_new_tokens=[64, 200, ...]):
        ...                               # completions in the order they finish

How (Jamba has no positional encoding, so a sequence's keys may sit at any positions of the cache):
- one static cache of `batch_size` rows (JambaHybridCache(static=True)) and one captured decode step (CUDA graph on a
  GPU), replayed for every step of every prompt; all rows write their step's keys at one shared position `pos`;
- the first rows are prefilled together (left-padded, longest prompts first); a prompt taking over rows later is
  prefilled on its own cache (the prompts that take over in the same step together, left-padded), and its states are
  copied into the row: the Mamba layers' conv and SSM states, and the attention layers' keys and values into positions
  pos - L .. pos - 1 of the row, with the row's key mask cleared before them (the earlier prompt's keys are never
  attended again);
- prompts that share their first tokens (a chat template's system message; `shared_prefix`) run them once: each
  prompt then starts from a copy of that state, and only its own tokens are prefilled;
- when pos + a prompt's budget would pass the cache's end, every row's keys move left by the smallest start among the
  running rows (the cache holds max prompt + 2 x max budget positions: there is then always room);
- the next step is enqueued before the host reads this step's tokens (on a GPU, as generate() does, it runs
  meanwhile): a row that ends in this step has one more step computed and discarded, and its new prompt's state is
  copied in after it.
Supported: greedy and sampling (temperature, top_k, top_p, min_p; one torch.Generator seeded with `seed`: a run
repeats exactly for the same batch_size), repetition_penalty (generate()'s: a row's prompt and new tokens),
min_new_tokens (no EOS id before), EOS ids, stop_strings with decode, a token budget per prompt. Other
generate() arguments raise ValueError (generate_many without continuous=True takes them all).
"""
import collections
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .batch import completion
from .logits_filters import penalize

OPTIONS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "min_new_tokens",
           "eos_token_id", "stop_strings", "cuda_graph", "prefill_chunk", "shared_prefix")
# shared_prefix=None (the default) runs the prompts' common first tokens once when there are at least this many
SHARED_PREFIX_MIN_TOKENS = 16


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
        if prefix:
            self.pre = JambaHybridCache(model.config, 1, max_length=len(prefix))
            self._run(torch.tensor([prefix], device=model.device), self.pre)
            self._alloc_static_like(self.pre)

    def _run(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """ids (n, L), no padding, through `cache` after what it holds, in generate()'s chunks -> logits (n, V)."""
        from .modeling_jamba import prefill_chunks
        for s, e in prefill_chunks(ids.shape[1], ids.shape[0], self.chunk):
            logits = self.model(ids[:, s:e], cache=cache, logits_to_keep=1).logits[:, -1]
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
        from .modeling_jamba import prefill_chunks
        dev = self.model.device
        ids, mask = self.model._left_pad(prompts, self.pad, dev)
        for s, e in prefill_chunks(ids.shape[1], ids.shape[0], self.chunk):
            logits = self.model(ids[:, s:e], mask[:, :e], cache=cache, logits_to_keep=1).logits[:, -1]
        self.prefilled += ids.numel()
        return logits

    def take(self, rows: List[int], prompts: List[List[int]]) -> torch.Tensor:
        """rows take over prompts (states copied in, keys at pos - L .. pos - 1; needs pos >= the longest of them).
        Returns their last-position logits (len(rows), V). Without a shared prefix the prompts are prefilled together
        (left-padded) on their own cache; with one, the prompts of each length together, after copies of its state
        (no padding: a pad between the prefix and a prompt's own tokens would decay the Mamba states)."""
        from .modeling_jamba import JambaHybridCache
        if not self.prefix:
            own = JambaHybridCache(self.model.config, len(rows), max_length=max(len(p) for p in prompts))
            logits = self.prefill(prompts, own)
            self._copy_in(rows, prompts, own)
            return logits
        by_len: Dict[int, List[int]] = {}
        for j, q in enumerate(prompts):
            by_len.setdefault(len(q), []).append(j)
        out = [None] * len(rows)
        P = len(self.prefix)
        for L, js in by_len.items():
            own = self._from_prefix(len(js), L)
            got = self._run(torch.tensor([prompts[j][P:] for j in js], device=self.model.device), own)
            self._copy_in([rows[j] for j in js], [prompts[j] for j in js], own)
            for k, j in enumerate(js):
                out[j] = got[k:k + 1]
        return torch.cat(out)

    def _copy_in(self, rows: List[int], prompts: List[List[int]], own) -> None:
        """The state of `own` (one row per prompt, left-padded to its longest) into rows of the static cache."""
        c, L = self.cache, max(len(p) for p in prompts)
        idx = torch.tensor(rows, device=c.static_mask.device)
        for mine, theirs in ((c.conv_states, own.conv_states), (c.ssm_states, own.ssm_states)):
            for a, b in zip(mine, theirs):
                if a is not None:
                    a.index_copy_(0, idx.to(a.device), b.to(a.device, a.dtype))
        p = self.pos
        for i in range(len(c._keys)):
            for buf, src in ((c._keys[i], own.keys(i)), (c._values[i], own.values(i))):
                if buf is not None:
                    buf[idx.to(buf.device), :, p - L:p] = src.to(buf.device, buf.dtype)
        m = own.key_mask
        c.static_mask[idx] = False
        c.static_mask[idx, p - L:p] = True if m is None else m.to(c.static_mask.device, torch.bool)
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


def generate_continuous(model, prompts: Sequence[Sequence[int]], batch_size: int = 16,
                        max_new_tokens: Union[int, Sequence[int]] = 32, seed: int = 0,
                        decode: Optional[Callable[[Sequence[int]], str]] = None, **options
                        ) -> Iterator[Tuple[int, List[int], str]]:
    """Yields (prompt index, completion token ids, finish reason) as completions end (not in the prompts' order; see
    the module's text). max_new_tokens: one budget for all, or one a prompt. options: do_sample, temperature, top_k,
    top_p, min_p, repetition_penalty, min_new_tokens, eos_token_id ("config": the model's; None: none), stop_strings
    (with decode: token ids -> text), cuda_graph (None: on a CUDA model), prefill_chunk, shared_prefix (None: the
    prompts' common first tokens run once when there are at least SHARED_PREFIX_MIN_TOKENS of them, as a chat
    template's system message; True: any; False: never)."""
    from .modeling_jamba import JambaHybridCache, _DecodeGraph
    bad = sorted(set(options) - set(OPTIONS))
    if bad:
        raise ValueError(f"continuous batching takes {', '.join(OPTIONS)}, max_new_tokens, seed and decode; not "
                         f"{', '.join(bad)} (generate_many without continuous=True takes every generate() argument)")
    n = len(prompts)
    if n == 0:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    budget = _budgets(max_new_tokens, n)
    stop = options.get("stop_strings") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if stop and decode is None:
        raise ValueError("stop_strings needs decode (token ids -> text) to find where each completion ends")
    window = max((len(s) for s in stop), default=0) + 8     # tokens whose text may hold a stop text just completed
    e = options.get("eos_token_id", "config")
    eos = set(model._eos_ids()) if isinstance(e, str) else set() if e is None else {e} if isinstance(e, int) else set(e)
    do_sample = bool(options.get("do_sample", False))
    warp = dict(do_sample=do_sample, temperature=options.get("temperature", 1.0), top_k=options.get("top_k", 0),
                top_p=options.get("top_p", 1.0), min_p=options.get("min_p"))
    for k in ("temperature", "top_p"):
        if not 0 < warp[k] <= (1 if k == "top_p" else float("inf")):
            raise ValueError(f"{k}: expected > 0{' and <= 1' if k == 'top_p' else ''}, got {warp[k]!r}")
    if isinstance(warp["top_k"], bool) or not isinstance(warp["top_k"], int) or warp["top_k"] < 0:
        raise ValueError(f"top_k: expected an int >= 0 (0: off), got {warp['top_k']!r}")
    if warp["min_p"] is not None and not 0 <= warp["min_p"] <= 1:
        raise ValueError(f"min_p: expected in [0, 1] (or None: off), got {warp['min_p']!r}")
    penalty = options.get("repetition_penalty", 1.0)
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
        raise ValueError(f"repetition_penalty: expected a number > 0 (1.0: off), got {penalty!r}")
    min_new = options.get("min_new_tokens", 0)
    if isinstance(min_new, bool) or not isinstance(min_new, int) or min_new < 0:
        raise ValueError(f"min_new_tokens: expected an int >= 0, got {min_new!r}")
    dev = model.device
    if model.model._placement() is not None:
        raise ValueError("continuous batching runs a model on one device (this one is split over several: use "
                         "generate_many without continuous=True)")
    pad = model._generation_ids("pad_token_id")
    pad = 0 if pad is None else pad
    share = options.get("shared_prefix")
    prefix = shared_prefix(prompts) if share is not False else []
    if share is None and len(prefix) < SHARED_PREFIX_MIN_TOKENS:
        prefix = []
    queue = collections.deque(sorted(range(n), key=lambda i: (-len(prompts[i]), i)))   # longest first
    B = min(batch_size, n)
    cap = max(len(p) for p in prompts) + 2 * max(budget)      # (the decode step's attention reads all of it)
    gen = None
    if do_sample:
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed)
    use_graph = options.get("cuda_graph")
    use_graph = dev.type == "cuda" if use_graph is None else bool(use_graph) and dev.type == "cuda"
    ahead = dev.type == "cuda"
    seq: List[Optional[int]] = [None] * B            # the prompt each row runs (None: idle)
    new: List[List[int]] = [[] for _ in range(B)]
    with torch.inference_mode():
        cache = JambaHybridCache(model.config, B, max_length=cap, static=True)
        rows = _Rows(model, cache, pad, options.get("prefill_chunk"), prefix or None)
        first = [queue.popleft() for _ in range(B)]
        if prefix:                                   # each from the prefix's state, into the rows
            rows.set_pos(len(prompts[first[0]]))
            logits = rows.take(list(range(B)), [list(prompts[i]) for i in first])
        else:                                        # together, left-padded, straight into the rows
            logits = rows.prefill([list(prompts[i]) for i in first], cache)
        for r, i in enumerate(first):
            seq[r], rows.start[r] = i, rows.pos - len(prompts[i])
        # repetition_penalty: the tokens of each row's prompt and completion so far
        seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device) if penalty != 1.0 else None

        def mark(r: int, prompt: Sequence[int]) -> None:
            seen[r] = False
            seen[r, torch.tensor(list(prompt), device=seen.device)] = True
        if seen is not None:
            for r, i in enumerate(first):
                mark(r, prompts[i])
        # min_new_tokens: each row's new tokens so far, on the device; the EOS columns masked while below it
        count = torch.zeros(B, dtype=torch.long, device=logits.device) if min_new and eos else None
        if count is not None:
            eos_cols = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            eos_cols[torch.tensor(sorted(e for e in eos if 0 <= e < logits.shape[-1]), device=logits.device,
                                  dtype=torch.long)] = True
        graph = _DecodeGraph.capture(model, cache, logits.argmax(-1)) if use_graph else None
        host = torch.empty(B, dtype=torch.long, pin_memory=ahead)
        pending: Dict[int, torch.Tensor] = {}        # row -> its new prompt's logits, for the next pick
    step = (lambda t: graph.step(t)) if graph is not None else \
        (lambda t: model(t[:, None], cache=cache).logits[:, -1])   # noqa: E731
    while True:
        with torch.inference_mode():
            if pending:
                rs = sorted(pending)
                logits[torch.tensor(rs, device=logits.device)] = torch.cat([pending[r] for r in rs]).to(logits.dtype)
                pending.clear()
            lg = logits if seen is None else penalize(logits, seen, penalty)
            if count is not None:
                lg = lg.masked_fill((count < min_new)[:, None] & eos_cols, float("-inf"))
            scores = model._warp(lg, **warp)
            nxt = scores.argmax(-1) if not do_sample else \
                torch.multinomial(torch.softmax(scores.float(), -1), 1, generator=gen)[:, 0]
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            if count is not None:
                count += 1
            host.copy_(nxt, non_blocking=ahead)
            ready = torch.cuda.Event() if ahead else None
            if ready is not None:
                ready.record()
            # the next step is enqueued before the host reads this one's tokens (on a GPU it runs meanwhile); a row
            # that ends now has it computed and discarded: its next prompt's state is copied in after it
            logits = step(nxt)
            if ready is not None:
                ready.synchronize()
            toks = host.tolist()
        done = []
        for r in range(B):
            i = seq[r]
            if i is None:
                continue
            new[r].append(toks[r])
            t = toks[r]
            if t in eos or len(new[r]) >= budget[i] or (stop and any(s in decode(new[r][-window:]) for s in stop)):
                done.append(r)
        for r in done:
            tokens, reason = completion(new[r], eos, stop, decode)
            yield seq[r], tokens, reason
            seq[r], new[r] = None, []
        running = [r for r in range(B) if seq[r] is not None]
        if not running and not queue:
            return
        with torch.inference_mode():
            if done and queue:
                take = [(r, queue.popleft()) for r in done[:len(queue)]]
                need = max(budget[i] for _, i in take)
                if rows.pos + need > cache.capacity:
                    rows.shift(running)
                L = max(len(prompts[i]) for _, i in take)
                if rows.pos < L:                     # (no row running: the positions skipped stay masked)
                    rows.set_pos(L)
                got = rows.take([r for r, _ in take], [list(prompts[i]) for _, i in take])
                for j, (r, i) in enumerate(take):
                    seq[r] = i
                    pending[r] = got[j:j + 1]
                    if seen is not None:
                        mark(r, prompts[i])
                    if count is not None:
                        count[r] = 0
