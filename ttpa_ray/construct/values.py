"""Seeded sampling of JSON values that validate against a JSON Schema.

`ValueSampler(rng).sample(schema, name)` honours const/enum, anyOf/oneOf, type lists,
formats (date, date-time, time, email, uri, uuid), `pattern` (via `regex_gen`), numeric
bounds and multipleOf, string lengths, arrays and objects. When no format, pattern or
enum applies, strings come from curated word lists chosen by the property's name and
description, so a `city` looks like a city and a `subject` like a subject line. An id-like
property (`is_id_like`) always gets an identifier (`is_identifier`), never words.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jsonschema

from ttpa_ray.construct import wordlists as W
from ttpa_ray.construct.regex_gen import sample_pattern

# A hook for nested properties: (name, schema) -> (found, value). The teacher passes one
# so that e.g. `items[].product_id` is taken from earlier results instead of invented.
Resolver = Callable[[str, dict[str, Any]], tuple[bool, Any]]

_BASE_DATE = dt.date(2026, 1, 5)  # scenes happen in 2026, so dates look like plans
_MONEY = re.compile(r"price|amount|total|cost|balance|budget|principal|subtotal|refund|fee")
_SMALL_COUNT = re.compile(
    r"quantity|passengers|guests|tickets|party|rooms|servings|nights|bags|count|adults|seats"
)


@lru_cache(maxsize=4096)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def is_valid(value: Any, schema: dict[str, Any]) -> bool:
    """Whether `value` validates against `schema` (formats checked where jsonschema can)."""
    return _validator(json.dumps(schema, sort_keys=True)).is_valid(value)


_ID_NAME = re.compile(r"(?:^|_)ids?$|[a-z0-9]Ids?$")
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def is_id_like(name: str, schema: dict[str, Any] | None = None) -> bool:
    """Whether a property names an entity by identifier, so that its value must be an
    identifier from an earlier tool result or the user, never free text.

    Id-like: the name is `id`/`ids` or ends in `_id`, `_ids`, `Id` or `Ids` (`message_id`,
    `device_ids`, `userId`; not `paid`), or the schema has `format: uuid`. Not id-like,
    whatever the name: a closed set (`enum`, `const`: its values are used as listed) and
    boolean, object or null schemas. Integer ids are id-like (any integer is an identifier).
    """
    if schema is not None:
        if "enum" in schema or "const" in schema:
            return False
        if schema.get("type") in ("boolean", "object", "null"):
            return False
        if schema.get("format") == "uuid":
            return True
    return bool(_ID_NAME.search(name))


def is_identifier(value: Any) -> bool:
    """Whether `value` has an identifier's shape: an integer, or 1–64 characters of letters,
    digits and `_ . : -` (no spaces) with at least one digit — `MSG_8F3A2C1D`, a UUID, `42`.
    A word (`work`) or a sentence is not one."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return (
        isinstance(value, str)
        and bool(_IDENTIFIER.fullmatch(value))
        and any(c.isdigit() for c in value)
    )


def id_prefix(name: str) -> str:
    """`MSG` for `message_id`: the stem's first letter and next consonants, upper case."""
    stem = re.sub(r"(?:_?ids?|Ids?)$", "", name).split("_")[-1].lower() or "obj"
    out = stem[0]
    for c in stem[1:]:
        if len(out) == 3:
            break
        if c.isalpha() and c not in "aeiou" and c != out[-1]:
            out += c
    return (out if len(out) == 3 else (stem + "xx")[:3]).upper()


