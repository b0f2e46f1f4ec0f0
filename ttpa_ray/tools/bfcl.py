"""Import BFCL (Berkeley Function Calling Leaderboard) function docs as OpenAI tools.

The data comes from the ``bfcl-eval`` wheel, installed with ``pip install --no-deps
bfcl-eval``. Importing ``bfcl_eval`` runs its model-config imports, which fail without its
(pinned, conflicting) dependencies, so this module never imports it: the package directory
is located with :func:`importlib.util.find_spec`, which does not execute the package.

Each category file ``data/BFCL_v<N>_<category>.json`` is JSON-lines with ``id``,
``question`` (a list of turns, each a list of chat messages) and ``function`` (BFCL
function docs); ``data/possible_answer/BFCL_v<N>_<category>.json`` holds, per ``id``, a
``ground_truth`` list of ``{func_name: {param: [acceptable values]}}``.

Categories served by :func:`list_categories` are the single-turn AST categories. Excluded:

* ``multi_turn_*``: stateful, executed against BFCL's simulated APIs, not AST-checked.
* ``memory`` and ``web_search``: agentic; entries carry ``involved_classes`` instead of
  ``function`` and their ground truth is a free-text final answer, not a call.
* ``format_sensitivity``: not entries at all but a map from category to entry ids that
  BFCL re-runs under different prompt formats.

``irrelevance``, ``live_irrelevance`` and ``live_relevance`` are included; they have no
possible-answer file, so their entries have ``possible_answer=None``.

BFCL types are mapped to JSON Schema (``dict`` -> ``object``, ``float`` -> ``number``,
``tuple`` -> ``array``, Java/JavaScript class names to their JSON kind). ``any`` and
unknown types drop the ``type`` key (any JSON value validates); unknown ones are reported
in :attr:`BfclEntry.unknown_types`. Function names are kept verbatim in
``original_functions`` and the ground truth; OpenAI names must match
``^[a-zA-Z0-9_-]{1,64}$``, so :func:`openai_tool_name` maps e.g. ``math.factorial`` to
``math_factorial`` and :attr:`BfclEntry.name_map` maps it back.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BfclEntry",
    "BfclNotInstalledError",
    "EXCLUDED_CATEGORIES",
    "bfcl_data_dir",
    "bfcl_version",
    "category_file",
    "list_categories",
    "load_bfcl",
    "ground_truth_calls",
    "load_category",
    "normalize_bfcl_function",
    "normalize_bfcl_schema",
    "openai_tool_name",
    "possible_answer_file",
    "unknown_bfcl_types",
]

_PACKAGE = "bfcl_eval"
_DISTRIBUTION = "bfcl-eval"
_INSTALL_HINT = "install the data with `pip install --no-deps bfcl-eval`"

#: Agentic or non-entry files in ``data/`` that are not single-turn AST categories.
EXCLUDED_CATEGORIES = frozenset({"memory", "web_search", "format_sensitivity"})
_MULTI_TURN_PREFIX = "multi_turn_"
_FILE_RE = re.compile(r"^BFCL_v(\d+)_(.+)\.json$")

_OPENAI_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_OPENAI_NAME_MAX = 64

# BFCL type name (lower-cased) -> JSON Schema type. Covers the Python categories plus
# the Java/JavaScript class names BFCL uses; ``None`` means "any value" (no ``type``).
_TYPE_MAP: dict[str, str | None] = {
    "dict": "object",
    "object": "object",
    "hashmap": "object",
    "hashtable": "object",
    "map": "object",
    "float": "number",
    "double": "number",
    "number": "number",
    "integer": "integer",
    "int": "integer",
    "long": "integer",
    "short": "integer",
    "byte": "integer",
    "bigint": "integer",
    "string": "string",
    "str": "string",
    "char": "string",
    "character": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "arraylist": "array",
    "list": "array",
    "tuple": "array",
    "set": "array",
    "queue": "array",
    "stack": "array",
    "null": "null",
    "any": None,
}

# Keywords whose value is a single sub-schema / a list of sub-schemas / a name->schema map.
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions")


class BfclNotInstalledError(FileNotFoundError):
    """The ``bfcl-eval`` package (and so the BFCL data) is not installed."""


@dataclass
class BfclEntry:
    """One BFCL test entry with its tools converted to OpenAI format."""

    id: str
    category: str
    #: BFCL's messages: a list of turns, each a list of ``{"role", "content"}`` dicts.
    question: list[Any]
    #: Normalised OpenAI tools ``{"type": "function", "function": {...}}``.
    functions: list[dict[str, Any]]
    #: The BFCL function docs, untouched (dotted names, BFCL types).
    original_functions: list[dict[str, Any]]
    #: OpenAI tool name -> original BFCL function name, for every function.
    name_map: dict[str, str]
    #: BFCL ground truth ``[{func_name: {param: [acceptable values]}}]``; ``None`` when
    #: the category has no possible-answer file.
    possible_answer: list[dict[str, Any]] | None
    #: ``"<function>:<json path> <type>"`` for every BFCL type that had no JSON Schema
    #: equivalent and was therefore dropped.
    unknown_types: list[str] = field(default_factory=list)

    @property
    def language(self) -> str:
        """Language of the calls, as BFCL's checker needs it: python, java or javascript."""
        if self.category.endswith("_javascript"):
            return "javascript"
        if self.category.endswith("_java"):
            return "java"
        return "python"


