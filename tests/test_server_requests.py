"""jamba_ext.server against the requests clients send that are malformed, or unusual but valid in OpenAI's API: each
gets a 4xx with OpenAI's JSON error naming what is wrong, or is served -- never a 500, a hung or reset connection,
an HTML page, or a failed request of another client. Each test failed on the server before its fix."""
import http.client
import json
import socket
import struct
import threading
import time

import pytest

from conftest import builtin_model
from jamba_ext import server
from jamba_ext.tokenizer import ByteTokenizer, ChatTemplate
from test_server import Running

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def srv():
    s = Running(builtin_model(), ByteTokenizer(), chat_template=ChatTemplate(TEMPLATE), batch_size=2,
                max_prompt_tokens=64, max_new_tokens=8, stats_every=0)
    yield s
    s.stop()


def _exchange(srv, data: bytes, timeout: float = 5.0) -> bytes:
    """Raw bytes sent on a connection of its own; all the server sends back until it closes (b"<hung>" appended when
    it sends nothing more for timeout seconds)."""
    s = socket.create_connection(srv.httpd.server_address, timeout=timeout)
    got = b""
    try:
        s.sendall(data)
        while True:
            part = s.recv(65536)
            if not part:
                break
            got += part
    except socket.timeout:
        got += b"<hung>"
    finally:
        s.close()
    return got


