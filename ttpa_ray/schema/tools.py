"""Tool specs in the OpenAI function format, and their validation.

A tool is `{"type": "function", "function": {"name", "description", "parameters"}}` where
`parameters` is a JSON Schema object. `ToolSpec` adds what the platform needs around it
(domain, a result schema for simulating results, provenance) without changing that format:
`ToolSpec.to_openai()` is what chat templates, endpoints and ESM receive.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pyarrow as pa

TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ToolValidationError(ValueError):
    """A tool that cannot be used, naming the tool and the offending field."""

    def __init__(self, tool: str, field: str, message: str):
        self.tool = tool
        self.field = field
        self.message = message
        super().__init__(f"tool {tool!r}: field {field!r}: {message}")


@dataclass
class ToolSpec:
    """One tool. `parameters` and `result_schema` are JSON Schemas (objects)."""

    name: str
    description: str
    parameters: dict[str, Any]
    result_schema: dict[str, Any] | None = None
    domain: str | None = None
    source: str = "builtin"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        """The plain OpenAI tool dict (what templates and endpoints take)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    def to_row(self) -> dict[str, Any]:
        """Arrow row (JSON Schemas as canonical JSON strings)."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": json.dumps(self.parameters, sort_keys=True, ensure_ascii=False),
            "result_schema": (
                json.dumps(self.result_schema, sort_keys=True, ensure_ascii=False)
                if self.result_schema is not None
                else None
            ),
            "domain": self.domain,
            "source": self.source,
            "metadata": json.dumps(self.metadata, sort_keys=True, ensure_ascii=False, default=str),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ToolSpec:
        return cls(
            name=row["name"],
            description=row.get("description") or "",
            parameters=json.loads(row["parameters"]),
            result_schema=json.loads(row["result_schema"]) if row.get("result_schema") else None,
            domain=row.get("domain"),
            source=row.get("source") or "",
            metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
        )

    @classmethod
    def from_openai(cls, tool: dict[str, Any], **extra: Any) -> ToolSpec:
        """Build from an OpenAI tool dict (or a bare function dict); validates first."""
        validate_tool(tool)
        fn = tool.get("function", tool)
        return cls(
            name=fn["name"],
            description=fn.get("description", ""),
            parameters=fn.get("parameters") or {"type": "object", "properties": {}},
            **extra,
        )


TOOL_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("description", pa.string()),
        ("parameters", pa.string()),
        ("result_schema", pa.string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("metadata", pa.string()),
    ]
)


def _tool_name(tool: Any) -> str:
    if isinstance(tool, dict):
        fn = tool.get("function", tool)
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
    return "<unnamed>"


def _check_schema(tool: str, where: str, schema: Any) -> None:
    if not isinstance(schema, dict):
        raise ToolValidationError(
            tool, where, f"must be a JSON object, got {type(schema).__name__}"
        )
    if schema.get("type") != "object":
        raise ToolValidationError(
            tool, f"{where}.type", f"must be 'object', got {schema.get('type')!r}"
        )
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        path = ".".join(str(p) for p in e.absolute_path)
        raise ToolValidationError(
            tool, f"{where}.{path}" if path else where, f"invalid JSON Schema: {e.message}"
        ) from None
    _check_required(tool, where, schema)


def _check_required(tool: str, where: str, schema: dict[str, Any]) -> None:
    """Every `required` name must be a declared property, at every nesting level."""
    props = schema.get("properties")
    if isinstance(props, dict):
        for name in schema.get("required", []) or []:
            if name not in props:
                raise ToolValidationError(
                    tool, f"{where}.required", f"required parameter {name!r} is not in properties"
                )
        for key, sub in props.items():
            if isinstance(sub, dict):
                _check_required(tool, f"{where}.properties.{key}", sub)
    items = schema.get("items")
    if isinstance(items, dict):
        _check_required(tool, f"{where}.items", items)


def validate_tool(tool: Any, result_schema: Any = None) -> None:
    """Raise `ToolValidationError` naming the tool and field when `tool` is unusable.

    Accepts the OpenAI shape or a bare function dict. Checks: name pattern, description
    is a string, `parameters` is a valid JSON Schema of type object whose `required`
    names exist; `result_schema`, when given, likewise.
    """
    name = _tool_name(tool)
    if not isinstance(tool, dict):
        raise ToolValidationError(name, "<root>", f"must be an object, got {type(tool).__name__}")
    if "function" in tool:
        if tool.get("type", "function") != "function":
            raise ToolValidationError(name, "type", f"must be 'function', got {tool.get('type')!r}")
        fn = tool["function"]
        if not isinstance(fn, dict):
            raise ToolValidationError(name, "function", "must be an object")
    else:
        fn = tool
    raw_name = fn.get("name")
    if not isinstance(raw_name, str) or not TOOL_NAME_RE.match(raw_name):
        raise ToolValidationError(
            name, "function.name", f"must match {TOOL_NAME_RE.pattern}, got {raw_name!r}"
        )
    if not isinstance(fn.get("description", ""), str):
        raise ToolValidationError(name, "function.description", "must be a string")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    _check_schema(name, "function.parameters", params)
    if result_schema is not None:
        _check_schema(name, "result_schema", result_schema)


def tool_errors(tools: list[Any]) -> list[tuple[int, ToolValidationError]]:
    """Validate many tools; returns (index, error) for each invalid one, duplicates included."""
    errors: list[tuple[int, ToolValidationError]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        try:
            validate_tool(tool)
        except ToolValidationError as e:
            errors.append((i, e))
            continue
        name = _tool_name(tool)
        if name in seen:
            errors.append((i, ToolValidationError(name, "function.name", "duplicate tool name")))
        seen.add(name)
    return errors


def tools_to_json(tools: list[dict[str, Any]]) -> str:
    """Canonical JSON for a tool list (stable key order: equal lists give equal strings)."""
    return json.dumps(tools, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
