"""Catalog loading, import and validation: the valid rest is kept, the invalid quarantined."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter

import pytest

from ttpa_ray.schema.io import read_rows
from ttpa_ray.schema.validate import argument_errors
from ttpa_ray.tools.catalog import (
    catalog_tools,
    load_bfcl,
    load_builtin,
    load_catalog,
    load_file,
    write_catalog,
)

GOOD = {
    "type": "function",
    "function": {
        "name": "ping_host",
        "description": "Ping a host.",
        "parameters": {
            "type": "object",
            "properties": {"host": {"type": "string"}},
            "required": ["host"],
        },
    },
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ttpa_ray.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_builtin_catalog_validates_with_our_validator():
    cat = load_builtin()
    assert cat.quarantine == []
    assert len(cat.tools) >= 60
    domains = Counter(t.domain for t in cat.tools)
    assert len(domains) >= 8 and min(domains.values()) >= 5
    assert all(t.result_schema and t.result_schema["type"] == "object" for t in cat.tools)
    assert len({t.name for t in cat.tools}) == len(cat.tools)


def test_builtin_defaults_and_enums_validate_as_arguments():
    # Every enum value and default, used as an argument, passes the tool's own schema.
    checked = 0
    for spec in load_builtin().tools:
        props = spec.parameters.get("properties", {})
        base = {r: None for r in spec.required}
        for name, sub in props.items():
            for value in [*sub.get("enum", []), *([sub["default"]] if "default" in sub else [])]:
                errors = argument_errors({name: value}, {"type": "object", "properties": props})
                assert errors == [], (spec.name, name, value, errors)
                checked += 1
        assert set(base) <= set(props)
    assert checked > 100


def test_broken_tool_is_quarantined_and_the_rest_imports(tmp_path):
    broken_required = json.loads(json.dumps(GOOD))
    broken_required["function"]["name"] = "broken_required"
    broken_required["function"]["parameters"]["required"] = ["hostname"]
    bad_type = json.loads(json.dumps(GOOD))
    bad_type["function"]["name"] = "bad_type"
    bad_type["function"]["parameters"]["properties"]["host"]["type"] = "text"
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": [GOOD, broken_required, bad_type, "not a tool"]}))
    cat = load_file(path)
    assert [t.name for t in cat.tools] == ["ping_host"]
    reasons = [q.reason for q in cat.quarantine]
    assert "tool 'broken_required': field 'function.parameters.required'" in reasons[0]
    assert "'hostname' is not in properties" in reasons[0]
    assert "tool 'bad_type': field 'function.parameters" in reasons[1]
    assert "field '<root>'" in reasons[2]
    counts = write_catalog(cat, tmp_path / "out")
    assert (counts.rows_in, counts.rows_out, counts.rows_quarantined) == (4, 1, 3)
    q = read_rows(tmp_path / "out" / "quarantine.parquet")
    assert [json.loads(r["raw"]) for r in q][2] == "not a tool"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"][0]["rows_in"] == 4


def test_conflicting_duplicate_is_quarantined_but_identical_repeat_merged(tmp_path):
    other = json.loads(json.dumps(GOOD))
    other["function"]["description"] = "Different."
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in (GOOD, GOOD, other)))
    cat = load_file(path)
    assert len(cat.tools) == 1 and cat.merged == 1
    assert "duplicate name with a different definition" in cat.quarantine[0].reason


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "function",')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_file(bad)


def test_bfcl_catalog_keeps_entries_and_every_definition():
    from ttpa_ray.tools import bfcl

    cat = load_bfcl()
    entries = cat.extra["entries"]
    n_functions = sum(len(e.functions) for e in entries)
    assert n_functions == len(cat.tools) + len(cat.quarantine) + cat.merged + cat.variants
    per_cat = Counter(e.category for e in entries)
    for category in bfcl.list_categories():
        lines = [x for x in bfcl.category_file(category).read_text().splitlines() if x.strip()]
        assert per_cat[category] == len(lines)
    assert all(t.domain == "bfcl" for t in cat.tools)


def test_load_catalog_picks_the_loader_its_source_names(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([GOOD]))
    assert [t.name for t in load_catalog(str(path)).tools] == ["ping_host"]
    assert load_catalog("builtin").openai() == load_builtin().openai()
    simple = load_catalog("bfcl", ["simple_python"])
    assert {e.category for e in simple.extra["entries"]} == {"simple_python"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_catalog(str(tmp_path / "missing.json"))


def test_catalog_tools_keeps_the_valid_tools_and_refuses_an_empty_catalog(tmp_path, caplog):
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([GOOD, "not a tool"]))
    with caplog.at_level(logging.WARNING, logger="ttpa_ray"):
        tools = catalog_tools(str(mixed))
    assert [t.name for t in tools] == ["ping_host"]
    assert "1 invalid tool(s) skipped" in caplog.text
    assert catalog_tools(str(mixed)) is tools  # loaded once per process
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["not a tool"]))
    with pytest.raises(ValueError, match=r"has no valid tools: 1 invalid, e\.g\. .*'<root>'"):
        catalog_tools(str(bad))


@pytest.mark.e2e
def test_tools_cli(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([GOOD]))
    out = cli("tools", "validate", str(good))
    assert out.returncode == 0 and "1 valid, 0 invalid" in out.stdout
    bad = tmp_path / "bad.json"
    broken = json.loads(json.dumps(GOOD))
    broken["function"]["parameters"]["required"] = ["nope"]
    bad.write_text(json.dumps([GOOD, broken]))
    out = cli("tools", "validate", str(bad), "--quarantine", str(tmp_path / "q.parquet"))
    assert out.returncode == 1
    assert "tool 'ping_host': field 'function.parameters.required'" in out.stdout
    assert len(read_rows(tmp_path / "q.parquet")) == 1
    assert cli("tools", "validate", str(tmp_path / "nope.json")).returncode == 2

    out = cli("tools", "import", "--from", "builtin", "--out", str(tmp_path / "builtin"))
    assert out.returncode == 0, out.stderr
    rows = read_rows(tmp_path / "builtin" / "tools.parquet")
    assert len(rows) == len(load_builtin().tools)
    assert json.loads((tmp_path / "builtin" / "tools.json").read_text())[0]["type"] == "function"
    out = cli(
        "tools",
        "import",
        "--from",
        "bfcl",
        "--categories",
        "simple_python,multiple",
        "--out",
        str(tmp_path / "bfcl"),
    )
    assert out.returncode == 0, out.stderr
    entries = read_rows(tmp_path / "bfcl" / "bfcl_entries.parquet")
    assert len(entries) == 600 and json.loads(entries[0]["possible_answer"])
    out = cli("tools", "import", "--from", str(bad), "--out", str(tmp_path / "file"))
    assert out.returncode == 0 and "1 quarantined" in out.stdout
