"""JSON-Schema validation of call arguments against a tool's `parameters`."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema


@lru_cache(maxsize=4096)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def argument_errors(arguments: Any, parameters: dict[str, Any]) -> list[str]:
    """Messages for every way `arguments` violates the `parameters` schema ([] = valid).

    `arguments` may be a dict or a JSON string. Validators are compiled once per distinct
    schema (keyed by its canonical JSON), since the same tools are checked many times.
    """
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            return [f"arguments are not valid JSON: {e.msg}"]
    if not isinstance(arguments, dict):
        return [f"arguments must be a JSON object, got {type(arguments).__name__}"]
    validator = _validator(json.dumps(parameters, sort_keys=True))
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<arguments>'}: {e.message}" for e in errors
    ]


def call_errors(call: dict[str, Any], tools: list[dict[str, Any]]) -> list[str]:
    """Errors of one call (`{"name","arguments"}` or OpenAI shape) against offered tools."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        return ["call has no function name"]
    for tool in tools:
        spec = tool.get("function", tool)
        if spec.get("name") == fn["name"]:
            return argument_errors(fn.get("arguments", {}), spec.get("parameters") or {})
    return [f"unknown tool {fn['name']!r}: not among the offered tools"]
