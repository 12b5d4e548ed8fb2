"""An HTTP server with OpenAI-style completion endpoints over continuous batching (what `jamba-ext serve` runs).

    python -m jamba_ext serve --model DIR --port 8000 --batch-size 16
    curl localhost:8000/v1/completions -d '{"prompt": "Hello", "max_tokens": 32}'

Endpoints: POST /v1/completions ({"prompt": text or token ids, "max_tokens", "stop"}), POST /v1/chat/completions
({"messages": [...], "max_tokens", "stop"}; the checkpoint's chat template), GET /v1/models, GET /health, GET
/metrics (Prometheus' text format: Engine.METRICS, e.g. jamba_ext_generation_tokens_total). Answers as OpenAI's
(choices[0].text or .message, finish_reason "stop" / "length", usage; the text ends before a stop text, and usage
counts the tokens up to the one that completed it; an end-of-text token that ended a completion is counted, not in the
text: usage counts every token a row made, vLLM's len(token_ids)). One thread owns the model: it runs a
jamba_ext.continuous.ContinuousBatcher, taking requests from the HTTP threads as rows free up (first come, first
served), so concurrent requests share the decode steps. "stream": true answers with server-sent events (OpenAI's
chunks, then "data: [DONE]"; "stream_options": {"include_usage": true} adds OpenAI's last chunk with the usage and
no choices). Sampling: a request's temperature (0: greedy), top_p, presence_penalty and frequency_penalty
(OpenAI's), top_k, min_p and repetition_penalty (vLLM's) apply to it alone (rows of different settings share the
decode steps: jamba_ext.row_sampling); those it leaves out are the server's, set when it starts (greedy unless
--temperature > 0). "n" (up to MAX_N) asks for that many completions of the prompt (each its own row; streamed too,
each chunk naming its choice). Log-probabilities of the completion's tokens under the model (its log_softmax, before
the request's penalties and filters): "logprobs": k on /v1/completions (OpenAI's legacy form: tokens,
token_logprobs, top_logprobs, text_offset), "logprobs": true with "top_logprobs": k on /v1/chat/completions; k <=
20, not with "stream". A token's string there (completions' "tokens" and top_logprobs keys, chat's "token") is the
text it adds where it stands, as a stream prints it (jamba_ext.tokenizer.StreamDecoder; the partial-decoding
convention, not OpenAI's "bytes:\\xNN" strings): a token that is only the start of a UTF-8 character adds "" and the
one that completes the character adds all of it (a character left incomplete at the end, U+FFFD, goes to the last
token), so the tokens' strings add up to the text and "text_offset" is each one's start in the returned text
(non-decreasing; clamped to the text's length for the tokens of a stop text cut off). Chat's "bytes" are each
token's own raw bytes (a byte token's one byte), which add up to the completion's raw bytes.
"echo": true on /v1/completions puts the prompt before the completion, and with "logprobs"
each prompt token's log-probability given the tokens before it ("max_tokens": 0: the prompt scored alone; what
evaluation harnesses ask of a completions server). "prompt" may be a list of prompts (choices: prompt x n + j).
"seed" (an int) makes a sampled request repeat: choice c draws with a key made from the seed and c, whatever the
requests beside it (ContinuousBatcher.add's seed; without one, a key made from the server's --seed and the request's
place in its queue). "logit_bias" ({"token id": bias in [-100, 100]}) is added to the request's logits before its
penalties, filters and pick. "best_of" (/v1/completions, >= n, up to MAX_N) draws that many completions of each
prompt and answers the n with the highest log-probability per token. Not supported: suffix (400: not answered as if
it were). A request whose client closes the connection before its answer is dropped (Engine.cancel: its rows take
the next prompts): a streamed one at its next write or within POLL_S while it waits for a token, another within
POLL_S. With an api_key (serve's; the CLI's --api-key or env JAMBA_EXT_API_KEY) the /v1 endpoints need
"Authorization: Bearer <key>" (401 otherwise), as OpenAI's clients send it; /health and /metrics stay open. Every
refusal is OpenAI's JSON error (400 for a request's fields, a null one meaning its default; 404 / 405 an unknown path
/ another method; 408 a body that stops coming; 411 one without a Content-Length; 413 one over MAX_BODY_BYTES).
A connection that sends nothing for idle_timeout seconds (serve's; the CLI's --idle-timeout, default
IDLE_TIMEOUT_S) while the server waits for its request line and headers, new or kept alive after an answer, is closed,
and its thread freed (a limit on each silence, a socket timeout: a client that trickles bytes is not cut); the limit
is off once a request's headers are in (its body has BODY_TIMEOUT_S; a long generation, streamed or not, is never
cut by it).
"""
import hmac
import json
import queue
import select
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, NamedTuple, Optional, Sequence

import torch

from .continuous import MAX_LOGPROBS, ContinuousBatcher
from .row_sampling import FIELDS as SAMPLING_FIELDS, check as check_sampling
from .tokenizer import StreamDecoder, decode_after, token_bytes

MAX_N = 16                  # the most completions one request may ask for ("n")
MAX_PROMPTS = 64            # the most prompts one /v1/completions request may give (a list of them)
POLL_S = 0.2                # how often a request waiting for its answer looks whether its client is still there
MAX_BODY_BYTES = 32 << 20   # the largest request body read (413 beyond: 64 prompts of 4096 token ids are ~2 MB)
BODY_TIMEOUT_S = 60.0       # the longest wait for a body's next bytes (408 then: a Content-Length past the bytes sent
                            # held the connection and its thread until the client gave up)
IDLE_TIMEOUT_S = 60.0       # the longest wait for a connection's next request (line and headers): then it is closed
                            # (an idle client, or a kept-alive connection, held its thread for ever)
DRAIN_S = 5.0               # how long a body left unread (a refusal that closes) is read and dropped: a client that
                            # sends its whole body before it reads (http.client, requests) met a reset, not the answer
ROUTES = {"/health": "GET", "/metrics": "GET", "/v1/models": "GET", "/v1/completions": "POST",
          "/v1/chat/completions": "POST"}   # (another method on these: 405)
