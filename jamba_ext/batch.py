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
import types
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from .tokenizer import StreamDecoder


def batches_by_length(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """The prompts' indices in batches of batch_size, longest prompts first (equal lengths in index order)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[b:b + batch_size] for b in range(0, len(order), batch_size)]


def stop_decoder(decode: Callable[[Sequence[int]], str], context: Sequence[int] = ()) -> StreamDecoder:
    """A StreamDecoder (push a completion's ids one at a time; text()) for a decode function (token ids -> text),
    reading the completion as it follows context, its prompt: a "▁" decoder (Jamba's) strips the leading space of a
    text decoded alone, so a stop text beginning with a space missed the first new token (generate()'s stop_strings
    and the server's text keep it)."""
    return StreamDecoder(types.SimpleNamespace(decode=decode), context)


def push_stop(dec: StreamDecoder, token: int, stop_strings: Sequence[str]) -> bool:
    """Pushes a completion's next token into dec (stop_decoder's); True when its text now holds one of stop_strings,
    which it did not before (looked for where the text can have changed: after the text printed before, less a stop
    text's length)."""
    before = len(dec.shown)         # (printed text is never taken back: the text's part that held no stop text)
    dec.push(token)
    text = dec.text()
    return any(s in text[max(0, before - len(s) + 1):] for s in stop_strings)


def completion(new: Sequence[int], eos: set, stop_strings: Sequence[str] = (),
               decode: Optional[Callable[[Sequence[int]], str]] = None,
               context: Sequence[int] = ()) -> Tuple[List[int], str]:
    """One row's new tokens as generate() returned them -> (the completion's tokens, finish reason). The completion
    ends before the first EOS id or fill (negative ids: a finished beam), or with the token that completed one of
    stop_strings (texts by `decode`, of the new tokens as they read after context, the prompt's ids: stop_decoder;
    generate() fills a row its stop strings stopped with pad_token_id): reason "stop"; otherwise it is the whole row:
    "length"."""
    new = list(new)
    end = next((i for i, t in enumerate(new) if t in eos or t < 0), None)
    if end is not None:
        return new[:end], "stop"
    if stop_strings:
        dec = stop_decoder(decode, context)
        for k, t in enumerate(new):
            if push_stop(dec, t, stop_strings):
                return new[:k + 1], "stop"
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
            row = rows[r] if isinstance(budgets, int) else rows[r][:budgets[i]]
            yield (i, *completion(row, eos, stop, decode, prompts[i]))      # (the text as it reads after its prompt)
        if on_batch is not None:
            on_batch(len(idx))
