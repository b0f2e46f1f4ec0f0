"""Checks on the built-in synthetic tool catalog data file (ttpa_ray/tools/data).

These test the JSON data itself, independently of the loader: shape, JSON Schema
validity, coverage of schema features, and that tools chain (ids one tool returns are
arguments another tool takes).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import ttpa_ray

CATALOG_PATH = Path(ttpa_ray.__file__).parent / "tools" / "data" / "builtin_catalog.json"
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SNAKE_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

MIN_TOOLS = 64
MIN_DOMAINS = 10
MIN_PER_DOMAIN = 5
MAX_PER_DOMAIN = 10


@pytest.fixture(scope="module")
def raw_text() -> str:
    return CATALOG_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def entries(raw_text: str) -> list[dict[str, Any]]:
    data = json.loads(raw_text)
    assert isinstance(data, list)
    return data


def _fn(entry: dict[str, Any]) -> dict[str, Any]:
    return entry["tool"]["function"]


def _params(entry: dict[str, Any]) -> dict[str, Any]:
    return _fn(entry)["parameters"]


def _walk(schema: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (sub)schema reachable through properties / items, with a readable path."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


def _param_schemas(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """All parameter subschemas below the top-level object (nested ones included)."""
    return [s for p, s in _walk(_params(entry)) if p != "$"]


def _leaf_names(schema: Any) -> set[str]:
    """Names of all properties at any depth (through nested objects and arrays)."""
    names: set[str] = set()
    for path, _ in _walk(schema):
        if path != "$" and not path.endswith("[]"):
            names.add(path.rsplit(".", 1)[-1].rstrip("[]"))
    return names


def _count_tools(entries: list[dict[str, Any]], pred) -> int:
    return sum(1 for e in entries if any(pred(s) for s in _param_schemas(e)))


# ---------------------------------------------------------------- file & shape


def test_file_is_pretty_printed_and_deterministic(raw_text: str, entries: list[dict[str, Any]]):
    assert raw_text == json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def test_entry_shape(entries: list[dict[str, Any]]):
    for e in entries:
        assert set(e) == {"domain", "tool", "result_schema"}, e.keys()
        assert isinstance(e["domain"], str) and SNAKE_RE.match(e["domain"]), e["domain"]
        assert e["tool"]["type"] == "function"
        assert set(e["tool"]) == {"type", "function"}
        fn = _fn(e)
        assert set(fn) == {"name", "description", "parameters"}, fn["name"]
        desc = fn["description"]
        assert isinstance(desc, str) and 20 <= len(desc) <= 300, fn["name"]
        assert desc[0].isupper() and desc.endswith("."), fn["name"]


def test_counts_and_domains(entries: list[dict[str, Any]]):
    assert len(entries) >= MIN_TOOLS
    per_domain = Counter(e["domain"] for e in entries)
    assert len(per_domain) >= MIN_DOMAINS, per_domain
    for domain, n in per_domain.items():
        assert MIN_PER_DOMAIN <= n <= MAX_PER_DOMAIN, (domain, n)
    for required_domain in (
        "weather",
        "travel",
        "finance",
        "calendar",
        "maps",
        "messaging",
        "shopping",
        "math_units",
    ):
        assert required_domain in per_domain, required_domain


def test_names_unique_and_valid(entries: list[dict[str, Any]]):
    names = [_fn(e)["name"] for e in entries]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    assert not dupes, dupes
    for n in names:
        assert NAME_RE.match(n) and SNAKE_RE.match(n), n


# ---------------------------------------------------------------- JSON Schema validity


@pytest.mark.parametrize("which", ["parameters", "result_schema"])
def test_schemas_are_valid_draft_2020_12(entries: list[dict[str, Any]], which: str):
    for e in entries:
        schema = _params(e) if which == "parameters" else e["result_schema"]
        name = _fn(e)["name"]
        assert isinstance(schema, dict), name
        assert schema.get("type") == "object", name
        assert isinstance(schema.get("properties"), dict) and schema["properties"], name
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("which", ["parameters", "result_schema"])
def test_required_subset_of_properties_recursively(entries: list[dict[str, Any]], which: str):
    for e in entries:
        schema = _params(e) if which == "parameters" else e["result_schema"]
        for path, sub in _walk(schema):
            req = sub.get("required", [])
            props = sub.get("properties", {})
            assert len(req) == len(set(req)), (_fn(e)["name"], path)
            missing = set(req) - set(props)
            assert not missing, (_fn(e)["name"], path, missing)
            if sub.get("type") == "object" and path != "$":
                assert props, (_fn(e)["name"], path, "nested object without properties")


@pytest.mark.parametrize("which", ["parameters", "result_schema"])
def test_every_subschema_is_typed_and_concrete(entries: list[dict[str, Any]], which: str):
    """The result simulator samples from these: every node needs a type, arrays need items."""
    allowed = {"object", "array", "string", "integer", "number", "boolean"}
    for e in entries:
        schema = _params(e) if which == "parameters" else e["result_schema"]
        for path, sub in _walk(schema):
            assert sub.get("type") in allowed, (_fn(e)["name"], path)
            if sub["type"] == "array":
                assert isinstance(sub.get("items"), dict), (_fn(e)["name"], path)
            if "minimum" in sub and "maximum" in sub:
                assert sub["minimum"] <= sub["maximum"], (_fn(e)["name"], path)
            if "minItems" in sub and "maxItems" in sub:
                assert sub["minItems"] <= sub["maxItems"], (_fn(e)["name"], path)
            if "enum" in sub:
                assert sub["enum"] and len(sub["enum"]) == len(set(sub["enum"])), (
                    _fn(e)["name"],
                    path,
                )


def test_defaults_validate_against_their_schema(entries: list[dict[str, Any]]):
    n_defaults = 0
    for e in entries:
        for path, sub in _walk(_params(e)):
            bare = {k: v for k, v in sub.items() if k not in ("default", "description")}
            validator = jsonschema.Draft202012Validator(bare)
            if "default" in sub:
                n_defaults += 1
                assert validator.is_valid(sub["default"]), (_fn(e)["name"], path, sub["default"])
    assert n_defaults >= 20


def test_every_parameter_is_described(entries: list[dict[str, Any]]):
    for e in entries:
        for path, sub in _walk(_params(e)):
            if path == "$" or path.endswith("[]"):
                continue  # the top-level object and array item schemas need no description
            desc = sub.get("description")
            assert isinstance(desc, str) and len(desc) >= 3, (_fn(e)["name"], path)


# ---------------------------------------------------------------- required / optional mix


def test_required_and_optional_params(entries: list[dict[str, Any]]):
    n_with_optional = 0
    n_no_optional = 0
    n_many_params = 0
    for e in entries:
        p = _params(e)
        req = p.get("required", [])
        assert len(req) >= 1, _fn(e)["name"]
        optional = set(p["properties"]) - set(req)
        n_with_optional += bool(optional)
        n_no_optional += not optional
        n_many_params += 5 <= len(p["properties"]) <= 8
        assert len(p["properties"]) <= 8, _fn(e)["name"]
    assert n_with_optional >= 0.6 * len(entries)
    assert n_no_optional >= 3
    assert n_many_params >= 5


# ---------------------------------------------------------------- feature coverage


def test_feature_coverage(entries: list[dict[str, Any]]):
    def has_range(s: dict[str, Any]) -> bool:
        return s.get("type") in ("integer", "number") and ("minimum" in s or "maximum" in s)

    coverage = {
        "enum": _count_tools(entries, lambda s: "enum" in s),
        "range": _count_tools(entries, has_range),
        "integer": _count_tools(entries, lambda s: s.get("type") == "integer"),
        "number": _count_tools(entries, lambda s: s.get("type") == "number"),
        "boolean": _count_tools(entries, lambda s: s.get("type") == "boolean"),
        "array": _count_tools(entries, lambda s: s.get("type") == "array"),
        "array_of_objects": _count_tools(
            entries,
            lambda s: s.get("type") == "array" and s["items"].get("type") == "object",
        ),
        "nested_object": _count_tools(entries, lambda s: s.get("type") == "object"),
        "format": _count_tools(entries, lambda s: "format" in s),
        "pattern": _count_tools(entries, lambda s: "pattern" in s),
        "default": _count_tools(entries, lambda s: "default" in s),
    }
    floors = {
        "enum": 30,
        "range": 30,
        "integer": 20,
        "number": 10,
        "boolean": 10,
        "array": 15,
        "array_of_objects": 5,
        "nested_object": 8,
        "format": 25,
        "pattern": 10,
        "default": 25,
    }
    low = {k: (coverage[k], floor) for k, floor in floors.items() if coverage[k] < floor}
    assert not low, low

    formats = {s["format"] for e in entries for s in _param_schemas(e) if "format" in s} | {
        s["format"] for e in entries for _, s in _walk(e["result_schema"]) if "format" in s
    }
    assert {"date", "date-time", "email", "time", "uri"} <= formats, formats

    patterns = {s["pattern"] for e in entries for s in _param_schemas(e) if "pattern" in s}
    assert "^[A-Z]{3}$" in patterns  # IATA airport / ISO currency codes


def test_nested_objects_have_own_required(entries: list[dict[str, Any]]):
    nested = [
        (_fn(e)["name"], s) for e in entries for s in _param_schemas(e) if s.get("type") == "object"
    ]
    with_required = [n for n, s in nested if s.get("required")]
    assert len(set(with_required)) >= 8


def test_result_schemas_are_concrete(entries: list[dict[str, Any]]):
    """Results carry enough constraints for seeded simulation."""
    constrained = 0
    total = 0
    for e in entries:
        rs = e["result_schema"]
        assert rs.get("required"), _fn(e)["name"]
        for path, sub in _walk(rs):
            if sub["type"] in ("string", "integer", "number"):
                total += 1
                constrained += any(k in sub for k in ("enum", "format", "pattern", "minimum"))
            if sub["type"] == "array":
                assert "minItems" in sub and "maxItems" in sub, (_fn(e)["name"], path)
    assert constrained >= 0.7 * total, (constrained, total)


# ---------------------------------------------------------------- chaining


def test_result_ids_feed_later_calls(entries: list[dict[str, Any]]):
    """Ids/coordinates a tool returns are parameter names of other tools in its domain."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_domain.setdefault(e["domain"], []).append(e)

    # Calculators are stateless: their results feed later calls by value, not by name.
    stateless = {"math_units"}
    assert stateless < set(by_domain)
    chained_tools = 0
    for domain, tools in by_domain.items():
        domain_links = 0
        for consumer in tools:
            params = set(_params(consumer)["properties"])
            for producer in tools:
                if producer is consumer:
                    continue
                produced = _leaf_names(producer["result_schema"])
                shared = {p for p in params & produced if p.endswith("_id") or p in ("lat", "lon")}
                if shared:
                    domain_links += 1
                    chained_tools += 1
                    break
        if domain not in stateless:
            assert domain_links >= 1, f"no tool in {domain!r} consumes another's result"
    assert chained_tools >= 0.4 * len(entries), chained_tools


@pytest.mark.parametrize(
    "producer,field,consumer",
    [
        ("search_flights", "flight_id", "book_flight"),
        ("book_flight", "booking_id", "cancel_booking"),
        ("search_hotels", "hotel_id", "book_hotel"),
        ("geocode_address", "lat", "find_nearby_places"),
        ("find_nearby_places", "place_id", "get_place_details"),
        ("search_products", "product_id", "add_to_cart"),
        ("add_to_cart", "cart_id", "checkout"),
        ("checkout", "order_id", "track_order"),
        ("create_event", "event_id", "update_event"),
        ("list_devices", "device_id", "set_thermostat"),
    ],
)
def test_known_chains(entries: list[dict[str, Any]], producer: str, field: str, consumer: str):
    by_name = {_fn(e)["name"]: e for e in entries}
    assert field in _leaf_names(by_name[producer]["result_schema"])
    assert field in _params(by_name[consumer])["properties"]