# request fields answered only at these values
UNSUPPORTED = {"suffix": None}
# every field a request may give (others are refused: a misspelt setting must not change the answer silently);
# "model" and "user" are taken and do not change it (one model is served; "user" is OpenAI's end-user label)
_COMMON_FIELDS = {"model", "user", "stream", "stream_options", "n", "logprobs", "best_of", "echo", "seed",
                  "logit_bias", "max_tokens", "max_completion_tokens", "stop", *UNSUPPORTED, *SAMPLING_FIELDS}
FIELDS = {False: _COMMON_FIELDS | {"prompt"}, True: _COMMON_FIELDS | {"messages", "top_logprobs"}}


class _Request(NamedTuple):
    prompts: List[List[int]]        # token ids, one list a prompt (chat: the rendered messages)
    max_tokens: int                 # (0: echo alone, the prompt scored)
    stop: Optional[list]
    sampling: Optional[dict]        # the request's own settings (row_sampling.FIELDS), None: the server's
    n: int
    lp: Optional[int]               # logprobs: alternatives a token (None: off)
    echo: bool
    stream: bool
    seed: Optional[int] = None      # the request's seed (sampled requests; choice c draws with _choice_key(seed, c))
    bias: Optional[dict] = None     # logit_bias, {token id: bias}
    best_of: int = 1                # completions drawn a prompt (>= n; the n most likely per token are answered)
    usage: bool = False             # a stream's stream_options.include_usage: a last chunk with the usage