def bfcl_data_dir() -> Path:
    """Return ``bfcl_eval/data`` of the installed package without importing it."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    raise BfclNotInstalledError(f"BFCL data not found: {_INSTALL_HINT}")


def bfcl_version() -> str:
    """Version of the installed ``bfcl-eval`` distribution."""
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BfclNotInstalledError(f"bfcl-eval is not installed: {_INSTALL_HINT}") from exc


def _category_files(directory: Path) -> dict[str, Path]:
    # If several dataset versions ever ship side by side, the newest wins.
    best: dict[str, tuple[int, Path]] = {}
    for path in directory.glob("BFCL_v*_*.json"):
        match = _FILE_RE.match(path.name)
        if match is None:
            continue
        version, category = int(match.group(1)), match.group(2)
        if category not in best or version > best[category][0]:
            best[category] = (version, path)
    return {category: path for category, (_, path) in best.items()}


def list_categories() -> list[str]:
    """Sorted single-turn AST categories present in the installed data."""
    return sorted(
        category
        for category in _category_files(bfcl_data_dir())
        if not category.startswith(_MULTI_TURN_PREFIX) and category not in EXCLUDED_CATEGORIES
    )


def category_file(category: str) -> Path:
    """Path of the entries file of ``category``."""
    files = _category_files(bfcl_data_dir())
    if category not in files:
        raise KeyError(f"unknown BFCL category {category!r}; known: {sorted(files)}")
    return files[category]


def possible_answer_file(category: str) -> Path | None:
    """Path of the possible-answer file of ``category``, or ``None`` if it has none."""
    return _category_files(bfcl_data_dir() / "possible_answer").get(category)


def openai_tool_name(name: str) -> str:
    """Map a BFCL function name to one matching ``^[a-zA-Z0-9_-]{1,64}$``.

    Same rule as BFCL's own handlers for OpenAI-style APIs (``.`` -> ``_``), extended to
    every other disallowed character.
    """
    mapped = _OPENAI_NAME_BAD.sub("_", name)[:_OPENAI_NAME_MAX]
    return mapped or "_"


def _map_type(bfcl_type: Any) -> tuple[bool, Any]:
    """Return ``(known, json_type)``; ``json_type`` is ``None`` for "any value"."""
    if isinstance(bfcl_type, str):
        key = bfcl_type.strip().lower()
        if key in _TYPE_MAP:
            return True, _TYPE_MAP[key]
        return False, None
    if isinstance(bfcl_type, list):
        mapped: list[str] = []
        for item in bfcl_type:
            known, json_type = _map_type(item)
            if not known or json_type is None:
                # One "any" member makes the union "any".
                return known, None
            if json_type not in mapped:
                mapped.append(json_type)
        return True, mapped[0] if len(mapped) == 1 else mapped
    return False, None


def _normalize_node(node: Any, path: str, unknown: list[str]) -> Any:
    if isinstance(node, bool):
        return node  # boolean schemas are valid JSON Schema
    if not isinstance(node, dict):
        # Not a schema (BFCL has none of these, but stay total): accept anything.
        return {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            known, json_type = _map_type(value)
            if not known:
                unknown.append(f"{path or '/'} {value!r}")
            if json_type is not None:
                out["type"] = json_type
        elif key in _SUBSCHEMA_MAP_KEYS:
            if isinstance(value, dict):
                out[key] = {
                    str(name): _normalize_node(sub, f"{path}/{key}/{name}", unknown)
                    for name, sub in value.items()
                }
        elif key in _SUBSCHEMA_LIST_KEYS:
            if isinstance(value, list):
                out[key] = [
                    _normalize_node(sub, f"{path}/{key}/{i}", unknown)
                    for i, sub in enumerate(value)
                ]
        elif key in _SUBSCHEMA_KEYS:
            if key == "items" and isinstance(value, list):
                # Draft-4 style tuple ``items`` is ``prefixItems`` in 2020-12.
                out["prefixItems"] = [
                    _normalize_node(sub, f"{path}/items/{i}", unknown)
                    for i, sub in enumerate(value)
                ]
            else:
                out[key] = _normalize_node(value, f"{path}/{key}", unknown)
        elif key == "required":
            # Only a list of names is valid; a boolean ``required`` inside a property
            # (seen in the wild) would fail check_schema.
            if isinstance(value, list):
                out[key] = list(dict.fromkeys(str(name) for name in value))
        elif key == "enum":
            if isinstance(value, list):
                out[key] = copy.deepcopy(value)
        else:
            # description, default, format, and non-standard annotations such as BFCL's
            # ``optional``: unknown keywords are valid JSON Schema, so keep them.
            out[key] = copy.deepcopy(value)
    return out


def normalize_bfcl_schema(schema: Any, unknown: list[str] | None = None) -> dict[str, Any]:
    """Turn a BFCL ``parameters`` schema into a JSON Schema (draft 2020-12) object schema.

    Unknown BFCL types are dropped and, if ``unknown`` is given, appended to it.
    """
    sink: list[str] = [] if unknown is None else unknown
    out = _normalize_node(schema if isinstance(schema, dict) else {}, "", sink)
    if not isinstance(out, dict):
        out = {}
    # Tool parameters are always an object; BFCL writes "dict" or occasionally omits it.
    out["type"] = "object"
    if not isinstance(out.get("properties"), dict):
        out["properties"] = {}
    return out


def normalize_bfcl_function(fn: dict[str, Any]) -> dict[str, Any]:
    """Convert one BFCL function doc to an OpenAI tool dict.

    The result is ``{"type": "function", "function": {"name", "description",
    "parameters"}}`` with the name passed through :func:`openai_tool_name` and the
    parameters through :func:`normalize_bfcl_schema`; ``fn`` is not modified.
    """
    # Already an OpenAI tool: normalise the inner function doc.
    if fn.get("type") == "function" and isinstance(fn.get("function"), dict):
        fn = fn["function"]
    return {
        "type": "function",
        "function": {
            "name": openai_tool_name(str(fn.get("name", ""))),
            "description": str(fn.get("description") or ""),
            "parameters": normalize_bfcl_schema(fn.get("parameters")),
        },
    }


def unknown_bfcl_types(fn: dict[str, Any]) -> list[str]:
    """BFCL types in ``fn`` that have no JSON Schema equivalent (``"<path> <type>"``)."""
    unknown: list[str] = []
    normalize_bfcl_schema(fn.get("parameters"), unknown)
    return unknown


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
    return rows


def _make_entry(
    row: dict[str, Any], category: str, answers: dict[str, list[dict[str, Any]]] | None
) -> BfclEntry:
    entry_id = str(row["id"])
    original = list(row.get("function") or [])
    tools: list[dict[str, Any]] = []
    name_map: dict[str, str] = {}
    unknown: list[str] = []
    for fn in original:
        tool = normalize_bfcl_function(fn)
        name = tool["function"]["name"]
        # Keep OpenAI names unique within an entry (``a.b`` and ``a_b`` would collide).
        base, suffix = name, 2
        while name in name_map:
            tail = f"_{suffix}"
            name = base[: _OPENAI_NAME_MAX - len(tail)] + tail
            suffix += 1
        tool["function"]["name"] = name
        name_map[name] = str(fn.get("name", ""))
        unknown.extend(f"{fn.get('name')}:{item}" for item in unknown_bfcl_types(fn))
        tools.append(tool)
    return BfclEntry(
        id=entry_id,
        category=category,
        question=row.get("question") or [],
        functions=tools,
        original_functions=original,
        name_map=name_map,
        possible_answer=None if answers is None else answers.get(entry_id),
        unknown_types=unknown,
    )


def load_category(cat: str) -> list[BfclEntry]:
    """Load every entry of one category, in file order."""
    if cat.startswith(_MULTI_TURN_PREFIX) or cat in EXCLUDED_CATEGORIES:
        raise ValueError(f"BFCL category {cat!r} is not a single-turn AST category")
    rows = _read_jsonl(category_file(cat))
    answer_path = possible_answer_file(cat)
    answers: dict[str, list[dict[str, Any]]] | None = None
    if answer_path is not None:
        answers = {str(r["id"]): list(r["ground_truth"]) for r in _read_jsonl(answer_path)}
    return [_make_entry(row, cat, answers) for row in rows]


def load_bfcl(categories: list[str] | None = None) -> list[BfclEntry]:
    """Load the given categories (default: all of :func:`list_categories`)."""
    cats = list_categories() if categories is None else list(categories)
    return [entry for cat in cats for entry in load_category(cat)]


def _first(values: list[Any]) -> Any:
    """First acceptable value that is not BFCL's "optional" marker ``""``."""
    return next(v for v in values if v != "")


