"""Seeded perturbations of a gold call: the typical tool-call errors ESM must separate.

Used by the demo and the ESM benchmark to make candidates with known defects.
"""

from __future__ import annotations

import json
import random
from typing import Any

PERTURBATIONS = ("exact", "wrong_value", "case", "drop_arg", "wrong_tool", "bad_json")


def perturb_call(
    call: dict[str, Any], other_tools: list[str], kind: str, rng: random.Random
) -> dict[str, Any]:
    """A `{"name", "arguments": JSON string}` candidate derived from `call` by `kind`.

    `wrong_value` replaces one argument with a value of another type family (a string
    becomes a different string, a number is shifted, a bool flipped); `case` lower-cases
    string values; `drop_arg` removes one argument; `wrong_tool` names another tool;
    `bad_json` truncates the arguments JSON. Unknown kinds raise ValueError.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; expected one of {PERTURBATIONS}")
    name = call["name"]
    args = dict(call["arguments"])
    if kind == "wrong_value" and args:
        key = rng.choice(sorted(args))
        value = args[key]
        if isinstance(value, bool):
            args[key] = not value
        elif isinstance(value, int | float):
            args[key] = value + rng.choice([1, 2, 10])
        else:
            args[key] = rng.choice(["Springfield", "2020-01-01", "other", "none"])
    elif kind == "case":
        args = {k: v.lower() if isinstance(v, str) else v for k, v in args.items()}
    elif kind == "drop_arg" and args:
        args.pop(rng.choice(sorted(args)))
    elif kind == "wrong_tool":
        choices = [t for t in other_tools if t != name]
        name = rng.choice(choices) if choices else name + "_x"
    text = json.dumps(args, ensure_ascii=False)
    if kind == "bad_json":
        text = text[: max(1, len(text) // 2)]
    return {"name": name, "arguments": text}
