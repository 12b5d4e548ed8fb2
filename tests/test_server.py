"""jamba_ext.server (`jamba-ext serve`): OpenAI-style completions over continuous batching. Concurrent requests each
get the completion of their prompt alone; token-id prompts, stop texts and the chat endpoint (a checkpoint's template);
the requests the server refuses (400), unknown endpoints (404), a failed step (500, and the server goes on); the CLI's
argument errors."""
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import HAS_GPU, builtin_model
from jamba_ext import server
from jamba_ext.batch import completion
from jamba_ext.tokenizer import ByteTokenizer, StreamDecoder


class Running:
    """serve() in a thread on a free port; .url, .post(path, body) -> (status, JSON), .get(path); .stop()."""

    def __init__(self, model, tok, **kw):
        got = threading.Event()
        self.httpd = None

        def ready(httpd):
            self.httpd = httpd
            got.set()
        self.thread = threading.Thread(target=server.serve, args=(model, tok, "127.0.0.1", 0),
                                       kwargs=dict(ready=ready, **kw), daemon=True)
        self.thread.start()
        assert got.wait(60), "the server did not start"
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def _call(self, req):
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, path, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        return self._call(urllib.request.Request(self.url + path, data=data, method="POST",
                                                 headers={"Content-Type": "application/json"}))

    def events(self, path, body):
        """A streamed answer: its server-sent events' data, [DONE] last."""
        req = urllib.request.Request(self.url + path, data=json.dumps(dict(body, stream=True)).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            raw = r.read().decode()
        chunks = [c for c in raw.split("\n\n") if c]
        assert all(c.startswith("data: ") for c in chunks), raw
        return [c[len("data: "):] for c in chunks]

    def get(self, path):
        return self._call(urllib.request.Request(self.url + path))

    def stop(self):
        self.httpd.shutdown()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def _alone(model, ids, n, stop=(), decode=None):
    with torch.inference_mode():
        row = model.generate([ids], max_new_tokens=n)[0, len(ids):].tolist()
    return completion(row, set(model._eos_ids()), stop, decode)


def _made(model, ids, n, stop=(), decode=None):
    """The tokens the prompt's row makes alone, as usage counts them (vLLM's len(token_ids)): up to the first
    end-of-text, which counts (the text leaves it out), or the token that completes a stop text, or n."""
    with torch.inference_mode():
        row = model.generate([ids], max_new_tokens=n)[0, len(ids):].tolist()
    e = next((i + 1 for i, t in enumerate(row) if t in set(model._eos_ids())), len(row))
    cut, reason = completion(row[:e], set(), stop, decode)
    return len(cut) if reason == "stop" else e


def test_concurrent_completions_equal_each_prompt_alone():
    """Eight requests at once over three rows (prompts of 1-40 tokens, max_tokens 1-12, two with stop texts, one as
    token ids): each answer's text, finish_reason and usage as the prompt alone gives them."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=3, max_prompt_tokens=64, max_new_tokens=16)
    try:
        texts = ["hello", "a", "the hybrid model reads a long prompt here", "xyz", "Mamba", "MoE layer", "q", "ab"]
        budgets = [5, 12, 3, 8, 1, 10, 6, 9]
        free = [tok.decode(_alone(model, tok.encode(t), 12)[0]) for t in texts]
        stops = [None, [free[1][2:4]], None, None, None, [free[5][4:6], "zzzz"], None, None]
        bodies = []
        for i, (t, b, s) in enumerate(zip(texts, budgets, stops)):
            body = {"prompt": tok.encode(t) if i == 3 else t, "max_tokens": b}
            if s is not None:
                body["stop"] = s
            bodies.append(body)
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda b: srv.post("/v1/completions", b), bodies))
        for t, b, s, (code, ans) in zip(texts, budgets, stops, answers):
            ids = tok.encode(t)
            want, reason = _alone(model, ids, b, s or (), tok.decode)
            assert code == 200, ans
            choice = ans["choices"][0]
            text = tok.decode(want)
            if reason == "stop" and s:                    # (OpenAI's: the text ends before the stop text)
                assert any(x in text for x in s)
                text = text[:min(text.find(x) for x in s if x in text)]
            assert choice["text"] == text and choice["finish_reason"] == reason, (t, ans)
            made = _made(model, ids, b, s or (), tok.decode)
            assert ans["usage"] == {"prompt_tokens": len(ids), "completion_tokens": made,
                                    "total_tokens": len(ids) + made}
            assert ans["object"] == "text_completion" and ans["id"].startswith("cmpl-")
        assert {a["choices"][0]["finish_reason"] for _, a in answers} == {"stop", "length"}
        assert sum(any(x in a["choices"][0]["text"] for x in s) for s, (_, a) in zip(stops, answers) if s) == 0
        assert sum(a["choices"][0]["finish_reason"] == "stop" for s, (_, a) in zip(stops, answers) if s) == 2
        assert srv.get("/health") == (200, {"status": "ok"})
        code, models = srv.get("/v1/models")
        assert code == 200 and models["data"][0]["id"] == "jamba"
    finally:
        srv.stop()


def test_usage_counts_the_end_of_text_token():
    """usage.completion_tokens counts every token a row made, the end-of-text that ended it too (vLLM's
    len(output.token_ids); the text leaves it out), streamed (include_usage) or not; a stop text's completion counts
    its tokens up to the one that completed it. Before, an end-of-text was not counted (usage one short: 0 for a
    completion that was only an end-of-text), and /metrics' generation_tokens disagreed with usage."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=3, max_prompt_tokens=64, max_new_tokens=16)
    eos = str(model._eos_ids()[0])
    try:
        ids = tok.encode("another")
        want, reason = _alone(model, ids, 16)
        assert reason == "stop" and 0 < len(want) < 15      # (this prompt's row ends with an end-of-text)
        cases = [({"prompt": "another", "max_tokens": 16}, tok.decode(want), len(want) + 1),
                 ({"prompt": "another", "max_tokens": 16, "n": 2}, tok.decode(want), 2 * (len(want) + 1)),
                 ({"prompt": "hello", "max_tokens": 5, "logit_bias": {eos: 100}}, "", 1)]   # (only an end-of-text)
        free = tok.decode(_alone(model, tok.encode("hello"), 16)[0])
        cut = _made(model, tok.encode("hello"), 16, [free[3:5]], tok.decode)
        assert reason == "stop" and 0 < cut < 16
        cases.append(({"prompt": "hello", "max_tokens": 16, "stop": [free[3:5]]}, free[:3], cut))
        before = _metrics(srv)["jamba_ext_generation_tokens_total"]
        for body, text, made in cases:
            code, ans = srv.post("/v1/completions", body)
            assert code == 200 and all(c["text"] == text and c["finish_reason"] == "stop" for c in ans["choices"])
            p = ans["usage"]["prompt_tokens"]
            assert ans["usage"] == {"prompt_tokens": p, "completion_tokens": made, "total_tokens": p + made}, body
            ev = srv.events("/v1/completions", dict(body, stream_options={"include_usage": True}))
            assert json.loads(ev[-2])["usage"] == ans["usage"], (body, ev[-2])
        assert _metrics(srv)["jamba_ext_generation_tokens_total"] - before == 2 * sum(m for _, _, m in cases)
    finally:
        srv.stop()


def test_each_request_samples_with_its_own_settings():
    """Six requests at once over three rows, greedy server: a request that gives nothing, one with temperature 0, one
    with a repetition penalty, one with top_k 1 (streamed) each get the prompt's own generate() with those settings;
    two sampled ones (temperature 1.5) come back whole; a sampling server answers a temperature-0 request greedily."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=3, max_prompt_tokens=64, max_new_tokens=16)
    texts = ["hello there", "Mamba", "the MoE layer", "xyz", "a b c", "q"]
    extra = [{}, {"temperature": 0}, {"repetition_penalty": 1.8}, {"temperature": 0.7, "top_k": 1},
             {"temperature": 1.5, "top_p": 0.9}, {"temperature": 1.5, "presence_penalty": 1.0}]
    try:
        def ask(i):
            body = dict({"prompt": texts[i], "max_tokens": 10}, **extra[i])
            if i == 3:
                ev = srv.events("/v1/completions", body)
                return "".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1])
            code, ans = srv.post("/v1/completions", body)
            assert code == 200, ans
            return ans["choices"][0]["text"]
        with ThreadPoolExecutor(6) as ex:
            got = list(ex.map(ask, range(6)))
        for i in range(4):
            with torch.inference_mode():
                ids = tok.encode(texts[i])
                row = model.generate([ids], max_new_tokens=10, repetition_penalty=extra[i].get(
                    "repetition_penalty", 1.0))[0, len(ids):].tolist()
            assert got[i] == tok.decode(completion(row, set(model._eos_ids()))[0]), (i, extra[i])
        assert got[2] != tok.decode(_alone(model, tok.encode(texts[2]), 10)[0])   # (the penalty changed it)
        assert all(isinstance(g, str) for g in got[4:])
    finally:
        srv.stop()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=64, max_new_tokens=16, do_sample=True, temperature=2.0)
    try:
        code, ans = srv.post("/v1/completions", {"prompt": texts[0], "max_tokens": 10, "temperature": 0})
        assert code == 200 and ans["choices"][0]["text"] == tok.decode(_alone(model, tok.encode(texts[0]), 10)[0])
    finally:
        srv.stop()


def test_n_completions_of_one_prompt():
    """"n": greedy, n copies of the prompt's own completion (usage counts them all); sampled, n completions drawn in
    their own rows (not all the same); a list of prompts (text and token ids), n each, choices in prompt order."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=3, max_prompt_tokens=64, max_new_tokens=16)
    try:
        want = tok.decode(_alone(model, tok.encode("hello"), 8)[0])
        code, ans = srv.post("/v1/completions", {"prompt": "hello", "max_tokens": 8, "n": 4})
        assert code == 200 and [c["index"] for c in ans["choices"]] == [0, 1, 2, 3], ans
        assert all(c["text"] == want for c in ans["choices"])
        assert ans["usage"]["completion_tokens"] == 4 * _made(model, tok.encode("hello"), 8)
        code, ans = srv.post("/v1/completions", {"prompt": "hello", "max_tokens": 8, "n": 5, "temperature": 1.5})
        texts = [c["text"] for c in ans["choices"]]
        assert code == 200 and len(texts) == 5 and len(set(texts)) > 1, texts
        code, ans = srv.post("/v1/completions", {"prompt": ["hello", tok.encode("abc")], "max_tokens": 5, "n": 2})
        want = [tok.decode(_alone(model, tok.encode(p), 5)[0]) for p in ("hello", "abc")]
        assert code == 200 and [(c["index"], c["text"]) for c in ans["choices"]] == \
            [(0, want[0]), (1, want[0]), (2, want[1]), (3, want[1])], ans
        assert ans["usage"]["prompt_tokens"] == len(tok.encode("hello")) + len(tok.encode("abc"))
    finally:
        srv.stop()


def test_seeded_sampled_requests_repeat():
    """"seed" on a sampled request: the same request gives the same text again, alone or among other requests at once
    (other rows and steps), streamed or not; its n choices each draw their own (not all the same), and repeat; another
    seed gives other text; a greedy request ignores it."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=3, max_prompt_tokens=64, max_new_tokens=16)
    body = {"prompt": "the hybrid model", "max_tokens": 12, "temperature": 1.6, "top_p": 0.95, "seed": 1234}
    try:
        def text(b):
            code, ans = srv.post("/v1/completions", b)
            assert code == 200, ans
            return [c["text"] for c in ans["choices"]]
        alone = text(body)
        others = [{"prompt": t, "max_tokens": 9, "temperature": 1.3} for t in ("a", "Mamba", "xyz", "q r s")]
        with ThreadPoolExecutor(6) as ex:
            got = list(ex.map(text, others[:2] + [body] + others[2:] + [body]))
        assert got[2] == got[5] == alone
        ev = srv.events("/v1/completions", body)
        assert ["".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1])] == alone
        several = text(dict(body, n=4))
        assert several[0] == alone[0] and len(set(several)) > 1 and text(dict(body, n=4)) == several
        assert sum(a != b for a, b in zip(several, text(dict(body, n=4, seed=99)))) >= 3
        greedy = dict(body, temperature=0)
        assert text(greedy) == text(dict(greedy, seed=5)) == [tok.decode(_alone(model, tok.encode(body["prompt"]),
                                                                                12)[0])]
    finally:
        srv.stop()


def test_logit_bias():
    """"logit_bias" (OpenAI's form: token ids as strings): +100 on a token makes a greedy completion that token
    throughout, streamed or not; -100 bans the token the prompt alone gives first; a request without it, at the same
    time, gets its own completion."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=64, max_new_tokens=16)
    try:
        x = tok.encode("x", add_bos=False)[0]
        plain = {"prompt": "hello there", "max_tokens": 6}
        first = _alone(model, tok.encode("hello there"), 6)[0][0]

        def text(b):
            code, ans = srv.post("/v1/completions", b)
            assert code == 200, ans
            return ans["choices"][0]["text"]
        with ThreadPoolExecutor(3) as ex:
            got = list(ex.map(text, [dict(plain, logit_bias={str(x): 100}), plain,
                                     dict(plain, logit_bias={str(first): -100})]))
        assert got[0] == "x" * 6
        assert got[1] == tok.decode(_alone(model, tok.encode("hello there"), 6)[0])
        assert not tok.encode(got[2], add_bos=False) or tok.encode(got[2], add_bos=False)[0] != first
        ev = srv.events("/v1/completions", dict(plain, logit_bias={str(x): 100}))
        assert "".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1]) == "x" * 6
    finally:
        srv.stop()