def _logit_bias(value, engine) -> Optional[dict]:
    """A request's "logit_bias" (OpenAI's: token ids as strings, or ints, to biases) -> {id: bias} checked by the
    batcher's rules (RequestError: 400), or None."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise RequestError('"logit_bias": expected an object {"token id": bias}')
    # (JSON keys are strings; isdecimal, not isdigit: int() refuses '²', which isdigit takes -- a 500 before)
    out = {(int(t) if t.strip().isdecimal() else t): v for t, v in value.items()}
    try:
        engine.bat.check_logit_bias(out)
    except ValueError as e:
        raise RequestError(str(e).replace("logit_bias:", '"logit_bias":', 1)) from None
    return out


def _text_parts(m, i: int):
    """A chat message whose content is OpenAI's list of content parts ([{"type": "text", "text": ...}, ...]) with
    their texts joined by newlines (as vLLM joins them; a 400 before), or RequestError naming a part that is not text
    (an image, audio: not read by this model); any other message as it is."""
    if not isinstance(m, dict) or not isinstance(m.get("content"), list):
        return m
    for j, part in enumerate(m["content"]):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            raise RequestError(f'"messages[{i}].content[{j}]": expected {{"type": "text", "text": ...}} (text parts '
                               f'only here){f", got type {kind!r}" if kind is not None else ""}')
    return dict(m, content="\n".join(part["text"] for part in m["content"]))


def _choice_key(seed: Optional[int], c: int) -> Optional[int]:
    """The Philox key of choice c of a request with this seed (None: none), in [0, 2^63)."""
    from .continuous import prompt_key
    return None if seed is None else prompt_key(seed, c)


def _encode(tok, text: str, bos: bool, what: str) -> List[int]:
    """A request's text as token ids, or RequestError (JSON can carry a lone surrogate, which UTF-8 cannot: a 500
    before)"""
    try:
        text.encode("utf-8")          # (checked first: an HF tokenizer raises a TypeError of its own on a surrogate)
        return tok.encode(text, add_bos=bos)
    except UnicodeEncodeError as e:
        raise RequestError(f"{what}: not valid Unicode text ({e.reason} at character {e.start})") from None


class _Server(ThreadingHTTPServer):
    """A listen backlog for bursts of clients (http.server's default of 5 reset the 6th of 40 connections that came at
    once: they never reached the engine). A client that resets or closes its connection (while the server waits for
    its next request, or as an answer goes out) is no server error: no traceback on stderr for it."""
    request_queue_size = 256

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):   # (reset, broken pipe: socketserver printed 20 lines each)
            return
        super().handle_error(request, client_address)


class RequestError(ValueError):
    """A request the server refuses (HTTP 400), with the reason."""


class ClientGone(ConnectionError):
    """The client of a request closed its connection before the answer: the request is dropped (Engine.cancel)."""


class _Cancel(NamedTuple):
    jobs: list                      # the _Jobs to drop (Engine.cancel)


class _Job:
    def __init__(self, ids: List[int], max_tokens: int, stop, stream: bool = False, sampling: Optional[dict] = None,
                 logprobs: Optional[int] = None, score: bool = False, seed: Optional[int] = None,
                 logit_bias: Optional[dict] = None, sink: Optional["queue.Queue"] = None, tag: int = 0):
        """stream: its new tokens go to self.tokens as (tag, token), then (tag, None) at the end; sink: that queue,
        shared with other jobs (a streamed request of several choices), else a queue of its own."""
        self.ids, self.max_tokens, self.stop, self.sampling, self.want_lp = ids, max_tokens, stop, sampling, logprobs
        self.seed = seed                 # (the batcher's key of its draws; None: the batcher makes one)
        self.bias = logit_bias
        self.score = score               # (the prompt scored, no new tokens: echo with max_tokens 0)
        self.logprobs = None             # (when asked: the batcher's list, set before done)
        self.done = threading.Event()
        self.result = self.error = None
        self.made = 0                    # (tokens its row made: the completion's and an end-of-text that ended it)
        self.tokens: Optional["queue.Queue"] = (sink if sink is not None else queue.Queue()) if stream else None
        self.tag = tag

    def finish(self, result=None, error=None) -> None:
        self.result, self.error = result, error
        self.done.set()
        if self.tokens is not None:
            self.tokens.put((self.tag, None))


class Engine:
    """The model's thread: jobs in (from any thread: run() blocks until its completion), ContinuousBatcher steps."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_prompt_tokens: int = 4096,
                 max_new_tokens: int = 256, seed: int = 0, stats_every: float = 0.0, stats_out=None, **options):
        """stats_every: seconds between the progress lines written to stats_out (default sys.stderr) while it works,
        and one when it falls idle (0: none)."""
        self.model, self.tok = model, tokenizer
        self.stats_every, self.stats_out = stats_every, stats_out
        self.t0 = self.last = time.perf_counter()
        self.done_requests = self.done_tokens = 0
        self.prompt_tokens = self.steps = self.failed = 0
        self.cancelled = 0               # (requests dropped when their clients went away: cancel)
        self.shown = (0, 0)              # (requests, new tokens) at the last progress line
        self.bat = ContinuousBatcher(model, batch_size, max_prompt_tokens, max_new_tokens, seed,
                                     decode=tokenizer.decode, **options)
        self.inbox: "queue.Queue[_Job]" = queue.Queue()
        self.jobs = {}
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="jamba-ext engine", daemon=True)
        self.thread.start()

    def run(self, ids: List[int], max_tokens: int, stop=None, timeout: Optional[float] = None,
            sampling: Optional[dict] = None):
        """(completion token ids, finish reason) of a prompt, when its turn has come and it has ended."""
        return self.wait(self.submit(ids, max_tokens, stop, sampling=sampling), timeout)

    @staticmethod
    def wait(job: _Job, timeout: Optional[float] = None):
        """A submitted job's (completion token ids, finish reason), when it has ended (its error raised)."""
        if not job.done.wait(timeout):
            raise TimeoutError("the engine did not answer in time")
        if job.error is not None:
            raise job.error
        return job.result

    def submit(self, ids: List[int], max_tokens: int, stop=None, stream: bool = False,
               sampling: Optional[dict] = None, logprobs: Optional[int] = None, seed: Optional[int] = None,
               logit_bias: Optional[dict] = None, sink: Optional["queue.Queue"] = None, tag: int = 0) -> _Job:
        """Queues a prompt (sampling, logprobs, seed, logit_bias: ContinuousBatcher.add's); the job's done event is
        set at its end (stream: its tokens queue -- sink when given, shared by several jobs -- gets (tag, token) for
        each new token as it comes, then (tag, None); logprobs: job.logprobs)."""
        job = _Job(ids, max_tokens, stop, stream, sampling, logprobs, seed=seed, logit_bias=logit_bias, sink=sink,
                   tag=tag)
        self.inbox.put(job)
        return job

    def cancel(self, jobs: List[_Job]) -> None:
        """Drops submitted jobs whose answer nobody waits for any more (a client that went away): the engine takes
        them out of its queue or frees their rows before its next step; each ends with ClientGone (a job that has
        ended already is left as it is)."""
        self.inbox.put(_Cancel(list(jobs)))

    def score(self, ids: List[int], logprobs: Optional[int], timeout: Optional[float] = None) -> list:
        """Each prompt token's (log-probability given the tokens before it, [(id, log-probability) of the `logprobs`
        most likely tokens there]); (None, []) for the first. Runs on the engine's thread between decode steps."""
        job = _Job(ids, 0, None, logprobs=logprobs, score=True)
        self.inbox.put(job)
        self.wait(job, timeout)
        return job.logprobs

    SCORE_CHUNK = 512                    # positions whose log_softmax is taken at once (memory: CHUNK x V fp32)

    def _score(self, job: _Job) -> None:
        m, ids, k = self.model, job.ids, job.want_lp or 0
        out = [(None, [])]
        try:
            with torch.inference_mode():
                logits = m(torch.tensor([ids], device=m.device)).logits[0]
                for a in range(0, len(ids) - 1, self.SCORE_CHUNK):
                    b = min(a + self.SCORE_CHUNK, len(ids) - 1)
                    lsm = torch.log_softmax(logits[a:b].float(), dim=-1)
                    chosen = lsm.gather(1, torch.tensor(ids[a + 1:b + 1], device=lsm.device)[:, None])[:, 0].tolist()
                    top = torch.topk(lsm, k, dim=-1) if k else None
                    tv, ti = (top.values.tolist(), top.indices.tolist()) if k else ([[]] * (b - a), [[]] * (b - a))
                    out += [(c, list(zip(i, v))) for c, i, v in zip(chosen, ti, tv)]
        except Exception as e:  # noqa: BLE001 -- reported to the request (500), the server goes on
            job.finish(error=RuntimeError(f"scoring failed: {e}"))
            return
        job.logprobs = out
        job.finish(result=([], "length"))

    def close(self) -> None:
        self.stopping = True
        self.inbox.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.stopping:
            try:                                 # (block for work only when nothing runs)
                job = self.inbox.get(timeout=None if self.bat.done else 0)
            except queue.Empty:
                job = None
            while job is not None:
                try:
                    if isinstance(job, _Cancel):
                        self._cancel(job.jobs)
                    elif job.score:
                        self._score(job)
                        self.prompt_tokens += len(job.ids)
                    else:
                        self.jobs[self.bat.add(job.ids, job.max_tokens, job.stop, job.sampling, job.want_lp,
                                               job.seed, job.bias)] = job
                        self.prompt_tokens += len(job.ids)
                except ValueError as e:
                    job.finish(error=RequestError(str(e)))
                try:
                    job = self.inbox.get_nowait()
                except queue.Empty:
                    job = None
            if self.stopping or self.bat.done:
                continue
            try:
                ended = self.bat.step()
            except Exception as e:  # noqa: BLE001 -- a failed step fails the jobs in flight, and the server goes on
                for j in self.jobs.values():
                    j.finish(error=RuntimeError(f"generation failed: {e}"))
                self.failed += len(self.jobs)
                self.jobs.clear()
                self.bat.close()
                self.bat.queue.clear()
                continue
            for rid, t in self.bat.stepped:
                j = self.jobs.get(rid)
                if j is not None:
                    j.made += 1                  # (usage's count: an end-of-text too, which the result leaves out)
                    if j.tokens is not None:
                        j.tokens.put((j.tag, t))
            for rid, tokens, reason in ended:
                job = self.jobs.pop(rid)
                job.logprobs = self.bat.logprobs.pop(rid, None)
                job.finish(result=(tokens, reason))
            self.done_requests += len(ended)
            self.done_tokens += len(self.bat.stepped)
            self.steps += 1
            self._progress()

    METRICS = (  # (name, type, help, Engine -> value): GET /metrics, Prometheus' text format
        ("requests_done", "counter", "Completions that ended (a request of n choices counts n).",
         lambda e: e.done_requests),
        ("requests_cancelled", "counter", "Completions dropped because their clients went away.",
         lambda e: e.cancelled),
        ("requests_failed", "counter", "Completions failed by an error in a decode step.", lambda e: e.failed),
        ("prompt_tokens", "counter", "Prompt tokens taken (scored prompts included).", lambda e: e.prompt_tokens),
        ("generation_tokens", "counter", "New tokens made.", lambda e: e.done_tokens),
        ("decode_steps", "counter", "Decode steps run (each makes a token for every running row).",
         lambda e: e.steps),
        ("rows_running", "gauge", "Rows decoding now.", lambda e: e.bat.running),
        ("requests_queued", "gauge", "Completions waiting for a row.", lambda e: e.bat.queued + e.inbox.qsize()),
        ("batch_size", "gauge", "Rows of the batcher (--batch-size).", lambda e: e.bat.B),
        ("uptime_seconds", "gauge", "Seconds since the engine started.", lambda e: time.perf_counter() - e.t0),
    )

    def metrics(self) -> str:
        """The engine's counters and gauges in Prometheus' text format (GET /metrics), each named jamba_ext_*."""
        out = []
        for name, kind, text, get in self.METRICS:
            v = get(self)
            value = f"{v:.3f}" if isinstance(v, float) else str(v)
            out += [f"# HELP jamba_ext_{name} {text}", f"# TYPE jamba_ext_{name} {kind}",
                    f"jamba_ext_{name}{'_total' if kind == 'counter' else ''} {value}"]
        return "\n".join(out) + "\n"

    def _cancel(self, jobs: List[_Job]) -> None:
        rids = {id(j): rid for rid, j in self.jobs.items()}
        for j in jobs:
            rid = rids.get(id(j))
            if rid is None or j.done.is_set():
                continue                         # (ended already, or refused when it was added)
            self.bat.cancel(rid)
            del self.jobs[rid]
            self.cancelled += 1
            j.finish(error=ClientGone("the client went away; the request was dropped"))

    def _progress(self) -> None:
        """A progress line every stats_every seconds of work, and one when the work runs out."""
        now = time.perf_counter()
        if not self.stats_every or (now - self.last < self.stats_every and not self.bat.done) or \
                (self.done_requests, self.done_tokens) == self.shown:
            return
        dt, (r0, t0) = now - self.last, self.shown
        (self.stats_out or sys.stderr).write(
            f"[serve {now - self.t0:8.1f} s] {self.done_requests} requests done (+{self.done_requests - r0}), "
            f"{self.done_tokens} new tokens ({(self.done_tokens - t0) / max(dt, 1e-9):.1f} tok/s over the last "
            f"{dt:.1f} s); {self.bat.running} rows running, {self.bat.queued + self.inbox.qsize()} queued\n")
        (self.stats_out or sys.stderr).flush()
        self.last, self.shown = now, (self.done_requests, self.done_tokens)


