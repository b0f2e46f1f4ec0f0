"""A construction row's bookkeeping, shared by the step runner and the LLM teacher:
marking it discarded at a step, and its time per step."""

from __future__ import annotations

import json
from typing import Any


def fail(row: dict[str, Any], step: str, reason: str) -> None:
    """Mark `row` as discarded at `step`; later steps pass it through."""
    row["_quarantine_reason"] = f"{step}: {reason}"
    row["_failed_step"] = step


def add_seconds(row: dict[str, Any], step: str, seconds: float) -> None:
    """Add `seconds` to the row's time for `step` (for the per-step time split)."""
    times = json.loads(row["_seconds"]) if row.get("_seconds") else {}
    times[step] = times.get(step, 0.0) + seconds
    row["_seconds"] = json.dumps(times)