def test_best_of():
    """"best_of" k > n: k completions drawn (their keys those of n = k), the n with the highest mean log-probability
    per token answered, most likely first, with their own logprobs when asked; usage counts all k; greedy: n copies
    of the prompt's completion; an echo-only request (max_tokens 0) answers the prompt."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=3, max_prompt_tokens=64, max_new_tokens=16)
    body = {"prompt": "the hybrid model", "max_tokens": 8, "temperature": 1.5, "seed": 77}
    try:
        code, four = srv.post("/v1/completions", dict(body, n=4, logprobs=0))
        assert code == 200, four
        mean = [sum(c["logprobs"]["token_logprobs"]) / max(1, len(c["logprobs"]["token_logprobs"]))
                for c in four["choices"]]
        best = sorted(range(4), key=lambda j: -mean[j])[:2]
        code, ans = srv.post("/v1/completions", dict(body, n=2, best_of=4))
        assert code == 200, ans
        assert [c["text"] for c in ans["choices"]] == [four["choices"][j]["text"] for j in best]
        assert [c["index"] for c in ans["choices"]] == [0, 1] and ans["choices"][0]["logprobs"] is None
        assert ans["usage"]["completion_tokens"] == four["usage"]["completion_tokens"]
        code, with_lp = srv.post("/v1/completions", dict(body, n=1, best_of=4, logprobs=2))
        assert code == 200 and with_lp["choices"][0]["text"] == four["choices"][best[0]]["text"]
        assert with_lp["choices"][0]["logprobs"]["token_logprobs"] == four["choices"][best[0]]["logprobs"][
            "token_logprobs"]
        code, greedy = srv.post("/v1/completions", {"prompt": "hello", "max_tokens": 6, "n": 2, "best_of": 3})
        want = tok.decode(_alone(model, tok.encode("hello"), 6)[0])
        assert code == 200 and [c["text"] for c in greedy["choices"]] == [want, want]
        code, echo = srv.post("/v1/completions", {"prompt": "hi", "max_tokens": 0, "echo": True, "best_of": 2})
        assert code == 200 and [c["text"] for c in echo["choices"]] == ["hi"]
    finally:
        srv.stop()


def test_legacy_top_logprobs_keep_the_most_likely_of_one_text():
    """Completions' top_logprobs are keyed by text: alternatives of one text (byte tokens of an unfinished UTF-8
    character all decode to U+FFFD) keep the most likely one's value, not the last one's."""
    tok = ByteTokenizer()
    a, b, c = (tok.encode(x, add_bos=False)[0] for x in ("\xc3", "\xc4", "a"))   # (two lone lead bytes, one letter)
    assert tok.decode([a]) == tok.decode([b]) != tok.decode([c])
    ans = server._logprobs_answer(tok, [a], [(-0.5, [(a, -0.5), (c, -1.0), (b, -2.0)])], chat=False)
    assert ans["top_logprobs"] == [{tok.decode([a]): -0.5, "a": -1.0}] and ans["token_logprobs"] == [-0.5]


def _strings(tok, context, tokens, alts):
    """The strings an answer's logprobs name its tokens and their alternatives (alts[j]: ids) by: the text each adds
    where it stands, as a StreamDecoder prints it (the last token's with flush(): an unfinished character's end)."""
    dec, out, keys = StreamDecoder(tok, context), [], []
    for j, t in enumerate(tokens):
        last = j == len(tokens) - 1
        keys.append([dec.peek(i, last) for i in alts[j]])
        out.append(dec.push(t) + (dec.flush() if last else ""))
    return out, keys


def test_logprobs_answers():
    """"logprobs": k on /v1/completions: each token's log-probability under the model (a whole-sequence forward, its
    log_softmax) and its k most likely alternatives, each token named by the text it adds (they add up to the
    answer's text), text offsets from the completion's start; "top_logprobs" without "logprobs": true on the chat
    endpoint is refused."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=64, max_new_tokens=16)
    try:
        code, ans = srv.post("/v1/completions", {"prompt": "hello", "max_tokens": 6, "logprobs": 2})
        assert code == 200, ans
        ids = tok.encode("hello")
        tokens = _alone(model, ids, 6)[0]
        lp = ans["choices"][0]["logprobs"]
        with torch.inference_mode():
            ref = torch.log_softmax(model(torch.tensor([ids + tokens])).logits[0].double(), -1)
        tops = [torch.topk(ref[len(ids) - 1 + j], 2) for j in range(len(tokens))]
        strings, keys = _strings(tok, ids, tokens, [w.indices.tolist() for w in tops])
        assert lp["tokens"] == strings and len(lp["token_logprobs"]) == len(tokens)
        assert "".join(strings) == ans["choices"][0]["text"]
        for j, t in enumerate(tokens):
            row = ref[len(ids) - 1 + j]
            assert abs(lp["token_logprobs"][j] - row[t].item()) < 1e-4
            # (the legacy form keys alternatives by text: byte tokens may share one)
            assert list(lp["top_logprobs"][j]) == list(dict.fromkeys(keys[j]))
            for key, v in lp["top_logprobs"][j].items():
                assert any(k == key and abs(v - w) < 1e-4 for k, w in zip(keys[j], tops[j].values.tolist()))
        assert lp["text_offset"] == [sum(map(len, strings[:j])) for j in range(len(strings))]
        assert srv.post("/v1/completions", {"prompt": "hello", "max_tokens": 2})[1]["choices"][0]["logprobs"] is None
        code, ans = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                      "top_logprobs": 2})
        assert code == 400 and '"top_logprobs" needs "logprobs": true' in ans["error"]["message"]
    finally:
        srv.stop()


