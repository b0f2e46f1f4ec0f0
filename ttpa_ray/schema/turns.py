"""Episodes → tool-call turns: the one prompt builder for SFT, TPS and eval.

A turn's prompt is the system message, the tools offered (the called tools plus
`distractors` others) and the history before an assistant turn that calls tools; its
label is that assistant turn. SFT examples (`train/data.py`), TPS prompts (`sample/`) and
held-out eval requests (`eval/suites.py`) are all built here, and every consumer renders
them with the model's own chat template, so they tokenise to the same ids.

A prompt longer than its token budget (`PromptFit`) omits its oldest tool results first
(their content becomes `OMITTED`, so every tool call keeps its result message); the system
message, the tools block and the user query are never cut. A prompt that still does not
fit is quarantined (`prompt_too_long`), as is a turn with no user message before it, a
gold call naming a tool that is not offered, or gold arguments that do not validate.
Pure Python.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ttpa_ray.schema.records import QuarantineRecord, messages_to_openai
from ttpa_ray.schema.tool_call_text import (
    canonicalize_messages,
    render_assistant_text,
    to_flat_calls,
)
from ttpa_ray.schema.validate import call_errors

# Quarantine records keep the stage name TPS reports them under (its manifest counts them),
# wherever the builder lives.
STAGE = "sample.turns"

# A turn between stages: `Turn.to_row()` plus the shard it belongs to (nested values are
# JSON strings: tool schemas vary too much for a fixed Arrow type).
TURN_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("episode_id", pa.string()),
        ("turn_index", pa.int32()),
        ("prompt", pa.string()),
        ("tools", pa.string()),
        ("gold", pa.string()),
        ("gold_calls", pa.string()),
        ("gold_text", pa.string()),
        ("shard", pa.int64()),
    ]
)
# After the sampler: `candidates` (JSON list of `Candidate.to_dict()`), `gold_ids` (JSON
# list of the gold completion's training token ids, or null without a tokenizer),
# `forward_tokens` (tokens the policy forwarded for this turn), and the reason when the
# turn could not be sampled (then `candidates` is "[]").
SAMPLED_SCHEMA = TURN_SCHEMA.append(pa.field("candidates", pa.string()))
SAMPLED_SCHEMA = SAMPLED_SCHEMA.append(pa.field("gold_ids", pa.string()))
SAMPLED_SCHEMA = SAMPLED_SCHEMA.append(pa.field("forward_tokens", pa.int64()))
SAMPLED_SCHEMA = SAMPLED_SCHEMA.append(pa.field("_quarantine_reason", pa.string()))


# What an omitted tool result says instead (short: it exists to save tokens).
OMITTED = "(earlier tool result omitted to fit the context)"


class PromptTooLong(ValueError):
    """The prompt does not fit its budget even with every tool result omitted."""


@dataclass(frozen=True)
class PromptFit:
    """A prompt token budget: `count(messages, tools)` (the rendered prompt's tokens,
    generation prompt included) must be at most `budget`."""

    count: Callable[[list[dict[str, Any]], list[dict[str, Any]]], int]
    budget: int

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, budget: int) -> PromptFit:
        """Counts with `tokenizer.apply_chat_template(..., add_generation_prompt=True)`:
        the ids SFT, TPS and the endpoint all use."""

        def count(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
            enc = tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )
            return len(enc["input_ids"])

        return cls(count, budget)


def fit_prompt(
    prompt: list[dict[str, Any]], tools: list[dict[str, Any]], fit: PromptFit
) -> tuple[list[dict[str, Any]], int]:
    """(`prompt` fitted to `fit.budget`, how many tool results were omitted).

    Omits tool results oldest first, re-counting after each; raises `PromptTooLong` when
    the prompt is still too long with all of them omitted (nothing else is ever cut).
    """
    n = fit.count(prompt, tools)
    if n <= fit.budget:
        return prompt, 0
    msgs = list(prompt)
    omitted = 0
    for i, m in enumerate(msgs):
        if m.get("role") != "tool" or m.get("content") == OMITTED:
            continue
        msgs[i] = {**m, "content": OMITTED}
        omitted += 1
        n = fit.count(msgs, tools)
        if n <= fit.budget:
            return msgs, omitted
    raise PromptTooLong(
        f"prompt_too_long: {n} tokens > budget {fit.budget} with {omitted} tool result(s) "
        "omitted (the system, tools block and query are never cut)"
    )


@dataclass
class Turn:
    """One TPS prompt and its gold answer.

    `prompt`: OpenAI messages before the turn (system first when the episode has one).
    `gold`: the gold assistant message (arguments canonical JSON). `gold_calls`: its calls,
    flat (`{"name", "arguments": dict}`). `gold_text`: its body as the chat template
    renders it (what a policy should generate).
    """

    id: str
    episode_id: str
    turn_index: int
    prompt: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    gold: dict[str, Any]
    gold_calls: list[dict[str, Any]]
    gold_text: str
    omitted_results: int = 0

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "episode_id": self.episode_id,
            "turn_index": self.turn_index,
            "prompt": json.dumps(self.prompt, ensure_ascii=False),
            "tools": json.dumps(self.tools, ensure_ascii=False),
            "gold": json.dumps(self.gold, ensure_ascii=False),
            "gold_calls": json.dumps(self.gold_calls, ensure_ascii=False),
            "gold_text": self.gold_text,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Turn:
        return cls(
            id=row["id"],
            episode_id=row["episode_id"],
            turn_index=int(row["turn_index"]),
            prompt=json.loads(row["prompt"]),
            tools=json.loads(row["tools"]),
            gold=json.loads(row["gold"]),
            gold_calls=json.loads(row["gold_calls"]),
            gold_text=row["gold_text"],
        )


def offered_tools(
    tools: list[dict[str, Any]], calls: list[dict[str, Any]], distractors: int | None
) -> list[dict[str, Any]]:
    """The tools a turn's prompt offers: all of the episode's (`distractors=None`), or the
    called tools plus the first `distractors` others, in the episode's order (short
    prompts for small-context policies such as the tiny model)."""
    if distractors is None:
        return tools
    called = {c["name"] for c in calls}
    out, extra = [], 0
    for t in tools:
        name = t.get("function", t).get("name")
        if name in called:
            out.append(t)
        elif extra < distractors:
            out.append(t)
            extra += 1
    return out


def episode_turns(
    row: dict[str, Any],
    max_turns: int | None = None,
    distractors: int | None = None,
    fit: PromptFit | None = None,
) -> tuple[list[Turn], list[QuarantineRecord]]:
    """The tool-call turns of one `episodes` row, and the quarantined ones (with reasons).

    An episode without any tool-call turn is itself quarantined (`no_tool_call_turn`), so
    every episode either yields turns or a reason. `max_turns` keeps the first turns only
    (the k-th tool-call turn has k < max_turns, whether or not earlier ones were
    quarantined); `distractors` (see `offered_tools`) trims the tools each prompt offers;
    `fit` fits each prompt to a token budget (`fit_prompt`).
    """
    ep_id = str(row.get("id") or "")
    try:
        tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row["tools"]
        messages = canonicalize_messages(messages_to_openai(row.get("messages")))
    except (KeyError, TypeError, ValueError) as exc:
        return [], [QuarantineRecord.of(STAGE, ep_id, f"malformed_episode: {exc}", row)]
    if not isinstance(tools, list) or not tools:
        return [], [QuarantineRecord.of(STAGE, ep_id, "no_tools: episode offers no tools", row)]
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    turns: list[Turn] = []
    bad: list[QuarantineRecord] = []
    k = 0  # index of the tool-call turn within its episode
    for j, msg in enumerate(messages):
        if msg["role"] != "assistant" or not msg.get("tool_calls"):
            continue
        if max_turns is not None and k >= max_turns:
            break
        k += 1
        turn_id = f"{ep_id}:t{j}"
        history = [*system, *messages[:j]]
        if not any(m["role"] == "user" for m in messages[:j]):
            bad.append(QuarantineRecord.of(STAGE, turn_id, "empty_history: no user message", msg))
            continue
        errors = [e for c in msg["tool_calls"] for e in call_errors(c, tools)]
        if errors:
            kind = "gold_unknown_tool" if errors[0].startswith("unknown tool") else "gold_invalid"
            bad.append(QuarantineRecord.of(STAGE, turn_id, f"{kind}: {errors[0]}", msg))
            continue
        gold_calls = to_flat_calls(msg["tool_calls"])
        offered = offered_tools(tools, gold_calls, distractors)
        omitted = 0
        if fit is not None:
            try:
                history, omitted = fit_prompt(history, offered, fit)
            except PromptTooLong as exc:
                bad.append(QuarantineRecord.of(STAGE, turn_id, str(exc), msg))
                continue
        turns.append(
            Turn(
                id=turn_id,
                episode_id=ep_id,
                turn_index=j,
                prompt=history,
                tools=offered,
                gold=msg,
                gold_calls=gold_calls,
                gold_text=render_assistant_text(msg.get("content"), msg["tool_calls"]),
                omitted_results=omitted,
            )
        )
    if not turns and not bad:
        bad.append(QuarantineRecord.of(STAGE, ep_id, "no_tool_call_turn", row))
    return turns, bad