def _json_error(raw: bytes, code: int) -> str:
    """The message of one whole HTTP answer that must be a `code` with OpenAI's JSON error (nothing after it)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % code), raw[:300]
    err = json.loads(body)["error"]                    # (the whole rest: no second answer, no HTML page)
    assert err["code"] == code and err["type"], err
    return err["message"]


def test_sampling_settings_past_float32_are_refused_and_spare_the_other_requests(srv):
    """A setting that passes the range check as a Python number but not as the sampling kernel's float32 (temperature
    1e39 -> inf, top_p / repetition_penalty 1e-46 -> 0, an int too large for a float) is a 400 naming it; before, it
    failed the decode step: a 500 for it and for every other request then running."""
    ban = {"2": -100}                                   # (no end-of-text: the neighbour runs its 8 tokens)
    engine = srv.httpd.engine
    got = {}
    neighbour = threading.Thread(target=lambda: got.update(a=srv.post("/v1/completions", {
        "prompt": "hello", "max_tokens": 8, "logit_bias": ban})))
    t0, done0 = time.time(), engine.done_tokens
    neighbour.start()
    while engine.done_tokens == done0 and neighbour.is_alive():   # (it decodes)
        assert time.time() - t0 < 60
        time.sleep(0.005)
    for field, value in (("temperature", 1e39), ("temperature", 10 ** 400), ("top_p", 1e-46),
                         ("repetition_penalty", 1e-46), ("repetition_penalty", 1e39), ("top_k", 10 ** 39)):
        code, ans = srv.post("/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": 1, field: value})
        assert code == 400 and ans["error"]["message"].startswith(f"{field}: ") and "float32" in \
            ans["error"]["message"], (field, value, ans)
    neighbour.join(60)
    code, ans = got["a"]
    assert code == 200 and ans["usage"]["completion_tokens"] == 8, ans
    code, ans = srv.post("/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": 3e38, "top_k": 10 ** 30})
    assert code == 200, ans                             # (large, still finite in float32: taken)


def test_bodies_that_are_not_json_are_400s(srv):
    """JSON nested past Python's recursion limit, bytes that are not UTF-8, a number past int's digit limit, and a
    logit_bias key of digits int() cannot read ('²': isdigit, not a decimal) are 400s, not 500s."""
    for raw, msg in ((b"[" * 100000 + b"]" * 100000, "the body is not JSON"),
                     (b'{"prompt": "\xff\xfe"}', "the body is not JSON"),
                     (b'{"prompt": "x", "seed": ' + b"7" * 5000 + b"}", "the body is not JSON"),
                     ('{"prompt": "x", "logit_bias": {"²": 1}}'.encode(), '"logit_bias": token ids are ints')):
        code, ans = srv.post("/v1/completions", None, raw=raw)
        assert code == 400 and msg in ans["error"]["message"], (raw[:40], ans)


def test_null_optional_fields_take_their_defaults(srv):
    """OpenAI's optional fields are nullable ("stream", "n", "echo", "max_tokens" / "max_completion_tokens": null
    as clients built on its schema send them): each means its default, as if left out (400s before)."""
    code, want = srv.post("/v1/completions", {"prompt": "hello"})
    assert code == 200, want
    for k in ("stream", "n", "echo", "max_tokens", "max_completion_tokens"):
        code, ans = srv.post("/v1/completions", {"prompt": "hello", k: None})
        assert code == 200 and ans["choices"] == want["choices"] and ans["usage"] == want["usage"], (k, ans)


def test_max_completion_tokens_is_checked_beside_max_tokens(srv):
    """"max_completion_tokens" beside "max_tokens" was never read (a string there was answered 200): each is checked,
    two that differ are refused, and either alone is the budget."""
    for body, msg in (({"max_tokens": 3, "max_completion_tokens": "a"}, '"max_completion_tokens": expected an int'),
                      ({"max_tokens": 3, "max_completion_tokens": 5}, '"max_completion_tokens" 5 differ'),
                      ({"max_tokens": "3", "max_completion_tokens": 3}, '"max_tokens": expected an int')):
        code, ans = srv.post("/v1/completions", dict(body, prompt="x"))
        assert code == 400 and msg in ans["error"]["message"], (body, ans)
    ban = {"2": -100}
    for body in ({"max_tokens": 3, "max_completion_tokens": 3}, {"max_completion_tokens": 3}, {"max_tokens": 3}):
        code, ans = srv.post("/v1/completions", dict(body, prompt="x", logit_bias=ban))
        assert code == 200 and ans["usage"]["completion_tokens"] == 3, (body, ans)


def test_model_and_user_must_be_strings(srv):
    for k in ("model", "user"):
        code, ans = srv.post("/v1/completions", {"prompt": "x", "max_tokens": 1, k: 5})
        assert code == 400 and ans["error"]["message"] == f'"{k}": expected a string, got 5', ans
    code, ans = srv.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "model": "any", "user": None})
    assert code == 200, ans


def test_chat_content_as_a_list_of_text_parts(srv):
    """OpenAI's content parts ([{"type": "text", "text": ...}]) are served as their texts joined by newlines (vLLM's
    way; a 400 before); a part that is not text is a 400 naming it."""
    msgs = [{"role": "user", "content": "a\nb"}]
    code, want = srv.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 4})
    assert code == 200, want
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    code, ans = srv.post("/v1/chat/completions", {"messages": parts, "max_tokens": 4})
    assert code == 200 and ans["choices"] == want["choices"] and ans["usage"] == want["usage"], ans
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    for content, msg in (([{"type": "text", "text": "a"}, image], "got type 'image_url'"), ([{"text": 5}], "")):
        code, ans = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": content}]})
        assert code == 400 and ans["error"]["message"].startswith('"messages[0].content[') and msg in \
            ans["error"]["message"], ans


def test_methods_paths_and_http_errors_answer_json(srv):
    """A known path with the wrong method is a 405 naming the method it takes (GET /v1/completions was a 404, PUT /
    DELETE / HEAD http.server's 501 HTML page; HEAD of a GET endpoint is its answer without the body); http.server's
    own refusals (a request line it cannot read, an unknown method) are OpenAI's JSON error too; a query string does
    not hide a path (a 404 before)."""
    for method, path, allow in (("GET", "/v1/completions", "POST"), ("PUT", "/v1/chat/completions", "POST"),
                                ("DELETE", "/v1/models", "GET"), ("POST", "/health", "GET")):
        raw = _exchange(srv, f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
                             "{}".encode())
        assert f"{method} {path}: not allowed (use {allow})" == _json_error(raw, 405), raw
        assert b"\r\nAllow: " + allow.encode() + b"\r\n" in raw
    # HEAD: GET's answer without a body (health checks), and a 405 on a POST endpoint
    raw = _exchange(srv, b"HEAD /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\n"), raw
    raw = _exchange(srv, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\n"), raw
    raw = _exchange(srv, b"HEAD /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 405") and raw.endswith(b"\r\n\r\n"), raw
    assert "FOO" in _json_error(_exchange(srv, b"FOO /health HTTP/1.1\r\nHost: t\r\n\r\n"), 501)
    assert "Bad request" in _json_error(_exchange(srv, b"GET /a b c HTTP/1.1\r\nHost: t\r\n\r\n"), 400)
    assert _json_error(_exchange(srv, b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"), 404)
    assert srv.get("/v1/models?api-version=2024-06-01")[0] == 200
    code, ans = srv.post("/v1/completions?api-version=2024-06-01", {"prompt": "x", "max_tokens": 1})
    assert code == 200, ans


def test_routing_with_a_query_or_an_absolute_url_keeps_the_key_check():
    """With an API key, a /v1 path given with a query or as an absolute URL (routed as its path now) still needs it."""
    s = Running(builtin_model(), ByteTokenizer(), batch_size=1, max_prompt_tokens=16, max_new_tokens=2,
                api_key="k", stats_every=0)
    try:
        for target in ("/v1/models?x=1", "http://t/v1/models"):
            for auth, code in (("", 401), ("Authorization: Bearer k\r\n", 200)):
                raw = _exchange(s, f"GET {target} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n".encode())
                assert raw.startswith(b"HTTP/1.1 %d" % code), (target, auth, raw[:200])
    finally:
        s.stop()


def test_a_refusal_that_closes_says_so_and_the_client_goes_on(srv):
    """A refusal whose body is not read closes the connection: it says "Connection: close", so that a keep-alive
    client's next request opens a new one (it met a closed socket before: a broken pipe)."""
    c = http.client.HTTPConnection(*srv.httpd.server_address, timeout=30)
    try:
        for path, code in (("/v1/nope", 404), ("/health", 405), ("/v1/completions", 200)):
            c.request("POST", path, body=json.dumps({"prompt": "x", "max_tokens": 1}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            assert r.status == code and json.loads(r.read()), (path, r.status)
            assert (r.getheader("Connection") == "close") == (code != 200)
    finally:
        c.close()


def test_an_oversized_body_gets_its_413(srv):
    """A body past MAX_BODY_BYTES, sent whole before the answer is read (http.client's way): the client reads the 413
    (the server closed with the body unread before: a reset, a broken pipe for the client)."""
    c = http.client.HTTPConnection(*srv.httpd.server_address, timeout=30)
    try:
        c.request("POST", "/v1/completions", body=b" " * (server.MAX_BODY_BYTES + 1))
        r = c.getresponse()
        assert r.status == 413 and "Content-Length" in json.loads(r.read())["error"]["message"]
    finally:
        c.close()


def test_a_body_without_a_content_length_is_a_411(srv):
    """A chunked body, or one without a Content-Length, is a 411 in OpenAI's form and the connection closes (the body
    was read as a next request before: an HTML 400 after a misleading "must be a JSON object")."""
    body = b'{"prompt": "x", "max_tokens": 1}'
    for head, msg in ((b"Transfer-Encoding: chunked\r\n", "Transfer-Encoding"), (b"", "Content-Length: needed")):
        data = body if not head else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        raw = _exchange(srv, b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n" + head + b"\r\n" + data)
        assert msg in _json_error(raw, 411) and b"\r\nConnection: close\r\n" in raw, raw


def test_a_body_that_never_comes_is_a_408(srv, monkeypatch):
    """A Content-Length past the bytes sent: the server answers 408 after BODY_TIMEOUT_S (it waited for ever)."""
    monkeypatch.setattr(server, "BODY_TIMEOUT_S", 0.3, raising=False)
    raw = _exchange(srv, b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"prompt\": 1")
    assert "did not come" in _json_error(raw, 408)
    assert srv.post("/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200


def test_a_client_that_resets_its_connection_prints_no_traceback(srv, capsys):
    """A client that resets its connection (SO_LINGER 0: a killed client, a proxy) while the server waits for its
    request, new or kept alive after an answer, is no server error: nothing on stderr, and the server goes on (each
    printed socketserver's 20-line ConnectionResetError traceback before)."""
    def reset(c):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # (closes with a reset)
        c.close()
    kept = socket.create_connection(srv.httpd.server_address, timeout=10)
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while not got.endswith(b'{"status": "ok"}'):
        got += kept.recv(4096)
    fresh = socket.create_connection(srv.httpd.server_address, timeout=10)
    time.sleep(0.2)                                    # (both wait for a request line now)
    reset(kept)
    reset(fresh)
    time.sleep(0.5)
    assert srv.get("/health") == (200, {"status": "ok"})
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err


def test_an_idle_connection_is_closed_and_long_requests_are_not(monkeypatch):
    """idle_timeout: a connection that sends nothing, or nothing more after an answer (kept alive), is closed by the
    server once that long has passed (it held a thread for ever before), and the server goes on; the limit is on the
    wait for a request only: a body that comes later than it (within BODY_TIMEOUT_S) is read; a generation that runs
    for several times it, streamed or not, comes back whole; so does a stream whose client reads nothing for 4 times
    it (small socket buffers: the server's writes wait that long -- with the timeout left on the socket, a write timed
    out and the stream was cut)."""
    orig = server.ContinuousBatcher.step

    def slow(self):                                    # (12 tokens: ~1.8 s, 3.6 x the idle timeout)
        time.sleep(0.15)
        return orig(self)
    model = builtin_model()
    s = Running(model, ByteTokenizer(), batch_size=2, max_prompt_tokens=64, max_new_tokens=256, stats_every=0,
                idle_timeout=0.5)
    ban = {str(e): -100 for e in model._eos_ids()}     # (no end-of-text: every token asked for)

    def until_closed(c) -> bytes:
        raw = b""
        while True:
            part = c.recv(65536)
            if not part:
                break
            raw += part
        c.close()
        return raw
    try:
        quiet = socket.create_connection(s.httpd.server_address, timeout=10)
        kept = socket.create_connection(s.httpd.server_address, timeout=10)
        t0 = time.monotonic()
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        got = b""
        while not got.endswith(b'{"status": "ok"}'):   # (the answer, and the connection kept alive)
            got += kept.recv(4096)
        assert got.startswith(b"HTTP/1.1 200") and b"Connection: close" not in got, got
        for c in (quiet, kept):
            try:
                assert c.recv(1) == b""                # (closed by the server, not by our 10 s timeout)
            except socket.timeout:
                pytest.fail("an idle connection was kept open")
            finally:
                c.close()
        assert time.monotonic() - t0 < 5
        assert s.get("/health") == (200, {"status": "ok"})
        late = socket.create_connection(s.httpd.server_address, timeout=10)
        late.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 32\r\nConnection: close\r\n\r\n")
        time.sleep(1.0)                                # (the body after the idle timeout: BODY_TIMEOUT_S applies)
        late.sendall(b'{"prompt": "x", "max_tokens": 2} ')
        raw = until_closed(late)
        assert raw.startswith(b"HTTP/1.1 200"), raw
        s.httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # (the accepted sockets' too)
        slow_reader = socket.socket()
        slow_reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_reader.settimeout(60)
        slow_reader.connect(s.httpd.server_address)
        data = json.dumps({"prompt": "hi", "max_tokens": 256, "logit_bias": ban, "stream": True}).encode()
        slow_reader.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (
            len(data), data))
        time.sleep(2.0)                                # (~30 kB of events: past the buffers, the writes wait)
        raw = until_closed(slow_reader)
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"data: [DONE]\n\n"), raw[-300:]
        assert raw.count(b'"finish_reason": "length"') == 1
        monkeypatch.setattr(server.ContinuousBatcher, "step", slow)
        body = {"prompt": "hello", "max_tokens": 12, "logit_bias": ban}
        out = {}
        t0 = time.monotonic()
        streamed = threading.Thread(target=lambda: out.update(ev=s.events("/v1/completions", dict(
            body, stream_options={"include_usage": True}))))
        streamed.start()
        code, whole = s.post("/v1/completions", body)
        streamed.join(60)
        assert time.monotonic() - t0 > 1.0             # (each ran past the idle timeout)
        assert code == 200 and whole["usage"]["completion_tokens"] == 12, whole
        ev = out["ev"]
        assert ev[-1] == "[DONE]" and json.loads(ev[-2])["usage"] == whole["usage"], ev
        assert "".join(json.loads(e)["choices"][0]["text"] for e in ev[:-2]) == whole["choices"][0]["text"]
    finally:
        s.stop()
