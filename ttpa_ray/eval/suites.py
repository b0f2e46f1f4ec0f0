"""Evaluation suites: a suite spec → examples (+ quarantined inputs + facts for metrics).

Specs (`<kind>:<argument>`):

- `heldout:<construct_out_dir>`: the test split of a construct run
  (`<dir>/episodes/test.parquet`), one example per tool-call turn
  (`ttpa_ray.schema.turns.episode_turns`), the turns TPS samples (`max_turns`); `limit`
  draws a seeded stratified sample of them (`load_heldout`). Categories: `seen_tools` or
  `heldout_tools` (a gold call names a tool in the manifest's `holdout_tools`, never seen
  in training), `single_call` or `multi_call` (parallel calls in the turn), and `turn_<k>`
  (the k-th tool-call turn of its episode, from 0).
- `bfcl:<cat1,cat2,...>` (`bfcl:` or `bfcl:all` for every single-turn AST category of
  the installed `bfcl-eval`): BFCL in FC mode: the function docs, normalised to OpenAI
  tools (`ttpa_ray.tools.bfcl`), are sent as `tools`; AST accuracy against every possible
  answer; ESM and exact against the first possible answer. `irrelevance`-type categories
  expect no call (gold `[]`); `live_relevance` expects some call (AST = any call made;
  ESM/exact do not apply).
- `toolbench:<file>`: ToolBench-format records (`ttpa_ray.eval.toolbench`).

`limit` keeps the first `limit` examples of each BFCL category or of a ToolBench file, and
samples `limit` held-out turns; inputs dropped by it are neither examples nor quarantined.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Hashable, Sequence
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

log = logging.getLogger("ttpa_ray")


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


def proportional_allocation(sizes: dict[Any, int], n: int) -> dict[Any, int]:
    """How many of `n` draws each stratum gets: proportional to its size, rounded by
    largest remainder (Hamilton), ties broken by stratum key order; exact integer
    arithmetic, so the counts sum to `min(n, total)` and never exceed a stratum's size.
    A stratum smaller than `total / n` may get 0."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    base = {k: n * size // total for k, size in sizes.items()}
    left = n - sum(base.values())
    by_remainder = sorted(sizes, key=lambda k: (-(n * sizes[k] % total), k))
    for k in by_remainder[:left]:
        base[k] += 1
    return base


def stratified_sample(strata: Sequence[Hashable], n: int | None, seed: int) -> list[int]:
    """Indices of a stratified random sample of `n` items whose stratum keys are `strata`
    (sortable keys), in index order. Proportional allocation (`proportional_allocation`),
    then a simple random sample in each stratum, strata visited in key order with one
    `random.Random(seed)`: the same inputs and seed give the same sample. `n=None` or
    `n >= len(strata)` takes every item."""
    if n is None or n >= len(strata):
        return list(range(len(strata)))
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(strata):
        members.setdefault(key, []).append(i)
    quota = proportional_allocation({k: len(v) for k, v in members.items()}, n)
    rng = random.Random(seed)
    chosen = [i for k in sorted(members) for i in rng.sample(members[k], quota[k])]
    return sorted(chosen)


def call_turn_index(prompt: list[dict[str, Any]]) -> int:
    """k of a turn: how many tool-call turns of its episode come before it (0 for the
    first), counted from the assistant calls in its prompt (prompt fitting omits tool
    results, never assistant turns)."""
    return sum(1 for m in prompt if m.get("role") == "assistant" and m.get("tool_calls"))


def load_heldout(
    construct_dir: str | Path,
    distractors: int | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    max_turns: int | None = None,
    fit: Any = None,
) -> tuple[list[Example], list[QuarantineRecord], dict[str, Any]]:
    """Tool-call turns of the test split of a construct run: the pool is every turn with
    k < `max_turns` (the range TPS samples: `sample.max_turns_per_episode`; None: all);
    `n` draws a sample of it stratified by (seen vs held-out tools, k) with proportional
    allocation, seeded by `seed` (`stratified_sample`); `n=None` keeps the whole pool.
    Examples come in file and turn order. `fit` (a `schema.turns.PromptFit`) fits each
    prompt to a token budget exactly as SFT and TPS do (over-long ones are quarantined).

    A pool smaller than `n` is taken whole, with a warning; `info["sampling"]` records
    `requested`, `pool`, `n`, `seed`, `max_turns`, `took_all` and per stratum
    (`"<seen_tools|heldout_tools>/k<k>"`) its `pool` and `n`.
    """
    from ttpa_ray.schema.io import read_rows
    from ttpa_ray.schema.turns import episode_turns

    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    root = Path(construct_dir)
    path = root / "episodes" / "test.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no test split at {path}: run `ttpa-ray construct` first")
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    holdout = set(manifest.get("holdout_tools") or [])
    pool: list[Example] = []
    strata: list[tuple[str, int]] = []
    bad: list[QuarantineRecord] = []
    for row in read_rows(path):
        turns, rejected = episode_turns(row, max_turns, distractors, fit)
        bad += [QuarantineRecord("eval.heldout", q.row_id, q.reason, q.raw) for q in rejected]
        for t in turns:
            called = {c["name"] for c in t.gold_calls}
            tools_kind = HELDOUT_TOOLS if called & holdout else SEEN_TOOLS
            k = call_turn_index(t.prompt)
            strata.append((tools_kind, k))
            pool.append(
                Example(
                    id=t.id,
                    categories=(tools_kind, _call_count(t.gold_calls), f"turn_{k}"),
                    messages=t.prompt,
                    tools=t.tools,
                    gold_calls=t.gold_calls,
                    meta={"episode_id": t.episode_id, "turn_index": t.turn_index, "k": k},
                )
            )
    keep = stratified_sample(strata, n, seed)
    examples = [pool[i] for i in keep]
    if n is not None and len(pool) < n:
        log.warning(
            "held-out suite: the pool has %d turns (k < %s), fewer than the %d asked: "
            "evaluating all of them",
            len(pool),
            max_turns,
            n,
        )
    per_stratum: dict[str, dict[str, int]] = {}
    for kind, k in strata:
        per_stratum.setdefault(f"{kind}/k{k}", {"pool": 0, "n": 0})["pool"] += 1
    for i in keep:
        kind, k = strata[i]
        per_stratum[f"{kind}/k{k}"]["n"] += 1
    sampling = {
        "requested": n,
        "pool": len(pool),
        "n": len(examples),
        "seed": seed,
        "max_turns": max_turns,
        "took_all": len(examples) == len(pool),
        "strata": dict(sorted(per_stratum.items())),
    }
    info = {"holdout_tools": sorted(holdout), "construct_dir": str(root), "sampling": sampling}
    return examples, bad, info


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


def load_suite(
    spec: str,
    *,
    limit: int | None = None,
    distractors: int | None = None,
    seed: int = 0,
    max_turns: int | None = None,
    fit: Any = None,
) -> Suite:
    """Load a suite spec (see the module doc). `seed`, `max_turns` and `fit` apply to the
    held-out suite only (`load_heldout`). Raises ValueError / FileNotFoundError for a spec that
    cannot be read; an empty result is the caller's business."""
    kind, arg = parse_spec(spec)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if kind == "heldout":
        examples, bad, info = load_heldout(
            arg, distractors, n=limit, seed=seed, max_turns=max_turns, fit=fit
        )
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
