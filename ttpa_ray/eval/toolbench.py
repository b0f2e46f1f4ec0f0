"""ToolBench-format input → evaluation examples (pure; the file reading is `read_records`).

Accepted layout: a `.jsonl` file of records, or a `.json` file holding a list of records
(or `{"data": [...]}`). One record is one query answered by one assistant turn of calls::

    {
      "id": "g1-17",                       # or "query_id"; default: the record's index
      "query": "What's the weather ...",  # or "instruction" / "question"
      "system": "...",                     # optional system prompt
      "category": "G1_instruction",        # optional; default "toolbench"
      "api_list": [                        # ToolBench's API entries (its query files), ...
        {"tool_name": "Weather API", "api_name": "current weather",
         "api_description": "...",
         "required_parameters": [{"name": "city", "type": "STRING", "description": "..."}],
         "optional_parameters": [{"name": "days", "type": "NUMBER", "default": "1"}]}
      ],
      "tools": [...],                      # ... or OpenAI tools / bare function dicts
      "answer": [                          # the gold calls (or "calls" / "tool_calls")
        {"name": "current_weather_for_weather_api", "arguments": {"city": "Paris"}}
      ]
    }

An answer call may name its function directly (`name`, or the OpenAI `function` shape),
by ToolBench's pair (`tool_name` + `api_name`), or as in ToolBench trajectories
(`action` + `action_input`, a JSON string); `arguments`/`parameters`/`action_input` may
be an object or its JSON text.

`api_list` entries become OpenAI functions the way ToolBench itself names them
(`toolbench/inference/.../rapidapi.py`): `<change_name(standardize(api_name))>_for_
<standardize(tool_name)>`, keeping the *last* 64 characters (the tool suffix is what tells
two same-named APIs apart). Types: `NUMBER` → `number` (ToolBench says `integer`, which
would reject every float answer), `BOOLEAN`/`ARRAY`/`OBJECT` → their JSON Schema type,
everything else (`STRING`, `ENUM`, `DATE (YYYY-MM-DD)`, ...) → `string`, as ToolBench does.

A record is quarantined, with the reason, when: it is not an object; it has no query; no
tools, or a tool that does not validate (`ttpa_ray.schema.tools.validate_tool`) or two
with one name; no answer calls; or an answer call names no offered tool or its arguments
do not validate against the tool's schema (`ttpa_ray.schema.validate.call_errors`); or
its id repeats an earlier record's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ttpa_ray.eval.examples import Example
from ttpa_ray.schema.records import QuarantineRecord
from ttpa_ray.schema.tools import ToolValidationError, tool_errors
from ttpa_ray.schema.validate import call_errors

STAGE = "eval.toolbench"
DEFAULT_CATEGORY = "toolbench"

_NON_STANDARD = re.compile(r"[^\u4e00-\u9fa5a-zA-Z0-9_]")
_UNDERSCORES = re.compile(r"_+")
_RESERVED = frozenset({"from", "class", "return", "false", "true", "id", "and"})
_NAME_MAX = 64
_TYPE_MAP = {
    "number": "number",
    "float": "number",
    "double": "number",
    "integer": "integer",
    "int": "integer",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "object": "object",
    "dict": "object",
}


class RecordError(ValueError):
    """A record that cannot be an example; the message is the quarantine reason."""


def standardize(text: str) -> str:
    """ToolBench's `standardize`: non-word characters → `_`, runs collapsed, lower-cased,
    `_` stripped at both ends, `get_` before a leading digit."""
    out = _UNDERSCORES.sub("_", _NON_STANDARD.sub("_", str(text))).lower().strip("_")
    return f"get_{out}" if out[:1].isdigit() else out


def api_function_name(api_name: str, tool_name: str) -> str:
    """ToolBench's function name for one API of one tool (last 64 characters)."""
    api = standardize(api_name)
    api = f"is_{api}" if api in _RESERVED else api
    return f"{api}_for_{standardize(tool_name)}"[-_NAME_MAX:]


def _param_schema(param: dict[str, Any]) -> dict[str, Any]:
    kind = _TYPE_MAP.get(str(param.get("type") or "string").strip().lower(), "string")
    schema: dict[str, Any] = {"type": kind, "description": str(param.get("description") or "")}
    if "default" in param and param["default"] not in (None, ""):
        schema["default"] = param["default"]
    return schema