def _tokens(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


class ValueSampler:
    """Draws schema-valid, natural-looking values from one `random.Random`."""

    def __init__(
        self,
        rng: random.Random,
        resolver: Resolver | None = None,
        id_patterns: dict[str, str] | None = None,
    ):
        """`id_patterns`: the catalog's identifier shape per property name (from result
        schemas, e.g. `message_id` → `^MSG_[A-Z0-9]{8}$`), used for id-like properties
        whose own schema has no pattern, so an invented id looks like the tools' own."""
        self.rng = rng
        self.resolver = resolver
        self.id_patterns = id_patterns or {}

    # -- dispatch -------------------------------------------------------------------
    def sample(self, schema: dict[str, Any], name: str = "") -> Any:
        """A value valid under `schema`; `name` (the property name) picks realistic words."""
        if not isinstance(schema, dict) or not schema:
            return self._string({}, name)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                # oneOf branches of the catalogs do not overlap; a branch is picked at random
                merged = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                return self.sample({**merged, **self.rng.choice(schema[key])}, name)
        if schema.get("allOf"):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged.update(part)
            return self.sample(merged, name)
        typ = schema.get("type")
        if isinstance(typ, list):
            non_null = [t for t in typ if t != "null"] or ["null"]
            return self.sample({**schema, "type": self.rng.choice(non_null)}, name)
        if typ is None:
            typ = self._infer_type(schema)
        handler = {
            "string": self._string,
            "integer": self._integer,
            "number": self._number,
            "boolean": lambda s, n: self.rng.random() < 0.5,
            "null": lambda s, n: None,
            "array": self._array,
            "object": self._object,
        }.get(typ)
        if handler is None:
            raise ValueError(f"cannot sample unknown type {typ!r} for {name or 'value'}")
        return handler(schema, name)

    @staticmethod
    def _infer_type(schema: dict[str, Any]) -> str:
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "multipleOf")):
            return "number"
        return "string"

    # -- strings --------------------------------------------------------------------
    def _string(self, schema: dict[str, Any], name: str) -> str:
        fmt, pattern = schema.get("format"), schema.get("pattern")
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if fmt in _FORMATS:
            value = _FORMATS[fmt](self, name)
        elif is_id_like(name, schema):
            value = self.identifier(name, schema)
        else:
            words = self.words(name, schema.get("description", ""))
            if pattern:
                fitting = [w for w in words or [] if re.search(pattern, w)]
                value = self.rng.choice(fitting) if fitting else sample_pattern(pattern, self.rng)
            else:
                value = self.rng.choice(words) if words else self._fallback(name)
        if hi is not None and len(value) > hi:
            value = value[:hi].rstrip() or value[:hi]
        if len(value) < lo:
            value = value + "x" * (lo - len(value))
        return value

    def _fallback(self, name: str) -> str:
        return " ".join(self.rng.sample(W.WORDS, 2))

    def identifier(self, name: str, schema: dict[str, Any] | None = None) -> str:
        """A fresh identifier for property `name` that validates against `schema`: from its
        pattern (or the catalog's pattern for `name`), redrawn until it has a digit, else
        `PFX_` + 8 upper-case letters and digits (`MSG_8F3A2C1D`)."""
        schema = schema or {}
        pattern = schema.get("pattern") or self.id_patterns.get(name)
        if pattern:
            value = ""
            for _ in range(20):  # `^ART_[A-Z0-9]{8}$` draws no digit 7% of the time
                value = sample_pattern(pattern, self.rng)
                if is_identifier(value) and is_valid(value, schema):
                    return value
            if "pattern" in schema:
                return value
        body = [self.rng.choice(_ID_CHARS) for _ in range(8)]
        body[self.rng.randrange(8)] = str(self.rng.randrange(10))
        return f"{id_prefix(name)}_{''.join(body)}"

    def person(self) -> str:
        return f"{self.rng.choice(W.FIRST_NAMES)} {self.rng.choice(W.LAST_NAMES)}"

    def email(self, name: str = "") -> str:
        first, last = self.rng.choice(W.FIRST_NAMES), self.rng.choice(W.LAST_NAMES)
        domain = self.rng.choice(["example.com", "mail.example.org", "example.net"])
        return f"{first.lower()}.{last.lower()}@{domain}"

    def address(self) -> str:
        return f"{self.rng.randint(1, 240)} {self.rng.choice(W.STREETS)}"

    def words(self, name: str, description: str = "") -> list[str] | None:
        """Candidate realistic values for a string property, or None when nothing fits."""
        n, d, toks = name.lower(), description.lower(), _tokens(name)
        rng = self.rng
        if "email" in toks:
            return [self.email()]
        if n == "first_name":
            return W.FIRST_NAMES
        if n == "last_name":
            return W.LAST_NAMES
        if "airport" in d or "iata" in d:
            return W.AIRPORTS
        if "currency" in toks or "iso 4217" in d:
            return W.CURRENCIES
        if toks & {"symbol", "ticker"}:
            return W.STOCK_SYMBOLS
        if toks & {"country", "region"} or "country_hint" in n:
            return W.COUNTRY_CODES if "code" in d or "alpha-2" in d else W.COUNTRIES
        if "language" in toks:
            return W.LANGUAGES if "code" in d or "iso" in d else W.LANGUAGE_NAMES
        if "station" in toks:
            return [f"{c} Central" for c in W.CITY_NAMES]
        if toks & {"city", "location", "destination", "origin"}:
            return W.CITY_NAMES
        if "street" in toks:
            return [self.address()]
        if "address" in toks:
            return [f"{self.address()}, {rng.choice(W.CITY_NAMES)}"]
        if toks & {"full", "guest", "author", "buyer"} or (n == "name" and _PERSON.search(d)):
            return [self.person()]
        if "company" in toks:
            return W.COMPANIES
        if toks & {"cuisine"}:
            return W.CUISINES
        if toks & {"color", "colour"}:
            return W.COLOURS
        if toks & {"title", "subject", "headline"}:
            return W.TITLES
        if toks & {"body", "message", "text", "memo", "notes", "reason", "summary", "requests"}:
            return W.SENTENCES
        if toks & {"description", "instruction"}:
            return W.SENTENCES
        if toks & {"category", "type"}:
            return W.CATEGORIES
        if "genre" in toks:
            return W.GENRES
        if "activity" in toks:
            return W.ACTIVITIES
        if toks & {"food", "item"} and "id" not in toks:
            return W.FOODS
        if "ingredients" in toks or "ingredient" in toks:
            return W.INGREDIENTS
        if "specialty" in toks:
            return W.SPECIALTIES
        if toks & {"artist"}:
            return W.ARTISTS
        if toks & {"topic", "topics"}:
            return W.TOPICS
        if "room" in toks:
            return W.ROOMS
        if toks & {"movie", "film"} and "id" not in toks:
            return W.MOVIES
        if "channel" in toks:
            return [f"#{w}" for w in ("general", "team", "random", "project-x", "support")]
        if toks & {"url", "website", "link"}:
            return [_uri(self, name)]
        if "expression" in toks:
            return ["2 * (3 + 4)", "sqrt(16) + 3^2", "(120 - 35) / 5", "x^2 + 2*x + 1"]
        if toks & {"query", "q", "search", "keywords"}:
            if _SHOP.search(d):
                return W.PRODUCTS
            return W.QUERIES + W.PRODUCTS[:8]
        if toks & {"product", "sources", "source"} and "id" not in toks:
            return W.PRODUCTS if "product" in toks else ["Reuters", "BBC News", "Le Monde"]
        if n == "name":
            return [f"{rng.choice(W.WORDS).title()} {rng.choice(_NAMED_THINGS)}"]
        return None

    # -- numbers --------------------------------------------------------------------
    def _bounds(self, schema: dict[str, Any], integer: bool) -> tuple[float, float]:
        step = 1 if integer else 0.01
        lo = schema.get("minimum", -math.inf)
        hi = schema.get("maximum", math.inf)
        if "exclusiveMinimum" in schema:
            lo = max(lo, schema["exclusiveMinimum"] + step)
        if "exclusiveMaximum" in schema:
            hi = min(hi, schema["exclusiveMaximum"] - step)
        return lo, hi

    def _natural_range(self, name: str, integer: bool) -> tuple[float, float, int]:
        """(low, high, decimals) that look natural for a field of this name."""
        n = name.lower()
        if _MONEY.search(n):
            return 5.0, 900.0, 2
        if _SMALL_COUNT.search(n):
            return 1, 4, 0
        if n in ("lat", "lat1", "lat2", "latitude"):
            return -60, 65, 4
        if n in ("lon", "lon1", "lon2", "lng", "longitude"):
            return -125, 175, 4
        if "year" in n:
            return 1995, 2025, 0
        if "age" in _tokens(n):
            return 21, 75, 0
        if re.search(r"minutes|duration", n):
            return 15, 180, 0
        if re.search(r"limit|max_results|page_size|size|days|hours", n):
            return 1, 10, 0
        if re.search(r"rate|percent|rating|score", n):
            return 1, 5, 1
        return (1, 100, 0) if integer else (0.5, 250.0, 2)

    def _number(self, schema: dict[str, Any], name: str, integer: bool = False) -> float | int:
        lo, hi = self._bounds(schema, integer)
        nlo, nhi, decimals = self._natural_range(name, integer)
        # keep the natural range when it overlaps the schema's, else use the schema's
        a, b = max(lo, nlo), min(hi, nhi)
        if a > b:
            a = lo if lo > -math.inf else min(hi, nlo)
            b = hi if hi < math.inf else max(lo, nhi)
            if a == -math.inf:
                a = b - 100
            if b == math.inf:
                b = a + 100
        if schema.get("multipleOf"):
            m = schema["multipleOf"]
            k_lo, k_hi = math.ceil(a / m), math.floor(b / m)
            if k_lo > k_hi:
                k_lo, k_hi = math.ceil(lo / m), math.floor(hi / m) if hi < math.inf else k_lo + 10
            value = self.rng.randint(k_lo, k_hi) * m
            return int(round(value)) if integer else round(value, 10)
        if integer:
            return self.rng.randint(math.ceil(a), math.floor(b))
        value = round(self.rng.uniform(a, b), decimals or 2)
        return min(max(value, lo), hi)  # rounding must not cross a bound

    def _integer(self, schema: dict[str, Any], name: str) -> int:
        return int(self._number(schema, name, integer=True))

    # -- containers -----------------------------------------------------------------
    def _array(self, schema: dict[str, Any], name: str) -> list[Any]:
        items = schema.get("items") or {}
        lo = schema.get("minItems", 0)
        hi = schema.get("maxItems", lo + 4)
        n = self.rng.randint(max(lo, min(1, hi)), min(hi, max(lo, 1) + 2))
        item_name = name[:-1] if name.endswith("s") else name
        out: list[Any] = []
        seen: set[str] = set()
        for _ in range(n * 20):
            if len(out) == n:
                break
            value = self.sample(items, item_name)
            key = json.dumps(value, sort_keys=True)
            if schema.get("uniqueItems") and key in seen:
                continue
            seen.add(key)
            out.append(value)
        if len(out) < lo:
            raise ValueError(f"cannot draw {lo} unique items for {name or 'array'}")
        return out

    def _object(self, schema: dict[str, Any], name: str) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if key not in required and self.rng.random() >= 0.5:
                continue
            if self.resolver is not None:
                found, value = self.resolver(key, sub)
                if found:
                    out[key] = value
                    continue
            out[key] = self.sample(sub, key)
        return out


