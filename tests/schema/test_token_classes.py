"""Character classes of a tool-call text, and the branch divergence histogram."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from ttpa_ray.schema.token_classes import (
    CLASSES,
    branch_divergence,
    call_spans,
    char_classes,
    token_char_spans,
    token_class,
)
from ttpa_ray.schema.tool_call_text import render_tool_call, render_tool_calls

CALL = render_tool_call("get_weather", {"city": 'Pa"ris', "opts": {"a": [1, {"b": "}"}]}, "n": 3})


def pieces(text: str) -> list[tuple[str, str]]:
    return [(text[s:e], c) for s, e, c in call_spans(text)]


def test_every_class_is_hit_on_one_rendered_call():
    text = "Let me check.\n" + CALL + "<|im_end|>"
    assert pieces(text) == [
        ("Let me check.", "text"),
        ("\n<tool_call>\n", "tag"),
        ('{"name": "', "punctuation"),
        ("get_weather", "tool_name"),
        ('", "arguments": {"', "punctuation"),
        ("city", "arg_key"),
        ('": ', "punctuation"),
        ('"Pa\\"ris"', "arg_value"),  # escaped quote inside the value
        (', "', "punctuation"),
        ("opts", "arg_key"),
        ('": ', "punctuation"),
        ('{"a": [1, {"b": "}"}]}', "arg_value"),  # a nested object is one value
        (', "', "punctuation"),
        ("n", "arg_key"),
        ('": ', "punctuation"),
        ("3", "arg_value"),
        ("}}", "punctuation"),
        ("\n</tool_call><|im_end|>", "tag"),
    ]
    assert {c for _, c in pieces(text)} == set(CLASSES)


def test_spans_cover_the_text_and_parallel_calls():
    text = render_tool_calls(
        [{"name": "a", "arguments": {}}, {"name": "b_tool", "arguments": {"k": None}}]
    )
    spans = call_spans(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    got = pieces(text)
    assert ("a", "tool_name") in got and ("b_tool", "tool_name") in got
    assert ("k", "arg_key") in got and ("null", "arg_value") in got
    assert ("\n</tool_call>\n<tool_call>\n", "tag") in got  # between the blocks


def test_malformed_and_string_arguments_do_not_raise():
    broken = '<tool_call>\n{"name": "f", "arguments": {"x": \n</tool_call>'
    classes = char_classes(broken)
    assert classes[broken.index("f")] == "tool_name"
    assert classes[broken.index("x")] == "punctuation"  # past what parsed
    as_string = '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>'
    assert token_class(as_string, as_string.index('"{')) == "arg_value"
    unclosed = '<tool_call>\n{"name": "f", "arguments": {"y": 2}}'
    assert token_class(unclosed, unclosed.index("y")) == "arg_key"
    assert char_classes("") == [] and call_spans("") == []


def test_token_class_uses_the_first_non_space_character():
    text = CALL
    colon = text.index('": "Pa')  # `": ` ends the key: structure
    assert token_class(text, colon, colon + 3) == "punctuation"
    space = text.index(' "Pa')  # ` "Pa` starts the value
    assert token_class(text, space, space + 4) == "arg_value"
    assert token_class(text, len(text)) == "tag"  # past the end: end of turn


def test_branch_divergence_with_a_real_tokenizer(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    full, spans = token_char_spans(tok, CALL)
    assert full == CALL + tok.eos_token
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert len(spans) == len(ids) and spans[-1] == (len(CALL), len(full))

    def index_at(char: int) -> int:
        return next(i for i, (s, e) in enumerate(spans) if s <= char < e)

    pairs = [
        {
            "source": "branch",
            "branch_token_index": index_at(CALL.index("get_")),
            "chosen_text": CALL,
        },
        {
            "source": "branch",
            "branch_token_index": index_at(CALL.index("city")),
            "chosen_text": CALL,
        },
        {"source": "branch", "branch_token_index": len(spans) - 1, "chosen_text": CALL},
        {"source": "branch", "branch_token_index": len(spans) + 5, "chosen_text": CALL},
        {"source": "n_sample", "branch_token_index": -1, "chosen_text": CALL},
        {"source": "branch", "branch_token_index": -1, "chosen_text": CALL},
    ]
    hist = branch_divergence(pairs, tok)
    assert list(hist) == list(CLASSES)
    assert hist["tool_name"] == 1 and hist["arg_key"] == 1 and hist["tag"] == 2
    assert sum(hist.values()) == 4
    json.dumps(hist)  # goes into the manifest as is