def _has_value(values: list[Any]) -> bool:
    return any(v != "" for v in values)


def _render_value(value: Any) -> Any:
    # Dict ground truths are {key: [acceptable values]}; lists of them element-wise.
    if isinstance(value, dict):
        # (A few BFCL dict ground truths give a bare value instead of a list.)
        return {
            k: _render_value(_first(v)) if isinstance(v, list) else v
            for k, v in value.items()
            if not isinstance(v, list) or _has_value(v)
        }
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_render_value(v) for v in value]
    return value


def ground_truth_calls(
    possible_answer: list[dict[str, Any]], functions: list[dict[str, Any]], full: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """BFCL ground truth as `(name, arguments)` calls with the first acceptable values.

    `functions` are the entry's original BFCL docs (names as in the ground truth).
    ``full``: every parameter that has a non-``""`` value; otherwise parameters the ground
    truth marks optional (``""``) are left out unless the doc requires them.
    """
    docs = {f["name"]: f for f in functions}
    calls = []
    for item in possible_answer:
        ((name, params),) = item.items()
        required = docs[name]["parameters"].get("required", [])
        args = {}
        for param, values in params.items():
            optional = "" in values and param not in required
            if _has_value(values) and (full or not optional):
                args[param] = _render_value(_first(values))
        calls.append((name, args))
    return calls
