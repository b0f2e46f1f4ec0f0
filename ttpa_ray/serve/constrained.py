"""Constrained decoding: tool calls (`tool_choice="required"` or a named function) and
JSON responses (`response_format` json_object / json_schema).

The completion is forced, token by token, to be exactly::

    <tool_call>\\n{"name": "<fn>", "arguments": {...}}\\n</tool_call><eos>

(one block, or 1..`max_parallel_calls` blocks joined by "\\n" when parallel calls are
allowed), where the JSON is valid for the chosen tool's `parameters` and printed in the
canonical separators of `ttpa_ray.schema.tool_call_text` (`", "`, `": "`, no other
whitespace, keys in schema order). The grammar engine is xgrammar (JSON Schema →
grammar → per-step token bitmask); this module only builds the schema, bounds it, wraps
it in the `<tool_call>` frame and drives one matcher per batch row.

Bounding (`bound_schema`, with `SchemaLimits`, `bound_pattern`, `max_json_bytes`) lives
in `ttpa_ray.serve.schema_bounds`, whose docstring lists the rules and the limits (what
is not enforced, what is refused); those names are re-exported here, so this module
stays the public entry point.

A JSON response (`ConstraintCompiler.compile_json`) is one JSON value of the bounded
schema, in the same canonical separators; with tools offered (`tool_choice` auto) the
completion is either that value or the `<tool_call>` blocks above, so the model can still
call a tool. Inside a JSON response "<" is allowed unless tools are offered.

Budget: the bounded grammar has a longest sentence, so `ToolCallGrammar.min_new_tokens`
(bytes of that sentence + 1 for eos; a token is at least one byte) guarantees the
grammar terminates within `max_new_tokens >= min_new_tokens`. With fewer tokens the row
may stop unfinished: `finish_reason` then says "length" and `generate_constrained`
raises `ToolCallBudgetExceeded`; a half-built call is never returned as a tool call.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import xgrammar as xgr
from transformers import LogitsProcessor, LogitsProcessorList

from ttpa_ray.schema.tool_call_text import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from ttpa_ray.serve.schema_bounds import (
    DEFAULT_LIMITS,
    FORMAT_PATTERNS,
    SchemaLimits,
    bound_pattern,
    bound_schema,
    max_json_bytes,
)

BLOCK_OPEN = TOOL_CALL_OPEN + "\n"
BLOCK_CLOSE = "\n" + TOOL_CALL_CLOSE
BLOCK_SEPARATOR = "\n"

FinishReason = Literal["tool_calls", "length", "error"]


class ToolCallBudgetExceeded(RuntimeError):
    """The token budget ran out before the tool call was complete (finish_reason "length").

    `text` is the partial completion (not a valid call); `min_new_tokens` the budget that
    would have guaranteed completion.
    """

    finish_reason = "length"

    def __init__(self, text: str, max_new_tokens: int, min_new_tokens: int) -> None:
        super().__init__(
            f"tool call unfinished after {max_new_tokens} new tokens "
            f"(completion guaranteed from {min_new_tokens})"
        )
        self.text = text
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens


# --- Schemas ---------------------------------------------------------------------------------


def _function_spec(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    fn = tool.get("function")
    return fn if isinstance(fn, Mapping) else tool


def is_constraining(tool_choice: Any) -> bool:
    """Whether `tool_choice` forces a call ("required" or a named function)."""
    return tool_choice == "required" or (
        isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("function"), Mapping)
    )


def _branch(spec: Mapping[str, Any]) -> dict[str, Any]:
    params = spec.get("parameters")
    if not isinstance(params, Mapping) or not params:
        # No declared parameters: the call takes none.
        params = {"type": "object", "properties": {}, "additionalProperties": False}
    return {
        "type": "object",
        "properties": {"name": {"const": spec["name"]}, "arguments": copy.deepcopy(dict(params))},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def call_schema(tools: Sequence[Mapping[str, Any]], tool_choice: Any) -> dict[str, Any]:
    """JSON Schema of ONE call object `{"name": ..., "arguments": ...}` that `tool_choice`
    allows: "required" → `anyOf` over every offered tool; `{"type": "function",
    "function": {"name": X}}` → only X. Unbounded (see `bound_schema`).

    Raises ValueError when the choice does not force a call, no tools are offered, or the
    named function is not among them.
    """
    specs: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        spec = _function_spec(tool)
        name = spec.get("name")
        if isinstance(name, str) and name and name not in specs:  # first definition wins
            specs[name] = spec
    if not specs:
        raise ValueError("tool_choice requires a tool call but no tools are offered")
    if tool_choice == "required":
        branches = [_branch(s) for s in specs.values()]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}
    if is_constraining(tool_choice):
        name = tool_choice["function"].get("name")
        if name not in specs:
            raise ValueError(
                f"tool_choice names function {name!r}, which is not among the offered tools "
                f"({', '.join(sorted(specs))})"
            )
        return _branch(specs[name])
    raise ValueError(f"tool_choice {tool_choice!r} does not force a tool call")


# --- Grammars --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallGrammar:
    """A compiled grammar (`<tool_call>` blocks, or a JSON response) and what it
    guarantees.

    schema: the bounded JSON Schema of one call object (of the response, for JSON).
    max_calls: most blocks it admits. min_new_tokens: a budget that always suffices
    (longest sentence in bytes + eos).
    """

    compiled: xgr.CompiledGrammar
    schema: Any
    max_calls: int
    min_new_tokens: int


# xgrammar 0.2's rule for `maxLength` strings: any character but quote, backslash, CR,
# LF. It lets raw control characters (tab, NUL...) through, which JSON forbids, so the
# class is replaced: no control characters, and no "<" either, so that no value can
# contain `<tool_call>` / `</tool_call>` (the parser splits blocks on those strings).
_LOOSE_CHARS = r"(([^\"\\\r\n]))"
_JSON_CHARS = r"(([^\0-\x1f\"\\<]))"


_TEXT_CHARS = r"(([^\0-\x1f\"\\]))"  # a JSON response without tools may hold "<"


def _json_grammar(schema: Any, chars: str = _JSON_CHARS) -> str:
    """EBNF of one JSON value of the bounded `schema`, in the canonical separators of
    `render_tool_call` with no free whitespace (short, and byte-identical to training)."""
    grammar = xgr.Grammar.from_json_schema(
        json.dumps(schema), any_whitespace=False, separators=(", ", ": "), strict_mode=True
    )
    return str(grammar).replace(_LOOSE_CHARS, chars)


def _calls_format(schema: Any, max_calls: int) -> Any:
    """1..`max_calls` `<tool_call>` blocks, each one call object of `schema`."""
    from xgrammar import structural_tag as st

    block = st.TagFormat(
        begin=BLOCK_OPEN, content=st.GrammarFormat(grammar=_json_grammar(schema)), end=BLOCK_CLOSE
    )
    elements: list[Any] = [block]
    if max_calls > 1:
        more = st.SequenceFormat(elements=[st.ConstStringFormat(value=BLOCK_SEPARATOR), block])
        elements.append(st.RepeatFormat(min=0, max=max_calls - 1, content=more))
    return st.SequenceFormat(elements=elements)


def _compile(compiler: xgr.GrammarCompiler, fmt: Any) -> xgr.CompiledGrammar:
    from xgrammar import structural_tag as st

    try:
        return compiler.compile_structural_tag(st.StructuralTag(format=fmt))
    except RuntimeError as e:  # e.g. a pattern xgrammar cannot turn into an automaton
        raise ValueError(f"schema not supported by constrained decoding: {e}") from e


class ConstraintCompiler:
    """Compiles and caches tool-call and JSON-response grammars for one tokenizer
    (thread-safe).

    The cache key is (tools JSON, tool_choice or response schema JSON, max calls,
    limits): the same tool lists recur across requests. `compile_count` counts actual
    compilations.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int | None = None,
        *,
        stop_token_ids: Sequence[int] | None = None,
        cache_size: int = 256,
    ) -> None:
        stops = list(stop_token_ids) if stop_token_ids else [int(tokenizer.eos_token_id)]
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stops
        )
        self.vocab_size = int(self.tokenizer_info.vocab_size)
        self.stop_token_ids = stops
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info)
        self._cache: OrderedDict[str, ToolCallGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.compile_count = 0

    def compile(
        self,
        tools: Sequence[Mapping[str, Any]],
        tool_choice: Any,
        *,
        parallel_tool_calls: bool = False,
        limits: SchemaLimits = DEFAULT_LIMITS,
    ) -> ToolCallGrammar:
        """The grammar for `tool_choice` over `tools` (cached). Raises ValueError like
        `call_schema` / `bound_schema`."""
        max_calls = limits.max_parallel_calls if parallel_tool_calls else 1
        key = ["calls", list(tools), tool_choice, max_calls, repr(limits)]

        def build() -> ToolCallGrammar:
            schema = bound_schema(call_schema(tools, tool_choice), limits)
            fmt = _calls_format(schema, max_calls)
            budget = _calls_bytes(schema, max_calls) + 1
            return ToolCallGrammar(_compile(self._compiler, fmt), schema, max_calls, budget)

        return self._cached(key, build)

    def compile_json(
        self,
        schema: Mapping[str, Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        parallel_tool_calls: bool = False,
        limits: SchemaLimits = DEFAULT_LIMITS,
    ) -> ToolCallGrammar:
        """The grammar of a JSON response valid for `schema` (bounded; cached). With
        `tools` (offered, `tool_choice` auto), either that JSON value or tool-call blocks
        (`max_calls` > 0 then). Raises ValueError like `bound_schema`."""
        from xgrammar import structural_tag as st

        max_calls = (limits.max_parallel_calls if parallel_tool_calls else 1) if tools else 0
        key = ["json", dict(schema), list(tools or []), max_calls, repr(limits)]

        def build() -> ToolCallGrammar:
            bounded = bound_schema(schema, limits)
            json_format = st.GrammarFormat(
                grammar=_json_grammar(bounded, _JSON_CHARS if tools else _TEXT_CHARS)
            )
            budget = max_json_bytes(bounded)
            fmt: Any = json_format
            if tools:
                calls = bound_schema(call_schema(tools, "required"), limits)
                fmt = st.OrFormat(elements=[json_format, _calls_format(calls, max_calls)])
                budget = max(budget, _calls_bytes(calls, max_calls))
            compiled = _compile(self._compiler, fmt)
            return ToolCallGrammar(compiled, bounded, max_calls, budget + 1)

        return self._cached(key, build)

    def _cached(self, key: list[Any], build: Callable[[], ToolCallGrammar]) -> ToolCallGrammar:
        text = json.dumps(key, sort_keys=True, default=str)
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        grammar = build()
        with self._lock:
            self.compile_count += 1
            self._cache[text] = grammar
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return grammar


def _calls_bytes(schema: Any, max_calls: int) -> int:
    """Bytes of the longest run of `max_calls` blocks of call objects of `schema`."""
    block = len(BLOCK_OPEN.encode()) + max_json_bytes(schema) + len(BLOCK_CLOSE.encode())
    return max_calls * block + (max_calls - 1) * len(BLOCK_SEPARATOR)


_COMPILERS: weakref.WeakKeyDictionary[Any, dict[int, ConstraintCompiler]] = (
    weakref.WeakKeyDictionary()
)
_COMPILERS_LOCK = threading.Lock()


def get_compiler(tokenizer: Any, vocab_size: int | None = None) -> ConstraintCompiler:
    """The shared `ConstraintCompiler` of `tokenizer` (one per vocab size), so its grammar
    cache lives as long as the tokenizer."""
    size = int(vocab_size) if vocab_size is not None else len(tokenizer)
    with _COMPILERS_LOCK:
        try:
            per_size = _COMPILERS.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable or not hashable: no sharing
            return ConstraintCompiler(tokenizer, size)
        if size not in per_size:
            per_size[size] = ConstraintCompiler(tokenizer, size)
        return per_size[size]


# --- Decoding --------------------------------------------------------------------------------


@dataclass
class ToolCallConstraint(LogitsProcessor):
    """Masks logits so each constrained row can only produce its tool-call grammar + eos.

    One xgrammar matcher per batch row; rows whose grammar is None are left untouched.
    Works as a `model.generate(logits_processor=...)` processor and from a manual loop:
    call it with the ids so far (prompt + generated, any left padding) and the next-token
    logits; the last column of `input_ids` is taken as the token chosen after the previous
    call. One instance per generation (it is stateful). Beam search and
    `num_return_sequences > 1` are not supported (the batch size must match).
    """

    grammars: list[ToolCallGrammar | None]
    vocab_size: int
    eos_token_id: int
    matchers: list[xgr.GrammarMatcher | None] = field(init=False)
    rejected: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.matchers = [xgr.GrammarMatcher(g.compiled) if g else None for g in self.grammars]
        self.rejected = [False] * len(self.grammars)
        self._bitmask = xgr.allocate_token_bitmask(len(self.grammars), self.vocab_size)
        self._started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != len(self.grammars):
            raise ValueError(
                f"batch of {input_ids.shape[0]} rows for a constraint built for "
                f"{len(self.grammars)} (beam search / num_return_sequences unsupported)"
            )
        active = [(i, m) for i, m in enumerate(self.matchers) if m is not None]
        if self._started:
            for i, m in active:
                if m.is_terminated() or self.rejected[i]:
                    continue  # finished rows are padded by generate(); nothing to accept
                if not m.accept_token(int(input_ids[i, -1])):
                    # Only possible if something after us unmasked a token: stop the row.
                    self.rejected[i] = True
        self._started = True
        live = [(i, m) for i, m in active if not (self.rejected[i] or m.is_terminated())]
        dead = [i for i, _ in active if self.rejected[i]]
        if live or dead:
            # Never in place: generate() keeps the tensor it passed us as the step's raw
            # logits (`output_logits`), which the reported logprobs are computed from.
            scores = scores.clone()
        if live:
            for i, m in live:
                m.fill_next_token_bitmask(self._bitmask, i)
            rows = [i for i, _ in live]
            width = min(scores.shape[-1], self.vocab_size)
            if scores.device.type == "cuda":
                mask = self._bitmask.to(scores.device, non_blocking=True)
                xgr.apply_token_bitmask_inplace(scores, mask, vocab_size=width, indices=rows)
            else:
                # xgrammar's CPU kernel wants float32 logits on the host.
                host = scores if scores.dtype == torch.float32 else scores.float()
                xgr.apply_token_bitmask_inplace(host, self._bitmask, vocab_size=width, indices=rows)
                if host is not scores:
                    scores.copy_(host)
            if scores.shape[-1] > width:  # lm_head padding beyond the grammar's vocabulary
                scores[rows, width:] = -math.inf
        for i in dead:
            scores[i, :] = -math.inf
            scores[i, self.eos_token_id] = 0.0
        return scores

    def finish_reason(self, row: int, generated_ids: Sequence[int]) -> FinishReason | None:
        """How row `row` ended, from its generated ids (prompt excluded; trailing padding
        after eos is ignored): "tool_calls" (complete, eos accepted), "length" (budget
        ran out mid-grammar) or "error" (a token off the grammar). None if unconstrained.

        Checked on a fresh matcher, so it also covers the last token, which `generate()`
        samples without calling the processor again.
        """
        grammar = self.grammars[row]
        if grammar is None:
            return None
        return _replay(grammar, generated_ids)


def _replay(grammar: ToolCallGrammar, generated_ids: Sequence[int]) -> FinishReason:
    matcher = xgr.GrammarMatcher(grammar.compiled)
    for token in generated_ids:
        if matcher.is_terminated():
            break  # padding after eos
        if not matcher.accept_token(int(token)):
            return "error"
    return "tool_calls" if matcher.is_terminated() else "length"


RowSpec = tuple[Sequence[Mapping[str, Any]], Any] | tuple[Sequence[Mapping[str, Any]], Any, bool]


def build_logits_processor(
    tokenizer: Any,
    vocab_size: int,
    per_row: Sequence[RowSpec | None],
    *,
    parallel_tool_calls: bool = False,
    limits: SchemaLimits = DEFAULT_LIMITS,
    compiler: ConstraintCompiler | None = None,
) -> ToolCallConstraint:
    """A `ToolCallConstraint` for a batch: `per_row[i]` is `(tools, tool_choice)` (or
    `(tools, tool_choice, parallel_tool_calls)`) or None for an unconstrained row; a
    choice that does not force a call ("auto", "none", None) also leaves the row free.

    `vocab_size` is the model's logits width (`model.config.vocab_size`). Grammars come
    from `compiler` (default: the tokenizer's shared one), so repeated tool lists compile
    once. Raises ValueError when a row names a function that is not offered.
    """
    compiler = compiler or get_compiler(tokenizer, vocab_size)
    grammars: list[ToolCallGrammar | None] = []
    for spec in per_row:
        if spec is None or not is_constraining(spec[1]):
            grammars.append(None)
            continue
        parallel = bool(spec[2]) if len(spec) > 2 else parallel_tool_calls  # type: ignore[misc]
        grammars.append(
            compiler.compile(spec[0], spec[1], parallel_tool_calls=parallel, limits=limits)
        )
    return ToolCallConstraint(
        grammars=grammars,
        vocab_size=compiler.vocab_size,
        eos_token_id=compiler.stop_token_ids[0],
    )


def generate_constrained(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    tool_choice: Any,
    max_new_tokens: int,
    *,
    parallel_tool_calls: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    limits: SchemaLimits = DEFAULT_LIMITS,
) -> str:
    """Generate one constrained completion (chat template with `tools`, generation prompt).

    Returns the text without eos: one or more `<tool_call>` blocks, each a schema-valid
    call of an allowed tool. Raises ValueError for a bad `tool_choice` and
    `ToolCallBudgetExceeded` when `max_new_tokens` ran out first (always avoided with
    `max_new_tokens >= ToolCallGrammar.min_new_tokens`). Sampling with `seed` does not
    disturb the global torch RNG.
    """
    prompt = tokenizer.apply_chat_template(
        list(messages), tools=list(tools), add_generation_prompt=True, tokenize=False
    )
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)
    vocab_size = int(model.config.vocab_size)
    processor = build_logits_processor(
        tokenizer,
        vocab_size,
        [(tools, tool_choice)],
        parallel_tool_calls=parallel_tool_calls,
        limits=limits,
    )
    kwargs: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        kwargs |= {"temperature": temperature, "top_p": top_p}
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=enc["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([processor]),
            eos_token_id=processor.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    new_ids = out[0, input_ids.shape[1] :].tolist()
    reason = processor.finish_reason(0, new_ids)
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if reason == "length":
        grammar = processor.grammars[0]
        assert grammar is not None
        raise ToolCallBudgetExceeded(text, max_new_tokens, grammar.min_new_tokens)
    if reason != "tool_calls":
        raise RuntimeError(f"constrained decoding left the grammar: {text!r}")
    return text


__all__ = [
    "BLOCK_CLOSE",
    "BLOCK_OPEN",
    "BLOCK_SEPARATOR",
    "DEFAULT_LIMITS",
    "FORMAT_PATTERNS",
    "ConstraintCompiler",
    "FinishReason",
    "RowSpec",
    "SchemaLimits",
    "ToolCallBudgetExceeded",
    "ToolCallConstraint",
    "ToolCallGrammar",
    "bound_pattern",
    "bound_schema",
    "build_logits_processor",
    "call_schema",
    "generate_constrained",
    "get_compiler",
    "is_constraining",
    "max_json_bytes",
]
