"""OpenAIEngine against a real local HTTP server on 127.0.0.1 (stdlib, in a thread)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import openai
import pytest

from ttpa_ray.engines import ChatRequest, EngineError, GenerationParams
from ttpa_ray.engines.openai_engine import MAX_RETRY_AFTER_S, OpenAIEngine, retry_after_s
from ttpa_ray.schema.tool_call_text import parse_tool_calls

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


class FakeServer:
    """Behaviour is chosen by the last user message: 'ok', 'tools', 'flaky', 'bad', 'slow',
    'busy', 'not-json' (a 200 with an HTML body), 'retry-after=VALUE' (a first 429 with that
    header), 'redirect:URL' (a 302 to URL). A GET (where the client follows a 302) is answered 'redirected' and its headers kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        # As received: looked up case-insensitively (the SDK sends lower-case names).
        self.headers: list[Message] = []
        self.get_headers: list[Message] = []
        self.hits: dict[str, int] = {}
        self.active = 0
        self.max_active = 0
        self.flaky_failures = 2
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _leave(self) -> None:
                # A request stops counting as active before its response goes out: once
                # the client has the response it may start the next one, which must not
                # overlap this one in the count (it did under CPU contention).
                if getattr(self, "counted", False):
                    self.counted = False
                    with server.lock:
                        server.active -= 1

            def _send(self, status: int, payload: Any) -> None:
                self._leave()
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # The client may have timed out and gone ('slow').
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                with server.lock:
                    server.get_headers.append(self.headers)
                message = {"role": "assistant", "content": "redirected"}
                return self._send(200, {"choices": [{"index": 0, "message": message}]})

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                mode = body["messages"][-1]["content"]
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(self.headers)
                    hit = server.hits[mode] = server.hits.get(mode, 0) + 1
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                self.counted = True
                try:
                    self._handle(mode, hit, body)
                finally:
                    self._leave()

            def _handle(self, mode: str, hit: int, body: dict[str, Any]) -> None:
                if mode == "flaky" and hit <= server.flaky_failures:
                    return self._send(500, {"error": {"message": "overloaded"}})
                if mode == "throttled" and hit == 1:
                    self._leave()
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if mode.startswith("retry-after=") and hit == 1:
                    self._leave()
                    self.send_response(429)
                    self.send_header("Retry-After", mode.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if mode.startswith("redirect:"):
                    self._leave()
                    self.send_response(302)
                    self.send_header("Location", mode.split(":", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if mode == "not-json":
                    data = b"<html>busy</html>"
                    self._leave()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                if mode == "bad":
                    return self._send(400, {"error": {"message": "tools[0] is not a valid tool"}})
                if mode == "slow":
                    time.sleep(1.0)
                if mode.startswith("busy"):
                    time.sleep(0.1)
                if mode == "tools":
                    message = {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city": "Paris"}',
                                },
                            }
                        ],
                    }
                    return self._send(200, {"choices": [{"index": 0, "message": message}]})
                # Choices listed in reverse index order: the client must sort them.
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": f"{mode}-{i}"}}
                    for i in reversed(range(body.get("n", 1)))
                ]
                return self._send(200, {"choices": choices})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )


def _serve() -> Iterator[FakeServer]:
    srv = FakeServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    yield from _serve()


@pytest.fixture
def other_server() -> Iterator[FakeServer]:
    """A second server: another origin (same host, another port)."""
    yield from _serve()


def req(content: str, tools: list[dict[str, Any]] | None = None) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": content}], tools=tools, request_id=content)


def engine(server: FakeServer, **kwargs: Any) -> OpenAIEngine:
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAIEngine(server.base_url, "tiny", **kwargs)


def test_success_payload_and_auth(server):
    e = engine(server, api_key="sk-test")
    params = GenerationParams(max_tokens=7, temperature=0.5, top_p=0.9, seed=3, stop=["\n"])
    assert e.generate([req("ok", [TOOL])], params) == [["ok-0"]]
    body = server.bodies[0]
    assert body == {
        "model": "tiny",
        "messages": [{"role": "user", "content": "ok"}],
        "n": 1,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 7,
        "tools": [TOOL],
        "seed": 3,
        "stop": ["\n"],
    }
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    # Unset options are not sent.
    e.generate([req("ok")], GenerationParams())
    assert not {"tools", "seed", "stop"} & set(server.bodies[1])


def test_n_choices_in_index_order(server):
    out = engine(server).generate([req("ok"), req("again")], GenerationParams(n=3, temperature=1))
    assert out == [["ok-0", "ok-1", "ok-2"], ["again-0", "again-1", "again-2"]]


def test_tool_calls_rendered_as_text(server):
    [[text]] = engine(server).generate([req("tools", [TOOL])], GenerationParams())
    assert text.startswith("<tool_call>")
    parsed = parse_tool_calls(text)
    assert not parsed.errors and parsed.content == ""
    assert [c["function"] for c in parsed.tool_calls] == [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]


def test_transient_500_then_success_is_retried_and_counted(server):
    e = engine(server, max_retries=3)
    assert e.generate([req("flaky")], GenerationParams()) == [["flaky-0"]]
    assert server.hits["flaky"] == 3
    assert (e.stats.requests, e.stats.retries, e.stats.failures) == (3, 2, 0)


def test_429_retry_after(server):
    e = engine(server)
    assert e.generate([req("throttled")], GenerationParams()) == [["throttled-0"]]
    assert e.stats.retries == 1


