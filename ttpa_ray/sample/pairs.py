"""The pair rules and the `pairs` rows they yield; TRL and ShareGPT exports.

Pure Python. The TTPA rule (DESIGN §5, `pair_rows`), per turn, with every candidate scored
by ESM against the gold call:
- best score < threshold: chosen = the gold answer, rejected = every candidate;
- else chosen = a best-scoring candidate, rejected = every candidate scoring below it.
A turn whose candidates all score the same (≥ threshold) yields no pair.

The response-level DPO baseline's rule (`response_pairs`): chosen = the gold answer,
rejected = the turn's first sampled full response that scores below 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ttpa_ray.sample.candidates import Candidate, first_difference
from ttpa_ray.schema.records import Message, PreferencePair
from ttpa_ray.schema.tool_call_text import parse_tool_calls

GOLD = "gold"


@dataclass
class ScoredCandidate:
    candidate: Candidate
    score: float
    reason: str = ""


@dataclass
class PairChoice:
    """One chosen/rejected decision. `chosen` is None when the gold answer is chosen."""

    chosen: ScoredCandidate | None
    rejected: ScoredCandidate


def pair_rule(scored: list[ScoredCandidate], threshold: float = 0.8) -> list[PairChoice]:
    """The pairs of one turn; the first best-scoring candidate is the chosen one."""
    if not scored:
        return []
    best = max(scored, key=lambda s: s.score)
    if best.score < threshold:
        return [PairChoice(None, s) for s in scored]
    return [PairChoice(best, s) for s in scored if s.score < best.score]


def assistant_message(text: str) -> Message:
    """A completion text as the assistant message it stands for (raw text if no calls)."""
    parsed = parse_tool_calls(text)
    if not parsed.tool_calls:
        return Message("assistant", text)
    return Message.from_any(
        {"role": "assistant", "content": parsed.content or None, "tool_calls": parsed.tool_calls}
    )


def pair_rows(
    turn: dict[str, Any],
    scored: list[ScoredCandidate],
    threshold: float = 0.8,
    gold_ids: list[int] | None = None,
) -> list[dict[str, Any]]:
    """PAIR_SCHEMA rows of one turn (`turn`: a `Turn.to_row()` dict).

    `source` is the rejected candidate's. `branch_token_index` (branch pairs): the first
    completion token where chosen and rejected differ, from their training token ids
    when both are known (retokenising a decoded branch can move it), else the
    candidate's own index; -1 for n_sample pairs.
    """
    prompt = [Message.from_any(m) for m in json.loads(turn["prompt"])]
    gold_msg = Message.from_any(json.loads(turn["gold"]))
    rows = []
    for k, choice in enumerate(pair_rule(scored, threshold)):
        rej = choice.rejected.candidate
        if choice.chosen is None:
            chosen_text, chosen_msg, chosen_score, chosen_ids = (
                turn["gold_text"],
                gold_msg,
                1.0,
                gold_ids,
            )
        else:
            c = choice.chosen.candidate
            chosen_text, chosen_msg = c.text, assistant_message(c.text)
            chosen_score, chosen_ids = choice.chosen.score, c.token_ids
        branch = -1
        if rej.source == "branch":
            branch = rej.branch_token_index
            if chosen_ids is not None and rej.token_ids is not None:
                branch = first_difference(chosen_ids, rej.token_ids)
        pair = PreferencePair(
            id=f"{turn['id']}:p{k}",
            episode_id=turn["episode_id"],
            turn_index=int(turn["turn_index"]),
            prompt=prompt,
            tools=json.loads(turn["tools"]),
            chosen=[chosen_msg],
            rejected=[assistant_message(rej.text)],
            chosen_score=float(chosen_score),
            rejected_score=float(choice.rejected.score),
            source=rej.source,
            branch_token_index=branch,
            chosen_text=chosen_text,
            rejected_text=rej.text,
        )
        rows.append(pair.to_row())
    return rows


def response_pairs(
    turns: list[dict[str, Any]], candidates: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The response-level DPO baseline's pairs (PAIR_SCHEMA rows), one per turn: chosen =
    the gold answer, rejected = the turn's first `n_sample` candidate (in sampling order)
    whose ESM is below 1, i.e. a sampled full response that is not as good as gold; no
    ESM margin, no branch index. A turn whose samples all score 1 has no pair.

    `turns`: `Turn.to_row()` dicts (the prompts TPS sampled); `candidates`: rows of
    `candidates.parquet` (`turn_id`, `source`, `text`, `esm_score`).
    """
    first: dict[str, dict[str, Any]] = {}
    for c in candidates:
        if c["source"] == "n_sample" and float(c["esm_score"]) < 1.0:
            first.setdefault(str(c["turn_id"]), c)
    rows = []
    for turn in turns:
        rejected = first.get(turn["id"])
        if rejected is None:
            continue
        pair = PreferencePair(
            id=f"{turn['id']}:response",
            episode_id=turn["episode_id"],
            turn_index=int(turn["turn_index"]),
            prompt=[Message.from_any(m) for m in json.loads(turn["prompt"])],
            tools=json.loads(turn["tools"]),
            chosen=[Message.from_any(json.loads(turn["gold"]))],
            rejected=[assistant_message(rejected["text"])],
            chosen_score=1.0,
            rejected_score=float(rejected["esm_score"]),
            source="response",
            branch_token_index=-1,
            chosen_text=turn["gold_text"],
            rejected_text=rejected["text"],
        )
        rows.append(pair.to_row())
    return rows


# -- exports ---------------------------------------------------------------------------------


def _clean(messages: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [Message.from_any(m).to_openai() for m in messages or []]


def to_trl(row: dict[str, Any]) -> dict[str, Any]:
    """A `pairs` row → TRL's conversational preference example (+ `tools`)."""
    return {
        "prompt": _clean(row["prompt"]),
        "chosen": _clean(row["chosen"]),
        "rejected": _clean(row["rejected"]),
        "tools": json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"],
    }


def to_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    """A `pairs` row → ShareGPT preference format (LLaMA-Factory: `conversations`,
    `chosen`, `rejected`, `system`, `tools`); turns as the episode export writes them
    (`construct.dataset.sharegpt_turns`: a parallel call's results are one observation)."""
    from ttpa_ray.construct.dataset import sharegpt_turns

    prompt = _clean(row["prompt"])
    system = prompt[0]["content"] if prompt and prompt[0]["role"] == "system" else ""
    body = prompt[1:] if system else prompt
    tools = row["tools"] if isinstance(row["tools"], str) else json.dumps(row["tools"])
    return {
        "conversations": sharegpt_turns(body),
        "chosen": sharegpt_turns(_clean(row["chosen"])[:1])[0],
        "rejected": sharegpt_turns(_clean(row["rejected"])[:1])[0],
        "system": system or "",
        "tools": tools,
    }