def api_to_tool(api: Any) -> dict[str, Any]:
    """One ToolBench `api_list` entry → an OpenAI tool. Raises RecordError if unusable."""
    if not isinstance(api, dict) or not api.get("api_name") or not api.get("tool_name"):
        raise RecordError("bad_api: api_list entry needs 'tool_name' and 'api_name'")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for key in ("required_parameters", "optional_parameters"):
        params = api.get(key) or []
        if not isinstance(params, list):
            raise RecordError(f"bad_api: {key} of {api['api_name']!r} is not a list")
        for p in params:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
                raise RecordError(f"bad_api: a parameter of {api['api_name']!r} has no name")
            properties[p["name"]] = _param_schema(p)
            if key == "required_parameters":
                required.append(p["name"])
    tool = standardize(api["tool_name"])
    description = f'This is the subfunction for tool "{tool}".'
    if str(api.get("api_description") or "").strip():
        description += f" {str(api['api_description']).strip()}"
    return {
        "type": "function",
        "function": {
            "name": api_function_name(api["api_name"], api["tool_name"]),
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def _as_tool(entry: Any) -> Any:
    """OpenAI tool as is; a bare function dict wrapped."""
    if isinstance(entry, dict) and "function" not in entry and "name" in entry:
        return {"type": "function", "function": entry}
    return entry


def record_tools(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's tools in OpenAI format, validated. Raises RecordError."""
    if record.get("api_list"):
        if not isinstance(record["api_list"], list):
            raise RecordError("bad_tools: 'api_list' is not a list")
        tools = [api_to_tool(api) for api in record["api_list"]]
    elif record.get("tools") or record.get("functions"):
        raw = record.get("tools") or record.get("functions")
        if not isinstance(raw, list):
            raise RecordError("bad_tools: 'tools' is not a list")
        tools = [_as_tool(t) for t in raw]
    else:
        raise RecordError("no_tools: record has no 'api_list' or 'tools'")
    errors = tool_errors(tools)
    if errors:
        index, err = errors[0]
        detail = err.message if isinstance(err, ToolValidationError) else str(err)
        raise RecordError(f"bad_tools: tool {index}: {detail}")
    return tools


def _arguments(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise RecordError("bad_answer: arguments are not JSON") from None
    if not isinstance(value, dict):
        raise RecordError(f"bad_answer: arguments are a {type(value).__name__}, not an object")
    return value


def answer_call(call: Any) -> dict[str, Any]:
    """One answer call in any accepted shape → `{"name", "arguments": dict}`."""
    if not isinstance(call, dict):
        raise RecordError(f"bad_answer: call is a {type(call).__name__}, not an object")
    inner = call.get("function")
    fn: dict[str, Any] = inner if isinstance(inner, dict) else call
    if fn.get("name"):
        name, args = fn["name"], fn.get("arguments", fn.get("parameters"))
    elif call.get("api_name") and call.get("tool_name"):
        name = api_function_name(call["api_name"], call["tool_name"])
        args = call.get("arguments", call.get("parameters"))
    elif call.get("action"):
        name, args = call["action"], call.get("action_input")
    else:
        raise RecordError("bad_answer: call has no 'name', 'api_name'+'tool_name' or 'action'")
    return {"name": str(name), "arguments": _arguments(args)}


def record_to_example(record: Any, index: int) -> Example:
    """One ToolBench record → an `Example`. Raises RecordError (the quarantine reason)."""
    if not isinstance(record, dict):
        raise RecordError(f"not_object: record is a {type(record).__name__}")
    query = record.get("query") or record.get("instruction") or record.get("question")
    if not isinstance(query, str) or not query.strip():
        raise RecordError("no_query: record has no non-empty 'query'")
    tools = record_tools(record)
    raw_calls = record.get("answer") or record.get("calls") or record.get("tool_calls")
    if isinstance(raw_calls, dict):
        raw_calls = [raw_calls]
    if not isinstance(raw_calls, list) or not raw_calls:
        raise RecordError("no_answer: record has no answer calls")
    calls = [answer_call(c) for c in raw_calls]
    for call in calls:
        errors = call_errors(call, tools)
        if errors:
            raise RecordError(f"gold_invalid: {call['name']}: {errors[0]}")
    messages = [{"role": "user", "content": query}]
    if isinstance(record.get("system"), str) and record["system"]:
        messages.insert(0, {"role": "system", "content": record["system"]})
    category = str(record.get("category") or DEFAULT_CATEGORY)
    return Example(
        id=str(record.get("id") or record.get("query_id") or f"toolbench-{index}"),
        categories=(category, "single_call" if len(calls) == 1 else "multi_call"),
        messages=messages,
        tools=tools,
        gold_calls=calls,
    )


def read_records(path: str | Path) -> list[Any]:
    """The raw records of a ToolBench file (`.jsonl`, or `.json`: a list or
    `{"data": [...]}`). An unparsable JSONL line is kept as its text, so that it is
    quarantined like any other bad record rather than failing the whole file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ToolBench file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records: list[Any] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append(line)
        return records
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records or {{'data': [...]}}")
    return data


def load_toolbench(path: str | Path) -> tuple[list[Example], list[QuarantineRecord]]:
    """Examples of a ToolBench file, in file order, and the quarantined records."""
    examples: list[Example] = []
    bad: list[QuarantineRecord] = []
    seen: set[str] = set()
    for i, record in enumerate(read_records(path)):
        try:
            example = record_to_example(record, i)
            if example.id in seen:  # results are keyed by id: keep the first
                raise RecordError(f"duplicate_id: {example.id!r} already used")
            seen.add(example.id)
            examples.append(example)
        except RecordError as exc:
            rid = record.get("id", i) if isinstance(record, dict) else i
            bad.append(QuarantineRecord.of(STAGE, rid, str(exc), record))
    return examples, bad