def _stop_list(v) -> Optional[list]:
    if v is None:
        return None
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v) or len(v) > 4:
        raise RequestError('"stop": expected a non-empty string or a list of up to 4')
    return v


def _logprobs_asked(body: dict, chat: bool) -> Optional[int]:
    """How many alternatives a request's logprobs ask for (None: no logprobs), or RequestError."""
    top = MAX_LOGPROBS
    if chat:
        on, k = body.get("logprobs", False), body.get("top_logprobs")
        if not isinstance(on, bool) and on is not None:
            raise RequestError(f'"logprobs": expected true or false on /v1/chat/completions, got {on!r}')
        if k is not None and not on:
            raise RequestError('"top_logprobs" needs "logprobs": true')
        if not on:
            return None
        k = 0 if k is None else k
    else:
        k = body.get("logprobs")
        if k is None or k is False:
            return None
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= top:
        raise RequestError(f'"{"top_logprobs" if chat else "logprobs"}": expected an int in [0, {top}], got {k!r}')
    return k


def _logprobs_answer(tok, tokens: List[int], lps: list, chat: bool, prompt: Sequence[int] = (), echo: bool = False,
                     length: Optional[int] = None) -> dict:
    """A choice's "logprobs", OpenAI's form: for chat, content [{token, logprob, bytes, top_logprobs}]; for
    completions, the legacy tokens / token_logprobs / top_logprobs / text_offset. tokens: the completion's ids, read
    after prompt; echo: the prompt's ids come first, read from the start (lps then covers both). lps:
    ContinuousBatcher.logprobs' list for these tokens (Engine.score's before it for the prompt's). Each token's (and
    alternative's) string is the text it adds there as a StreamDecoder prints it (the module's text), so the strings
    add up to the answer's text; text_offset: their starts in it (from the completion's start, or the prompt's with
    echo), clamped to length (the text's, cut before a stop text) when given; bytes: token_bytes, the token's own."""
    segments = [((), list(prompt)), (list(prompt), list(tokens))] if echo else [(list(prompt), list(tokens))]
    ids, strings, alts = [], [], []
    for context, part in segments:
        dec = StreamDecoder(tok, context)
        for j, t in enumerate(part):
            last = j == len(part) - 1               # (the last token takes what flush() prints: an unfinished end)
            alts.append([(dec.peek(a, last), a, v) for a, v in lps[len(ids)][1]])
            strings.append(dec.push(t) + (dec.flush() if last else ""))
            ids.append(t)
    if chat:
        return {"content": [{"token": p, "logprob": lp, "bytes": list(token_bytes(tok, t)), "top_logprobs": [
            {"token": a_text, "logprob": v, "bytes": list(token_bytes(tok, a))} for a_text, a, v in alt]}
            for p, t, (lp, _), alt in zip(strings, ids, lps, alts)]}
    offsets, at = [], 0
    for p in strings:
        offsets.append(at if length is None else min(at, length))
        at += len(p)
    return {"tokens": strings, "token_logprobs": [lp for lp, _ in lps],
            "top_logprobs": [_by_text(alt) for alt in alts], "text_offset": offsets}


