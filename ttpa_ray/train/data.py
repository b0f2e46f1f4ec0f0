"""Tokenised training examples: SFT turns (or episodes) and preference pairs, plus collation.

Everything goes through the tokenizer's own chat template with the turn's tools, so
training sees exactly what sampling and serving render. Examples that cannot be used raise
`SkipExample(reason)` (or are returned as reasons); callers count and quarantine them
(never a silent drop). Nothing is ever cut from the left.

- SFT turns (the default, `train.examples: turns`): one example per tool-call turn, built
  by the one prompt builder (`schema.turns.episode_turns`: system, offered tools, history),
  labelled with the gold assistant turn only. A prompt that does not fit `max_len` with its
  label omits its oldest tool results (`fit_prompt`), else it is quarantined. A seeded
  share (`final_answers`) of episodes adds their final text answer as one more example.
- SFT episodes (`train.examples: episodes`): the whole conversation, loss on every
  assistant turn (the template's `{% generation %}` blocks, via
  `return_assistant_tokens_mask`); longer than `max_len` → quarantined.
- Pairs: the prompt (history + generation prompt) and the two completions (the policy's
  text, or the message rendered by the template, ending with the end-of-turn token). A
  pair that does not fit `max_len` is skipped. `branch_token_index` indexes the
  completion tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ttpa_ray.schema.records import QuarantineRecord, messages_to_openai
from ttpa_ray.schema.tool_call_text import canonicalize_messages, to_flat_calls
from ttpa_ray.schema.turns import (
    PromptFit,
    PromptTooLong,
    Turn,
    episode_turns,
    fit_prompt,
    offered_tools,
)

IGNORE = -100  # label of tokens without loss (PyTorch cross-entropy's ignore_index)


class SkipExample(ValueError):
    """This row cannot become a training example (the message says why)."""


def _chat_ids(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, **kw: Any) -> Any:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template (needed to render tools and turns)")
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=True, return_dict=True, **kw
    )


def _tools(row: dict[str, Any]) -> list[dict[str, Any]]:
    tools = row.get("tools")
    return json.loads(tools) if isinstance(tools, str) and tools else list(tools or [])


@dataclass
class SFTExample:
    """`input_ids` and `labels` (IGNORE where there is no loss), same length."""

    input_ids: list[int]
    labels: list[int]
    fitted: bool = False  # the prompt omits old tool results to fit max_len


def sft_example(tokenizer: Any, row: dict[str, Any], max_len: int) -> SFTExample:
    """One episode row (DESIGN §2) → an SFT example with assistant-only labels; an
    episode longer than `max_len` raises `SkipExample` (never cut)."""
    messages = messages_to_openai(row.get("messages"))
    if not messages:
        raise SkipExample("episode has no messages")
    if row.get("system"):
        messages = [{"role": "system", "content": row["system"]}, *messages]
    enc = _chat_ids(tokenizer, messages, _tools(row), return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if not any(mask):
        raise SkipExample("no assistant tokens (the template marks none)")
    if len(ids) > max_len:
        raise SkipExample(f"too_long: episode of {len(ids)} tokens > max_len {max_len}")
    labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
    return SFTExample(ids, labels)


def _prompt_ids(tokenizer: Any, messages: list[dict[str, Any]], tools: Any) -> list[int]:
    """`messages` + `tools` rendered by the chat template with the generation prompt."""
    return list(_chat_ids(tokenizer, messages, tools, add_generation_prompt=True)["input_ids"])


def turn_prompt_ids(tokenizer: Any, turn: Turn) -> list[int]:
    """The prompt ids of a tool-call turn: what SFT trains on, TPS samples from and the
    endpoint tokenises for the eval request (the chat template + generation prompt)."""
    return _prompt_ids(tokenizer, turn.prompt, turn.tools)


def _labelled(
    tokenizer: Any,
    prompt: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    answer: dict[str, Any],
    max_len: int,
) -> SFTExample:
    """Prompt (no loss) + the answer turn rendered by the template (loss), fitted to
    `max_len` by omitting old tool results; `SkipExample` when it cannot fit."""
    prompt_ids = _prompt_ids(tokenizer, prompt, tools)
    target = _completion_ids(tokenizer, prompt_ids, prompt, tools, None, [answer])
    omitted = 0
    if len(prompt_ids) + len(target) > max_len:
        try:
            fitted, omitted = fit_prompt(
                prompt, tools, PromptFit.for_tokenizer(tokenizer, max_len - len(target))
            )
        except PromptTooLong as exc:
            raise SkipExample(
                f"{exc} (max_len {max_len} minus a {len(target)}-token label)"
            ) from None
        prompt_ids = _prompt_ids(tokenizer, fitted, tools)
    return SFTExample(prompt_ids + target, [IGNORE] * len(prompt_ids) + target, omitted > 0)


def _share(key: str, seed: int) -> float:
    """A stable number in [0, 1) for `key` (which episodes add their final answer)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fitted_turns(
    tokenizer: Any,
    row: dict[str, Any],
    max_turns: int | None = None,
    distractors: int | None = None,
    max_prompt_tokens: int | None = None,
) -> tuple[list[Turn], list[QuarantineRecord]]:
    """The tool-call turns of one episode row as SFT and GRPO train on them (`episode_turns`
    with prompts fitted to `max_prompt_tokens` by this tokenizer, as TPS and eval fit them),
    and the quarantined ones."""
    fit = PromptFit.for_tokenizer(tokenizer, max_prompt_tokens) if max_prompt_tokens else None
    return episode_turns(row, max_turns, distractors, fit)


