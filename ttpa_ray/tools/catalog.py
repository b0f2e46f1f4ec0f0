"""Tool catalogs: the built-in synthetic catalog, tool files, and BFCL function docs.

Every loader returns `(tools, quarantine)`: the valid tools as `ToolSpec`s, and one
`QuarantineRecord` per tool that could not be used, with the reason naming the tool and
the offending field. Nothing is dropped silently. `load_catalog` picks the loader a
source names (`builtin`, `bfcl` or a tools FILE); `catalog_tools` is what construction
and the tiny model use: its valid tools, or an error when there are none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ttpa_ray.atomic import write_json_atomic
from ttpa_ray.schema.io import StageCounts, read_rows, write_manifest, write_quarantine, write_rows
from ttpa_ray.schema.records import QuarantineRecord
from ttpa_ray.schema.tools import TOOL_SCHEMA, ToolSpec, ToolValidationError, validate_tool

STAGE = "tools"
# Catalog sources that name a built-in loader; any other source is a tools FILE.
NAMED_SOURCES = ("builtin", "bfcl")

log = logging.getLogger("ttpa_ray")


@dataclass
class Catalog:
    """Valid tools plus what was quarantined on the way in."""

    tools: list[ToolSpec] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    # Identical repeats of a definition (BFCL repeats the same docs across questions):
    # merged into one tool, counted here so the raw entry count is still accounted for.
    merged: int = 0
    # Other definitions under a name already taken, where the source allows it (BFCL:
    # each question carries its own docs, kept whole in `extra["entries"]`).
    variants: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        """Entries accounted for as kept or quarantined (raw entries minus merged repeats
        and variants, which are counted on their own)."""
        return len(self.tools) + len(self.quarantine)

    def openai(self) -> list[dict[str, Any]]:
        return [t.to_openai() for t in self.tools]

    def by_domain(self) -> dict[str, list[ToolSpec]]:
        out: dict[str, list[ToolSpec]] = {}
        for t in self.tools:
            out.setdefault(t.domain or "", []).append(t)
        return out


def _entry_parts(entry: Any) -> tuple[Any, Any, str | None]:
    """A file/catalog entry → (OpenAI tool, result schema, domain).

    Entries are either plain OpenAI tools, or `{"tool": {...}, "result_schema": {...},
    "domain": "..."}` as in the built-in catalog.
    """
    if isinstance(entry, dict) and "tool" in entry:
        return entry["tool"], entry.get("result_schema"), entry.get("domain")
    return entry, None, None


def catalog_from_entries(entries: list[Any], source: str, keep_first: bool = False) -> Catalog:
    """Validate entries one by one; valid ones become ToolSpecs, the rest quarantine.

    A second, different definition of a name is quarantined, unless `keep_first`: then
    the first definition is the catalog's and the others are counted as `variants`.
    """
    cat = Catalog()
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        tool, result_schema, domain = _entry_parts(entry)
        try:
            validate_tool(tool, result_schema)
            spec = ToolSpec.from_openai(
                tool, result_schema=result_schema, domain=domain, source=source
            )
            key = json.dumps(spec.to_openai(), sort_keys=True)
            if spec.name in seen:
                if seen[spec.name] == key:
                    cat.merged += 1
                    continue
                if keep_first:
                    cat.variants += 1
                    continue
                raise ToolValidationError(
                    spec.name, "function.name", "duplicate name with a different definition"
                )
            seen[spec.name] = key
            cat.tools.append(spec)
        except ToolValidationError as e:
            cat.quarantine.append(QuarantineRecord.of(STAGE, f"{source}[{i}]", str(e), entry))
    return cat


def load_builtin() -> Catalog:
    """The built-in synthetic catalog (every tool has a domain and a result schema)."""
    path = resources.files("ttpa_ray.tools").joinpath("data/builtin_catalog.json")
    return catalog_from_entries(json.loads(path.read_text()), source="builtin")


def read_tool_file(path: str | Path) -> list[Any]:
    """Raw entries of a tools file: `.json` (a list, or `{"tools": [...]}`), `.jsonl`,
    or `.parquet` (as written by `ttpa-ray tools import`). Raises ValueError if unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tools file {path} does not exist")
    if path.suffix == ".parquet" or path.is_dir():
        return [
            {"tool": spec.to_openai(), "result_schema": spec.result_schema, "domain": spec.domain}
            for spec in (ToolSpec.from_row(r) for r in read_rows(path))
        ]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, expected JSON") from None
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON (line {e.lineno}, col {e.colno}): {e.msg}"
        ) from None
    except RecursionError:
        # the parser recurses once per `[`/`{`: beyond Python's limit it cannot finish
        raise ValueError(f"{path}: JSON nested too deeply to read") from None
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of tools, got {type(data).__name__}")
    return data


