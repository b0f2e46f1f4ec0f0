"""Evaluation suites: a suite spec → examples (+ quarantined inputs + facts for metrics).

Specs (`<kind>:<argument>`):

- `heldout:<construct_out_dir>`: the test split of a construct run
  (`<dir>/episodes/test.parquet`), one example per tool-call turn
  (`ttpa_ray.sample.turns.episode_turns`). Categories: `seen_tools` or `heldout_tools`
  (a gold call names a tool in the manifest's `holdout_tools`, never seen in training),
  and `single_call` or `multi_call` (parallel calls in the turn).
- `bfcl:<cat1,cat2,...>` (`bfcl:` or `bfcl:all` for every single-turn AST category of
  the installed `bfcl-eval`): BFCL in FC mode: the function docs, normalised to OpenAI
  tools (`ttpa_ray.tools.bfcl`), are sent as `tools`; AST accuracy against every possible
  answer; ESM and exact against the first possible answer. `irrelevance`-type categories
  expect no call (gold `[]`); `live_relevance` expects some call (AST = any call made;
  ESM/exact do not apply).
- `toolbench:<file>`: ToolBench-format records (`ttpa_ray.eval.toolbench`).

`limit` keeps the first `limit` examples of each BFCL category, or of the whole suite for
the others; inputs dropped by it are neither examples nor quarantined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttpa_ray.eval.examples import Example
from ttpa_ray.schema.records import QuarantineRecord

SUITE_KINDS = ("heldout", "bfcl", "toolbench")
HELDOUT_TOOLS, SEEN_TOOLS = "heldout_tools", "seen_tools"
SINGLE_CALL, MULTI_CALL = "single_call", "multi_call"
# BFCL categories whose entries expect no call / some call but carry no possible answer.
BFCL_NO_CALL = ("irrelevance", "live_irrelevance")
BFCL_ANY_CALL = ("live_relevance",)


@dataclass
class Suite:
    """A loaded suite: its name (the spec's kind), examples in a fixed order, the inputs
    that could not become examples, and facts that go into `metrics.json`."""

    name: str
    spec: str
    examples: list[Example]
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def parse_spec(spec: str) -> tuple[str, str]:
    """`kind:argument` → (kind, argument). Raises ValueError for an unknown kind."""
    kind, _, arg = spec.partition(":")
    if kind not in SUITE_KINDS:
        raise ValueError(
            f"unknown suite {spec!r}: expected one of "
            "heldout:<construct_dir>, bfcl:<cat1,cat2,...>, toolbench:<file>"
        )
    if kind != "bfcl" and not arg:
        raise ValueError(f"suite {kind!r} needs an argument: {kind}:<path>")
    return kind, arg


def _call_count(calls: list[dict[str, Any]]) -> str:
    return SINGLE_CALL if len(calls) == 1 else MULTI_CALL


def load_heldout(
    construct_dir: str | Path, distractors: int | None = None
) -> tuple[list[Example], list[QuarantineRecord], dict[str, Any]]:
    """Tool-call turns of the test split of a construct run, in file and turn order."""
    from ttpa_ray.sample.turns import episode_turns
    from ttpa_ray.schema.io import read_rows

    root = Path(construct_dir)
    path = root / "episodes" / "test.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no test split at {path}: run `ttpa-ray construct` first")
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    holdout = set(manifest.get("holdout_tools") or [])
    examples: list[Example] = []
    bad: list[QuarantineRecord] = []
    for row in read_rows(path):
        turns, rejected = episode_turns(row, None, distractors)
        bad += [QuarantineRecord("eval.heldout", q.row_id, q.reason, q.raw) for q in rejected]
        for t in turns:
            called = {c["name"] for c in t.gold_calls}
            examples.append(
                Example(
                    id=t.id,
                    categories=(
                        HELDOUT_TOOLS if called & holdout else SEEN_TOOLS,
                        _call_count(t.gold_calls),
                    ),
                    messages=t.prompt,
                    tools=t.tools,
                    gold_calls=t.gold_calls,
                    meta={"episode_id": t.episode_id, "turn_index": t.turn_index},
                )
            )
    return examples, bad, {"holdout_tools": sorted(holdout), "construct_dir": str(root)}


def bfcl_gold_calls(entry: Any) -> list[dict[str, Any]]:
    """A BFCL entry's first possible answer as calls with OpenAI tool names."""
    from ttpa_ray.tools.bfcl import ground_truth_calls

    to_openai = {orig: new for new, orig in entry.name_map.items()}
    calls = ground_truth_calls(entry.possible_answer or [], entry.original_functions)
    return [{"name": to_openai.get(n, n), "arguments": a} for n, a in calls]


def bfcl_example(entry: Any) -> Example:
    """One BFCL entry → an `Example` (FC mode). Raises ValueError when unusable."""
    turns = entry.question
    if not turns or not isinstance(turns[0], list) or not turns[0]:
        raise ValueError("no_question: entry has no first-turn messages")
    gold: list[dict[str, Any]] | None
    possible, any_call = entry.possible_answer, False
    if possible is None:
        if entry.category in BFCL_NO_CALL:
            gold, possible = [], []
        elif entry.category in BFCL_ANY_CALL:
            gold, any_call = None, True
        else:
            raise ValueError("no_possible_answer: entry has no ground truth")
    else:
        try:
            gold = bfcl_gold_calls(entry)
        except (KeyError, StopIteration, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"bad_ground_truth: {type(exc).__name__}: {exc}") from None
    return Example(
        id=entry.id,
        categories=(entry.category,),
        messages=[dict(m) for m in turns[0]],
        tools=entry.functions,
        gold_calls=gold,
        possible_answer=possible,
        language=entry.language,
        ast_any_call=any_call,
    )


def load_bfcl_suite(
    categories: list[str], limit: int | None = None
) -> tuple[list[Example], list[QuarantineRecord], dict[str, Any]]:
    """BFCL entries of `categories` (first `limit` of each), in category then file order."""
    from ttpa_ray.tools import bfcl

    known = bfcl.list_categories()
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ValueError(f"unknown BFCL categories {unknown}; known: {', '.join(known)}")
    examples: list[Example] = []
    bad: list[QuarantineRecord] = []
    for cat in categories:
        for entry in bfcl.load_category(cat)[:limit]:
            try:
                examples.append(bfcl_example(entry))
            except ValueError as exc:
                raw = {"id": entry.id, "question": entry.question}
                bad.append(QuarantineRecord.of("eval.bfcl", entry.id, str(exc), raw))
    info = {"bfcl_eval_version": bfcl.bfcl_version(), "mode": "FC", "categories": categories}
    return examples, bad, info


def load_suite(spec: str, *, limit: int | None = None, distractors: int | None = None) -> Suite:
    """Load a suite spec (see the module doc). Raises ValueError / FileNotFoundError for a
    spec that cannot be read; an empty result is the caller's business."""
    kind, arg = parse_spec(spec)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if kind == "heldout":
        examples, bad, info = load_heldout(arg, distractors)
        examples = examples[:limit]
    elif kind == "bfcl":
        from ttpa_ray.tools import bfcl

        cats = [c.strip() for c in arg.split(",") if c.strip()]
        if not cats or cats == ["all"]:
            cats = bfcl.list_categories()
        examples, bad, info = load_bfcl_suite(cats, limit)
    else:
        from ttpa_ray.eval.toolbench import load_toolbench

        examples, bad = load_toolbench(arg)
        examples, info = examples[:limit], {"file": str(arg)}
    return Suite(kind, spec, examples, bad, info)
