"""Strings that match a regular expression, for the regex subset JSON-Schema catalogs use.

Supported: anchors `^ $`, literals and escaped literals, classes `[A-Z0-9_]` (ranges,
no negation), `\\d \\w \\s`, `.`, quantifiers `{n} {n,} {n,m} ? + *`, groups `( )` /
`(?: )` with `|`. Anything else (lookarounds, backreferences, negated classes) raises
`UnsupportedPattern`; `sample_pattern` then falls back to rejection sampling.

Not a library: `exrex` draws from the global `random` (no seeded generator per call);
`rstr.xeger` repeats `+`/`*` up to 100 times (50-digit parts for `^[0-9]+\\.[0-9]+$`) under
one module-wide cap that applies to every repeat, so lowering it breaks `{6,9}`; and
hypothesis's `from_regex` is a test-only dependency. Here `+`/`*`/`{n,}` add at most
`_UNBOUNDED_EXTRA` repeats, so values look like real ids.
"""

from __future__ import annotations

import random
import re
import string
from functools import lru_cache
from typing import Any

_UNBOUNDED_EXTRA = 4  # `+`/`*`/`{n,}` repeat at most this many times beyond the minimum
_DIGITS = string.digits
_WORD = string.ascii_letters + string.digits + "_"
_PRINTABLE = string.ascii_letters + string.digits + " -_."

Node = tuple[Any, ...]


class UnsupportedPattern(ValueError):
    """The pattern uses a construct outside the supported subset."""


class _Parser:
    def __init__(self, pattern: str):
        self.p, self.i = pattern, 0

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self) -> str:
        c = self.p[self.i]
        self.i += 1
        return c

    def parse(self) -> Node:
        node = self.alt()
        if self.i != len(self.p):
            raise UnsupportedPattern(f"unexpected {self.p[self.i]!r} at {self.i} in {self.p!r}")
        return node

    def alt(self) -> Node:
        branches = [self.seq()]
        while self.peek() == "|":
            self.take()
            branches.append(self.seq())
        return ("alt", branches) if len(branches) > 1 else branches[0]

    def seq(self) -> Node:
        items: list[Node] = []
        while self.peek() not in (None, "|", ")"):
            atom = self.atom()
            items.append(self.quantified(atom))
        return ("seq", items)

    def atom(self) -> Node:
        c = self.take()
        if c in "^$":
            return ("seq", [])  # anchors: generation is always of the whole string
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise UnsupportedPattern(f"group construct '(?' in {self.p!r}")
            inner = self.alt()
            if self.peek() != ")":
                raise UnsupportedPattern(f"unclosed group in {self.p!r}")
            self.take()
            return inner
        if c == "[":
            return ("class", self.char_class())
        if c == ".":
            return ("class", _PRINTABLE)
        if c == "\\":
            return self.escape()
        if c in "*+?{)":
            raise UnsupportedPattern(f"dangling {c!r} in {self.p!r}")
        return ("lit", c)

    def escape(self) -> Node:
        if self.peek() is None:
            raise UnsupportedPattern(f"trailing backslash in {self.p!r}")
        c = self.take()
        classes = {"d": _DIGITS, "w": _WORD, "s": " "}
        if c in classes:
            return ("class", classes[c])
        if c.isalnum():
            raise UnsupportedPattern(f"escape \\{c} in {self.p!r}")
        return ("lit", c)

    def char_class(self) -> str:
        if self.peek() == "^":
            raise UnsupportedPattern(f"negated class in {self.p!r}")
        chars: list[str] = []
        while self.peek() not in (None, "]"):
            c = self.take()
            if c == "\\":
                node = self.escape()
                chars.extend(node[1])
                continue
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.take()
                end = self.take()
                chars.extend(chr(x) for x in range(ord(c), ord(end) + 1))
            else:
                chars.append(c)
        if self.peek() != "]" or not chars:
            raise UnsupportedPattern(f"bad character class in {self.p!r}")
        self.take()
        return "".join(dict.fromkeys(chars))

    def quantified(self, atom: Node) -> Node:
        c = self.peek()
        if c == "?":
            lo, hi = 0, 1
        elif c == "*":
            lo, hi = 0, _UNBOUNDED_EXTRA
        elif c == "+":
            lo, hi = 1, 1 + _UNBOUNDED_EXTRA
        elif c == "{":
            m = re.match(r"\{(\d+)(,(\d*))?\}", self.p[self.i :])
            if not m:
                return atom
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else int(m.group(3) or lo + _UNBOUNDED_EXTRA)
            self.i += m.end() - 1
        else:
            return atom
        self.take()
        if self.peek() in ("?", "+"):
            self.take()  # lazy/possessive modifiers do not change what matches
        return ("rep", atom, lo, hi)


@lru_cache(maxsize=1024)
def parse_pattern(pattern: str) -> Node:
    """The parse tree of `pattern`; raises `UnsupportedPattern` outside the subset."""
    return _Parser(pattern).parse()


def _emit(node: Node, rng: random.Random, out: list[str]) -> None:
    kind = node[0]
    if kind == "lit":
        out.append(node[1])
    elif kind == "class":
        out.append(rng.choice(node[1]))
    elif kind == "seq":
        for item in node[1]:
            _emit(item, rng, out)
    elif kind == "alt":
        _emit(rng.choice(node[1]), rng, out)
    else:  # rep
        for _ in range(rng.randint(node[2], node[3])):
            _emit(node[1], rng, out)


def generate(pattern: str, rng: random.Random) -> str:
    """A string matching `pattern` (the supported subset only)."""
    out: list[str] = []
    _emit(parse_pattern(pattern), rng, out)
    return "".join(out)


def sample_pattern(pattern: str, rng: random.Random, tries: int = 2000) -> str:
    """A string that `re.search(pattern, s)` accepts (JSON Schema's `pattern` semantics).

    Generates from the parse tree; for unsupported patterns falls back to rejection
    sampling over short printable strings and raises ValueError when that fails too.
    """
    try:
        s = generate(pattern, rng)
        if re.search(pattern, s):
            return s
    except UnsupportedPattern:
        pass
    compiled = re.compile(pattern)
    for _ in range(tries):
        s = "".join(rng.choice(_PRINTABLE) for _ in range(rng.randint(0, 12)))
        if compiled.search(s):
            return s
    raise ValueError(f"cannot generate a string for pattern {pattern!r}: unsupported construct")