def load_file(path: str | Path) -> Catalog:
    return catalog_from_entries(read_tool_file(path), source=Path(path).name)


def load_bfcl(categories: list[str] | None = None) -> Catalog:
    """Function docs of BFCL's non-multi-turn categories, deduplicated by name.

    The BFCL entries themselves (questions, possible answers, name maps) are kept in
    `catalog.extra["entries"]` for evaluation.
    """
    from ttpa_ray.tools import bfcl

    entries = bfcl.load_bfcl(categories)
    functions = [fn for e in entries for fn in e.functions]
    cat = catalog_from_entries(functions, source="bfcl", keep_first=True)
    for spec in cat.tools:
        spec.domain = "bfcl"
    cat.extra["entries"] = entries
    cat.extra["bfcl_version"] = bfcl.bfcl_version()
    return cat


def load_catalog(source: str, categories: list[str] | None = None) -> Catalog:
    """The catalog `source` names: `builtin`, `bfcl` (only `categories`, if given; other
    sources ignore them) or a tools FILE (FileNotFoundError / ValueError if unreadable)."""
    if source == "builtin":
        return load_builtin()
    if source == "bfcl":
        return load_bfcl(categories)
    return load_file(source)


@cache
def catalog_tools(source: str) -> tuple[ToolSpec, ...]:
    """The valid tools of `builtin`, `bfcl` or a tools file (cached per process: every
    construct batch and step asks again). Raises FileNotFoundError / ValueError (with the
    first invalid tool's reason when none is valid); skipped invalid tools are logged."""
    cat = load_catalog(source)
    if not cat.tools:
        why = (
            f": {len(cat.quarantine)} invalid, e.g. {cat.quarantine[0].reason}"
            if cat.quarantine
            else ""
        )
        raise ValueError(f"catalog {source!r} has no valid tools{why}")
    if cat.quarantine:
        log.warning("catalog %r: %d invalid tool(s) skipped", source, len(cat.quarantine))
    return tuple(cat.tools)


# BfclEntry fields stored as JSON strings in `bfcl_entries.parquet` (beside id, category).
BFCL_JSON_FIELDS = (
    "question",
    "functions",
    "original_functions",
    "name_map",
    "possible_answer",
    "unknown_types",
)


def write_catalog(
    cat: Catalog, out_dir: str | Path, config: dict[str, Any] | None = None
) -> StageCounts:
    """Write `tools.parquet`, `tools.json` (OpenAI list), `quarantine.parquet`, `manifest.json`
    (and `bfcl_entries.parquet` when the catalog came from BFCL)."""
    import pyarrow as pa

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "tools.parquet", (t.to_row() for t in cat.tools), TOOL_SCHEMA)
    write_json_atomic(out / "tools.json", cat.openai(), indent=2, ensure_ascii=False)
    write_quarantine(out / "quarantine.parquet", cat.quarantine)
    extra: dict[str, Any] = {"identical_repeats_merged": cat.merged, "name_variants": cat.variants}
    if "entries" in cat.extra:
        rows = [
            {
                "id": e.id,
                "category": e.category,
                **{k: json.dumps(getattr(e, k), ensure_ascii=False) for k in BFCL_JSON_FIELDS},
            }
            for e in cat.extra["entries"]
        ]
        schema = pa.schema([(c, pa.string()) for c in ("id", "category", *BFCL_JSON_FIELDS)])
        write_rows(out / "bfcl_entries.parquet", rows, schema)
        extra |= {"bfcl_version": cat.extra.get("bfcl_version"), "bfcl_entries": len(rows)}
    counts = StageCounts(STAGE, cat.rows_in, len(cat.tools), len(cat.quarantine)).check()
    write_manifest(out, [counts], config=config, extra=extra)
    return counts