def test_echo_scores_the_prompt():
    """"echo": true, "max_tokens": 0, "logprobs": k (an evaluation harness's loglikelihood request): the prompt's text
    back, and each prompt token's log-probability given those before it (a whole-sequence forward's log_softmax),
    the first None; a prompt longer than SCORE_CHUNK positions goes through in chunks; with new tokens too (an
    evaluation harness's request), their entries follow the prompt's."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=64, max_new_tokens=16)
    old = server.Engine.SCORE_CHUNK
    server.Engine.SCORE_CHUNK = 5                      # (several chunks for this prompt)
    try:
        text = "the hybrid model scores a prompt"
        code, ans = srv.post("/v1/completions", {"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1})
        assert code == 200, ans
        ids = tok.encode(text)
        with torch.inference_mode():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        choice = ans["choices"][0]
        lp = choice["logprobs"]
        assert choice["text"] == tok.decode(ids) and ans["usage"]["completion_tokens"] == 0
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and len(lp["tokens"]) == len(ids)
        strings, keys = _strings(tok, (), ids, [[]] + [[int(ref[i - 1].argmax())] for i in range(1, len(ids))])
        assert lp["tokens"] == strings and "".join(strings) == text
        for i in range(1, len(ids)):
            assert abs(lp["token_logprobs"][i] - ref[i - 1, ids[i]].item()) < 1e-4, i
            assert list(lp["top_logprobs"][i]) == keys[i]
        # lm-evaluation-harness's loglikelihood request: echo, 1 new token, logprobs 1, a seed, temperature 0; it sums
        # token_logprobs[ctxlen:-1] (the prompt's continuation, without the new token)
        code, ans = srv.post("/v1/completions", {"prompt": [ids], "max_tokens": 1, "echo": True, "logprobs": 1,
                                                 "temperature": 0, "seed": 1234})
        got = ans["choices"][0]["logprobs"]
        assert code == 200 and got["token_logprobs"][:-1] == lp["token_logprobs"] and len(got["tokens"]) == len(ids) + 1
        new = _alone(model, ids, 1)[0]
        assert ans["choices"][0]["text"] == tok.decode(ids) + tok.decode(new) and ans["usage"]["completion_tokens"] == 1
        assert abs(got["token_logprobs"][-1] - ref[-1, new[0]].item()) < 1e-4
        code, ans = srv.post("/v1/completions", {"prompt": "hi", "max_tokens": 2})     # (generation goes on)
        assert code == 200 and ans["choices"][0]["text"] == tok.decode(_alone(model, tok.encode("hi"), 2)[0])
    finally:
        server.Engine.SCORE_CHUNK = old
        srv.stop()


def test_streamed_answers_equal_the_whole_ones():
    """"stream": true: the text arrives in several chunks whose concatenation is the whole answer's text (stop texts
    cut as there, never sent in part), then a chunk with the finish reason, then [DONE]; two streams and a plain
    request at once."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=40, max_new_tokens=16)
    try:
        free = tok.decode(_alone(model, tok.encode("stream me"), 16)[0])
        bodies = [{"prompt": "stream me", "max_tokens": 16}, {"prompt": "stream me", "max_tokens": 16,
                                                              "stop": [free[6:9]]},
                  {"prompt": "another", "max_tokens": 7}]
        with ThreadPoolExecutor(3) as ex:
            whole = list(ex.map(lambda b: srv.post("/v1/completions", b)[1], bodies))
            streamed = list(ex.map(lambda b: srv.events("/v1/completions", b), bodies[:2]))
        for w, ev in zip(whole, streamed):
            assert ev[-1] == "[DONE]"
            parts = [json.loads(e) for e in ev[:-1]]
            texts = [p["choices"][0]["text"] for p in parts]
            assert "".join(texts) == w["choices"][0]["text"] and len([t for t in texts if t]) > 1
            assert [p["choices"][0]["finish_reason"] for p in parts] == [None] * (len(parts) - 1) + \
                [w["choices"][0]["finish_reason"]]
            assert all(p["object"] == "text_completion" and p["id"] == parts[0]["id"] for p in parts)
        assert whole[1]["choices"][0]["finish_reason"] == "stop" and free[6:9] not in whole[1]["choices"][0]["text"]
        # "stream_options": {"include_usage": true}: one more chunk, no choices, the whole answer's usage
        for w, b in zip(whole[:2], bodies[:2]):
            ev = srv.events("/v1/completions", dict(b, stream_options={"include_usage": True}))
            last = json.loads(ev[-2])
            assert ev[-1] == "[DONE]" and last["choices"] == [] and last["usage"] == w["usage"], last
            assert "usage" not in json.loads(ev[-3]) and json.loads(ev[-3])["choices"][0]["finish_reason"]
        ev = srv.events("/v1/completions", dict(bodies[2], stream_options={"include_usage": False}))
        assert ev[-1] == "[DONE]" and all(json.loads(e)["choices"] for e in ev[:-1])
        for so in ({"include_usage": "yes"}, {"other": True}, [True]):
            code, out = srv.post("/v1/completions", dict(bodies[2], stream=True, stream_options=so))
            assert code == 400 and "stream_options" in out["error"]["message"], (so, out)
        code, out = srv.post("/v1/completions", dict(bodies[2], stream_options={"include_usage": True}))
        assert code == 400 and '"stream": true' in out["error"]["message"]
    finally:
        srv.stop()


