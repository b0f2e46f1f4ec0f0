"""Typed records (Episode, PreferencePair, ...) and their Arrow schemas.

Rows on disk are Parquet with the stable column names of DESIGN §2. Messages are typed
Arrow structs in the OpenAI chat shape (tool-call `arguments` is a JSON string, as in
OpenAI's API); tool lists are canonical JSON strings because JSON Schemas vary too
much in shape to be a fixed Arrow type.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from ttpa_ray.schema.tools import tools_to_json

ROLES = ("system", "user", "assistant", "tool")

FUNCTION_TYPE = pa.struct([("name", pa.string()), ("arguments", pa.string())])
TOOL_CALL_TYPE = pa.struct(
    [("id", pa.string()), ("type", pa.string()), ("function", FUNCTION_TYPE)]
)
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL_TYPE)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)


@dataclass
class ToolCall:
    """One call: `arguments` is a dict here and a JSON string in the OpenAI shape."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id or "",
            "type": "function",
            "function": {
                "name": self.name,
                "arguments": json.dumps(self.arguments, ensure_ascii=False),
            },
        }

    @classmethod
    def from_any(cls, call: dict[str, Any]) -> ToolCall:
        """From the OpenAI shape or the flat `{"name", "arguments"}` shape.

        Raises ValueError when arguments are not a JSON object (callers that must not
        raise, such as ESM, have their own lenient path).
        """
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            args = json.loads(args) if args.strip() else {}
        if not isinstance(args, dict):
            raise ValueError(f"arguments must be a JSON object, got {type(args).__name__}")
        return cls(name=fn["name"], arguments=args, id=call.get("id"))


@dataclass
class Message:
    """One OpenAI chat message."""

    role: str
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI dict, without null keys (what chat templates expect)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    def to_row(self) -> dict[str, Any]:
        """Arrow row: every key present, nulls where absent."""
        return {
            "role": self.role,
            "content": self.content,
            "tool_calls": [c.to_openai() for c in self.tool_calls] if self.tool_calls else None,
            "tool_call_id": self.tool_call_id,
            "name": self.name,
        }

    @classmethod
    def from_any(cls, m: dict[str, Any]) -> Message:
        calls = m.get("tool_calls")
        return cls(
            role=m["role"],
            content=m.get("content"),
            tool_calls=[ToolCall.from_any(c) for c in calls] if calls else None,
            tool_call_id=m.get("tool_call_id"),
            name=m.get("name"),
        )


def messages_to_openai(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Arrow message rows (nulls everywhere) → clean OpenAI message dicts."""
    return [Message.from_any(r).to_openai() for r in rows or []]


EPISODE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("system", pa.string()),
        ("tools", pa.string()),
        ("messages", MESSAGES_TYPE),
        ("scenario", pa.string()),
        ("constraints", pa.list_(pa.string())),
        ("teacher", pa.string()),
        ("seed", pa.int64()),
        ("meta", pa.string()),
    ]
)


@dataclass
class Episode:
    """One constructed multi-turn tool-use conversation (DESIGN §2 `episodes`)."""

    id: str
    system: str
    tools: list[dict[str, Any]]
    messages: list[Message]
    scenario: str = ""
    constraints: list[str] = field(default_factory=list)
    teacher: str = "schema"
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "system": self.system,
            "tools": tools_to_json(self.tools),
            "messages": [m.to_row() for m in self.messages],
            "scenario": self.scenario,
            "constraints": list(self.constraints),
            "teacher": self.teacher,
            "seed": self.seed,
            "meta": json.dumps(self.meta, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Episode:
        return cls(
            id=row["id"],
            system=row.get("system") or "",
            tools=json.loads(row["tools"]) if row.get("tools") else [],
            messages=[Message.from_any(m) for m in row.get("messages") or []],
            scenario=row.get("scenario") or "",
            constraints=list(row.get("constraints") or []),
            teacher=row.get("teacher") or "",
            seed=int(row.get("seed") or 0),
            meta=json.loads(row["meta"]) if row.get("meta") else {},
        )


PAIR_SOURCES = ("n_sample", "branch", "response")

PAIR_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("episode_id", pa.string()),
        ("turn_index", pa.int32()),
        ("prompt", MESSAGES_TYPE),
        ("tools", pa.string()),
        ("chosen", MESSAGES_TYPE),
        ("rejected", MESSAGES_TYPE),
        ("chosen_score", pa.float64()),
        ("rejected_score", pa.float64()),
        ("source", pa.string()),
        ("branch_token_index", pa.int32()),
        ("chosen_text", pa.string()),
        ("rejected_text", pa.string()),
    ]
)


@dataclass
class PreferencePair:
    """One chosen/rejected pair at one assistant turn (DESIGN §2 `pairs`).

    `prompt` is the history before the turn; `chosen`/`rejected` are the assistant
    message(s) of the turn (TRL's conversational preference format). For `branch` pairs,
    `branch_token_index` is the index, in completion tokens, of the first token where
    `chosen_text` and `rejected_text` differ (the texts as rendered/generated).
    """

    id: str
    episode_id: str
    turn_index: int
    prompt: list[Message]
    tools: list[dict[str, Any]]
    chosen: list[Message]
    rejected: list[Message]
    chosen_score: float
    rejected_score: float
    source: str = "n_sample"
    branch_token_index: int | None = None
    chosen_text: str | None = None
    rejected_text: str | None = None

    def __post_init__(self) -> None:
        if self.source not in PAIR_SOURCES:
            raise ValueError(f"unknown pair source {self.source!r}; expected one of {PAIR_SOURCES}")

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["tools"] = tools_to_json(self.tools)
        for key in ("prompt", "chosen", "rejected"):
            row[key] = [m.to_row() for m in getattr(self, key)]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PreferencePair:
        kw = dict(row)
        kw["tools"] = json.loads(row["tools"]) if row.get("tools") else []
        for key in ("prompt", "chosen", "rejected"):
            kw[key] = [Message.from_any(m) for m in row.get(key) or []]
        return cls(**kw)


QUARANTINE_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("row_id", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)


@dataclass
class QuarantineRecord:
    """A row a stage could not process: where, which, why, and the raw row as JSON."""

    stage: str
    row_id: str
    reason: str
    raw: str

    @classmethod
    def of(cls, stage: str, row_id: Any, reason: str, raw: Any) -> QuarantineRecord:
        """Record `raw` (any JSON-able value, a string too) as JSON."""
        raw_json = json.dumps(raw, default=str, ensure_ascii=False)
        return cls(stage=stage, row_id=str(row_id), reason=reason, raw=raw_json)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)
