"""Tiny-model factory: BPE tokenizer, chat template with tools, model build/save/load."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttpa_ray.config import TinyShape
from ttpa_ray.schema.tool_call_text import (
    canonicalize_messages,
    parse_tool_calls,
    render_assistant_text,
    render_tool_call,
)
from ttpa_ray.train.tiny import (
    IM_END,
    IM_START,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
    build_tiny_model,
    catalog_texts,
    create_tiny_model_dir,
    render_chat,
    train_bpe_tokenizer,
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather and forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 14},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_flight",
            "description": "Book a flight for one or more passengers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string"},
                    "destination": {"type": "string"},
                    "date": {"type": "string", "format": "date"},
                    "passengers": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "age": {"type": "integer"},
                            },
                            "required": ["name"],
                        },
                    },
                    "cabin": {"type": "string", "enum": ["economy", "business", "first"]},
                },
                "required": ["origin", "destination", "date"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount between currencies.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from": {"type": "string", "enum": ["EUR", "USD", "JPY"]},
                    "to": {"type": "string", "enum": ["EUR", "USD", "JPY"]},
                },
                "required": ["amount", "from", "to"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "create_event",
            "description": "Create a calendar event with reminders.",
            "parameters": {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "start_time": {"type": "string", "format": "date-time"},
                    "location": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string"},
                            "address": {"type": "string"},
                        },
                    },
                    "reminders": {"type": "array", "items": {"type": "integer"}},
                    "private": {"type": "boolean"},
                },
                "required": ["title", "start_time"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Current UTC time.", "parameters": {}},
    },
]

SMALL = TinyShape(vocab_size=512, seed=0)

# system, user, assistant with two parallel calls, two tool results, assistant whose
# one call has `arguments` as a (canonical) JSON string, tool result, final answer.
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a travel assistant."},
    {"role": "user", "content": "Weather in Paris and 東京 for 3 days?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
            },
            {"name": "get_weather", "arguments": {"city": "東京", "days": 3, "unit": "celsius"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
    {"role": "tool", "content": '{"temp_c": 18, "sky": "rain"}'},
    {
        "role": "assistant",
        "content": "Let me convert the budget too.",
        "tool_calls": [
            {
                "id": "call_3",
                "type": "function",
                "function": {
                    "name": "convert_currency",
                    "arguments": '{"amount": 250.5, "from": "EUR", "to": "JPY"}',
                },
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_3", "content": '{"amount": 40123}'},
    {
        "role": "assistant",
        "content": "Paris: 21 °C, clear. 東京: 18 °C, rain. 250.5 EUR ≈ 40123 JPY.",
    },
]

GOLDEN_TOOL = TOOLS[2]
GOLDEN = (
    "<|im_start|>system\nYou are a travel assistant.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"name": "convert_currency", "description": "Convert an amount between currencies.", '
    '"parameters": {"type": "object", "properties": {"amount": {"type": "number"}, '
    '"from": {"type": "string", "enum": ["EUR", "USD", "JPY"]}, '
    '"to": {"type": "string", "enum": ["EUR", "USD", "JPY"]}}, "required": ["amount", "from", "to"]}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWeather in Paris and 東京 for 3 days?<|im_end|>\n"
    "<|im_start|>assistant\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京", "days": 3, "unit": "celsius"}}\n</tool_call>'
    "<|im_end|>\n"
    "<|im_start|>user\n<tool_response>\n"
    '{"temp_c": 21, "sky": "clear"}\n</tool_response>\n<tool_response>\n'
    '{"temp_c": 18, "sky": "rain"}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\nLet me convert the budget too.\n"
    '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 250.5, "from": "EUR", "to": "JPY"}}\n</tool_call>'
    "<|im_end|>\n"
    '<|im_start|>user\n<tool_response>\n{"amount": 40123}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\nParis: 21 °C, clear. 東京: 18 °C, rain. 250.5 EUR ≈ 40123 JPY.<|im_end|>\n"
)


def _corpus() -> list[str]:
    # Repeated so merges reach min_frequency; the golden conversation adds its own words.
    return catalog_texts(TOOLS) * 3 + [render_chat(CONVERSATION, TOOLS)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(_corpus(), vocab_size=SMALL.vocab_size)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return create_tiny_model_dir(_corpus(), tmp_path_factory.mktemp("tiny"), SMALL)


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_size_and_fixed_ids(tokenizer):
    assert 300 < len(tokenizer) <= SMALL.vocab_size
    for i, token in enumerate((*SPECIAL_TOKENS, *TOOL_TOKENS)):
        assert tokenizer.convert_tokens_to_ids(token) == i
        assert tokenizer.encode(token, add_special_tokens=False) == [i]
        # Single ids in context too (no merge across the boundary).
        ids = tokenizer.encode(f"x{token}y", add_special_tokens=False)
        assert ids.count(i) == 1
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.bos_token is None
    # No BOS/EOS is added around plain text.
    assert tokenizer("hi")["input_ids"] == tokenizer.encode("hi", add_special_tokens=False)


def test_tool_tokens_survive_skip_special_tokens(tokenizer):
    text = f"{IM_START}assistant\n{render_tool_call('f', {'a': 1})}{IM_END}"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n" + render_tool_call(
        "f", {"a": 1}
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_round_trip_unicode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_round_trip_json(tokenizer, value):
    for text in (json.dumps(value, ensure_ascii=False), json.dumps(value, indent=2)):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_round_trip_whitespace_and_tags(tokenizer):
    # " ." and " 't" are what the default tokenization-space cleanup would rewrite.
    text = "  a\t\tb \n\n\n c  \r\n<tool_call>x</tool_call>  <|im_end|> é😀 . , ! ? don 't "
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_digits_split_individually(tokenizer):
    text = "Room 12345, 3.14159 and x2025y: 40123 JPY"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
    digit_tokens = [t for t in tokens if any(ch.isdigit() for ch in t)]
    assert digit_tokens, tokens
    assert all(len(t) == 1 for t in digit_tokens), digit_tokens
    assert "".join(digit_tokens) == "".join(ch for ch in text if ch.isdigit())


# --- chat template --------------------------------------------------------------------------


def test_golden_rendering(tokenizer):
    rendered = tokenizer.apply_chat_template(CONVERSATION, tools=[GOLDEN_TOOL], tokenize=False)
    assert rendered == GOLDEN
    assert render_chat(CONVERSATION, [GOLDEN_TOOL]) == GOLDEN


def test_every_message_and_call_in_order(tokenizer):
    rendered = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False)
    expected: list[str] = []
    for m in CONVERSATION:
        if m.get("content"):
            expected.append(m["content"])
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            expected.append(render_tool_call(fn["name"], fn["arguments"]))
    positions = []
    start = 0
    for piece in expected:
        pos = rendered.find(piece, start)
        assert pos >= 0, f"missing or out of order: {piece!r}"
        positions.append(pos)
        start = pos + len(piece)
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    # Each assistant turn's body is byte-identical to the Python renderer's.
    for m in CONVERSATION:
        if m["role"] == "assistant":
            body = render_assistant_text(m.get("content"), m.get("tool_calls"))
            assert f"{IM_START}assistant\n{body}{IM_END}\n" in rendered
    # Consecutive tool results share one user turn; the lone one gets its own.
    assert rendered.count("<tool_response>\n") == 3
    assert rendered.count(f"{IM_START}user\n<tool_response>") == 2


def test_tools_listed_compactly(tokenizer):
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=TOOLS, tokenize=False
    )
    block = rendered.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    lines = block.split("\n")
    assert len(lines) == len(TOOLS)
    for line, tool in zip(lines, TOOLS, strict=True):
        fn = tool["function"]
        assert json.loads(line) == {
            "name": fn["name"],
            "description": fn["description"],
            "parameters": fn["parameters"],
        }
        assert line == json.dumps(json.loads(line), ensure_ascii=False)
    # No system message given: a default one carries the tools.
    assert rendered.startswith(f"{IM_START}system\nYou are a helpful assistant.\n\n# Tools")
    # Flat tool dicts (no "function" wrapper) render the same.
    flat = [t["function"] for t in TOOLS]
    assert (
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=flat, tokenize=False
        )
        == rendered
    )


@pytest.mark.parametrize("tools", [None, []])
def test_no_tools_no_tool_block(tokenizer, tools):
    msgs = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False) == (
        f"{IM_START}user\nhi{IM_END}\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *msgs]
    assert tokenizer.apply_chat_template(with_system, tools=tools, tokenize=False) == (
        f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nhi{IM_END}\n"
    )


def test_add_generation_prompt(tokenizer):
    msgs = CONVERSATION[:2]
    with_prompt = tokenizer.apply_chat_template(
        msgs, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    without = tokenizer.apply_chat_template(msgs, tools=TOOLS, tokenize=False)
    assert with_prompt == without + f"{IM_START}assistant\n"
    assert not without.endswith(f"{IM_START}assistant\n")


def test_no_turn_dropped_or_moved(tokenizer):
    msgs = [
        {"role": "user", "content": "first"},
        {"role": "system", "content": "late system note"},
        {"role": "tool", "content": {"k": "dict content"}},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "parts"}, {"type": "text", "text": " joined"}],
        },
        {"role": "user", "content": "last"},
    ]
    rendered = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert rendered == (
        f"{IM_START}user\nfirst{IM_END}\n"
        f"{IM_START}system\nlate system note{IM_END}\n"
        f'{IM_START}user\n<tool_response>\n{{"k": "dict content"}}\n</tool_response>{IM_END}\n'
        f"{IM_START}assistant\nparts joined{IM_END}\n"
        f"{IM_START}user\nlast{IM_END}\n"
    )


def test_string_arguments_verbatim_until_canonicalized(tokenizer):
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"name": "f", "arguments": '{"a":1}'}]},
    ]
    raw = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert '{"name": "f", "arguments": {"a":1}}' in raw
    canon = tokenizer.apply_chat_template(canonicalize_messages(msgs), tokenize=False)
    assert render_tool_call("f", {"a": 1}) in canon


def test_assistant_mask_covers_exactly_assistant_turns(tokenizer):
    out = tokenizer.apply_chat_template(
        CONVERSATION, tools=TOOLS, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    spans: list[list[int]] = []
    for i, (tok_id, m) in enumerate(zip(ids, mask, strict=True)):
        if m:
            if i == 0 or not mask[i - 1]:
                spans.append([])
            spans[-1].append(tok_id)
    expected = [
        render_assistant_text(m.get("content"), m.get("tool_calls")) + IM_END
        for m in CONVERSATION
        if m["role"] == "assistant"
    ]
    assert [tokenizer.decode(s) for s in spans] == expected
    # The unmasked rest is everything else, and the whole is the rendered text.
    rendered = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False)
    assert tokenizer.decode(ids) == rendered
    assert ids == tokenizer.encode(rendered, add_special_tokens=False)


# --- corpus ---------------------------------------------------------------------------------


def test_catalog_texts_cover_format():
    texts = catalog_texts(TOOLS)
    assert texts == catalog_texts(TOOLS)  # deterministic
    joined = "\n".join(texts)
    for tool in TOOLS:
        fn = tool["function"]
        assert fn["name"] in texts and fn["description"] in texts
        assert f'<tool_call>\n{{"name": "{fn["name"]}", "arguments": ' in joined
    assert "<tools>" in joined and "<tool_response>" in joined
    calls = [c for t in texts for c in parse_tool_calls(t).tool_calls]
    assert calls and all(json.loads(c["function"]["arguments"]) is not None for c in calls)
    enum_values = {c["function"]["name"]: json.loads(c["function"]["arguments"]) for c in calls}
    assert enum_values["convert_currency"]["from"] in ("EUR", "USD", "JPY")
    assert isinstance(enum_values["book_flight"]["passengers"], list)


# --- model ----------------------------------------------------------------------------------


def _expected_params(cfg: TinyShape, vocab: int) -> int:
    h, kv_dim = cfg.hidden_size, cfg.hidden_size // cfg.num_heads * cfg.num_kv_heads
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * cfg.intermediate_size + 2 * h
    return vocab * h + cfg.num_layers * per_layer + h


def test_param_count(tokenizer):
    model = build_tiny_model(tokenizer, SMALL)
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_params(SMALL, len(tokenizer))
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # The default config at the full 2048 vocabulary stays in the 0.5-1M range.
    assert 500_000 <= _expected_params(TinyShape(), 2048) <= 1_000_000


def test_build_is_seeded_and_leaves_global_rng(tokenizer):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model(tokenizer, SMALL)
    after = torch.rand(3)
    assert torch.equal(before, after)
    b = build_tiny_model(tokenizer, SMALL)
    c = build_tiny_model(tokenizer, TinyShape(vocab_size=512, seed=1))
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_token_ids_consistent(tokenizer):
    model = build_tiny_model(tokenizer, SMALL)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert (pad, eos) == (0, 2)
    assert model.config.pad_token_id == pad and model.config.eos_token_id == eos
    assert model.config.bos_token_id == pad
    assert model.generation_config.pad_token_id == pad
    assert model.generation_config.eos_token_id == [eos, pad]
    assert model.config.vocab_size == len(tokenizer)


def _prompt_ids(tok) -> torch.Tensor:
    """The first user turn plus the assistant header, shape (1, T)."""
    out = tok.apply_chat_template(
        CONVERSATION[:2],
        tools=TOOLS,
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    return out["input_ids"]


def test_model_dir_round_trip_offline(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ):
        assert (model_dir / name).is_file(), name
    # The 4.x-resolvable class name (5.x writes "TokenizersBackend" by itself).
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((model_dir / "ttpa_tiny.json").read_text())["vocab_size"] == SMALL.vocab_size
    tok: Any = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tok.model_max_length == SMALL.max_position_embeddings
    assert tok.apply_chat_template(CONVERSATION, tools=[GOLDEN_TOOL], tokenize=False) == GOLDEN
    assert tok.convert_tokens_to_ids("<tool_call>") == 3

    rebuilt = build_tiny_model(tok, SMALL)  # same seed → same weights as the saved ones
    ids = _prompt_ids(tok)
    with torch.no_grad():
        saved_logits = model(ids).logits
        rebuilt_logits = rebuilt(ids).logits
    assert saved_logits.shape == (1, ids.shape[1], len(tok))
    assert torch.equal(saved_logits, rebuilt_logits)


def test_greedy_generate_parses(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = _prompt_ids(tok)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
        )
    new = out[0, ids.shape[1] :]
    assert 1 <= len(new) <= 8
    result = parse_tool_calls(tok.decode(new, skip_special_tokens=True))
    assert isinstance(result.content, str)
    for call in result.tool_calls:
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