def test_streamed_choices():
    """A stream of several choices ("n" > 1 of a seeded sampled request; a list of prompts, n 2 each): each
    chunk carries its choice's index, and each choice's chunks add up to that choice of the whole answer (the same
    draws: a choice's key comes from the seed and its index), each with its finish reason; include_usage gives the
    whole answer's usage."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=3, max_prompt_tokens=40, max_new_tokens=12)
    try:
        for body in ({"prompt": "stream me", "max_tokens": 10, "n": 3, "temperature": 1.2, "seed": 7},
                     {"prompt": ["one", "two two", "three"], "max_tokens": 6, "n": 2, "stop": ["e"]}):
            code, whole = srv.post("/v1/completions", body)
            assert code == 200
            ev = srv.events("/v1/completions", dict(body, stream_options={"include_usage": True}))
            assert ev[-1] == "[DONE]"
            parts = [json.loads(e) for e in ev[:-1]]
            assert parts[-1]["choices"] == [] and parts[-1]["usage"] == whole["usage"]
            by = {}
            for p in parts[:-1]:
                (c,) = p["choices"]
                by.setdefault(c["index"], []).append(c)
            assert sorted(by) == list(range(len(whole["choices"])))
            for w in whole["choices"]:
                got = by[w["index"]]
                assert "".join(c["text"] for c in got) == w["text"]
                assert [c["finish_reason"] for c in got] == [None] * (len(got) - 1) + [w["finish_reason"]]
            if body.get("seed"):
                assert len({w["text"] for w in whole["choices"]}) > 1      # (the choices draw differently)
    finally:
        srv.stop()


def test_stream_holds_back_what_may_change():
    tok = ByteTokenizer()
    assert server._safe_prefix(tok.decode(tok.encode("aé", add_bos=False)[:2]), None) == "a"   # (half of é)
    assert server._safe_prefix("aé", None) == "aé"
    assert server._safe_prefix("abcxy", ["xyz"]) == "abc" and server._safe_prefix("abcxy", ["q", "xyz"]) == "abc"
    assert server._safe_prefix("abcxy", ["q"]) == "abcxy"
    assert server._cut_at_stop("one two three", ["three", "two"]) == "one " and server._cut_at_stop("ab", ["c"]) == "ab"


def test_refused_requests():
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=20, max_new_tokens=8)
    try:
        for body, msg in (({"prompt": "x", "stream": "yes"}, '"stream": expected true or false'),
                          ({"prompt": "x", "n": 0}, '"n": expected an int in [1, 16]'),
                          ({"prompt": "x", "n": 3, "best_of": 2}, '"best_of": expected an int in ["n" = 3, 16]'),
                          ({"prompt": "x", "best_of": 17}, '"best_of": expected an int'),
                          ({"prompt": "x", "best_of": True}, '"best_of": expected an int'),
                          ({"prompt": "x", "best_of": 2, "stream": True}, '"stream" with "best_of" > "n"'),
                          ({"prompt": "x", "suffix": "y"}, '"suffix": only null'),
                          ({"prompt": "x", "logit_bias": {"abc": 1}}, '"logit_bias": token ids are ints'),
                          ({"prompt": "x", "logit_bias": {"99999": 1}}, '"logit_bias": token ids are ints'),
                          ({"prompt": "x", "logit_bias": {"5": 200}}, '"logit_bias": biases are numbers in'),
                          ({"prompt": "x", "logit_bias": [5]}, '"logit_bias": expected an object'),
                          ({"prompt": "x", "logprobs": 21}, '"logprobs": expected an int in [0, 20]'),
                          ({"prompt": "x", "logprobs": 2, "stream": True},
                           '"stream" with "best_of" > "n", "logprobs" or "echo"'),
                          ({"prompt": "x", "echo": True, "stream": True}, '"logprobs" or "echo": not supported'),
                          ({"prompt": "x", "temperature": -0.7}, "temperature: expected a number >= 0"),
                          ({"prompt": "x", "top_p": 0}, "top_p: expected a number in (0, 1]"),
                          ({"prompt": "x", "presence_penalty": 3}, "presence_penalty: expected a number in [-2, 2]"),
                          ({"prompt": "x", "seed": "3", "temperature": 0.5}, '"seed": expected an int'),
                          ({"prompt": "x", "seed": 1.5}, '"seed": expected an int'),
                          ({"prompt": "x", "max_tokens": 9}, '"max_tokens": expected an int in [1, 8]'),
                          ({"prompt": "x", "max_tokens": 0}, '"max_tokens"'),
                          ({"prompt": "y" * 30}, "this server takes up to 20"),
                          ({"prompt": [["a"]]}, '"prompt": expected a string, a list of token ids, or a list'),
                          ({"prompt": ["a"] * 65}, "a list of up to 64"),
                          ({"prompt": "x", "max_tokens": 0}, '"max_tokens": expected an int in [1, 8]'),
                          ({"prompt": [5, 999]}, "ids outside [0, 259)"),
                          ({"prompt": "x", "stop": [""]}, '"stop": expected'),
                          ({"messages": [{"role": "user", "content": "hi"}]},
                           'unknown field "messages" on /v1/completions (chat messages: /v1/chat/completions)'),
                          ({"prompt": "x", "temprature": 0.5, "topp": 1},
                           'unknown fields "temprature", "topp" on /v1/completions: refused rather than ignored'),
                          ({"prompt": "x", "top_logprobs": 2}, 'unknown field "top_logprobs" on /v1/completions'),
                          ({"prompt": "x", "tools": []}, 'unknown field "tools"'),
                          ({}, '"prompt": expected'),
                          ([1, 2], "a JSON object")):
            code, ans = srv.post("/v1/completions", body)
            assert code == 400 and msg in ans["error"]["message"], (body, ans)
        code, ans = srv.post("/v1/completions", None, raw=b"{not json")
        assert code == 400 and "not JSON" in ans["error"]["message"]
        assert srv.httpd.request_queue_size >= 128   # (http.server's 5 reset 1 of 40 clients that came at once)
        code, ans = srv.post("/v1/completions", None, raw=b'{"prompt": "a\\ud800"}')   # (JSON's lone surrogate: a 500)
        assert code == 400 and '"prompt": not valid Unicode text' in ans["error"]["message"], ans
        code, ans = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert code == 400 and "no chat template" in ans["error"]["message"]
        assert srv.post("/v1/other", {})[0] == 404 and srv.get("/v2")[0] == 404
        assert srv.post("/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": 0})[0] == 200
    finally:
        srv.stop()


def test_failed_step_answers_500_and_the_server_goes_on(monkeypatch):
    model, tok = builtin_model(), ByteTokenizer()
    orig, calls = server.ContinuousBatcher.step, []

    def step(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("planted fault")
        return orig(self)
    monkeypatch.setattr(server.ContinuousBatcher, "step", step)
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=20, max_new_tokens=8)
    try:
        code, ans = srv.post("/v1/completions", {"prompt": "abc", "max_tokens": 5})
        assert code == 500 and "planted fault" in ans["error"]["message"]
        code, ans = srv.post("/v1/completions", {"prompt": "abc", "max_tokens": 5})
        assert code == 200 and ans["choices"][0]["text"] == tok.decode(_alone(model, tok.encode("abc"), 5)[0])
    finally:
        srv.stop()


def test_chat_endpoint(tmp_path):
    """/v1/chat/completions renders the messages with the checkpoint's chat template; the reply is the completion of
    that text alone (whole, streamed, and with logprobs: greedy, each token is its own top alternative; the tokens'
    strings add up to the reply, bytes are each token's own)."""
    from test_generate_cli import _chat_checkpoint
    from jamba_ext.modeling_jamba import JambaForCausalLM
    from jamba_ext.tokenizer import load_chat_template, load_tokenizer
    _chat_checkpoint(tmp_path)
    model = JambaForCausalLM.from_pretrained(str(tmp_path), dtype="float32")
    tok, tmpl = load_tokenizer(str(tmp_path)), load_chat_template(str(tmp_path))
    srv = Running(model, tok, chat_template=tmpl, model_name="tiny", batch_size=2, max_prompt_tokens=200,
                  max_new_tokens=8)
    try:
        msgs = [{"role": "system", "content": "a mat"}, {"role": "user", "content": "the cat"}]
        code, ans = srv.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "model": "x", "user": "u"})
        assert code == 200, ans   # ("model" and "user" taken; they do not change the answer)
        ids = tok.encode(tmpl.render(msgs, add_generation_prompt=True), add_bos=False)
        want, reason = _alone(model, ids, 4)
        assert ans["choices"][0]["message"] == {"role": "assistant", "content": tok.decode(want)}
        assert ans["choices"][0]["finish_reason"] == reason and ans["model"] == "tiny"
        assert ans["object"] == "chat.completion" and ans["usage"]["prompt_tokens"] == len(ids)
        code, ans = srv.post("/v1/chat/completions", {"messages": [{"role": "user"}]})
        assert code == 400 and '"messages"' in ans["error"]["message"]
        for body, msg in (({"messages": msgs, "prompt": "x"}, 'unknown field "prompt" on /v1/chat/completions (a '
                                                              'prompt: /v1/completions)'),
                          ({"messages": msgs, "response_format": {"type": "json_object"}},
                           'unknown field "response_format"')):
            code, ans = srv.post("/v1/chat/completions", body)
            assert code == 400 and msg in ans["error"]["message"], (body, ans)
        ev = srv.events("/v1/chat/completions", {"messages": msgs, "max_tokens": 4})
        parts = [json.loads(e)["choices"][0] for e in ev[:-1]]
        assert ev[-1] == "[DONE]" and parts[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(p["delta"].get("content", "") for p in parts) == tok.decode(want)
        assert parts[-1] == {"index": 0, "delta": {}, "finish_reason": reason}
        code, ans = srv.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "logprobs": True,
                                                      "top_logprobs": 1})
        content = ans["choices"][0]["logprobs"]["content"]
        from jamba_ext.tokenizer import token_bytes
        assert code == 200 and [c["token"] for c in content] == _strings(tok, ids, want, [[]] * len(want))[0]
        assert "".join(c["token"] for c in content) == ans["choices"][0]["message"]["content"]
        assert all(c["bytes"] == list(token_bytes(tok, t)) and len(c["top_logprobs"]) == 1 and
                   c["top_logprobs"][0]["logprob"] >= c["logprob"] - 1e-6 for c, t in zip(content, want))
        assert all(c["top_logprobs"][0]["token"] == c["token"] for c in content)   # (greedy: the top one)
    finally:
        srv.stop()


