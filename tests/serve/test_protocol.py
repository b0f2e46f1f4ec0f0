"""Request validation and response shapes (pure: no Ray, no model)."""

from __future__ import annotations

import json

import pytest

from ttpa_ray.serve.app import ChatServer
from ttpa_ray.serve.protocol import (
    Generation,
    OpenAIError,
    completion_response,
    constraint_of,
    leaked_tool_call,
    parse_request,
)
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
    s = ChatServer.func_or_class._streamable if hasattr(ChatServer, "func_or_class") else None
    assert s is not None
    assert s("hello", tools=False) == 5
    assert s("hello <tool", tools=True) == len("hello ")
    assert s("hello <tool_call>{", tools=True) == len("hello ")
    assert s("hello <b>", tools=True) == len("hello <b>")