_PERSON = re.compile(r"person|guest|contact|reservation|traveller|passenger|full name|attendee")
_SHOP = re.compile(r"product|shop|store|buy|catalog")
_NAMED_THINGS = ["Mix", "Playlist", "Routine", "Plan", "Selection", "Vibes", "Set"]


def _date(s: ValueSampler, name: str) -> str:
    n = name.lower()
    if "birth" in n:
        return (dt.date(1960, 1, 1) + dt.timedelta(days=s.rng.randint(0, 15000))).isoformat()
    if re.search(r"since|from|start|min|after|history", n):
        return (_BASE_DATE + dt.timedelta(days=s.rng.randint(0, 120))).isoformat()
    return (_BASE_DATE + dt.timedelta(days=s.rng.randint(10, 300))).isoformat()


def _time(s: ValueSampler, name: str = "") -> str:
    return f"{s.rng.randint(7, 21):02d}:{s.rng.choice([0, 15, 30, 45]):02d}:00Z"


def _datetime(s: ValueSampler, name: str) -> str:
    return f"{_date(s, name)}T{_time(s)}"


def _uri(s: ValueSampler, name: str = "") -> str:
    host = s.rng.choice(["example.com", "example.org", "files.example.net", "shop.example.com"])
    return f"https://{host}/{s.rng.choice(W.WORDS)}/{s.rng.randrange(10**6):06d}"


def _uuid(s: ValueSampler, name: str = "") -> str:
    h = f"{s.rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


_FORMATS: dict[str, Callable[[ValueSampler, str], str]] = {
    "date": _date,
    "date-time": _datetime,
    "time": _time,
    "email": lambda s, n: s.email(n),
    "idn-email": lambda s, n: s.email(n),
    "uri": _uri,
    "url": _uri,
    "iri": _uri,
    "uuid": _uuid,
    "hostname": lambda s, n: s.rng.choice(["example.com", "api.example.org"]),
    "ipv4": lambda s, n: f"192.0.2.{s.rng.randint(1, 254)}",
}
