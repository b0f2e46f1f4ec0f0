"""The app over real HTTP on loopback: the official OpenAI client, streaming, every error
status in OpenAI's shape, adapter routing, schemathesis (load, isolation, cancellation and
bad input: test_hardening.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from ttpa_ray.eval.examples import is_context_length_error
from ttpa_ray.schema.validate import call_errors
from ttpa_ray.tools.catalog import load_builtin

TOOLS = [t.to_openai() for t in load_builtin().tools]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_openai_client_gets_tool_calls(server):
    client = OpenAI(base_url=server["url"], api_key="unused")
    tools = TOOLS[:3]
    r = client.chat.completions.create(
        model="tiny",
        messages=msg("What's the weather in Paris tomorrow?"),
        tools=tools,
        tool_choice="required",
        max_tokens=600,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and all(c.id.startswith("call_") for c in calls)
    for c in calls:
        call = {"name": c.function.name, "arguments": json.loads(c.function.arguments)}
        assert call_errors(call, tools) == []  # the untrained model still calls validly
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    named = client.chat.completions.create(
        model="tiny",
        messages=msg("hi"),
        tools=tools,
        tool_choice={"type": "function", "function": {"name": tools[1]["function"]["name"]}},
        parallel_tool_calls=False,
        max_tokens=600,
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls] == [
        tools[1]["function"]["name"]
    ]


def test_streaming_matches_the_plain_response(server):
    client = OpenAI(base_url=server["url"], api_key="unused")
    kw = dict(model="tiny", messages=msg("Say something."), max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    # a streamed tool call arrives as a tool_calls delta, never as content
    tool_chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=msg("weather?"),
            tools=TOOLS[:2],
            tool_choice="required",
            max_tokens=600,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in tool_chunks if c.choices]
    assert any(d.tool_calls for d in deltas)
    assert not any("<tool_call>" in (d.content or "") for d in deltas)
    assert tool_chunks[-1].choices[0].finish_reason == "tool_calls"


def test_errors_have_openai_shape_and_status(server):
    url = server["url"] + "/chat/completions"
    ok_body = {"model": "tiny", "messages": msg("hi"), "max_tokens": 2}
    bad_tool = {"type": "function", "function": {"name": "bad name!", "parameters": {}}}
    absent = {"type": "function", "function": {"name": "nope"}}
    cases = [
        (b"{not json", 400),
        ({"messages": msg("hi")}, 400),  # no model
        ({**ok_body, "messages": [{"role": "robot", "content": "x"}]}, 400),
        ({**ok_body, "tools": [bad_tool]}, 400),
        ({**ok_body, "tools": TOOLS[:1], "tool_choice": absent}, 400),
        ({**ok_body, "n": 0}, 400),
        ({**ok_body, "max_tokens": 10**9}, 400),
        ({**ok_body, "model": "nope"}, 404),
        ({**ok_body, "model": "tiny:nope"}, 404),
    ]
    for body, status in cases:
        code, out = post(url, body)
        assert code == status, (body, out)
        assert set(out["error"]) == {"message", "type", "param", "code"}
        assert out["error"]["message"]
    code, out = post(url, {**ok_body, "tools": TOOLS[:1], "tool_choice": absent})
    assert out["error"]["param"] == "tool_choice"
    assert post(url, ok_body)[0] == 200


def test_a_prompt_over_the_context_gets_context_length_exceeded(server):
    url = server["url"] + "/chat/completions"
    long = {"model": "tiny", "messages": msg("word " * 1500), "max_tokens": 4, "temperature": 0}
    short = {"model": "tiny", "messages": msg("hi"), "max_tokens": 4, "temperature": 0}

    def refused(code: int, out: Any, limit: str) -> None:
        assert code == 400, out
        err = out["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["param"] == "messages"
        assert err["code"] == "context_length_exceeded"
        assert re.fullmatch(rf"the prompt has \d{{4}} tokens; .*{limit}.*", err["message"])
        assert is_context_length_error(err["message"])  # eval keeps only the message

    # sent together (batched when they arrive within the batch window): the long ones
    # fail, their batch-mates get their whole budget
    bodies = [long, short, long, short, short]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: post(url, b), bodies))
    for body, (code, out) in zip(bodies, results, strict=True):
        if body is long:
            refused(code, out, "the model's context length is 2048 tokens")
        else:
            assert code == 200, out
            assert out["usage"]["completion_tokens"] == 4
            assert out["choices"][0]["finish_reason"] == "length"
    # streaming: the 400 is the response's status, not an event inside a 200 stream
    for extra in ({"stream": True}, {"stream": True, "n": 2, "temperature": 1.0}):
        code, out = post(url, {**long, **extra})
        refused(code, out, "the model's context length is 2048 tokens")
    # unbatched, and over max_prompt_tokens (1000) but inside the context
    secure = server["secure"] + "/chat/completions"
    auth = {"Authorization": "Bearer sekret"}
    code, out = post(secure, long, auth)
    refused(code, out, "at most 1000")
    code, out = post(secure, {**long, "messages": msg("word " * 600)}, auth)
    refused(code, out, "accepts at most 1000")
    code, out = post(secure, {**long, "messages": msg("word " * 600), "stream": True}, auth)
    refused(code, out, "accepts at most 1000")
    assert post(secure, short, auth)[0] == 200


def test_api_key_and_overload(server):
    url = server["secure"] + "/chat/completions"
    body = {"model": "tiny", "messages": msg("hi"), "max_tokens": 2}
    code, out = post(url, body)
    assert code == 401 and out["error"]["code"] == "invalid_api_key"
    assert post(url, body, {"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": "Bearer sekret"}
    assert post(url, body, auth)[0] == 200
    # one request in flight at most: concurrent long requests get 503 in OpenAI's shape
    long = {**body, "max_tokens": 200, "temperature": 0}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: post(url, long, auth), range(8)))
    codes = [c for c, _ in results]
    assert 200 in codes and 503 in codes, codes
    assert set(codes) <= {200, 503}
    busy = next(out for c, out in results if c == 503)
    assert busy["error"]["code"] == "overloaded"


def test_adapters_are_routed_by_model_id(server, serve_model_dir, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, models = get(server["url"] + "/models")
    assert code == 200 and [m["id"] for m in models["data"]] == ["tiny", "tiny:a1", "tiny:a2"]
    client = OpenAI(base_url=server["url"], api_key="unused")
    got = {}
    for model in ("tiny", "tiny:a1", "tiny:a2"):
        r = client.chat.completions.create(
            model=model, messages=msg("Hello there"), max_tokens=8, temperature=0
        )
        got[model] = r.choices[0].message.content
    assert len(set(got.values())) == 3, got
    # each adapter's answer is what that adapter computes locally
    tok = AutoTokenizer.from_pretrained(serve_model_dir)
    prompt = tok.apply_chat_template(msg("Hello there"), add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    for name in ("a1", "a2"):
        base = AutoModelForCausalLM.from_pretrained(serve_model_dir)
        model = PeftModel.from_pretrained(base, adapters[name]).eval()
        out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
        assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == got[f"tiny:{name}"]


def test_health_and_openapi(server):
    code, health = get(server["root"] + "/healthz")
    assert code == 200 and health["status"] == "ok"
    code, spec = get(server["root"] + "/openapi.json")
    assert code == 200
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models/{model_id}"} <= set(
        spec["paths"]
    )  # so schemathesis below fuzzes them too


def test_schemathesis_finds_no_server_errors(server):
    st = str(Path(sys.executable).with_name("st"))  # a dev dependency, beside python
    out = subprocess.run(
        [
            st,
            "run",
            server["root"] + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
