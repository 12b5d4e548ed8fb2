"""Offline batch generation: many prompts through `generate()` a batch at a time (what `jamba-ext generate
--prompts-file` runs).

    from jamba_ext.batch import generate_many
    for i, new_ids, reason in generate_many(model, [ids_0, ids_1, ...], batch_size=16, max_new_tokens=64):
        print(i, tokenizer.decode(new_ids), reason)

The prompts (lists of token ids, any lengths) are grouped by length, longest first: a batch is left-padded to its
longest prompt, so prompts of similar length waste little of the prefill on padding, and a batch too large for memory
fails in the first call rather than the last. Each result is a prompt's new tokens up to its end: before the first
end-of-text id (finish reason "stop"), or with the token that completed one of `stop_strings` ("stop"), else all
`max_new_tokens` of them ("length"). Results come in the prompts' order (each as soon as those before it are done) or,
with ordered=False, batch by batch as they finish. Batch k samples with seed + k, so a run repeats exactly and no
two batches draw the same numbers. max_new_tokens may give each prompt its own budget. continuous=True runs continuous
batching instead (jamba_ext.continuous: a row whose completion ends takes the next prompt at once).
"""
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch


def batches_by_length(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """The prompts' indices in batches of batch_size, longest prompts first (equal lengths in index order)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[b:b + batch_size] for b in range(0, len(order), batch_size)]


def completion(new: Sequence[int], eos: set, stop_strings: Sequence[str] = (),
               decode: Optional[Callable[[Sequence[int]], str]] = None) -> Tuple[List[int], str]:
    """One row's new tokens as generate() returned them -> (the completion's tokens, finish reason). The completion
    ends before the first EOS id or fill (negative ids: a finished beam), or with the token that completed one of
    stop_strings (texts by `decode`; generate() fills a row its stop strings stopped with pad_token_id): reason
    "stop"; otherwise it is the whole row: "length"."""
    new = list(new)
    end = next((i for i, t in enumerate(new) if t in eos or t < 0), None)
    if end is not None:
        return new[:end], "stop"
    if stop_strings and any(s in decode(new) for s in stop_strings):
        lo, hi = 1, len(new)        # the shortest prefix whose text holds a stop text (holding one is monotone)
        while lo < hi:
            mid = (lo + hi) // 2
            if any(s in decode(new[:mid]) for s in stop_strings):
                hi = mid
            else:
                lo = mid + 1
        return new[:lo], "stop"
    return new, "length"


def generate_many(model, prompts: Sequence[Sequence[int]], batch_size: int = 16, seed: int = 0, ordered: bool = True,
                  decode: Optional[Callable[[Sequence[int]], str]] = None,
                  on_batch: Optional[Callable[[int], None]] = None, continuous: bool = False,
                  **generate_kwargs) -> Iterator[Tuple[int, List[int], str]]:
    """Yields (prompt index, completion token ids, finish reason) for every prompt; see the module's text.
    generate_kwargs go to model.generate() for every batch (max_new_tokens, do_sample, temperature, num_beams,
    eos_token_id, stop_strings with tokenizer, ...; not seed, which is seed + the batch's number); a completion ends
    at the EOS ids generate() stops at (eos_token_id=None: none). max_new_tokens may be a list, a budget a prompt (a
    batch then runs to its largest, and each completion is cut at its own). decode (token ids -> text) is
    needed with stop_strings, to find where each completion ends. on_batch(n) is called after each batch with its
    number of prompts (a progress bar; with continuous=True after each completion, n = 1).
    continuous=True: continuous batching (jamba_ext.continuous: a row whose completion ends takes the next prompt at
    once; the same greedy completions, faster when completions differ in length), with the options that module
    takes; sampling there draws from one generator seeded with seed."""
    if not prompts:
        return
    results = _continuous(model, prompts, batch_size, seed, decode, on_batch, generate_kwargs) if continuous else \
        _static(model, prompts, batch_size, seed, decode, on_batch, generate_kwargs)
    yield from _in_order(results) if ordered else results


def _in_order(results: Iterator[Tuple[int, List[int], str]]) -> Iterator[Tuple[int, List[int], str]]:
    """(index, ...) results in any order -> in the indices' order, each as soon as those before it are there."""
    done, nxt = {}, 0
    for i, new, reason in results:
        done[i] = (new, reason)
        while nxt in done:
            yield (nxt, *done.pop(nxt))
            nxt += 1


def _continuous(model, prompts, batch_size, seed, decode, on_batch, generate_kwargs):
    from .continuous import generate_continuous
    kw = {k: v for k, v in generate_kwargs.items() if k != "tokenizer"}   # (stop texts are found with decode)
    for i, new, reason in generate_continuous(model, prompts, batch_size, seed=seed, decode=decode, **kw):
        if on_batch is not None:
            on_batch(1)
        yield i, new, reason


def _static(model, prompts, batch_size, seed, decode, on_batch, generate_kwargs):
    generate_kwargs = dict(generate_kwargs)
    budgets = generate_kwargs.pop("max_new_tokens", 32)
    if not isinstance(budgets, int):
        from .continuous import _budgets
        budgets = _budgets(budgets, len(prompts))
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    for k, bad in (("num_return_sequences", generate_kwargs.get("num_return_sequences", 1) != 1),
                   ("return_dict_in_generate", bool(generate_kwargs.get("return_dict_in_generate")))):
        if bad:
            raise ValueError(f"generate_many takes one sequence per prompt and returns token lists: {k} is not "
                             "supported here (call model.generate for it)")
    stop = generate_kwargs.get("stop_strings") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if stop and decode is None:
        raise ValueError("stop_strings needs decode (token ids -> text) to find where each completion ends")
    e = generate_kwargs.get("eos_token_id", "config")       # generate()'s own: the model's end-of-text ids
    eos = set(model._eos_ids()) if isinstance(e, str) else set() if e is None else {e} if isinstance(e, int) else set(e)
    for k, idx in enumerate(batches_by_length([len(p) for p in prompts], batch_size)):
        most = budgets if isinstance(budgets, int) else max(budgets[i] for i in idx)
        with torch.inference_mode():
            out = model.generate([list(prompts[i]) for i in idx], seed=seed + k, max_new_tokens=most,
                                 **generate_kwargs)
        width = max(len(prompts[i]) for i in idx)           # the batch is left-padded to its longest prompt
        rows = out[:, width:].tolist()
        for r, i in enumerate(idx):
            yield (i, *completion(rows[r] if isinstance(budgets, int) else rows[r][:budgets[i]], eos, stop, decode))
        if on_batch is not None:
            on_batch(len(idx))
