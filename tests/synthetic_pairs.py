"""Preference pairs without a policy: gold call (chosen) vs a perturbed call (rejected).

A test helper (also used by `benchmarks/dpo_vs_trl.py`): DPO input without running TPS.
Each pair is the first tool call of a schema-teacher episode against the same call with
one typical error (`score.perturb`), in the `pairs` layout (DESIGN §2), with the called
tool's schema only (so prompts stay short on the tiny model). Deterministic for a seed.
It builds on two stages (construct, score), so it lives with the tests, not in
the package. Tests import it by plain name (pytest puts `tests/` on `sys.path`).
"""

from __future__ import annotations

import json
import random
from typing import Any

from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.schema.records import PAIR_SCHEMA, Message
from ttpa_ray.schema.tool_call_text import render_assistant_text
from ttpa_ray.score.perturb import perturb_call
from ttpa_ray.tools.catalog import load_builtin

KINDS = ("wrong_value", "drop_arg", "wrong_tool")


def perturbed_pair_rows(
    n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS, rejected_score: float = 0.5
) -> list[dict[str, Any]]:
    """`n` rows of PAIR_SCHEMA: chosen = gold call text, rejected = a perturbed call text."""
    tools = load_builtin().tools
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    episode_seed = seed * 100_000
    while len(rows) < n:
        episode_seed += 1
        ep = build_episode(episode_seed, tools)
        gold = next(c for m in ep.messages for c in m.tool_calls or [])
        call = {"name": gold.name, "arguments": gold.arguments}
        names = [t["function"]["name"] for t in ep.tools]
        bad = perturb_call(call, names, rng.choice(kinds), rng)
        bad["arguments"] = json.loads(bad["arguments"])
        if bad == call:
            continue  # a perturbation that changed nothing (e.g. no argument to drop)
        tool = next(t for t in ep.tools if t["function"]["name"] == call["name"])
        row = {
            "id": f"synthetic-{episode_seed}",
            "episode_id": ep.id,
            "turn_index": 1,
            "prompt": [Message("system", ep.system).to_row(), ep.messages[0].to_row()],
            "tools": json.dumps([tool]),
            "chosen": None,
            "rejected": None,
            "chosen_score": 1.0,
            "rejected_score": rejected_score,
            "source": "response",
            "branch_token_index": -1,
            "chosen_text": render_assistant_text(None, [call]),
            "rejected_text": render_assistant_text(None, [bad]),
        }
        rows.append({k: row[k] for k in PAIR_SCHEMA.names})
    return rows
