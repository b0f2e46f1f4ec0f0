"""BFCL import: counts against the package's own files, type normalisation, names."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from ttpa_ray.tools import bfcl
from ttpa_ray.tools.bfcl import (
    BfclNotInstalledError,
    bfcl_data_dir,
    bfcl_version,
    category_file,
    list_categories,
    load_bfcl,
    load_category,
    normalize_bfcl_function,
    normalize_bfcl_schema,
    openai_tool_name,
    possible_answer_file,
    unknown_bfcl_types,
)

HAS_BFCL = importlib.util.find_spec("bfcl_eval") is not None
needs_bfcl = pytest.mark.skipif(not HAS_BFCL, reason="bfcl-eval not installed")

OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CORE_CATEGORIES = {
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
}
NO_ANSWER_CATEGORIES = {"irrelevance", "live_irrelevance", "live_relevance"}


def _categories() -> list[str]:
    return list_categories() if HAS_BFCL else []


def _jsonl_ids(path: Path) -> list[str]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line)["id"] for line in lines]


def _fn(parameters: dict, name: str = "f") -> dict:
    return {"name": name, "description": "d", "parameters": parameters}


# ------------------------------------------------------------------ installation


@needs_bfcl
def test_data_dir_and_version() -> None:
    data = bfcl_data_dir()
    assert data.name == "data" and data.parent.name == "bfcl_eval"
    assert (data / "possible_answer").is_dir()
    assert re.match(r"^\d{4}\.\d+\.\d+", bfcl_version())


@needs_bfcl
def test_loading_never_imports_bfcl_eval() -> None:
    # In a fresh interpreter: importing bfcl_eval would pull its missing dependencies.
    code = (
        "import sys; from ttpa_ray.tools.bfcl import load_category, list_categories;"
        "list_categories(); load_category('simple_python');"
        "assert 'bfcl_eval' not in sys.modules, 'bfcl_eval was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bfcl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BfclNotInstalledError, match=r"pip install --no-deps bfcl-eval"):
        bfcl_data_dir()
    with pytest.raises(FileNotFoundError):  # the class is a FileNotFoundError
        list_categories()


def test_missing_distribution_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise bfcl.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(bfcl.importlib.metadata, "version", missing)
    with pytest.raises(BfclNotInstalledError, match="pip install --no-deps bfcl-eval"):
        bfcl_version()


# -------------------------------------------------------------------- categories


@needs_bfcl
def test_categories_are_the_single_turn_ones() -> None:
    cats = list_categories()
    assert cats == sorted(cats)
    assert set(cats) >= CORE_CATEGORIES
    assert not [c for c in cats if c.startswith("multi_turn")]
    assert not {"memory", "web_search", "format_sensitivity"} & set(cats)
    with pytest.raises(ValueError, match="not a single-turn"):
        load_category("multi_turn_base")
    with pytest.raises(KeyError):
        load_category("no_such_category")


@needs_bfcl
@pytest.mark.parametrize("category", _categories())
def test_category_counts_match_package_files(category: str) -> None:
    entries = load_category(category)
    ids = _jsonl_ids(category_file(category))
    assert len(entries) == len(ids) > 0
    assert [e.id for e in entries] == ids
    assert {e.category for e in entries} == {category}

    answer_path = possible_answer_file(category)
    with_answer = [e for e in entries if e.possible_answer is not None]
    if answer_path is None:
        assert category in NO_ANSWER_CATEGORIES
        assert with_answer == []
    else:
        answer_ids = _jsonl_ids(answer_path)
        assert len(with_answer) == len(answer_ids)
        assert {e.id for e in with_answer} == set(answer_ids)
        for entry in with_answer:
            assert isinstance(entry.possible_answer, list) and entry.possible_answer
            assert all(len(call) == 1 for call in entry.possible_answer)

    for entry in entries:
        assert len(entry.functions) == len(entry.original_functions)
        # Only live_irrelevance has entries with no tools at all.
        assert entry.functions or category == "live_irrelevance"
        assert entry.question and isinstance(entry.question[0], list)
        assert set(entry.name_map) == {t["function"]["name"] for t in entry.functions}
        assert sorted(entry.name_map.values()) == sorted(
            f["name"] for f in entry.original_functions
        )


@needs_bfcl
def test_load_bfcl_concatenates_categories() -> None:
    two = load_bfcl(["parallel", "simple_python"])
    assert [e.category for e in two] == ["parallel"] * 200 + ["simple_python"] * 400
    assert len(load_bfcl()) == sum(len(_jsonl_ids(category_file(c))) for c in list_categories())


@needs_bfcl
def test_every_normalised_schema_is_valid_json_schema() -> None:
    seen: set[str] = set()
    checked = 0
    for entry in load_bfcl():
        for tool in entry.functions:
            assert tool["type"] == "function"
            assert set(tool["function"]) == {"name", "description", "parameters"}
            assert OPENAI_NAME.match(tool["function"]["name"])
            params = tool["function"]["parameters"]
            assert params["type"] == "object" and isinstance(params["properties"], dict)
            key = json.dumps(params, sort_keys=True)
            if key not in seen:  # thousands of docs repeat; check each distinct one once
                seen.add(key)
                jsonschema.Draft202012Validator.check_schema(params)
                checked += 1
            # No BFCL-only type name survives anywhere in the tree.
            assert not re.search(r'"type": "(dict|float|tuple|any|String|HashMap)"', key)
    assert checked > 1000


@needs_bfcl
def test_language_and_unknown_types() -> None:
    assert {e.language for e in load_category("simple_java")} == {"java"}
    assert {e.language for e in load_category("simple_javascript")} == {"javascript"}
    assert {e.language for e in load_category("live_simple")} == {"python"}
    # BFCL ships one JavaScript property with an empty type string.
    js = {e.id: e for e in load_category("simple_javascript")}
    assert js["simple_javascript_23"].unknown_types == [
        "createAuthToken:/properties/options/properties/issuer ''"
    ]
    issuer = js["simple_javascript_23"].functions[0]["function"]["parameters"]
    assert "type" not in issuer["properties"]["options"]["properties"]["issuer"]


# ------------------------------------------------------------------ normalisation


def test_normalise_bfcl_types() -> None:
    fn = _fn(
        {
            "type": "dict",
            "properties": {
                "base": {"type": "integer", "description": "b"},
                "ratio": {"type": "float", "default": 0.5},
                "point": {"type": "tuple", "items": {"type": "float"}},
                "payload": {"type": "any"},
                "unit": {"type": "string", "enum": ["cm", "in"]},
                "flag": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["base"],
        }
    )
    params = normalize_bfcl_function(fn)["function"]["parameters"]
    props = params["properties"]
    assert params["type"] == "object" and params["required"] == ["base"]
    assert props["base"] == {"type": "integer", "description": "b"}
    assert props["ratio"] == {"type": "number", "default": 0.5}
    assert props["point"] == {"type": "array", "items": {"type": "number"}}
    assert props["payload"] == {}
    assert props["unit"] == {"type": "string", "enum": ["cm", "in"]}
    assert props["flag"] == {"type": "boolean"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert fn["parameters"]["type"] == "dict", "input must not be modified"


def test_normalise_nested_and_property_names_that_look_like_keywords() -> None:
    schema = {
        "type": "dict",
        "properties": {
            # Property names "type" and "items" must not be read as keywords.
            "type": {"type": "string"},
            "items": {
                "type": "array",
                "items": {
                    "type": "dict",
                    "properties": {
                        "price": {"type": "float"},
                        "dims": {"type": "tuple", "items": {"type": "integer"}},
                        "meta": {"type": "dict", "properties": {"x": {"type": "any"}}},
                    },
                    "required": ["price"],
                },
            },
        },
    }
    out = normalize_bfcl_schema(schema)
    assert out["properties"]["type"] == {"type": "string"}
    item = out["properties"]["items"]["items"]
    assert item["type"] == "object" and item["required"] == ["price"]
    assert item["properties"]["price"] == {"type": "number"}
    assert item["properties"]["dims"] == {"type": "array", "items": {"type": "integer"}}
    assert item["properties"]["meta"] == {"type": "object", "properties": {"x": {}}}
    jsonschema.Draft202012Validator.check_schema(out)
    validator = jsonschema.Draft202012Validator(out)
    assert validator.is_valid({"type": "a", "items": [{"price": 1.5, "dims": [1, 2]}]})
    assert not validator.is_valid({"items": [{"price": "cheap"}]})


@pytest.mark.parametrize(
    ("bfcl_type", "json_type"),
    [
        ("String", "string"),
        ("char", "string"),
        ("int", "integer"),
        ("long", "integer"),
        ("short", "integer"),
        ("Bigint", "integer"),
        ("double", "number"),
        ("float", "number"),
        ("Boolean", "boolean"),
        ("ArrayList", "array"),
        ("Array", "array"),
        ("list", "array"),
        ("HashMap", "object"),
        ("Map", "object"),
        ("Hashtable", "object"),
    ],
)
def test_normalise_java_and_javascript_types(bfcl_type: str, json_type: str) -> None:
    out = normalize_bfcl_schema({"type": "dict", "properties": {"p": {"type": bfcl_type}}})
    assert out["properties"]["p"] == {"type": json_type}


def test_unknown_types_are_dropped_and_reported() -> None:
    fn = _fn({"type": "dict", "properties": {"a": {"type": "Widget"}, "b": {"type": ""}}})
    assert normalize_bfcl_function(fn)["function"]["parameters"]["properties"] == {
        "a": {},
        "b": {},
    }
    assert unknown_bfcl_types(fn) == ["/properties/a 'Widget'", "/properties/b ''"]
    assert unknown_bfcl_types(_fn({"type": "dict", "properties": {"a": {"type": "any"}}})) == []


def test_parameters_repaired_into_an_object_schema() -> None:
    missing = normalize_bfcl_function({"name": "f", "description": "d"})
    assert missing["function"]["parameters"] == {"type": "object", "properties": {}}
    untyped = normalize_bfcl_schema({"properties": {"x": {"type": "integer"}}})
    assert untyped == {"type": "object", "properties": {"x": {"type": "integer"}}}
    # Shapes that would fail check_schema are repaired: a boolean ``required`` inside a
    # property, tuple-style ``items``, duplicate required names.
    odd = normalize_bfcl_schema(
        {
            "type": "dict",
            "properties": {
                "a": {"type": "string", "required": True},
                "b": {"type": "tuple", "items": [{"type": "integer"}, {"type": "float"}]},
            },
            "required": ["a", "a"],
            "optional": True,  # BFCL's non-standard annotation is harmless: kept
        }
    )
    assert odd["properties"]["a"] == {"type": "string"}
    assert odd["properties"]["b"] == {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "number"}],
    }
    assert odd["required"] == ["a"] and odd["optional"] is True
    jsonschema.Draft202012Validator.check_schema(odd)


def test_openai_tool_is_renormalised_idempotently() -> None:
    tool = normalize_bfcl_function(_fn({"type": "dict", "properties": {"x": {"type": "float"}}}))
    assert normalize_bfcl_function(tool) == tool


# ------------------------------------------------------------------------ names


def test_openai_tool_name_mapping() -> None:
    assert openai_tool_name("math.factorial") == "math_factorial"
    assert openai_tool_name("a.b.c-d_e") == "a_b_c-d_e"
    assert openai_tool_name("weird name/!") == "weird_name__"
    assert openai_tool_name("x" * 80) == "x" * 64
    assert OPENAI_NAME.match(openai_tool_name(""))


@needs_bfcl
def test_dotted_names_are_mapped_and_kept() -> None:
    entry = {e.id: e for e in load_category("simple_python")}["simple_python_1"]
    assert entry.original_functions[0]["name"] == "math.factorial"
    assert entry.functions[0]["function"]["name"] == "math_factorial"
    assert entry.name_map == {"math_factorial": "math.factorial"}
    assert list(entry.possible_answer[0]) == ["math.factorial"]  # type: ignore[index]
    dotted = [
        e
        for e in load_bfcl(["simple_python", "multiple", "parallel_multiple"])
        if any("." in f["name"] for f in e.original_functions)
    ]
    assert len(dotted) > 100
    for e in dotted:
        for openai_name, original in e.name_map.items():
            assert openai_name == openai_tool_name(original)


def test_name_collisions_within_an_entry_get_suffixes() -> None:
    row = {
        "id": "x_0",
        "question": [[{"role": "user", "content": "hi"}]],
        "function": [_fn({"type": "dict", "properties": {}}, n) for n in ("a.b", "a_b")],
    }
    entry = bfcl._make_entry(row, "simple_python", None)
    assert entry.name_map == {"a_b": "a.b", "a_b_2": "a_b"}
    assert entry.possible_answer is None
