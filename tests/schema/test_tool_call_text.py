"""The `<tool_call>` text format: rendering, parsing, round trips, malformed input, fuzz."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttpa_ray.schema.tool_call_text import (
    ERR_BAD_ARGUMENTS,
    ERR_BAD_JSON,
    ERR_EMPTY,
    ERR_MISSING_NAME,
    ERR_NOT_OBJECT,
    ERR_UNTERMINATED,
    ParseResult,
    canonical_arguments,
    canonicalize_messages,
    parse_tool_calls,
    render_assistant_text,
    render_tool_call,
    render_tool_calls,
    to_flat_calls,
)


def _flat(result: ParseResult) -> list[dict]:
    return to_flat_calls(result.tool_calls)


def test_render_exact_format():
    assert render_tool_call("get_weather", {"city": "Paris", "days": 3}) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
    )
    # The format is json.dumps with default separators and no ASCII escaping.
    assert render_tool_call("f", {"q": "東京"}) == (
        "<tool_call>\n"
        + json.dumps({"name": "f", "arguments": {"q": "東京"}}, ensure_ascii=False)
        + "\n</tool_call>"
    )


def test_render_string_arguments():
    assert render_tool_call("f", '{"a":1,"b":[1,2]}') == render_tool_call(
        "f", {"a": 1, "b": [1, 2]}
    )
    assert render_tool_call("f", "") == render_tool_call("f", {})
    assert render_tool_call("f", None) == render_tool_call("f", {})
    # Not a JSON object: kept verbatim (as the chat template does), so the block is malformed.
    assert render_tool_call("f", "city=Paris") == (
        '<tool_call>\n{"name": "f", "arguments": city=Paris}\n</tool_call>'
    )
    assert parse_tool_calls(render_tool_call("f", "city=Paris")).errors


def test_render_tool_calls_both_shapes():
    openai = {"id": "x", "type": "function", "function": {"name": "a", "arguments": '{"k": 1}'}}
    flat = {"name": "b", "arguments": {"k": [2]}}
    text = render_tool_calls([openai, flat])
    assert text == render_tool_call("a", {"k": 1}) + "\n" + render_tool_call("b", {"k": [2]})
    assert render_tool_calls([]) == ""


@pytest.mark.parametrize(
    "calls",
    [
        [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}},
        ],
        [
            {
                "name": "translate",
                "arguments": {"text": 'Grüß Gott 🌍 "quoted" \\ back\nslash', "to": "日本語"},
            }
        ],
        [
            {
                "name": "book",
                "arguments": {
                    "passengers": [{"name": "A", "age": 3, "tags": []}, {"name": "B", "age": None}],
                    "options": {"seat": {"row": 12, "window": True}, "meal": 1.5},
                },
            }
        ],
        [{"name": "noop", "arguments": {}}],
    ],
)
def test_round_trip(calls):
    text = render_tool_calls(calls)
    result = parse_tool_calls(text)
    assert result.errors == []
    assert result.content == ""
    assert _flat(result) == calls
    # Parsed calls render back to the same bytes.
    assert render_tool_calls(result.tool_calls) == text


def test_round_trip_arguments_given_as_json_string():
    call = {"type": "function", "function": {"name": "f", "arguments": '{"x": {"y": [1, "z"]}}'}}
    result = parse_tool_calls(render_tool_calls([call]))
    assert _flat(result) == [{"name": "f", "arguments": {"x": {"y": [1, "z"]}}}]
    assert result.tool_calls[0]["function"]["arguments"] == '{"x": {"y": [1, "z"]}}'


def test_openai_shape_and_ids():
    text = render_tool_calls([{"name": "f", "arguments": {"a": 1}}] * 2)
    result = parse_tool_calls(text)
    c0, c1 = result.tool_calls
    assert c0["type"] == "function" and c0["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert c0["id"].startswith("call_") and c0["id"] != c1["id"]
    # Stable: the same text gives the same ids.
    assert [c["id"] for c in parse_tool_calls(text).tool_calls] == [c0["id"], c1["id"]]


def test_arguments_as_json_string_inside_block():
    text = '<tool_call>{"name": "f", "arguments": "{\\"a\\": [1, 2]}"}</tool_call>'
    assert _flat(parse_tool_calls(text)) == [{"name": "f", "arguments": {"a": [1, 2]}}]


def test_missing_arguments_means_empty():
    assert _flat(parse_tool_calls('<tool_call>{"name": "now"}</tool_call>')) == [
        {"name": "now", "arguments": {}}
    ]


def test_whitespace_and_surrounding_text():
    text = (
        'Let me check both.\n\n<tool_call>   \n\t{"name":"a","arguments":{"x":1}}  \n\n</tool_call>'
        '  and then  <tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>\nDone.'
    )
    result = parse_tool_calls(text)
    assert result.errors == []
    assert [c["function"]["name"] for c in result.tool_calls] == ["a", "b"]
    assert result.content == "Let me check both.\nand then\nDone."


def test_assistant_text_round_trip():
    calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "z"}}]
    text = render_assistant_text("Checking.", calls)
    assert text == "Checking.\n" + render_tool_calls(calls)
    result = parse_tool_calls(text)
    assert result.content == "Checking." and _flat(result) == calls
    assert render_assistant_text(None, calls) == render_tool_calls(calls)
    assert render_assistant_text("Hi", None) == "Hi"


def test_text_without_calls():
    result = parse_tool_calls("  just an answer  ")
    assert result == ParseResult(content="just an answer", tool_calls=[], errors=[])
    assert parse_tool_calls("") == ParseResult(content="")


def _one_error(text: str, kind: str) -> ParseResult:
    result = parse_tool_calls(text)
    assert result.tool_calls == [], result
    assert len(result.errors) == 1, result
    assert result.errors[0].startswith(kind), result.errors
    return result


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>', ERR_BAD_JSON),
        ("<tool_call>{'name': 'f'}</tool_call>", ERR_BAD_JSON),
        ('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>', ERR_BAD_JSON),
        ('<tool_call>{"arguments": {"a": 1}}</tool_call>', ERR_MISSING_NAME),
        ('<tool_call>{"name": "", "arguments": {}}</tool_call>', ERR_MISSING_NAME),
        ('<tool_call>{"name": 7, "arguments": {}}</tool_call>', ERR_MISSING_NAME),
        ('<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>', ERR_BAD_ARGUMENTS),
        ('<tool_call>{"name": "f", "arguments": null}</tool_call>', ERR_BAD_ARGUMENTS),
        ('<tool_call>{"name": "f", "arguments": "not json"}</tool_call>', ERR_BAD_ARGUMENTS),
        ('<tool_call>{"name": "f", "arguments": "[1]"}</tool_call>', ERR_BAD_ARGUMENTS),
        ('<tool_call>[{"name": "f", "arguments": {}}]</tool_call>', ERR_NOT_OBJECT),
        ("<tool_call>\n \n</tool_call>", ERR_EMPTY),
        ("<tool_call></tool_call>", ERR_EMPTY),
        ("<tool_call>I will call the weather tool now.</tool_call>", ERR_BAD_JSON),
        ('<tool_call>\n{"name": "f", "arguments": {"city": "Par', ERR_UNTERMINATED),
        ("<tool_call>", ERR_UNTERMINATED),
        ("<tool_call>" + "[" * 100_000 + "]" * 99_999 + "</tool_call>", ERR_BAD_JSON),
        ("<tool_call>" + '{"a": ' * 3000 + "</tool_call>", ERR_BAD_JSON),
        ('<tool_call>{"name": "f", "arguments": {"x": 1e999}}</tool_call>', ERR_BAD_JSON),
        ("<tool_call>" + "9" * 5000 + "</tool_call>", ERR_BAD_JSON),
    ],
)
def test_malformed_block_gives_reason(text, kind):
    _one_error(text, kind)


def test_unterminated_but_parseable_at_end_is_kept():
    text = 'ok <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
    result = parse_tool_calls(text)
    assert result.errors == [] and _flat(result) == [{"name": "f", "arguments": {"a": 1}}]
    assert result.content == "ok"


def test_malformed_block_does_not_hide_good_ones():
    good = render_tool_call("g", {"k": "v"})
    text = f"pre {good}\n<tool_call>{{oops}}</tool_call>\n<tool_call>garbage {good} post"
    result = parse_tool_calls(text)
    assert [c["function"]["name"] for c in result.tool_calls] == ["g", "g"]
    assert len(result.errors) == 2
    assert result.errors[0].startswith(ERR_BAD_JSON)
    # The unclosed block stops at the next <tool_call>, which still parses.
    assert result.errors[1].startswith(ERR_UNTERMINATED)
    assert result.content == "pre\npost"


def test_stray_close_tag_stays_in_content():
    result = parse_tool_calls("answer </tool_call> more")
    assert result.tool_calls == [] and result.errors == []
    assert result.content == "answer </tool_call> more"


def test_non_str_input_does_not_raise():
    result = parse_tool_calls(None)  # type: ignore[arg-type]
    assert result.tool_calls == [] and result.errors


def test_to_flat_calls_rejects_non_object_arguments():
    with pytest.raises(ValueError):
        to_flat_calls([{"name": "f", "arguments": "[1]"}])
    assert to_flat_calls([{"function": {"name": "f", "arguments": ""}}]) == [
        {"name": "f", "arguments": {}}
    ]


def test_canonicalize_messages():
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"name": "g", "arguments": {"b": [1, 2]}},
                {"name": "h", "arguments": "oops"},
            ],
        },
    ]
    out = canonicalize_messages(messages)
    calls = out[1]["tool_calls"]
    assert calls[0]["function"]["arguments"] == '{"a": 1}'
    assert calls[1]["arguments"] == '{"b": [1, 2]}'
    assert calls[2]["arguments"] == "oops"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'  # input untouched
    assert canonical_arguments({"x": "é"}) == '{"x": "é"}'


# --- fuzz -----------------------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        "<tool_call>",
        "</tool_call>",
        "<tool_call>\n",
        "\n</tool_call>",
        '{"name": "f", "arguments": {"a": 1}}',
        '{"name": "g"}',
        '{"name": ',
        '"arguments": ',
        '"{\\"x\\": 2}"',
        "{",
        "}",
        "[",
        "]",
        '"',
        "null",
        "NaN",
        "1e999",
        ", ",
        ": ",
        "\\",
        "<tool",
        "_call>",
        "\n",
    ]
)
_PIECES = st.one_of(_FRAGMENTS, st.text(max_size=12))


def _json_values(finite: bool) -> st.SearchStrategy[Any]:
    floats = st.floats(allow_nan=not finite, allow_infinity=not finite)
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=6),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=6,
    )


# NaN/inf dump as NaN/Infinity, which is not JSON: valid calls use finite floats only.
_JSON = _json_values(finite=False)
_VALID_CALL = st.builds(
    render_tool_call,
    st.text(min_size=1, max_size=8).filter(str.strip),
    st.dictionaries(st.text(max_size=5), _json_values(finite=True), max_size=3),
)
# Well-formed JSON with arbitrary `name`/`arguments` values (sometimes double-encoded),
# so type checks on both are exercised, not only JSON syntax errors.
_ANY_BLOCK = st.builds(
    lambda name, args, encode: (
        "<tool_call>"
        + json.dumps({"name": name, "arguments": json.dumps(args) if encode else args})
        + "</tool_call>"
    ),
    _JSON,
    _JSON,
    st.booleans(),
)


def _check_result(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert isinstance(result.content, str)
    assert all(isinstance(e, str) and e for e in result.errors)
    for call in result.tool_calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        fn = call["function"]
        assert isinstance(fn["name"], str) and fn["name"].strip()
        assert isinstance(fn["arguments"], str)
        # Strict JSON: NaN/Infinity must never reach the arguments string.
        args = json.loads(fn["arguments"], parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
        assert isinstance(args, dict)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_PIECES, _VALID_CALL, _ANY_BLOCK), max_size=16).map("".join))
def test_fuzz_never_raises(text):
    _check_result(parse_tool_calls(text))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_VALID_CALL, min_size=1, max_size=4),
    st.text(max_size=20).filter(lambda s: "tool_call>" not in s),
)
def test_fuzz_valid_calls_all_recovered(blocks, prefix):
    result = parse_tool_calls(prefix + "\n".join(blocks))
    _check_result(result)
    assert result.errors == []
    assert len(result.tool_calls) == len(blocks)
    assert render_tool_calls(result.tool_calls) == "\n".join(blocks)
