"""Request validation and response shapes (pure: no Ray, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttpa_ray.serve.errors import OpenAIError
from ttpa_ray.serve.protocol import (
    JSON_OBJECT_SCHEMA,
    PARAMETERS,
    constraint_of,
    parse_completion_body,
    parse_request,
    response_schema,
)
from ttpa_ray.serve.responses import (
    Generation,
    TokenLogprob,
    chunk,
    completion_response,
    leaked_tool_call,
    model_object,
    text_chunk,
    text_completion_response,
)
from ttpa_ray.serve.streaming import streamable
from ttpa_ray.tools.catalog import load_builtin

TOOLS = [t.to_openai() for t in load_builtin().tools[:3]]
OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def error_of(body) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        parse_request(body)
    return info.value


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": OK["messages"]}, "model"),
        ({**OK, "messages": []}, "messages"),
        ({**OK, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({**OK, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({**OK, "n": 0}, "n"),
        ({**OK, "temperature": 3}, "temperature"),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**OK, "tools": [{"type": "function", "function": {"name": "x y"}}]}, "tools[0]"),
        ({**OK, "tool_choice": "required"}, "tool_choice"),
        ({**OK, "tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        (
            {**OK, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "zz"}}},
            "tool_choice",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_field(body, param):
    err = error_of(body)
    assert err.status == 400 and err.param == param
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_bad_tool_call_arguments_in_history():
    history = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
            ],
        },
    ]
    assert error_of({**OK, "messages": history}).param == "messages[1].tool_calls"


def test_valid_requests_and_constraints():
    req = parse_request(
        {**OK, "tools": TOOLS, "tool_choice": "required", "max_completion_tokens": 9, "user": "u"}
    )
    assert constraint_of(req) == "required" and req.new_tokens == 9
    named = {"type": "function", "function": {"name": TOOLS[1]["function"]["name"]}}
    assert constraint_of(parse_request({**OK, "tools": TOOLS, "tool_choice": named})) == named
    assert constraint_of(parse_request({**OK, "tools": TOOLS})) is None
    assert parse_request({**OK, "stop": "END"}).stops == ["END"]


def test_completion_response_turns_calls_into_tool_calls():
    req = parse_request({**OK, "tools": TOOLS, "n": 3})
    name = TOOLS[0]["function"]["name"]
    call = f'<tool_call>\n{{"name": "{name}", "arguments": {{"a": 1}}}}\n</tool_call>'
    gen = Generation([call, "plain text", "<tool_call>{broken"], ["stop", "stop", "length"], 10, 30)
    out = completion_response(req, gen)
    first, second, third = out["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    (tc,) = first["message"]["tool_calls"]
    assert tc["function"]["name"] == name and json.loads(tc["function"]["arguments"]) == {"a": 1}
    assert tc["id"].startswith("call_") and tc["type"] == "function"
    assert second["message"] == {"role": "assistant", "content": "plain text"}
    assert third["finish_reason"] == "length" and "tool_calls" not in third["message"]
    assert leaked_tool_call(third["message"]) and not leaked_tool_call(second["message"])
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}
    # without tools, call-looking text stays text
    plain = completion_response(parse_request(OK), Generation([call], ["stop"], 1, 1))
    assert plain["choices"][0]["message"]["content"] == call


def test_streaming_holds_back_what_may_open_a_tool_call():
    s = streamable
    assert s("hello", tools=False) == 5
    assert s("hello <tool", tools=True) == len("hello ")
    assert s("hello <tool_call>{", tools=True) == len("hello ")
    assert s("hello <b>", tools=True) == len("hello <b>")


# -- the parameter policy, legacy completions, response_format, logprobs ----------------------

REFUSED = [
    ("functions", [{"name": "f"}]),
    ("function_call", "auto"),
    ("logit_bias", {"50256": -100}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -1),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
]


@pytest.mark.parametrize(("name", "value"), REFUSED, ids=[n for n, _ in REFUSED])
def test_unsupported_parameters_are_refused_by_name(name, value):
    err = error_of({**OK, name: value})
    assert err.status == 400 and err.param == name and err.code == "unsupported_parameter"


def test_neutral_ignored_and_null_parameters_are_accepted():
    neutral = {
        "logit_bias": {},
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "modalities": ["text"],
        "functions": None,
        "audio": None,
    }
    ignored = {"user": "u", "metadata": {"a": "b"}, "store": False, "service_tier": "auto"}
    nulls = {"temperature": None, "n": None, "stream": None, "top_p": None, "max_tokens": None}
    req = parse_request({**OK, **neutral, **ignored, **nulls, "top_k": 5})
    assert (req.temperature, req.n, req.stream, req.top_p) == (1.0, 1, False, 1.0)
    assert PARAMETERS["chat"].unknown(req.model_extra or {}) == ["top_k"]  # logged, ignored


def test_logprobs_validation():
    assert parse_request({**OK, "logprobs": True}).top_k_logprobs == 0
    assert parse_request({**OK, "logprobs": True, "top_logprobs": 20}).top_k_logprobs == 20
    assert parse_request(OK).top_k_logprobs is None
    assert error_of({**OK, "top_logprobs": 2}).param == "top_logprobs"  # needs logprobs
    assert error_of({**OK, "logprobs": True, "top_logprobs": 21}).param == "top_logprobs"
    assert error_of({**OK, "logprobs": True, "stream": True}).param == "logprobs"


def test_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert response_schema(parse_request({**OK, "response_format": rf})) == schema
    as_object = parse_request({**OK, "response_format": {"type": "json_object"}})
    assert response_schema(as_object) == JSON_OBJECT_SCHEMA
    assert response_schema(parse_request({**OK, "response_format": {"type": "text"}})) is None
    remote = {"type": "object", "properties": {"a": {"$ref": "https://x.test/s.json"}}}
    for bad in (
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": remote}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": 1}},
    ):
        assert error_of({**OK, "response_format": bad}).param == "response_format", bad
    forced = {**OK, "tools": TOOLS, "tool_choice": "required", "response_format": rf}
    assert error_of(forced).param == "response_format"
    auto = parse_request({**forced, "tool_choice": "auto"})  # JSON or a tool call: fine
    assert response_schema(auto) == schema and constraint_of(auto) is None


def completion_error(body) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        parse_completion_body(json.dumps(body).encode())
    return info.value


def test_completion_requests():
    base = {"model": "m", "prompt": "Once upon"}
    req = parse_completion_body(json.dumps({**base, "logprobs": 2, "echo": False}).encode())
    assert req.text == "Once upon" and req.logprobs == 2 and req.new_tokens is None
    assert parse_completion_body(json.dumps({**base, "prompt": ["one"]}).encode()).text == "one"
    for body, param in [
        ({**base, "prompt": ["a", "b"]}, "prompt"),
        ({**base, "prompt": [1, 2, 3]}, "prompt"),
        ({**base, "prompt": ""}, "prompt"),
        ({"model": "m"}, "prompt"),
        ({**base, "echo": True}, "echo"),
        ({**base, "suffix": "end"}, "suffix"),
        ({**base, "best_of": 3}, "best_of"),
        ({**base, "logit_bias": {"1": 5}}, "logit_bias"),
        ({**base, "logprobs": 21}, "logprobs"),
        ({**base, "logprobs": 1, "stream": True}, "logprobs"),
        ({**base, "n": 99}, "n"),
        ({**base, "stop": [""]}, "stop"),
        ({**base, "response_format": {"type": "yaml"}}, "response_format"),
    ]:
        err = completion_error(body)
        assert err.status == 400 and err.param == param, (body, err.message)


def test_response_shapes_are_openais():
    """Every shape we send, validated by the `openai` package's own pydantic types (its
    client only constructs them, without validation)."""
    from openai.types import Completion, Model
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    top = [TokenLogprob("a", -0.5), TokenLogprob("b", -1.5)]
    tokens = [TokenLogprob("hi", -0.25, top), TokenLogprob(" x", -2.0, top)]
    gen = Generation(["hi x", "hi x"], ["stop", "length"], 3, 4, [tokens, tokens])
    chat = completion_response(parse_request({**OK, "n": 2}), gen)
    parsed = ChatCompletion.model_validate(chat)
    content = parsed.choices[0].logprobs.content
    assert [t.token for t in content] == ["hi", " x"] and content[0].bytes == [104, 105]
    assert [a.logprob for a in content[1].top_logprobs] == [-0.5, -1.5]
    text = text_completion_response(
        parse_completion_body(b'{"model": "m", "prompt": "p", "logprobs": 2}'), gen
    )
    legacy = Completion.model_validate(text).choices[0].logprobs
    assert legacy.tokens == ["hi", " x"] and legacy.text_offset == [0, 2]
    assert legacy.top_logprobs[0] == {"a": -0.5, "b": -1.5, "hi": -0.25}
    assert Completion.model_validate(text).object == "text_completion"
    ChatCompletionChunk.model_validate(chunk("c", "m", 1, {"content": "x"}, None))
    Completion.model_validate(text_chunk("c", "m", 1, "x", "stop"))
    assert Model.model_validate(model_object("tiny:a1", 1)).id == "tiny:a1"


def test_the_docs_list_every_parameter():
    """The Serving section (docs/serve.md) documents the policy: every acted-on, ignored
    and refused field of both routes is named there."""
    page = (Path(__file__).parents[2] / "docs" / "serve.md").read_text(encoding="utf-8")
    section = page.split("## Serving", 1)[1].split("\n## ", 1)[0]
    for params in PARAMETERS.values():
        for name in params.acted | params.ignored | set(params.refused):
            assert f"`{name}`" in section, name


def test_the_protocol_modules_stay_light():
    """Request parsing and response shapes import neither torch nor Ray (a client or a
    test can use them without a model)."""
    import subprocess
    import sys

    code = (
        "import sys, ttpa_ray.serve.protocol, ttpa_ray.serve.responses, ttpa_ray.serve.errors;"
        "print(sorted(m for m in ('torch', 'ray', 'transformers', 'xgrammar') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
