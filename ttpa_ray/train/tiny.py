"""Tiny-model factory: our own byte-level BPE, a Llama-style tiny model, the tools chat template.

`create_tiny_model_dir(catalog_texts(tools), out)` writes a normal Hugging Face directory
(safetensors weights, `tokenizer.json`, `chat_template.jinja`, generation config) that
`AutoTokenizer` / `AutoModelForCausalLM` / vLLM load offline. The model is randomly
initialised (seeded): it exists so every pipeline stage runs end to end on a laptop CPU.

Token ids 0..8 are fixed: `<|endoftext|>` (pad, bos), `<|im_start|>`, `<|im_end|>` (eos),
then the non-special single tokens `<tool_call>`, `</tool_call>`, `<tools>`, `</tools>`,
`<tool_response>`, `</tool_response>` (they survive `skip_special_tokens=True`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ttpa_ray.config import TinyShape
from ttpa_ray.schema.tool_call_text import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, render_tool_call

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
TOOL_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tools>",
    "</tools>",
    "<tool_response>",
    "</tool_response>",
)
# Chat templates (package data `templates/`): `hermes` lists each tool as its JSON schema
# (what Qwen/Hermes models see); `compact` as one signature line, about a third of the
# tokens, for small-context models. Calls and turns render identically in both.
TEMPLATES = {"hermes": "hermes_tools.jinja", "compact": "compact_tools.jinja"}
TEMPLATE_NAME = TEMPLATES["hermes"]

# How transformers 5.x reads our format back (`tokenizer.parse_response(text, prefix=prompt)`;
# the older `response_schema` key is dropped on load): the calls, and the text outside the
# blocks stripped and joined by "\n", as `parse_tool_calls` reads it. Unlike ours it raises on
# a malformed block, and `\s*`/`\Z` keep whitespace-only gaps out of `content`.
RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": f"{IM_START}assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"\s*" + re.escape(TOOL_CALL_OPEN),
            "close": TOOL_CALL_CLOSE,
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {
            "close_pattern": rf"\s*(?:{re.escape(IM_END)}|{re.escape(PAD_TOKEN)}|\Z)",
            "content": "text",
            "repeats": True,
            "join": "\n",
        },
    },
}


@cache
def chat_template(name: str = "hermes") -> str:
    """The Jinja chat template `name` (a key of `TEMPLATES`)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return (
        resources.files("ttpa_ray.train")
        .joinpath("templates", TEMPLATES[name])
        .read_text(encoding="utf-8")
    )


def render_chat(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    template: str = "hermes",
) -> str:
    """Render one conversation with the chat template `template`, without a tokenizer.

    Same string as `tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)`.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    # Annotated `-> str` in transformers 5.x, but returns (rendered list, generation spans).
    rendered, _ = render_jinja_template(  # type: ignore[str-unpack]
        conversations=[messages],
        tools=list(tools) if tools else None,
        chat_template=chat_template(template),
        add_generation_prompt=add_generation_prompt,
    )
    return str(rendered[0])


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    min_frequency: int = 2,
    model_max_length: int = 2048,
    template: str = "hermes",
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the chat template `template` attached.

    Pre-tokenization splits every digit into its own piece (numbers in arguments tokenize
    the same whatever their length), then GPT-2 byte-level splitting without a prefix
    space. All 256 bytes are in the base alphabet, so any Unicode text round-trips:
    `decode(encode(s)) == s`. `vocab_size` is an upper bound (a small corpus stops early);
    it counts the 9 fixed tokens. No BOS is prepended (Qwen style); eos is `<|im_end|>`,
    pad `<|endoftext|>`.
    """
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    tool_tokens = [AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS]

    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre
    # Registered before training so these strings are cut out of the corpus, not merged.
    trainer_tok.add_special_tokens(specials)
    trainer_tok.add_tokens(tool_tokens)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # Listing all 9 here pins their ids to 0..8 in the model vocabulary ...
        special_tokens=[*SPECIAL_TOKENS, *TOOL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trainer_tok.train_from_iterator(texts, trainer)

    # ... but the trainer also marks them all special. A fresh tokenizer over the trained
    # model re-adds the tool tags as non-special (same ids, taken from the vocabulary).
    tok = Tokenizer(trainer_tok.model)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.add_tokens(tool_tokens)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        # Cleanup rewrites " ." → "." and breaks round trips (5.x skips it for BPE; 4.x does not).
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )
    fast.chat_template = chat_template(template)
    fast.response_template = RESPONSE_TEMPLATE
    return fast


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, config: TinyShape | None = None
) -> LlamaForCausalLM:
    """A randomly initialised Llama-style causal LM sized to `tokenizer` (float32, eval mode).

    Initialisation is seeded by `config.seed` inside a forked RNG (the caller's torch RNG
    state is left untouched). Token ids: bos = pad = `<|endoftext|>`, eos = `<|im_end|>`;
    generation stops on either.
    """
    cfg = config or TinyShape()
    pad_id = int(tokenizer.convert_tokens_to_ids(PAD_TOKEN))  # type: ignore[arg-type]
    eos_id = int(tokenizer.convert_tokens_to_ids(IM_END))  # type: ignore[arg-type]
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id,
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        do_sample=False,
    )
    return model.eval()


