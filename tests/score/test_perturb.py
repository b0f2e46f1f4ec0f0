"""Seeded perturbations produce the defect they name, and ESM sees it."""

from __future__ import annotations

import json
import random

import pytest

from ttpa_ray.score.esm import esm_breakdown
from ttpa_ray.score.perturb import PERTURBATIONS, perturb_call

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": n,
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "metric": {"type": "boolean"},
                },
                "required": ["city"],
            },
        },
    }
    for n in ("get_weather", "get_forecast")
]
GOLD = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": True}}
NAMES = ["get_weather", "get_forecast"]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("exact", ""),
        ("wrong_value", "value_mismatch"),
        ("case", "value_mismatch"),
        ("drop_arg", None),
        ("wrong_tool", "wrong_name"),
        ("bad_json", "arguments_not_json"),
    ],
)
def test_each_kind_shows_its_defect(kind, reason):
    cand = perturb_call(GOLD, NAMES, kind, random.Random(1))
    b = esm_breakdown([cand], [GOLD], TOOLS)
    if reason is not None:
        assert b["reason"] == reason
    if kind == "drop_arg":
        assert len(json.loads(cand["arguments"])) == 2 and b["score"] < 1.0
    assert (b["score"] == 1.0) == (kind == "exact")


def test_perturbations_are_seeded_and_checked():
    a = [perturb_call(GOLD, NAMES, k, random.Random(7)) for k in PERTURBATIONS]
    b = [perturb_call(GOLD, NAMES, k, random.Random(7)) for k in PERTURBATIONS]
    assert a == b
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb_call(GOLD, NAMES, "typo", random.Random(0))