@pytest.mark.parametrize(
    "value", ["-5", "nan", "inf", "-inf", "abc", "", "Wed, 21 Oct 2015 07:28:00 GMT", "1e9"]
)
def test_retry_after_out_of_range_or_garbage_is_bounded(server, monkeypatch, value):
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # what time.sleep would refuse, then record
        if not seconds >= 0:
            raise ValueError(f"sleep length must be non-negative, got {seconds}")
        slept.append(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    e = engine(server, max_retries=1)
    mode = f"retry-after={value}"
    assert e.generate([req(mode)], GenerationParams()) == [[f"{mode}-0"]]
    [pause] = slept
    if value == "1e9":  # a number, too long: capped
        assert pause == MAX_RETRY_AFTER_S
    else:  # not a usable number: our own backoff (0.01 s, jitter in [0.5, 1.5))
        assert 0.005 <= pause < 0.015


def test_retry_after_in_range_is_honoured():
    assert retry_after_s("0") == 0.0
    assert retry_after_s(" 2.5 ") == 2.5
    assert retry_after_s(None) is None


def test_redirect_to_another_origin_drops_the_api_key(server, other_server):
    e = engine(server, api_key="sk-test")
    target = other_server.base_url + "/landing"
    assert e.generate([req(f"redirect:{target}")], GenerationParams()) == [["redirected"]]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    [landed] = other_server.get_headers
    assert "Authorization" not in landed and landed["Accept"] == "application/json"


def test_redirect_within_the_origin_keeps_the_api_key(server):
    e = engine(server, api_key="sk-test")
    assert e.generate([req("redirect:/v1/landing")], GenerationParams()) == [["redirected"]]
    [landed] = server.get_headers
    assert landed["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("start", "target", "kept"),
    [
        ("http://Example.com/v1", "http://example.com:80/x", True),  # same origin, spelled apart
        ("https://example.com/v1", "https://example.com:443/v1", True),
        ("http://example.com/v1", "https://example.com/v1", True),  # an upgrade, same host
        ("https://example.com/v1", "http://example.com/v1", False),  # a downgrade
        ("http://example.com:8000/v1", "http://example.com:8001/v1", False),
        ("http://a.example.com/v1", "http://example.com/v1", False),
    ],
)
def test_sdk_http_client_keeps_the_api_key_only_within_the_origin(start, target, kept):
    """The engine relies on the SDK's HTTP client (httpx2) for this; pinned here so an
    upgrade that changes it fails a test. Cross-port is covered over real sockets above."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx2.Response(302, headers={"Location": target})
        return httpx2.Response(200, json={})

    with openai.DefaultHttpxClient(transport=httpx2.MockTransport(handler)) as client:
        client.post(start, headers={"Authorization": "Bearer sk-test"}, json={})
    first, landed = seen
    assert first.headers["Authorization"] == "Bearer sk-test"
    assert ("Authorization" in landed.headers) is kept


def test_openai_environment_credentials_never_reach_the_endpoint(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer sk-custom-env")
    engine(server).generate([req("ok")], GenerationParams())
    engine(server, api_key="sk-test").generate([req("ok")], GenerationParams())
    keyless, keyed = server.headers
    assert "Authorization" not in keyless
    assert keyed["Authorization"] == "Bearer sk-test"
    for sent in (keyless, keyed):
        assert "OpenAI-Organization" not in sent and "OpenAI-Project" not in sent


def test_response_that_is_not_a_json_object_is_clear(server):
    e = engine(server, max_retries=3)
    with pytest.raises(EngineError, match="not a JSON object"):
        e.generate([req("not-json")], GenerationParams())
    assert server.hits["not-json"] == 1 and e.stats.failures == 1


def test_retries_exhausted(server):
    server.flaky_failures = 10
    e = engine(server, max_retries=1)
    with pytest.raises(EngineError, match=r"failed after 2 attempts.*HTTP 500: overloaded"):
        e.generate([req("flaky")], GenerationParams())
    assert server.hits["flaky"] == 2 and e.stats.failures == 1


def test_400_is_not_retried_and_shows_server_message(server):
    e = engine(server, max_retries=3)
    with pytest.raises(EngineError, match=r"HTTP 400.*tools\[0\] is not a valid tool"):
        e.generate([req("bad")], GenerationParams())
    assert server.hits["bad"] == 1 and e.stats.retries == 0


def test_wrong_path_404_is_clear(server):
    e = OpenAIEngine(server.base_url + "/extra", "tiny")
    with pytest.raises(EngineError, match="HTTP 404.*no route"):
        e.generate([req("ok")], GenerationParams())


def test_slow_response_times_out(server):
    e = engine(server, timeout_s=0.2, max_retries=1)
    start = time.perf_counter()
    with pytest.raises(EngineError, match="timed out"):
        e.generate([req("slow")], GenerationParams())
    assert time.perf_counter() - start < 1.5
    assert server.hits["slow"] == 2  # the timeout was retried once


def test_connection_refused_is_retried_then_clear(server):
    url = server.base_url
    server.httpd.shutdown()
    server.httpd.server_close()
    e = OpenAIEngine(url, "tiny", max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(EngineError, match="connection error"):
        e.generate([req("ok")], GenerationParams())
    assert e.stats.requests == 2


def test_bounded_concurrency_and_order(server):
    e = engine(server, max_concurrency=3)
    requests = [req(f"busy{i}") for i in range(12)]
    out = e.generate(requests, GenerationParams())
    assert out == [[f"busy{i}-0"] for i in range(12)]
    assert 1 < server.max_active <= 3


def test_empty_request_list(server):
    assert engine(server).generate([], GenerationParams()) == []