def create_tiny_model_dir(
    texts: Iterable[str], out_dir: str | Path, config: TinyShape | None = None
) -> Path:
    """Train the tokenizer on `texts`, build the model, save both into `out_dir`.

    Writes safetensors weights, `config.json`, `generation_config.json`, `tokenizer.json`,
    `tokenizer_config.json` (with `RESPONSE_TEMPLATE`), `chat_template.jinja` and
    `ttpa_tiny.json` (the `TinyShape`). Returns `out_dir` as a Path (created if missing).
    """
    cfg = config or TinyShape()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(
        texts,
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        model_max_length=cfg.max_position_embeddings,
        template=cfg.template,
    )
    model = build_tiny_model(tokenizer, cfg)
    tokenizer.save_pretrained(out)
    # transformers 5 records its own class name ("TokenizersBackend"), which 4.x (e.g. the
    # one a vLLM install pins) cannot resolve; 5.x maps the 4.x name back to the same class.
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg["response_template"] = RESPONSE_TEMPLATE  # 4.x does not save the attribute
    tok_cfg_path.write_text(
        json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    model.save_pretrained(out, safe_serialization=True)
    (out / "ttpa_tiny.json").write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")
    return out


# --- Corpus for the tokenizer ---------------------------------------------------------------

_CITIES = ("Paris", "Tokyo", "New York", "São Paulo", "Zürich", "Nairobi", "Mumbai", "Berlin")
_WORDS = ("alpha", "report", "meeting", "blue", "invoice", "quarterly", "coffee", "python")
_GENERIC = (
    "What is the weather like in Paris tomorrow?",
    "Please book a table for 2 people at 19:30.",
    "I couldn't find anything matching your request; could you clarify?",
    "The total is 1,234.56 EUR (tax included).",
    "Sure! Here is what I found: 3 results, sorted by date.",
    "Température à Zürich : 21 °C, ciel dégagé. 東京は晴れです。",
)


def _example_value(name: str, schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A plausible value for a JSON Schema (enum, numbers, dates, cities, nesting)."""
    if not isinstance(schema, Mapping):
        return rng.choice(_WORDS)
    if schema.get("enum"):
        return rng.choice(list(schema["enum"]))
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    lname = name.lower()
    if kind == "integer":
        ilo, ihi = int(schema.get("minimum", 0)), int(schema.get("maximum", 500))
        return rng.randint(ilo, max(ilo, ihi))
    if kind == "number":
        flo, fhi = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 1000.0))
        return round(rng.uniform(flo, max(flo, fhi)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [
            _example_value(name, schema.get("items", {}), rng, depth + 1)
            for _ in range(rng.randint(1, 2))
        ]
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return {}
        props = schema.get("properties") or {}
        return {k: _example_value(k, v, rng, depth + 1) for k, v in props.items()}
    fmt = schema.get("format", "")
    if fmt == "date" or "date" in lname:
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date-time" or "time" in lname:
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.choice((0, 15, 30, 45)):02d}:00"
    if fmt == "email" or "email" in lname:
        return f"{rng.choice(_WORDS)}@example.com"
    if any(k in lname for k in ("city", "location", "place", "destination", "origin")):
        return rng.choice(_CITIES)
    return f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}"


def _example_arguments(parameters: Any, rng: random.Random) -> dict[str, Any]:
    value = _example_value("", parameters, rng)
    return value if isinstance(value, dict) else {}


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    fn = tool.get("function")
    return fn if isinstance(fn, Mapping) else tool


def catalog_texts(
    tools: list[dict[str, Any]],
    examples_per_tool: int = 4,
    seed: int = 0,
    template: str = "hermes",
) -> list[str]:
    """Texts to train the BPE tokenizer on, from OpenAI tool dicts.

    Covers the format the model will see: the rendered system prompt with all tools, each
    tool's name, description and parameters JSON, `examples_per_tool` example calls per
    tool with plausible values (rendered with `render_tool_call`), one rendered
    conversation per tool (call, tool result, answer), and a few generic sentences.
    Deterministic for a given `seed`.
    """
    rng = random.Random(seed)
    texts: list[str] = list(_GENERIC)
    if tools:
        texts.append(render_chat([{"role": "user", "content": _GENERIC[0]}], tools, True, template))
    for tool in tools:
        fn = _function(tool)
        name = str(fn.get("name", ""))
        params = fn.get("parameters") or {}
        texts += [name, str(fn.get("description") or ""), json.dumps(params, ensure_ascii=False)]
        arguments = [_example_arguments(params, rng) for _ in range(examples_per_tool)]
        calls: list[dict[str, Any]] = [{"name": name, "arguments": a} for a in arguments]
        texts += [render_tool_call(name, a) for a in arguments]
        result = {"status": "ok", "result": _example_value("result", {"type": "string"}, rng)}
        conversation: list[dict[str, Any]] = [
            {"role": "user", "content": f"Please use {name}: {fn.get('description') or ''}"},
            {"role": "assistant", "content": None, "tool_calls": calls[:2]},
            *[
                {"role": "tool", "content": json.dumps(result, ensure_ascii=False)}
                for _ in calls[:2]
            ],
            {"role": "assistant", "content": rng.choice(_GENERIC)},
        ]
        texts.append(render_chat(conversation, [tool], template=template))
    return texts
