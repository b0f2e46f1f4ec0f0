"""The README's commands match the real CLI and Makefile (docs must not drift from flags)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ttpa_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for word in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def test_readme_starts_with_the_two_setup_commands():
    head = README.split("##")[0]
    assert head.index("make demo") < head.index("make test")


def test_every_readme_cli_flag_exists():
    lines = [ln.strip() for ln in README.splitlines() if ln.strip().startswith("ttpa-ray ")]
    assert len(lines) >= 4
    parser = build_parser()
    for line in lines:
        words = line.split("#")[0].split()[1:]
        path = [w for w in words[:2] if re.fullmatch(r"[a-z-]+", w)]
        try:
            sub = subparser(parser, path)
        except StopIteration:
            sub = subparser(parser, path[:1])
        known = {opt for a in sub._actions for opt in a.option_strings}
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line))
        assert flags <= known, (line, flags - known)


def test_makefile_has_the_documented_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "test-fast", "lint", "bench"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()
