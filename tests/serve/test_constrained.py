"""Constrained tool-call decoding (`ttpa_ray.serve.constrained`) on the untrained tiny model.

The model babbles, so every valid call below is the grammar's doing; limits are clamped
(short strings, few items) to keep the CPU run short.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch
import xgrammar as xgr
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from ttpa_ray.schema.tool_call_text import parse_tool_calls, render_tool_call
from ttpa_ray.schema.validate import call_errors
from ttpa_ray.serve import constrained as C
from ttpa_ray.tools.catalog import load_builtin

TOOLS = [t.to_openai() for t in load_builtin().tools]
BY_NAME = {t["function"]["name"]: t for t in TOOLS}
LIMITS = C.SchemaLimits(max_string_length=12, max_items=3, max_number_digits=4, clamp_explicit=True)
USER = [{"role": "user", "content": "Can you help me with this?"}]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def tools_of(*names: str) -> list[dict[str, Any]]:
    return [BY_NAME[n] for n in names]


@pytest.fixture(scope="module")
def tiny(serve_model_dir):
    tok = AutoTokenizer.from_pretrained(serve_model_dir)
    model = AutoModelForCausalLM.from_pretrained(serve_model_dir)
    return model, tok


def assert_valid_calls(text: str, tools: list[dict[str, Any]], count: int | None = 1) -> list:
    parsed = parse_tool_calls(text)
    assert parsed.errors == [], text
    assert parsed.content == "", text
    assert parsed.tool_calls, text
    if count is not None:
        assert len(parsed.tool_calls) == count, text
    offered = {t["function"]["name"] for t in tools}
    for call in parsed.tool_calls:
        assert call["function"]["name"] in offered
        assert call_errors(call, tools) == [], text
    return parsed.tool_calls


# --- Generation on the untrained model -------------------------------------------------------

CASES = [
    (("get_current_weather", "get_hourly_forecast", "search_hotels"), False, 0),
    (("get_current_weather", "get_hourly_forecast", "search_hotels"), True, 1),
    (("book_hotel", "rent_car", "get_directions"), True, 2),
    (("book_hotel", "rent_car", "get_directions"), False, 3),
    (("calculate_statistics", "create_automation", "buy_movie_tickets"), True, 4),
    (("send_email", "create_contact", "transfer_funds", "search_restaurants"), True, 5),
]


@pytest.mark.parametrize(("names", "sample", "seed"), CASES)
def test_required_gives_one_schema_valid_call(tiny, names, sample, seed):
    model, tok = tiny
    tools = tools_of(*names)
    grammar = C.get_compiler(tok, model.config.vocab_size).compile(tools, "required", limits=LIMITS)
    text = C.generate_constrained(
        model, tok, USER, tools, "required", grammar.min_new_tokens,
        do_sample=sample, temperature=1.5, seed=seed, limits=LIMITS,
    )  # fmt: skip
    assert text.startswith(C.BLOCK_OPEN) and text.endswith(C.BLOCK_CLOSE)
    assert_valid_calls(text, tools)


def test_unconstrained_model_does_not_call_by_itself(tiny):
    """The control: without the constraint the untrained model emits no valid call."""
    model, tok = tiny
    tools = tools_of("get_current_weather", "search_hotels")
    prompt = tok.apply_chat_template(USER, tools=tools, add_generation_prompt=True, tokenize=False)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=60, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert parse_tool_calls(text).tool_calls == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_named_choice_gives_exactly_that_function(tiny, seed):
    model, tok = tiny
    tools = tools_of("get_current_weather", "search_hotels", "transfer_funds")
    text = C.generate_constrained(
        model, tok, USER, tools, named("transfer_funds"), 400,
        do_sample=True, temperature=2.0, seed=seed, limits=LIMITS,
    )  # fmt: skip
    [call] = assert_valid_calls(text, tools)
    assert call["function"]["name"] == "transfer_funds"


def test_parallel_calls_are_all_valid(tiny):
    model, tok = tiny
    tools = tools_of("get_current_weather", "get_uv_index")
    grammar = C.get_compiler(tok, model.config.vocab_size).compile(
        tools, "required", parallel_tool_calls=True, limits=LIMITS
    )
    assert grammar.max_calls == LIMITS.max_parallel_calls
    counts = set()
    for seed in range(4):
        text = C.generate_constrained(
            model, tok, USER, tools, "required", grammar.min_new_tokens,
            parallel_tool_calls=True, do_sample=True, temperature=2.0, seed=seed, limits=LIMITS,
        )  # fmt: skip
        calls = assert_valid_calls(text, tools, count=None)
        assert 1 <= len(calls) <= LIMITS.max_parallel_calls
        counts.add(len(calls))
    assert counts  # the count is the model's choice; any 1..max is fine


def test_budget_exhausted_is_reported_not_returned(tiny):
    model, tok = tiny
    tools = tools_of("get_current_weather")
    with pytest.raises(C.ToolCallBudgetExceeded) as info:
        C.generate_constrained(model, tok, USER, tools, "required", 6, limits=LIMITS)
    assert info.value.finish_reason == "length"
    assert info.value.text.startswith("<tool_call>")
    assert parse_tool_calls(info.value.text).tool_calls == []
    assert info.value.min_new_tokens > 6


def test_min_new_tokens_bounds_an_adversarial_decoder(tiny):
    """Random logits in a manual loop (strings rarely close): the grammar still ends, with
    eos, within `min_new_tokens`, and the text is a valid call."""
    _, tok = tiny
    tools = tools_of("create_contact", "log_meal", "calculate_statistics")
    compiler = C.get_compiler(tok, len(tok))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        proc = C.build_logits_processor(tok, len(tok), [(tools, "required")], limits=LIMITS)
        budget = proc.grammars[0].min_new_tokens  # type: ignore[union-attr]
        ids = torch.zeros((1, 1), dtype=torch.long)
        for _step in range(budget):
            scores = proc(ids, torch.rand((1, compiler.vocab_size), generator=gen) * 10)
            nxt = int(torch.argmax(scores[0]))
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            if nxt == tok.eos_token_id:
                break
        generated = ids[0, 1:].tolist()
        assert generated[-1] == tok.eos_token_id, "grammar did not end within the budget"
        assert proc.finish_reason(0, generated) == "tool_calls"
        assert_valid_calls(tok.decode(generated, skip_special_tokens=True), tools)


def test_batched_generate_mixed_rows(tiny):
    model, tok = tiny
    # Tools with small budgets: the unconstrained row runs to max_new_tokens.
    tools_a = tools_of("get_current_weather", "get_uv_index")
    tools_b = tools_of("track_order", "get_stock_quote")
    prompts = [
        tok.apply_chat_template(USER, tools=tools_a, add_generation_prompt=True, tokenize=False),
        tok.apply_chat_template(
            [{"role": "user", "content": "Say something."}],
            add_generation_prompt=True,
            tokenize=False,
        ),
        tok.apply_chat_template(USER, tools=tools_b, add_generation_prompt=True, tokenize=False),
    ]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (enc["attention_mask"][:, 0] == 0).any()  # rows really are left-padded
    per_row = [(tools_a, "required"), None, (tools_b, named("track_order"))]
    proc = C.build_logits_processor(tok, model.config.vocab_size, per_row, limits=LIMITS)
    max_new = max(g.min_new_tokens for g in proc.grammars if g is not None)
    kwargs = {"max_new_tokens": max_new, "do_sample": False, "pad_token_id": tok.pad_token_id}
    out = model.generate(**enc, logits_processor=LogitsProcessorList([proc]), **kwargs)
    plain = model.generate(**enc, **kwargs)
    start = enc["input_ids"].shape[1]

    def new_ids(seqs, row):
        return seqs[row, start:].tolist()

    text0 = tok.decode(new_ids(out, 0), skip_special_tokens=True)
    text2 = tok.decode(new_ids(out, 2), skip_special_tokens=True)
    assert proc.finish_reason(0, new_ids(out, 0)) == "tool_calls"
    assert proc.finish_reason(2, new_ids(out, 2)) == "tool_calls"
    assert proc.finish_reason(1, new_ids(out, 1)) is None
    assert_valid_calls(text0, tools_a)
    [call] = assert_valid_calls(text2, tools_b)
    assert call["function"]["name"] == "track_order"
    # The unconstrained row is untouched: token for token what it is without the processor.
    assert torch.equal(out[1, : plain.shape[1]], plain[1, : out.shape[1]])
    # ... and it is not a tool call (so the masks really were per row).
    assert parse_tool_calls(tok.decode(new_ids(out, 1), skip_special_tokens=True)).tool_calls == []


def test_processor_rejects_wrong_batch_size(tiny):
    _, tok = tiny
    proc = C.build_logits_processor(tok, len(tok), [(TOOLS[:1], "required")], limits=LIMITS)
    with pytest.raises(ValueError, match="batch"):
        proc(torch.zeros((2, 3), dtype=torch.long), torch.zeros((2, len(tok))))


# --- tool_choice and caching -----------------------------------------------------------------


def test_named_absent_tool_is_a_value_error(tiny):
    model, tok = tiny
    tools = tools_of("get_current_weather")
    with pytest.raises(ValueError, match="not among the offered tools"):
        C.call_schema(tools, named("book_hotel"))
    with pytest.raises(ValueError, match="not among the offered tools"):
        C.build_logits_processor(tok, model.config.vocab_size, [(tools, named("nope"))])
    with pytest.raises(ValueError, match="no tools"):
        C.call_schema([], "required")
    with pytest.raises(ValueError, match="does not force"):
        C.call_schema(tools, "auto")


def test_auto_and_none_rows_are_unconstrained(tiny):
    _, tok = tiny
    proc = C.build_logits_processor(
        tok, len(tok), [(TOOLS[:2], "auto"), (TOOLS[:2], "none"), None], limits=LIMITS
    )
    assert proc.grammars == [None, None, None]
    scores = torch.randn(3, len(tok))
    assert torch.equal(proc(torch.zeros((3, 2), dtype=torch.long), scores.clone()), scores)


def test_call_schema_shapes():
    tools = tools_of("get_current_weather", "search_hotels")
    required = C.call_schema(tools, "required")
    assert [b["properties"]["name"] for b in required["anyOf"]] == [
        {"const": "get_current_weather"},
        {"const": "search_hotels"},
    ]
    only = C.call_schema(tools, named("search_hotels"))
    assert only["properties"]["name"] == {"const": "search_hotels"}
    assert only["properties"]["arguments"] == BY_NAME["search_hotels"]["function"]["parameters"]
    assert only["required"] == ["name", "arguments"] and only["additionalProperties"] is False
    bare = C.call_schema([{"type": "function", "function": {"name": "ping"}}], "required")
    assert bare["properties"]["arguments"]["additionalProperties"] is False


def test_grammar_cache_compiles_each_tool_list_once(tiny):
    model, tok = tiny
    compiler = C.ConstraintCompiler(tok, model.config.vocab_size)
    tools = tools_of("get_current_weather", "search_hotels")
    first = compiler.compile(tools, "required", limits=LIMITS)
    again = compiler.compile(json.loads(json.dumps(tools)), "required", limits=LIMITS)
    assert again is first and compiler.compile_count == 1
    compiler.compile(tools, named("search_hotels"), limits=LIMITS)
    compiler.compile(tools, "required", parallel_tool_calls=True, limits=LIMITS)
    assert compiler.compile_count == 3
    # The shared compiler of a tokenizer is reused across processors.
    shared = C.get_compiler(tok, model.config.vocab_size)
    assert C.get_compiler(tok, model.config.vocab_size) is shared
    before = shared.compile_count
    for _ in range(3):
        C.build_logits_processor(tok, model.config.vocab_size, [(tools, "required")] * 2)
    assert shared.compile_count - before <= 1


def accepts(grammar: C.ToolCallGrammar, tok, text: str) -> bool:
    """Whether `grammar` accepts exactly `text` followed by eos (a fresh matcher)."""
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return C._replay(grammar, ids) == "tool_calls"  # "terminated", whatever the grammar


def test_json_response_grammars(tiny):
    """A JSON response: exactly one value of the schema; "<" allowed in strings unless
    tools are offered, and then a tool call is the other way out."""
    model, tok = tiny
    compiler = C.ConstraintCompiler(tok, model.config.vocab_size)
    schema = {
        "type": "object",
        "properties": {"note": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["note"],
    }
    alone = compiler.compile_json(schema, limits=LIMITS)
    assert accepts(alone, tok, '{"note": "a<b", "n": 3}')
    assert accepts(alone, tok, '{"note": "x"}')
    assert not accepts(alone, tok, '{"n": 3}')  # required
    assert not accepts(alone, tok, '{"note": "x"} ')  # nothing after the value
    assert not accepts(alone, tok, '{"note": "x", "other": 1}')
    tools = tools_of("get_current_weather")
    either = compiler.compile_json(schema, tools, limits=LIMITS)
    assert either.max_calls == 1 and either.min_new_tokens > alone.min_new_tokens
    assert accepts(either, tok, '{"note": "x"}')
    assert not accepts(either, tok, '{"note": "a<b"}')  # no tag can hide in a value
    call = render_tool_call("get_current_weather", {"location": "Paris"})
    assert accepts(either, tok, call)
    assert not accepts(alone, tok, call)
    assert compiler.compile_json(json.loads(json.dumps(schema)), limits=LIMITS) is alone
    with pytest.raises(ValueError):
        compiler.compile_json({"type": "object", "properties": {"a": {"$ref": "#"}}})


# --- Schema bounding -------------------------------------------------------------------------


def test_strings_are_capped_and_explicit_lengths_kept():
    lim = C.SchemaLimits(max_string_length=10)
    assert C.bound_schema({"type": "string"}, lim) == {
        "type": "string",
        "minLength": 0,
        "maxLength": 10,
    }
    assert (
        C.bound_schema({"type": "string", "minLength": 2, "maxLength": 500}, lim)["maxLength"]
        == 500
    )
    clamped = C.SchemaLimits(max_string_length=10, clamp_explicit=True)
    assert C.bound_schema({"type": "string", "maxLength": 500}, clamped)["maxLength"] == 10
    assert C.bound_schema({"type": "string", "minLength": 20}, lim)["maxLength"] == 20


def test_arrays_are_capped():
    lim = C.SchemaLimits(max_items=4, max_string_length=5)
    out = C.bound_schema({"type": "array", "items": {"type": "string"}}, lim)
    assert out["maxItems"] == 4 and out["items"]["maxLength"] == 5
    assert C.bound_schema({"type": "array", "maxItems": 2}, lim)["maxItems"] == 2
    assert C.bound_schema({"type": "array", "minItems": 6}, lim)["maxItems"] == 6


def test_enums_consts_required_and_closed_objects_kept():
    schema = BY_NAME["get_current_weather"]["function"]["parameters"]
    out = C.bound_schema(schema)
    assert out["properties"]["units"] == {"enum": ["metric", "imperial"]}
    assert out["required"] == ["location"]
    assert out["additionalProperties"] is False
    assert list(out["properties"]) == list(schema["properties"])
    assert C.bound_schema({"const": "x"}) == {"const": "x"}


def test_numbers_get_bounds_only_where_missing():
    lim = C.SchemaLimits(max_number_digits=3)
    assert C.bound_schema({"type": "integer"}, lim) == {
        "type": "integer",
        "minimum": -999,
        "maximum": 999,
    }
    assert C.bound_schema({"type": "number", "minimum": -273.15}, lim) == {
        "type": "number",
        "minimum": -273.15,
        "maximum": 999,
    }
    assert C.bound_schema({"type": "number", "exclusiveMinimum": 0, "maximum": 5}, lim) == {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 5,
    }


def test_unique_enum_arrays_become_ordered_subsets():
    out = C.bound_schema(
        {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "uniqueItems": True}
    )
    lists = [[p["const"] for p in b.get("prefixItems", [])] for b in out["anyOf"]]
    assert sorted(lists) == sorted(
        [["a"], ["b"], ["c"], ["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c"]]
    )
    free = C.bound_schema({"type": "array", "items": {"type": "string"}, "uniqueItems": True})
    assert free["maxItems"] == 1


def test_patterns_formats_and_free_values_are_bounded():
    assert C.bound_pattern("^[a-z][a-z0-9_]*$", 9) == "^[a-z][a-z0-9_]{0,9}$"
    assert C.bound_pattern(r"^\+[0-9]+ [*+]{2,}$", 5) == r"^\+[0-9]{1,5} [*+]{2,5}$"
    date = C.bound_schema({"type": "string", "format": "date"})
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for ok in ("2025-02-28", "1999-12-31", "2024-04-30"):
        assert jsonschema.Draft202012Validator(date, format_checker=checker).is_valid(ok)
    assert not jsonschema.Draft202012Validator(date).is_valid("2025-02-30")
    free = C.bound_schema({"type": "object"})
    assert free["maxProperties"] == C.DEFAULT_LIMITS.max_properties
    assert {b.get("type") for b in free["additionalProperties"]["anyOf"]} == {
        "string",
        "number",
        "boolean",
        "null",
    }
    refs = C.bound_schema(
        {
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/P"}},
            "$defs": {"P": {"type": "boolean"}},
        }
    )
    assert refs["properties"]["p"] == {"type": "boolean"}
    with pytest.raises(ValueError, match="recursive"):
        C.bound_schema(
            {"$defs": {"N": {"type": "array", "items": {"$ref": "#/$defs/N"}}}, "$ref": "#/$defs/N"}
        )


def test_every_builtin_tool_compiles_with_a_finite_budget(tiny):
    _, tok = tiny
    compiler = C.get_compiler(tok, len(tok))
    grammar = compiler.compile(TOOLS, "required", limits=LIMITS)
    assert 0 < grammar.min_new_tokens < 10_000
    # The canonical rendering of a valid call is in the language.
    call = render_tool_call("get_current_weather", {"location": "Paris", "units": "metric"})
    matcher = xgr.GrammarMatcher(grammar.compiled)
    assert matcher.accept_string(call) and matcher.accept_token(tok.eos_token_id)
    assert matcher.is_terminated()


@pytest.mark.parametrize(
    "value",
    ["Pa\tris", "</tool_call>", "<tool_call>", 'Pa"ris', "x" * 13],
    ids=["control", "close-tag", "open-tag", "raw-quote", "too-long"],
)
def test_string_values_cannot_break_json_or_the_frame(tiny, value):
    """Values are at most 12 characters here (LIMITS); "x" * 12 would pass."""
    _, tok = tiny
    grammar = C.get_compiler(tok, len(tok)).compile(
        tools_of("get_current_weather"), "required", limits=LIMITS
    )
    prefix = '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "'
    matcher = xgr.GrammarMatcher(grammar.compiled)
    assert matcher.accept_string(prefix)
    assert not matcher.accept_string(value + '"}}\n</tool_call>')
    fresh = xgr.GrammarMatcher(grammar.compiled)
    assert fresh.accept_string(prefix + "x" * 12 + '"}}\n</tool_call>')
