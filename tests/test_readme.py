"""The README and docs/ match the real CLI and Makefile (docs must not drift from flags),
the README stays short, and every relative link lands on a file and heading that exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ttpa_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for word in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def cli_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("ttpa-ray ")]


def assert_flags_exist(lines: list[str]) -> None:
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


def outside_code(text: str) -> list[str]:
    """The page's lines outside fenced code blocks (a `# comment` there is no heading)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return kept


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lowercase, punctuation other than - and _ dropped, each space
    a -, and a repeated id suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    ids = set()
    for line in outside_code(page.read_text()):
        heading = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if not heading:
            continue
        text = re.sub(r"`|\*\*", "", heading.group(1)).lower()
        slug = "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def test_readme_starts_with_the_two_setup_commands():
    head = README.split("##")[0]
    assert head.index("make demo") < head.index("make test")


def test_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_every_readme_cli_flag_exists():
    lines = cli_lines(README)
    assert len(lines) >= 4
    assert_flags_exist(lines)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_docs_cli_flag_exists(page):
    assert_flags_exist(cli_lines(page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall("\n".join(outside_code(page.read_text()))):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.is_file(), (page.name, target)
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), (page.name, target)


def test_makefile_has_the_documented_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "test-fast", "lint", "bench"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()
