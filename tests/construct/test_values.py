"""ValueSampler and the regex generator: every built-in schema validates, values look real."""

from __future__ import annotations

import random
import re

import jsonschema
import pytest

from ttpa_ray.construct import wordlists as W
from ttpa_ray.construct.regex_gen import UnsupportedPattern, generate, sample_pattern
from ttpa_ray.construct.values import ValueSampler
from ttpa_ray.tools.catalog import load_builtin

# jsonschema checks date-time/time/uri only with optional packages: check them here.
STRICT = jsonschema.FormatChecker()
STRICT.checks("date-time")(
    lambda s: (
        not isinstance(s, str)
        or bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", s))
    )
)
STRICT.checks("time")(
    lambda s: (
        not isinstance(s, str) or bool(re.fullmatch(r"\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", s))
    )
)
STRICT.checks("uri")(
    lambda s: not isinstance(s, str) or bool(re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", s))
)


def errors(value, schema):
    return [
        e.message
        for e in jsonschema.Draft202012Validator(schema, format_checker=STRICT).iter_errors(value)
    ]


TOOLS = load_builtin().tools


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_every_builtin_schema_validates(tool):
    s = ValueSampler(random.Random(tool.name))
    for _ in range(50):
        for schema in (tool.parameters, tool.result_schema):
            value = s.sample(schema)
            assert errors(value, schema) == [], (tool.name, value)


def _patterns():
    found: set[str] = set()

    def walk(s):
        if isinstance(s, dict):
            if isinstance(s.get("pattern"), str):
                found.add(s["pattern"])
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)

    for t in TOOLS:
        walk(t.parameters)
        walk(t.result_schema)
    return sorted(found)


@pytest.mark.parametrize(
    "pattern",
    _patterns()
    + [r"^(foo|ba[rz])-\d{2,3}$", r"^a?b+c*$", r"^v\d+\.\d+(\.\d+)?$", r"^(?:x|y){3}$", r"AB"],
)
def test_regex_generator_matches(pattern):
    rng = random.Random(0)
    for _ in range(30):
        assert re.search(pattern, generate(pattern, rng)), pattern


def test_regex_generator_covers_alternatives_and_bounds():
    rng = random.Random(1)
    outs = {generate(r"^(cat|dog)$", rng) for _ in range(50)}
    assert outs == {"cat", "dog"}
    lengths = {len(generate(r"^[A-Z]{2,4}$", rng)) for _ in range(100)}
    assert lengths == {2, 3, 4}


def test_unsupported_patterns_fall_back_or_raise():
    with pytest.raises(UnsupportedPattern):
        generate(r"^(?=a)a$", random.Random(0))
    assert sample_pattern(r"(?=a)a", random.Random(0))  # rejection sampling finds one
    with pytest.raises(ValueError, match="cannot generate"):
        sample_pattern(r"^(?=x)y$", random.Random(0), tries=200)


def test_deterministic_for_a_seed():
    schema = TOOLS[7].parameters
    a = [ValueSampler(random.Random(5)).sample(schema) for _ in range(3)]
    b = [ValueSampler(random.Random(5)).sample(schema) for _ in range(3)]
    assert a == b
    assert a[0] != ValueSampler(random.Random(6)).sample(schema)


def test_realistic_strings_by_name():
    s = ValueSampler(random.Random(3))
    for _ in range(20):
        assert s.sample({"type": "string"}, "city") in W.CITY_NAMES
        assert (
            s.sample(
                {
                    "type": "string",
                    "pattern": "^[A-Z]{3}$",
                    "description": "ISO 4217 currency code",
                },
                "currency",
            )
            in W.CURRENCIES
        )
        assert (
            s.sample(
                {"type": "string", "description": "IATA code", "pattern": "^[A-Z]{3}$"}, "origin"
            )
            in W.AIRPORTS
        )
        assert s.sample({"type": "string"}, "first_name") in W.FIRST_NAMES
        assert s.sample({"type": "string"}, "cuisine") in W.CUISINES
        assert s.sample({"type": "string"}, "subject") in W.TITLES
        assert "@" in s.sample({"type": "string", "format": "email"}, "to")
    price = s.sample({"type": "number", "minimum": 0}, "max_price")
    assert round(price, 2) == price


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5},
        {"type": "number", "minimum": 0.5, "maximum": 0.6},
        {"type": "integer", "multipleOf": 15, "minimum": 10, "maximum": 100},
        {"type": "number", "multipleOf": 0.25},
        {"type": ["null", "integer"], "minimum": -3, "maximum": -1},
        {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "integer"}]},
        {"oneOf": [{"type": "string", "format": "date"}, {"type": "boolean"}]},
        {"const": "fixed"},
        {
            "type": "array",
            "items": {"type": "string", "enum": ["a", "b", "c"]},
            "minItems": 3,
            "uniqueItems": True,
        },
        {"type": "string", "minLength": 30, "maxLength": 40},
        {"type": "string", "maxLength": 3},
        {
            "type": "object",
            "properties": {
                "a": {
                    "type": "object",
                    "properties": {"b": {"type": "string", "format": "date-time"}},
                    "required": ["b"],
                }
            },
            "required": ["a"],
        },
    ],
)
def test_keyword_coverage(schema):
    s = ValueSampler(random.Random(11))
    for _ in range(40):
        value = s.sample(schema, "value")
        assert errors(value, schema) == [], value


def test_optional_properties_about_half_the_time():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    s = ValueSampler(random.Random(2))
    share = sum("x" in s.sample(schema) for _ in range(400)) / 400
    assert 0.4 < share < 0.6