def _by_text(alts) -> dict:
    """The legacy top_logprobs, {text: logprob} from [(text, id, logprob)]: tokens whose texts are the same (e.g.
    byte tokens that each begin a UTF-8 character, each adding "") share one key, which keeps the most likely one's
    value (alts come most likely first), so the picked token's own value is never overwritten by a less likely one's"""
    d = {}
    for text, _, v in alts:
        d.setdefault(text, v)
    return d


def _cut_at_stop(text: str, stop) -> str:
    """OpenAI's stop semantics: the text ends before the first stop text it holds (the completion ends with the token
    that completed it, transformers' way)."""
    cuts = [text.find(x) for x in stop or () if x in text]
    return text[:min(cuts)] if cuts else text


def _answer_text(tok, tokens: List[int], reason: str, stop, prompt: Sequence[int] = ()) -> str:
    """A finished completion's text, as the answer gives it (as it reads after its prompt: decode_after), cut before
    its stop text when one ended it."""
    text = decode_after(tok, prompt, tokens)
    return _cut_at_stop(text, stop) if reason == "stop" else text


def _safe_prefix(text: str, stop) -> str:
    """The part of a growing text that a stream may send now: not its last len(stop text) - 1 characters (they could
    begin a stop text that the next tokens complete) nor a trailing U+FFFD (an unfinished UTF-8 character)."""
    hold = max((len(x) for x in stop), default=1) - 1 if stop else 0
    return text[:max(0, len(text) - hold)].rstrip("\ufffd")   # (a text shorter than hold: nothing yet)