def sft_turn_examples(
    tokenizer: Any,
    row: dict[str, Any],
    max_len: int,
    *,
    distractors: int | None = None,
    max_turns: int | None = None,
    final_answers: float = 0.0,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
) -> tuple[list[SFTExample], list[tuple[str, str]]]:
    """One episode row → (its SFT turn examples, [(turn id, reason)] of those that cannot
    be used). Turns come from `episode_turns` (the prompts TPS and eval use, fitted to
    `max_prompt_tokens` as there); the final text answer is added for a seeded
    `final_answers` share of episodes."""
    turns, bad = fitted_turns(tokenizer, row, max_turns, distractors, max_prompt_tokens)
    skipped = [(q.row_id, q.reason) for q in bad]
    out: list[SFTExample] = []
    for t in turns:
        try:
            ex = _labelled(tokenizer, t.prompt, t.tools, t.gold, max_len)
        except SkipExample as exc:
            skipped.append((t.id, str(exc)))
            continue
        ex.fitted = ex.fitted or t.omitted_results > 0
        out.append(ex)
    ep_id = str(row.get("id") or "")
    if final_answers > 0 and turns and _share(ep_id, seed) < final_answers:
        messages = canonicalize_messages(messages_to_openai(row.get("messages")))
        last = messages[-1] if messages else {}
        if last.get("role") == "assistant" and last.get("content") and not last.get("tool_calls"):
            calls = [
                c for m in messages if m.get("tool_calls") for c in to_flat_calls(m["tool_calls"])
            ]
            tools = offered_tools(_tools(row), calls, distractors)
            system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
            try:
                out.append(_labelled(tokenizer, [*system, *messages[:-1]], tools, last, max_len))
            except SkipExample as exc:
                skipped.append((f"{ep_id}:answer", str(exc)))
    return out, skipped


@dataclass
class PairExample:
    """Token ids of one preference pair (prompt shared by both completions)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    branch_token_index: int = -1
    chosen_score: float = 1.0
    rejected_score: float = 0.0
    fitted: bool = False  # pairs are never fitted here (TPS prompts already are)
    extra: dict[str, Any] = field(default_factory=dict)


def _completion_ids(
    tokenizer: Any,
    prompt_ids: list[int],
    history: list[dict[str, Any]],
    tools: Any,
    text: Any,
    messages: Any,
) -> list[int]:
    """The policy's text + end of turn if given; else the message rendered by the template
    (the suffix after the prompt)."""
    eos = tokenizer.eos_token or ""
    if isinstance(text, str) and text:
        return list(tokenizer(text + eos, add_special_tokens=False)["input_ids"])
    msgs = messages_to_openai(messages)
    if not msgs:
        raise SkipExample("a completion is empty")
    full = list(_chat_ids(tokenizer, [*history, *msgs], tools)["input_ids"])
    if full[: len(prompt_ids)] != prompt_ids:
        raise SkipExample("the template does not render the completion after the prompt")
    ids = full[len(prompt_ids) :]
    # The template ends a turn with eos + newline: stop at the (first) eos, as generation does.
    eos_id = tokenizer.eos_token_id
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def _score(value: Any, default: float) -> float:
    return default if value is None else float(value)


def pair_example(tokenizer: Any, row: dict[str, Any], max_len: int) -> PairExample:
    """One `pairs` row (DESIGN §2) → token ids; raises `SkipExample` if it cannot fit."""
    history = messages_to_openai(row.get("prompt"))
    if not history:
        raise SkipExample("pair has an empty prompt")
    tools = _tools(row)
    prompt_ids = _prompt_ids(tokenizer, history, tools)
    chosen = _completion_ids(
        tokenizer, prompt_ids, history, tools, row.get("chosen_text"), row.get("chosen")
    )
    rejected = _completion_ids(
        tokenizer, prompt_ids, history, tools, row.get("rejected_text"), row.get("rejected")
    )
    longest = max(len(chosen), len(rejected))
    if len(prompt_ids) + longest > max_len:
        # Pairs come from fitted TPS prompts: one that still does not fit is skipped,
        # never cut (a cut prompt is not the prompt the completions answered).
        raise SkipExample(
            f"too_long: prompt of {len(prompt_ids)} + completion of {longest} tokens "
            f"does not fit max_len {max_len}"
        )
    branch = row.get("branch_token_index")
    return PairExample(
        prompt_ids=prompt_ids,
        chosen_ids=chosen,
        rejected_ids=rejected,
        branch_token_index=int(branch) if branch is not None else -1,
        chosen_score=_score(row.get("chosen_score"), 1.0),
        rejected_score=_score(row.get("rejected_score"), 0.0),
    )


def _pad(seqs: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


@dataclass
class PackedSFT:
    """Several SFT examples in one row: `position_ids` restart at 0 for each, which
    transformers turns into a block-diagonal causal mask (no attention across examples)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    n_examples: int


