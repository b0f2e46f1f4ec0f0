"""Test helper: the training settings of the first-tool-call-turn runs (GRPO's tests and
the `sft_policy` fixture): called tools + 1 distractor, as tiny-cpu, so prompts are short
and never cut."""

from __future__ import annotations

from typing import Any

FIRST_TURN: dict[str, Any] = {
    "max_len": 1024,
    "distractors": 1,
    "max_turns_per_episode": 1,
    "workers": 1,
    "cpus_per_worker": 1,
    "seed": 0,
}
