"""OpenAIEngine against a real local HTTP server on 127.0.0.1 (stdlib, in a thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ttpa_ray.engines import ChatRequest, EngineError, GenerationParams
from ttpa_ray.engines.openai_engine import OpenAIEngine
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
    """Behaviour is chosen by the last user message: 'ok', 'tools', 'flaky', 'bad', 'slow', 'busy'."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hits: dict[str, int] = {}
        self.active = 0
        self.max_active = 0
        self.flaky_failures = 2
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                mode = body["messages"][-1]["content"]
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    hit = server.hits[mode] = server.hits.get(mode, 0) + 1
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    self._handle(mode, hit, body)
                finally:
                    with server.lock:
                        server.active -= 1

            def _handle(self, mode: str, hit: int, body: dict[str, Any]) -> None:
                if mode == "flaky" and hit <= server.flaky_failures:
                    return self._send(500, {"error": {"message": "overloaded"}})
                if mode == "throttled" and hit == 1:
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
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


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


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