def test_progress_lines():
    """stats_every: progress lines while requests run and one when the work runs out; their counts add up to the
    requests and new tokens served."""
    import io
    import re
    model, tok = builtin_model(), ByteTokenizer()
    out = io.StringIO()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=64, max_new_tokens=16, stats_every=1e-4, stats_out=out)
    try:
        with ThreadPoolExecutor(3) as ex:
            answers = list(ex.map(lambda t: srv.post("/v1/completions", {"prompt": t, "max_tokens": 5}), ["a", "bc", "d"]))
        done = sum(a["usage"]["completion_tokens"] for _, a in answers)
    finally:
        srv.stop()
    lines = out.getvalue().splitlines()
    last = re.search(r"(\d+) requests done .*, (\d+) new tokens .*; 0 rows running, 0 queued", lines[-1])
    assert len(lines) > 1 and last and (int(last[1]), int(last[2])) == (3, done), lines


def test_cli_serve_passes_its_settings(monkeypatch, capsys):
    """jamba-ext serve: the built-in model and the command line's settings reach serve(), and its ready line names the
    address; an address in use exits 2."""
    from jamba_ext.__main__ import main
    seen = {}

    def fake(model, tok, host, port, **kw):
        seen.update(kw, host=host, port=port)

        class H:
            server_address = (host, 4321)
        kw["ready"](H())
    monkeypatch.setattr(server, "serve", fake)
    assert main(["serve", "--device", "cpu", "--port", "0", "--batch-size", "3", "--max-prompt-tokens", "50",
                 "--max-new-tokens", "7", "--temperature", "0.5", "--top-p", "0.9", "--repetition-penalty", "1.2"]) == 0
    assert seen["batch_size"] == 3 and seen["max_prompt_tokens"] == 50 and seen["max_new_tokens"] == 7
    assert seen["do_sample"] and seen["temperature"] == 0.5 and seen["top_p"] == 0.9
    assert seen["repetition_penalty"] == 1.2 and seen["chat_template"] is None and seen["host"] == "127.0.0.1"
    assert seen["stats_every"] == 10.0 and "prefill_ahead" not in seen     # (the batcher's default)
    assert seen["idle_timeout"] == server.IDLE_TIMEOUT_S
    assert "serving jamba-ext-builtin on http://127.0.0.1:4321" in capsys.readouterr().err
    assert main(["serve", "--device", "cpu", "--port", "0", "--prefill-ahead", "0"]) == 0
    assert seen["prefill_ahead"] == 0 and seen["api_key"] is None
    assert main(["serve", "--device", "cpu", "--port", "0", "--idle-timeout", "2.5"]) == 0
    assert seen["idle_timeout"] == 2.5
    monkeypatch.setenv("JAMBA_EXT_API_KEY", "from-env")                 # (the key: the flag, else the environment)
    assert main(["serve", "--device", "cpu", "--port", "0"]) == 0 and seen["api_key"] == "from-env"
    assert "API key required" in capsys.readouterr().err
    assert main(["serve", "--device", "cpu", "--port", "0", "--api-key", "flag"]) == 0 and seen["api_key"] == "flag"
    monkeypatch.delenv("JAMBA_EXT_API_KEY")

    def busy(*a, **k):
        raise OSError(98, "Address already in use")
    monkeypatch.setattr(server, "serve", busy)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--device", "cpu"])
    assert e.value.code == 2 and "cannot listen on 127.0.0.1:8000" in capsys.readouterr().err


