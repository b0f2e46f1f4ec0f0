"""transformers' `tokenizer.parse_response` reads our `<tool_call>` format as our parser does.

The tiny model's tokenizer ships `RESPONSE_TEMPLATE` (`train/tiny.py`) in its
`tokenizer_config.json`; the texts are those of `test_tool_call_text.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from ttpa_ray.schema.tool_call_text import (
    parse_tool_calls,
    render_assistant_text,
    render_tool_call,
    render_tool_calls,
)
from ttpa_ray.tools.catalog import load_builtin
from ttpa_ray.train.tiny import render_chat

TOOLS = [t.to_openai() for t in load_builtin().tools[:5]]


@pytest.fixture(scope="module")
def tok(tiny_model) -> Any:
    out = tiny_model
    assert "response_template" in json.loads((Path(out) / "tokenizer_config.json").read_text())
    return AutoTokenizer.from_pretrained(out, local_files_only=True)


def ours(text: str) -> dict[str, Any]:
    """`parse_tool_calls` in the message shape `parse_response` returns (empty keys left out)."""
    result = parse_tool_calls(text)
    assert result.errors == [], result.errors
    message: dict[str, Any] = {"role": "assistant"}
    if result.content:
        message["content"] = result.content
    if result.tool_calls:
        message["tool_calls"] = [
            {
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": json.loads(c["function"]["arguments"]),
                },
            }
            for c in result.tool_calls
        ]
    return message


ONE = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
SEVERAL = [
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}},
    {"name": "noop", "arguments": {}},
]
TEXTS = [
    render_tool_calls(ONE),
    render_tool_calls(SEVERAL),
    render_tool_call("translate", {"text": 'Grüß Gott 🌍 "quoted" \\ back\nslash', "to": "日本語"}),
    render_tool_call(
        "book",
        {
            "passengers": [{"name": "A", "age": 3, "tags": []}, {"name": "B", "age": None}],
            "options": {"seat": {"row": 12, "window": True}, "meal": 1.5},
        },
    ),
    render_assistant_text("Checking.", SEVERAL[:2]),
    render_assistant_text("Checking.", ONE) + "\n",
    'Let me check both.\n\n<tool_call>   \n\t{"name":"a","arguments":{"x":1}}  \n\n</tool_call>'
    '  and then  <tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>\nDone.',
    "  just an answer  ",
    "multi\nline\n\nanswer",
    'ok <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n',  # cut before </tool_call>
    "answer </tool_call> more",
]


@pytest.mark.parametrize("text", TEXTS)
def test_parse_response_agrees_with_parse_tool_calls(tok, text):
    assert tok.parse_response(text, prefix="") == ours(text)


def test_one_and_several_calls_in_the_standard_shape(tok):
    one = tok.parse_response(render_tool_calls(ONE), prefix="")
    assert one == {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": ONE[0]}],
    }
    several = tok.parse_response(render_assistant_text("On it.", SEVERAL), prefix="")
    assert several["content"] == "On it."
    assert [c["function"] for c in several["tool_calls"]] == SEVERAL
    assert all(c["type"] == "function" for c in several["tool_calls"])


def test_prompt_prefix_and_end_marker(tok):
    """With the chat prompt as prefix (earlier assistant turns included) and the turn's
    `<|im_end|>` kept in the decoded output, only the new message is read."""
    history = [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "Earlier.", "tool_calls": [{"function": ONE[0]}]},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "user", "content": "And now?"},
    ]
    prompt = render_chat(history, TOOLS, add_generation_prompt=True)
    generation = render_tool_calls(SEVERAL)
    expected = ours(generation)
    assert tok.parse_response(generation + "<|im_end|>", prefix=prompt) == expected
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.parse_response(generation, prefix=ids) == expected


def test_streamed_parse_equals_whole(tok):
    text = TEXTS[6]
    parser = tok.get_response_parser(prefix="")
    for ch in text:
        parser.feed(ch)
    message, _ = parser.finalize()
    assert message == tok.parse_response(text, prefix="") == ours(text)


def test_where_the_two_parsers_differ(tok):
    """Our parser is lenient where transformers' is not; pinned so a change shows."""
    missing = '<tool_call>{"name": "now"}</tool_call>'
    assert ours(missing)["tool_calls"][0]["function"]["arguments"] == {}
    assert tok.parse_response(missing, prefix="")["tool_calls"][0]["function"] == {"name": "now"}
    as_string = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert ours(as_string)["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert (
        tok.parse_response(as_string, prefix="")["tool_calls"][0]["function"]["arguments"]
        == '{"a": 1}'
    )
    broken = '<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>'
    assert parse_tool_calls(broken).errors  # reported, never raised
    with pytest.raises(ValueError):
        tok.parse_response(broken, prefix="")
