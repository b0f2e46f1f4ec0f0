"""The endpoint as a hostile or careless client meets it, over real HTTP on loopback:
every bad input is a 4xx in OpenAI's shape (never a 500), a bad request never fails its
batch-mates, disconnected streams stop generating, and a bounded load loses nothing."""

from __future__ import annotations

import json
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pytest
from test_app import TOOLS, get, msg, post

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

OK = {"model": "tiny", "messages": msg("hi"), "max_tokens": 4, "temperature": 0}


def nested_schema(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        inner = {"type": "object", "properties": {"a": inner}}
    return {"type": "object", "properties": {"a": inner}}


def tool(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": params}}


RECURSIVE = tool(
    "tree",
    {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]},
)
REMOTE = tool(
    "far",
    {"type": "object", "properties": {"x": {"$ref": "http://127.0.0.1:9/schema.json"}}},
)
ASSISTANT = {"role": "assistant", "content": None}

# (name, body (dict or raw bytes), status, param, code)
CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    (
        "lone surrogate",
        json.dumps({**OK, "messages": msg("\ud800")}).encode(),
        400,
        "messages[0].content",
        None,
    ),
    ("schema 200 deep", {**OK, "tools": [tool("deep", nested_schema(200))]}, 400, "tools", None),
    (
        "1000 tools",
        {**OK, "tools": [tool(f"t{i}", {"type": "object"}) for i in range(1000)]},
        400,
        "tools",
        None,
    ),
    (
        "21k-token prompt",
        {**OK, "messages": msg("word " * 21000)},
        400,
        "messages",
        "context_length_exceeded",
    ),
    (
        "tool_calls: 5",
        {**OK, "messages": [{**ASSISTANT, "tool_calls": 5}, *msg("x")]},
        400,
        "messages[0].tool_calls",
        None,
    ),
    (
        "tool_calls: true",
        {**OK, "messages": [{**ASSISTANT, "tool_calls": True}, *msg("x")]},
        400,
        "messages[0].tool_calls",
        None,
    ),
    (
        "tool_choice.function a string",
        {**OK, "tools": TOOLS[:1], "tool_choice": {"type": "function", "function": "x"}},
        400,
        "tool_choice",
        None,
    ),
    (
        "required + recursive $ref",
        {**OK, "tools": [RECURSIVE], "tool_choice": "required"},
        400,
        "tools",
        None,
    ),
    (
        "required + remote $ref",
        {**OK, "tools": [REMOTE], "tool_choice": "required"},
        400,
        "tools[0]",
        None,
    ),
    ("seed 2**70", {**OK, "seed": 2**70}, 400, "seed", None),
    (
        "invalid UTF-8",
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff"}]}',
        400,
        None,
        None,
    ),
    ("JSON 100k deep", b"[" * 100_000 + b"]" * 100_000, 400, None, None),
    ("100 kB stop string", {**OK, "stop": "x" * 100_000}, 400, "stop", None),
    ("n over the limit", {**OK, "n": 17}, 400, "n", None),
    (
        "image part",
        {
            **OK,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
            ],
        },
        400,
        "messages[0].content",
        None,
    ),
    ("10 MB body", {**OK, "messages": msg("x" * 10_000_000)}, 413, None, "request_too_large"),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "param", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_gets_its_4xx_in_openai_shape(server, name, body, status, param, code):
    url = server["url"] + "/chat/completions"
    got, out = post(url, body)
    assert got == status, (name, out)
    err = out["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code
    assert post(url, OK)[0] == 200  # and the server answers a good request right after


def test_framework_errors_are_openai_shaped(server):
    code, out = get(server["root"] + "/v1/nope")
    assert code == 404 and out["error"]["code"] == "not_found"
    code, out = get(server["url"] + "/chat/completions")
    assert code == 405 and out["error"]["code"] == "method_not_allowed"


def test_the_api_key_is_checked_before_the_body(server):
    # a body far over the size limit: without a key, 401 (not 413, not a parse error)
    url = server["secure"] + "/chat/completions"
    big = b"{" * 3_000_000
    assert post(url, big)[0] == 401
    assert post(url, b"not json", {"Authorization": "Bearer sekret"})[0] == 400
    assert post(url, big, {"Authorization": "Bearer sekret"})[0] == 413
    code, out = get(server["secure"] + "/models")
    assert code == 401 and out["error"]["code"] == "invalid_api_key"


def test_bad_requests_never_fail_their_batch_mates(server):
    """Good requests sent together with one of each failing kind get exactly the answer
    they get alone (greedy), whatever lands in their batch."""
    url = server["url"] + "/chat/completions"
    goods = [{**OK, "messages": msg(f"question {k}"), "max_tokens": 6} for k in range(4)]
    alone = [post(url, g) for g in goods]
    assert all(code == 200 for code, _ in alone)
    bads = [
        {**OK, "seed": 2**70},
        {**OK, "messages": msg("word " * 3000)},  # over the context: fails in the batch
        {**OK, "tools": [RECURSIVE], "tool_choice": "required"},  # fails compiling
        {**OK, "model": "tiny:nope"},
        {**OK, "messages": [{**ASSISTANT, "tool_calls": 5}, *msg("x")]},
    ]
    mixed = [x for pair in zip(goods, bads, strict=False) for x in pair] + bads[len(goods) :]
    with ThreadPoolExecutor(len(mixed)) as pool:
        results = list(pool.map(lambda b: post(url, b), mixed))
    for body, (code, out) in zip(mixed, results, strict=True):
        if body in goods:
            expected = alone[goods.index(body)][1]
            assert code == 200, out
            assert out["choices"] == [
                {**expected["choices"][0], "message": out["choices"][0]["message"]}
            ]
            assert out["choices"][0]["message"] == expected["choices"][0]["message"]
        else:
            assert 400 <= code < 500, (body, out)


def _open_stream(url: str, body: dict[str, Any]) -> socket.socket:
    """A raw streaming request; returns the socket once the first SSE event arrived."""
    u = urlparse(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    sock.sendall(
        f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    seen = b""
    while b"data:" not in seen:
        part = sock.recv(4096)
        assert part, seen
        seen += part
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


def test_disconnected_streams_stop_generating(server):
    url = server["url"] + "/chat/completions"
    probe = {**OK, "messages": msg("how long?"), "max_tokens": 64}
    idle = statistics.median(_timed(url, probe) for _ in range(3))
    # each stream would decode 1500 tokens if nobody stopped it
    long = {**OK, "messages": msg("tell me everything"), "max_tokens": 1500, "stream": True}
    socks = [_open_stream(url, long) for _ in range(10)]
    for s in socks:
        s.close()
    after = _timed(url, probe)
    assert after < 2 * idle + 0.5, (after, idle)  # 0.5 s: the proxy noticing the closes
    deadline = time.time() + 10
    while (inflight := get(server["root"] + "/stats")[1]["inflight"]) and time.time() < deadline:
        time.sleep(0.2)
    assert inflight == 0


def _timed(url: str, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    code, out = post(url, body)
    assert code == 200, out
    return time.perf_counter() - t0


def test_1000_requests_at_concurrency_32(server):
    """Every request gets exactly one answer, 200 or 503 (over the in-flight limit), none
    lost or duplicated, and each 200 is the answer to its own prompt."""
    url = server["url"] + "/chat/completions"
    prompts = [f"Request number {k}: what now?" for k in range(10)]
    expected = {p: post(url, {**OK, "messages": msg(p)})[1] for p in prompts}

    def one(i: int) -> tuple[int, int, Any]:
        p = prompts[i % len(prompts)]
        code, out = post(url, {**OK, "messages": msg(p), "user": str(i)})
        return i, code, out

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(1000)))
    assert [i for i, _, _ in results] == list(range(1000))
    assert {code for _, code, _ in results} <= {200, 503}
    ok = [(i, out) for i, code, out in results if code == 200]
    assert len(ok) >= 900, len(ok)
    assert len({out["id"] for _, out in ok}) == len(ok)  # none duplicated
    for i, out in ok:  # none crossed with another request in a batch
        want = expected[prompts[i % len(prompts)]]["choices"][0]["message"]["content"]
        assert out["choices"][0]["message"]["content"] == want
    stats = get(server["root"] + "/stats")[1]
    assert stats["inflight"] == 0 and stats["batched_requests"] > stats["batches"]