def test_cli_serve_argument_errors(capsys):
    from jamba_ext.__main__ import main
    for argv, msg in ((["--batch-size", "0"], "--batch-size must be >= 1"), (["--port", "70000"], "--port must be"),
                      (["--temperature", "-1"], "--temperature must be >= 0"),
                      (["--prefill-ahead", "-1"], "--prefill-ahead must be >= 0"),
                      (["--api-key", " "], "--api-key must not be empty"),
                      (["--idle-timeout", "-1"], "--idle-timeout must be >= 0")):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--device", "cpu", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
def test_cuda_server_concurrent_requests():
    """On a GPU (fp32): the engine thread captures the decode graph and replays it; six concurrent requests (two
    streamed) each get the completion of the prompt alone."""
    model, tok = builtin_model("cuda"), ByteTokenizer()
    srv = Running(model, tok, batch_size=4, max_prompt_tokens=64, max_new_tokens=24)
    try:
        texts = ["hello", "a", "the hybrid model on a GPU", "xyz", "Mamba", "MoE"]
        budgets = [20, 5, 24, 9, 13, 1]
        bodies = [{"prompt": t, "max_tokens": b} for t, b in zip(texts, budgets)]
        with ThreadPoolExecutor(6) as ex:
            got = list(ex.map(lambda ib: srv.events("/v1/completions", ib[1]) if ib[0] < 2 else
                              srv.post("/v1/completions", ib[1])[1], enumerate(bodies)))
        for i, (t, b) in enumerate(zip(texts, budgets)):
            want = tok.decode(_alone(model, tok.encode(t), b)[0])
            text = "".join(json.loads(e)["choices"][0]["text"] for e in got[i][:-1]) if i < 2 else \
                got[i]["choices"][0]["text"]
            assert text == want, (t, got[i])
    finally:
        srv.stop()