def make_handler(engine: Engine, model_name: str, chat_template=None, max_new_default: int = 16,
                 api_key: Optional[str] = None, idle_timeout: Optional[float] = IDLE_TIMEOUT_S):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one_request(self):
            """http.server's, with idle_timeout (None: none) on the wait for the request line and headers: a client
            that sends none in time has its connection closed (http.server's TimeoutError path: no answer) and its
            thread freed (it waited for ever before)."""
            self.connection.settimeout(idle_timeout)
            super().handle_one_request()

        def parse_request(self):
            """http.server's; then no socket timeout for the rest of the request (do_POST sets its body's own):
            a stream's writes and the waits for the engine run as long as the generation does."""
            ok = super().parse_request()
            self.connection.settimeout(None)
            return ok

        def _authorized(self) -> bool:
            """With an api_key, the /v1 endpoints need "Authorization: Bearer <api_key>" (401 otherwise, and the
            connection closes: the body is not read); /health and /metrics stay open (load balancers, scrapers)."""
            if api_key is None or not self._path().startswith("/v1"):   # (the path as routed: one with a query or
                return True                                           # an absolute URL must not pass by)
            given = self.headers.get("Authorization") or ""
            if given.startswith("Bearer ") and hmac.compare_digest(given[len("Bearer "):].encode(), api_key.encode()):
                return True
            self._refuse_unread(401, "a valid API key is needed: \"Authorization: Bearer <key>\"", self._length(),
                                [("WWW-Authenticate", "Bearer")])
            return False

        def log_message(self, fmt, *args):         # (no line per request on stderr)
            pass

        def _path(self) -> str:
            """The request's path without its query (OpenAI's clients may add one, e.g. Azure's api-version: a 404
            before) -- also read from an absolute URL, as proxies send it."""
            return urllib.parse.urlsplit(self.path).path

        def _send(self, code: int, body: dict, headers: Sequence = ()) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            if self.close_connection:            # (said: else a keep-alive client sent its next request into a socket
                self.send_header("Connection", "close")   # closed after this answer, and got a broken pipe)
            self.end_headers()
            if self.command != "HEAD":           # (an answer to HEAD has no body)
                self.wfile.write(data)

        def _error(self, code: int, msg: str, headers: Sequence = ()) -> None:
            kind = "invalid_request_error" if code < 500 else "server_error"
            self._send(code, {"error": {"message": msg, "type": kind, "code": code}}, headers)

        def send_error(self, code, message=None, explain=None):
            """http.server's own refusals (a request line or headers it cannot read, a method with no do_ handler) in
            the OpenAI error form, as every other answer (its HTML page before); the connection closes, as there."""
            self.close_connection = True
            self._error(code, message or self.responses.get(code, ("error",))[0])

        def _length(self) -> Optional[int]:
            """The bytes of the request's body: its Content-Length; 0 without one (HTTP's rule); None: unknown (a
            Transfer-Encoding, or a Content-Length that is not an int >= 0)."""
            length = self.headers.get("Content-Length")
            if length is None:
                return None if self.headers.get("Transfer-Encoding") is not None else 0
            try:
                n = int(length)
            except ValueError:
                return None
            return n if n >= 0 else None

        def _refuse_unread(self, code: int, msg: str, length: Optional[int], headers: Sequence = ()) -> None:
            """An error answer to a request whose body is not read: the connection closes after it, but first the body
            (length bytes; None: whatever the client sends) is read and dropped, for up to DRAIN_S seconds -- closing
            a socket with unread bytes resets it, and a client that sends its whole body before it reads the answer
            (http.client, requests) met the reset (a broken pipe), not the answer (e.g. 413)."""
            self.close_connection = True
            try:
                self._error(code, msg, headers)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)    # (the answer is whole: a client may close once it has it)
                self.connection.settimeout(DRAIN_S)
                end, left = time.monotonic() + DRAIN_S, float("inf") if length is None else length
                while left > 0 and time.monotonic() < end:
                    got = self.rfile.read1(int(min(left, 1 << 16)))
                    if not got:
                        break
                    left -= len(got)
            except OSError:                                 # (the client reset it, or sent nothing more in time)
                pass

        def _wrong_method(self, path: str) -> None:
            """A path this server has but not for this method (405, naming the one it takes), or one it lacks (404);
            a body is not read."""
            allowed = ROUTES.get(path)
            if allowed is None:
                msg, code, headers = f"no such endpoint: {self.command} {path}", 404, ()
            else:
                msg, code, headers = f"{self.command} {path}: not allowed (use {allowed})", 405, [("Allow", allowed)]
            if self.command in ("GET", "HEAD"):              # (no body to read: the connection goes on)
                self._error(code, msg, headers)
            else:
                self._refuse_unread(code, msg, self._length(), headers)

        def _other_method(self):
            """PUT, DELETE, ...: 405 / 404 in the OpenAI error form (http.server's 501 HTML page before)."""
            if self._authorized():
                self._wrong_method(self._path())

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

        def do_GET(self):
            if not self._authorized():
                return
            path = self._path()
            if path == "/health":
                self._send(200, {"status": "ok"})
            elif path == "/metrics":
                data = engine.metrics().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            elif path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model",
                                                             "owned_by": "jamba_ext"}]})
            else:
                self._wrong_method(path)

        # HEAD: GET's answer without its body (load balancers' health checks); _send writes no body for it
        do_HEAD = do_GET

        def do_POST(self):
            if not self._authorized():
                return
            path = self._path()
            if ROUTES.get(path) != "POST":
                self._wrong_method(path)
                return
            # a chunked body, or one sent without a Content-Length, was left unread and then read as the next request
            # on the connection (an HTML 400 after a misleading "the body must be a JSON object")
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding") is not None or length is None:
                self._refuse_unread(411, "Content-Length: needed (the body's bytes; a Transfer-Encoding such as "
                                         "chunked is not taken here)", None)
                return
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_BODY_BYTES:              # (not read: a negative length would wait for the client's end)
                self._refuse_unread(400 if n < 0 else 413, f"Content-Length: expected an int in [0, {MAX_BODY_BYTES}] "
                                                           f"(the body's bytes), got {length!r}", n if n > 0 else None)
                return
            timeout = self.connection.gettimeout()
            try:
                self.connection.settimeout(BODY_TIMEOUT_S)
                data = self.rfile.read(n)
            except TimeoutError:                         # (a Content-Length past the bytes sent: waited for for ever)
                self.close_connection = True
                self._error(408, f"the body did not come: {n} bytes (its Content-Length) were not there within "
                                 f"{BODY_TIMEOUT_S:g} s")
                return
            finally:
                self.connection.settimeout(timeout)
            if len(data) < n:                            # (the client closed before its whole body)
                self.close_connection = True
                return
            try:
                body = json.loads(data or b"null")
            except (ValueError, RecursionError) as e:
                # (a JSONDecodeError, and also bytes that are not UTF-8, a number past int's digit limit and nesting
                # past the recursion limit: each a 500 before)
                self._error(400, f"the body is not JSON: {getattr(e, 'msg', e)}")
                return
            try:
                if not isinstance(body, dict):
                    raise RequestError("the body must be a JSON object")
                chat = path.endswith("chat/completions")
                req = self._parse(body, chat)
                if req.stream:
                    self._stream(req, chat)
                    return
                out = self._complete(req, chat)
            except ClientGone:                       # (nobody to answer: its jobs were dropped)
                self.close_connection = True
                return
            except RequestError as e:
                self._error(400, str(e))
                return
            except Exception as e:  # noqa: BLE001
                self._error(500, str(e))
                return
            try:
                self._send(200, out)
            except ConnectionError:                  # (the client left as the answer came)
                self.close_connection = True

        def _client_gone(self) -> bool:
            """Whether the client has closed its side of the connection (it reads as ended; a client that sends
            more meanwhile, a pipelined request, has not)."""
            try:
                ready, _, _ = select.select([self.connection], [], [], 0)
                return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                return True

        def _wait(self, job: _Job, every: List[_Job]):
            """engine.wait(job), looking every POLL_S seconds whether the client is still there: when it has gone,
            every job of its request is dropped (engine.cancel) and ClientGone raised."""
            while not job.done.wait(POLL_S):
                if self._client_gone():
                    engine.cancel(every)
                    raise ClientGone("the client went away")
            return engine.wait(job)

        def _parse(self, body: dict, chat: bool) -> "_Request":
            """The request's prompts (token ids) and settings, or RequestError."""
            unknown = sorted(set(body) - FIELDS[chat])
            if unknown:
                other = {"messages": " (chat messages: /v1/chat/completions)", "prompt": " (a prompt: /v1/completions)",
                         "top_logprobs": ' (here: "logprobs": k)'}
                raise RequestError(f'unknown field{"s" if len(unknown) > 1 else ""} '
                                   f'{", ".join(json.dumps(k) for k in unknown)} on /v1/{"chat/" if chat else ""}'
                                   f'completions{"".join(other.get(k, "") for k in unknown)}: refused rather than '
                                   f'ignored (docs/SERVING.md lists the fields taken)')
            for k, ok in UNSUPPORTED.items():
                if k in body and body[k] != ok:
                    raise RequestError(f'"{k}": only {json.dumps(ok)} is supported here')
            for k in ("model", "user"):                  # (taken, unused: still of OpenAI's type)
                if body.get(k) is not None and not isinstance(body[k], str):
                    raise RequestError(f'"{k}": expected a string, got {body[k]!r}')
            # OpenAI's optional fields are nullable: null is the default, as if left out (a 400 before, for these)
            body = {k: v for k, v in body.items() if v is not None or k not in (
                "stream", "n", "echo", "max_tokens", "max_completion_tokens")}
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise RequestError(f'"stream": expected true or false, got {stream!r}')
            n = body.get("n", 1)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
                raise RequestError(f'"n": expected an int in [1, {MAX_N}], got {n!r}')
            lp = _logprobs_asked(body, chat)
            best_of = body.get("best_of")
            if best_of is not None and (isinstance(best_of, bool) or not isinstance(best_of, int) or
                                        not n <= best_of <= MAX_N or (chat and best_of != 1)):
                raise RequestError(f'"best_of": expected an int in ["n" = {n}, {MAX_N}]'
                                   f'{" (chat: 1 only)" if chat else ""}, got {best_of!r}')
            best_of = best_of or n
            echo = body.get("echo", False)
            if not isinstance(echo, bool):
                raise RequestError(f'"echo": expected true or false, got {echo!r}')
            if echo and chat:
                raise RequestError('"echo": supported on /v1/completions only')
            sampling = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
            try:
                settings = check_sampling(sampling, engine.bat.base)
            except ValueError as e:
                raise RequestError(str(e)) from None
            seed = body.get("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise RequestError(f'"seed": expected an int, got {seed!r}')
            seed = None if seed is None or settings.temperature == 0 else seed % 2 ** 64   # (greedy: no draws)
            bias = _logit_bias(body.get("logit_bias"), engine)
            lo = 0 if echo else 1
            budgets = {k: body[k] for k in ("max_tokens", "max_completion_tokens") if k in body}
            for k, v in budgets.items():                 # (each checked: one beside max_tokens was ignored unread)
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= engine.bat.max_new:
                    raise RequestError(f'"{k}": expected an int in [{lo}, {engine.bat.max_new}] (this server\'s '
                                       f'--max-new-tokens{"; 0 with echo: the prompt scored alone" if echo else ""}), '
                                       f'got {v!r}')
            if len(set(budgets.values())) > 1:
                raise RequestError(f'"max_tokens" {budgets["max_tokens"]} and "max_completion_tokens" '
                                   f'{budgets["max_completion_tokens"]} differ: give one')
            max_tokens = next(iter(budgets.values()), min(max_new_default, engine.bat.max_new))
            stop = _stop_list(body.get("stop"))
            so = body.get("stream_options")
            if so is not None and (not stream or not isinstance(so, dict) or set(so) - {"include_usage"} or
                                   not isinstance(so.get("include_usage", False), bool)):
                raise RequestError('"stream_options": expected {"include_usage": true or false}, with "stream": true')
            prompts = self._prompts(body, chat)
            if stream and (best_of > n or lp is not None or echo):
                raise RequestError('"stream" with "best_of" > "n", "logprobs" or "echo": not supported here (ask '
                                   "without streaming)")
            return _Request(prompts, max_tokens, stop, sampling or None, n, lp, echo, stream, seed, bias, best_of,
                            bool(so and so.get("include_usage")))

        def _prompts(self, body: dict, chat: bool) -> List[List[int]]:
            tok = engine.tok
            if chat:
                msgs = body.get("messages")
                if chat_template is None:
                    raise RequestError("this model has no chat template: use /v1/completions")
                if isinstance(msgs, list):
                    msgs = [_text_parts(m, i) for i, m in enumerate(msgs)]
                if not isinstance(msgs, list) or not msgs or not all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in msgs):
                    raise RequestError('"messages": expected a list of {"role", "content"} objects with text')
                try:
                    text = chat_template.render(msgs, add_generation_prompt=True)
                except ValueError as e:
                    raise RequestError(f"chat template: {e}") from None
                prompts = [_encode(tok, text, False, '"messages"')]
            else:
                prompt = body.get("prompt")
                ids_list = lambda v: isinstance(v, list) and v and all(  # noqa: E731
                    isinstance(t, int) and not isinstance(t, bool) for t in v)
                if isinstance(prompt, str) or ids_list(prompt):
                    prompt = [prompt]                    # (one prompt; else a list of them, OpenAI's batch form)
                if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_PROMPTS or \
                        not all(isinstance(p, str) or ids_list(p) for p in prompt):
                    raise RequestError(f'"prompt": expected a string, a list of token ids, or a list of up to '
                                       f'{MAX_PROMPTS} of either')
                prompts = [_encode(tok, p, True, '"prompt"') if isinstance(p, str) else p for p in prompt]
            V = engine.model.config.vocab_size
            for ids in prompts:
                if not ids or min(ids) < 0 or max(ids) >= V:
                    raise RequestError(f"the prompt encodes to no tokens, or to ids outside [0, {V})")
                if len(ids) > engine.bat.max_prompt:
                    raise RequestError(f"the prompt is {len(ids)} tokens; this server takes up to "
                                       f"{engine.bat.max_prompt} (its --max-prompt-tokens)")
            return prompts

        def _complete(self, req: "_Request", chat: bool) -> dict:
            """Every prompt's n completions (choice index: prompt x n + j), each job its own row, all submitted before
            any is waited for; with echo, the prompt first (its text, and its scored tokens with logprobs). best_of
            > n: best_of completions a prompt (job j's key from the seed and prompt x best_of + j), the n of the
            highest mean log-probability of their tokens answered (an empty completion ranks last; usage counts
            them all)."""
            tok, n, k = engine.tok, req.n, req.best_of
            want_lp = req.lp if req.lp is not None or k == n else 0
            jobs = [[engine.submit(ids, req.max_tokens, req.stop, sampling=req.sampling, logprobs=want_lp,
                                   seed=_choice_key(req.seed, pi * k + j), logit_bias=req.bias) for j in range(k)]
                     if req.max_tokens else []
                    for pi, ids in enumerate(req.prompts)]
            choices, done, every = [], 0, [j for js in jobs for j in js]
            for pi, ids in enumerate(req.prompts):
                scores = engine.score(ids, req.lp) if req.echo and req.lp is not None else None
                got = [self._wait(jobs[pi][j], every) if req.max_tokens else ([], "length") for j in range(k)]
                done += sum(job.made for job in jobs[pi])   # (every token made: an end-of-text too, as vLLM's)
                order = list(range(k))
                if k > n and req.max_tokens:         # (the n most likely per token, in that order)
                    mean = [sum(lp for lp, _ in jobs[pi][j].logprobs) / len(jobs[pi][j].logprobs)
                            if jobs[pi][j].logprobs else float("-inf") for j in range(k)]
                    order = sorted(order, key=lambda j: -mean[j])
                for j in range(n):
                    tokens, reason = got[order[j]]
                    text = _answer_text(tok, tokens, reason, req.stop, ids)
                    if req.echo:                         # (the prompt's text as its echoed tokens add up to it)
                        text = decode_after(tok, (), ids) + text
                    lps = None
                    if req.lp is not None:
                        mine = jobs[pi][order[j]].logprobs if req.max_tokens else []
                        lps = _logprobs_answer(tok, tokens, (scores or []) + mine, chat, ids, req.echo, len(text))
                        if req.echo:
                            lps["top_logprobs"][0] = None    # (OpenAI's: the first token has nothing before it)
                    choice = {"index": pi * n + j, "finish_reason": reason, "logprobs": lps}
                    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
                    choices.append(choice)
            prompt_tokens = sum(len(ids) for ids in req.prompts)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}
            return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                    "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                    "model": model_name, "usage": usage, "choices": choices}

        def _stream(self, req: "_Request", chat: bool) -> None:
            """Server-sent events, OpenAI's chunks: each choice's text as it comes (a chunk carries its choice's index,
            prompt x n + j, as the whole answer numbers them; text that could be the start of a stop text, or an
            unfinished UTF-8 character, is held back), then a chunk with that choice's finish reason; once every
            choice has ended, with stream_options.include_usage a chunk with the usage and no choices; then [DONE]."""
            stop, tok, n = req.stop, engine.tok, req.n
            sink: "queue.Queue" = queue.Queue()      # ((choice, token) of every choice, (choice, None) at its end)
            jobs = [engine.submit(ids, req.max_tokens, stop, stream=True, sampling=req.sampling,
                                  seed=_choice_key(req.seed, pi * n + j), logit_bias=req.bias, sink=sink,
                                  tag=pi * n + j)
                    for pi, ids in enumerate(req.prompts) for j in range(n)]
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())

                def send(data: dict) -> None:
                    self.wfile.write(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")
                    self.wfile.flush()

                def event(index: int, text: Optional[str], reason: Optional[str] = None, first: bool = False) -> None:
                    if chat:
                        delta = {"role": "assistant", "content": ""} if first else {} if text is None else \
                            {"content": text}
                        choice = {"index": index, "delta": delta, "finish_reason": reason}
                    else:
                        choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
                    send({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                          "created": created, "model": model_name, "choices": [choice]})
                if chat:
                    for c in range(len(jobs)):
                        event(c, None, first=True)
                decs = [StreamDecoder(tok, job.ids) for job in jobs]   # (each choice's text as a stream prints it)
                printed, sent = [""] * len(jobs), [""] * len(jobs)
                running, failed, done = set(range(len(jobs))), False, 0
                while running:
                    try:
                        c, t = sink.get(timeout=POLL_S)
                    except queue.Empty:              # (queued, or between tokens: is the client still there?)
                        if self._client_gone():
                            raise ClientGone("the client went away") from None
                        continue
                    if t is None:                    # (choice c has ended)
                        running.discard(c)
                        job = jobs[c]
                        if job.error is not None:
                            failed = True
                            send({"error": {"message": str(job.error), "type": "server_error", "code": 500}})
                            continue
                        tokens, reason = job.result
                        done += job.made             # (as _complete's usage: an end-of-text counted)
                        final = _answer_text(tok, tokens, reason, stop, job.ids)
                        if len(final) > len(sent[c]) and final.startswith(sent[c]):
                            event(c, final[len(sent[c]):])
                        event(c, None, reason)
                        continue
                    printed[c] += decs[c].push(t)    # (text never taken back: the final text starts with it)
                    if stop and any(x in decs[c].text() for x in stop):
                        continue                     # (the row ends with this token: the end comes next)
                    safe = _safe_prefix(printed[c], stop)
                    if len(safe) > len(sent[c]) and safe.startswith(sent[c]):
                        event(c, safe[len(sent[c]):])
                        sent[c] = safe
                if req.usage and not failed:         # (OpenAI's: a last chunk with no choices and the usage)
                    p = sum(len(ids) for ids in req.prompts)
                    send({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                          "created": created, "model": model_name, "choices": [],
                          "usage": {"prompt_tokens": p, "completion_tokens": done, "total_tokens": p + done}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except ConnectionError:                  # (the client went away: ClientGone or a failed write)
                engine.cancel(jobs)
                self.close_connection = True

    return Handler


def serve(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, model_name: str = "jamba", chat_template=None,
          ready=None, api_key: Optional[str] = None, idle_timeout: Optional[float] = IDLE_TIMEOUT_S,
          **engine_options) -> None:
    """Serves until interrupted (Ctrl-C) or, with ready (a callable), until the server it is given is shut down:
    ready(server) is called once it listens (tests, and callers that run it in a thread). api_key: the /v1 endpoints
    answer only requests with "Authorization: Bearer <api_key>" (None: no check). idle_timeout: seconds a connection
    may wait to send its next request (line and headers) before it is closed (None or 0: no limit)."""
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ValueError("api_key: expected a non-empty string (or None: no check)")
    if idle_timeout is not None and (isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) or
                                     not 0 <= idle_timeout < float("inf")):
        raise ValueError(f"idle_timeout: expected seconds >= 0 (0 or None: no limit), got {idle_timeout!r}")
    engine = Engine(model, tokenizer, **engine_options)
    httpd = _Server((host, port), make_handler(engine, model_name, chat_template, api_key=api_key,
                                               idle_timeout=idle_timeout or None))
    httpd.daemon_threads = True
    httpd.engine = engine                # (for ready(): its counters, e.g. the requests done and dropped)
    try:
        if ready is not None:
            ready(httpd)
        httpd.serve_forever()
    finally:
        httpd.server_close()
        engine.close()