def pack_sft(examples: list[SFTExample], max_len: int) -> list[PackedSFT]:
    """First-fit-decreasing packing of examples into rows of at most `max_len` tokens.

    Each example's first label is IGNORE, so no token is predicted across a boundary.
    """
    rows: list[PackedSFT] = []
    for e in sorted(examples, key=lambda e: -len(e.input_ids)):
        n = len(e.input_ids)
        row = next((r for r in rows if len(r.input_ids) + n <= max_len), None)
        if row is None:
            row = PackedSFT([], [], [], 0)
            rows.append(row)
        row.input_ids += e.input_ids
        row.labels += [IGNORE, *e.labels[1:]]
        row.position_ids += list(range(n))
        row.n_examples += 1
    return rows


def collate_sft(examples: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `[B, T]` batches: `input_ids`, `labels` and `attention_mask`; for
    `PackedSFT` rows `position_ids` instead of the mask (the model derives the
    block-diagonal mask from them) and `token_mask` (real tokens, for counting)."""
    ids, mask = _pad([e.input_ids for e in examples], pad_id, left=False)
    labels, _ = _pad([e.labels for e in examples], IGNORE, left=False)
    if examples and isinstance(examples[0], PackedSFT):
        # Padding continues the last positions, so it forms no sequence of its own
        # that could be mistaken for a packed example; it has no labels either way.
        width = ids.shape[1]
        positions = torch.zeros_like(ids)
        for i, e in enumerate(examples):
            tail = range(
                e.position_ids[-1] + 1, e.position_ids[-1] + 1 + width - len(e.position_ids)
            )
            positions[i] = torch.tensor([*e.position_ids, *tail], dtype=torch.long)
        return {"input_ids": ids, "position_ids": positions, "labels": labels, "token_mask": mask}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_pairs(examples: list[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts `[B, P]`, right-padded completions `[B, C]`/`[B, R]`, and the
    per-pair `branch_token_index`, `chosen_score`, `rejected_score` (`[B]`). Precomputed
    reference per-token log-probs in `extra` (`ref_chosen`, `ref_rejected`) are padded too."""
    out: dict[str, torch.Tensor] = {}
    out["prompt_ids"], out["prompt_mask"] = _pad([e.prompt_ids for e in examples], pad_id, True)
    out["chosen_ids"], out["chosen_mask"] = _pad([e.chosen_ids for e in examples], pad_id, False)
    out["rejected_ids"], out["rejected_mask"] = _pad(
        [e.rejected_ids for e in examples], pad_id, False
    )
    out["branch_token_index"] = torch.tensor([e.branch_token_index for e in examples])
    out["chosen_score"] = torch.tensor([e.chosen_score for e in examples])
    out["rejected_score"] = torch.tensor([e.rejected_score for e in examples])
    for key, ids_key in (("ref_chosen", "chosen_ids"), ("ref_rejected", "rejected_ids")):
        if all(key in e.extra for e in examples):
            ref = torch.zeros(out[ids_key].shape, dtype=torch.float32)
            for i, e in enumerate(examples):
                ref[i, : len(e.extra[key])] = torch.tensor(e.extra[key], dtype=torch.float32)
            out[key] = ref
    return out