def _raw_post(srv, body):
    """A /v1/completions request on a socket of its own (the test closes it when it likes), sent whole."""
    import socket
    data = json.dumps(body).encode()
    s = socket.create_connection(srv.httpd.server_address, timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return s


@pytest.mark.parametrize("stream", [False, True])
def test_client_that_goes_away_frees_its_row(stream):
    """A client that closes its connection while its request runs (streamed: after its first text; or waiting for the
    whole answer): the server drops the request (its row takes the next prompt at once, not after the 3000 tokens it
    asked for), counts it, and answers the next request; a client that closes while queued behind it is dropped
    before it runs."""
    import time
    model, tok = builtin_model(), ByteTokenizer()
    N = 3000
    srv = Running(model, tok, batch_size=1, max_prompt_tokens=32, max_new_tokens=N)
    engine = srv.httpd.engine
    ban = {str(e): -100 for e in model._eos_ids()}          # (no end-of-text: the request would run all N tokens)
    try:
        a = _raw_post(srv, {"prompt": "hello", "max_tokens": N, "logit_bias": ban, "stream": stream})
        if stream:
            got = b""
            while b"data: " not in got:
                got += a.recv(4096)
            assert got.startswith(b"HTTP/1.1 200")
        t0 = time.time()
        while engine.done_tokens < 5:                       # (it runs)
            assert time.time() - t0 < 60, "the first request did not start"
            time.sleep(0.01)
        queued = _raw_post(srv, {"prompt": "queued", "max_tokens": 5, "stream": stream})
        t0 = time.time()
        while engine.bat.queued + engine.inbox.qsize() == 0:
            assert time.time() - t0 < 60, "the second request was not queued"
            time.sleep(0.01)
        queued.close()
        t0 = time.time()
        while engine.cancelled < 1:                         # (dropped while the first still runs)
            assert time.time() - t0 < 60, "the queued request was not dropped"
            time.sleep(0.01)
        assert engine.bat.running == 1 and engine.bat.queued == 0 and engine.done_requests == 0
        a.close()
        code, out = srv.post("/v1/completions", {"prompt": "next", "max_tokens": 3})
        assert code == 200 and out["usage"]["completion_tokens"] == 3
        assert engine.cancelled == 2
        assert engine.done_tokens < N // 2, engine.done_tokens  # (the first stopped long before its N tokens)
        assert engine.done_requests == 1 and engine.bat.done
        m = _metrics(srv)
        assert m["jamba_ext_requests_cancelled_total"] == 2 and m["jamba_ext_requests_done_total"] == 1
        assert m["jamba_ext_generation_tokens_total"] == engine.done_tokens
    finally:
        srv.stop()


def _metrics(srv):
    """GET /metrics, parsed: {name: value}, after checking that every sample has its HELP and TYPE lines."""
    with urllib.request.urlopen(srv.url + "/metrics", timeout=60) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        lines = r.read().decode().splitlines()
    out = {}
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            name, value = line.split()
            base = name[:-len("_total")] if name.endswith("_total") else name
            assert lines[i - 2].startswith(f"# HELP {base} ") and lines[i - 1] in (f"# TYPE {base} counter",
                                                                                   f"# TYPE {base} gauge"), lines
            out[name] = float(value)
    return out


def test_metrics():
    """GET /metrics counts what the requests did: completions (n of them a request), prompt and new tokens (as usage
    gives them), decode steps; rows running and queued at rest; a refused request counts nowhere."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=2, max_prompt_tokens=32, max_new_tokens=8)
    try:
        m = _metrics(srv)
        assert m["jamba_ext_requests_done_total"] == 0 and m["jamba_ext_batch_size"] == 2
        assert m["jamba_ext_uptime_seconds"] > 0
        usage = [srv.post("/v1/completions", b)[1]["usage"] for b in (
            {"prompt": "hello there", "max_tokens": 5}, {"prompt": "abc", "max_tokens": 3, "n": 2})]
        assert srv.post("/v1/completions", {"prompt": "x", "max_tokens": 0})[0] == 400
        m = _metrics(srv)
        assert m["jamba_ext_requests_done_total"] == 3
        assert m["jamba_ext_generation_tokens_total"] == sum(u["completion_tokens"] for u in usage)
        assert m["jamba_ext_prompt_tokens_total"] == usage[0]["prompt_tokens"] + 2 * usage[1]["prompt_tokens"]
        assert m["jamba_ext_decode_steps_total"] >= 5
        assert m["jamba_ext_rows_running"] == 0 and m["jamba_ext_requests_queued"] == 0
        assert m["jamba_ext_requests_cancelled_total"] == 0 and m["jamba_ext_requests_failed_total"] == 0
    finally:
        srv.stop()


def test_api_key():
    """serve(api_key=...): the /v1 endpoints answer 401 (OpenAI's error form, WWW-Authenticate: Bearer) without the
    key or with a wrong one (another scheme, an empty key, a prefix of it, a longer one), and as usual with
    "Authorization: Bearer <key>"; /health and /metrics stay open; an empty key is refused."""
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=1, max_prompt_tokens=16, max_new_tokens=4, api_key="s3cret")
    body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()

    def call(path, key=None, data=None):
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = key
        req = urllib.request.Request(srv.url + path, data=data, headers=headers, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()
    try:
        for path, data in (("/v1/completions", body), ("/v1/models", None)):
            for key in (None, "Bearer wrong", "s3cret", "Basic s3cret", "Bearer ", "Bearer s3c", "Bearer s3cret2"):
                code, headers, raw = call(path, key, data)
                assert code == 401 and headers["WWW-Authenticate"] == "Bearer", (path, key, code)
                assert json.loads(raw)["error"]["code"] == 401
            code, _, raw = call(path, "Bearer s3cret", data)
            assert code == 200, raw
        assert json.loads(call("/v1/completions", "Bearer s3cret", body)[2])["usage"]["completion_tokens"] == 2
        assert call("/health")[0] == 200 and call("/metrics")[0] == 200
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="api_key: expected a non-empty string"):
        server.serve(model, tok, api_key="")


def test_cli_serve_stops_on_sigterm():
    """jamba-ext serve in its own process: SIGTERM (a container's stop) stops it as Ctrl-C does -- "stopped", exit
    status 0 -- after it has answered a request."""
    import os
    import re
    import signal
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "jamba_ext", "serve", "--device", "cpu", "--port", "0",
                             "--stats-every", "0"], stderr=subprocess.PIPE, text=True, cwd=root,
                            env=dict(os.environ, PYTHONPATH=root))
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line, "the server exited before it listened"
        port = int(re.search(r"http://127.0.0.1:(\d+)", line).group(1))
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                     data=json.dumps({"prompt": "hi", "max_tokens": 2}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_body_length_checked():
    """A request whose Content-Length is missing-as-negative, not a number or beyond MAX_BODY_BYTES is answered (400 /
    413, OpenAI's error form) without reading its body -- a negative length would have waited for the client's end,
    a huge one read it all -- and its connection closes; the server goes on."""
    import socket
    model, tok = builtin_model(), ByteTokenizer()
    srv = Running(model, tok, batch_size=1, max_prompt_tokens=16, max_new_tokens=4)
    try:
        for length, code in (("-5", 400), ("abc", 400), (str(server.MAX_BODY_BYTES + 1), 413)):
            s = socket.create_connection(srv.httpd.server_address, timeout=30)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + length.encode() + b"\r\n\r\n{")
            got = b""
            while True:                              # (the server closes the connection after its answer)
                part = s.recv(4096)
                if not part:
                    break
                got += part
            s.close()
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d" % code), (length, head)
            assert "Content-Length: expected an int" in json.loads(body)["error"]["message"]
        assert srv.post("/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200
    finally:
        srv.stop()


def test_safe_prefix_shorter_than_the_hold():
    """A streamed text shorter than the longest stop text less one: nothing may be sent yet (a negative slice end sent
    its start, which the final answer could then cut as part of the stop text)."""
    assert server._safe_prefix("XY", ["XYZW"]) == ""
    assert server._safe_prefix("abcXY", ["XYZW"]) == "ab"
    assert server._safe_prefix("abc", None) == "abc"


def test_lone_surrogate_with_a_tokenizer_that_raises_its_own_error():
    """A prompt with a lone surrogate is a RequestError (a 400) whatever the tokenizer raises on it (an HF tokenizer's
    TypeError was a 500)."""
    class Strict:
        def encode(self, text, add_bos=True):
            if any(0xD800 <= ord(ch) < 0xE000 for ch in text):
                raise TypeError("TextInputSequence must be str")
            return [1, 2]

    with pytest.raises(server.RequestError, match="not valid Unicode"):
        server._encode(Strict(), "a\ud800b", True, "prompt")
    assert server._encode(Strict(), "ab", True, "prompt") == [1, 2]
