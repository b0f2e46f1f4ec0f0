"""HTML building blocks for the run report: escaping, number formatting, tables, notes,
the dataset card's Markdown and the page.

The markup lives in Jinja2 templates (package data `templates/`, autoescape on): a plain
string reaching a template is escaped, a `Markup` (HTML this package built) goes in as it
is. Markdown is rendered by markdown-it-py (CommonMark plus tables, raw HTML escaped).
Sections that build HTML in Python escape run data with `esc`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jinja2
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import OptionsDict


class Markup(str):
    """A string that is already HTML (not escaped again by `table` or a template).

    A plain `str` subclass, not `markupsafe.Markup`: sections join it with other strings
    by `+`, which `markupsafe.Markup` would escape."""

    def __html__(self) -> str:
        return str(self)


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any, digits: int = 3) -> str:
    """A value as table text: None → '—', floats with `digits` decimals, bools yes/no."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.{digits}f}"
    return str(v)


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ttpa_ray.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _block(name: str, *args: Any, **kwargs: Any) -> Markup:
    """Call the macro `name` of templates/blocks.html.jinja."""
    macro = getattr(_env().get_template("blocks.html.jinja").module, name)
    return Markup(str(macro(*args, **kwargs)))


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str | None = None,
    bold: set[tuple[int, int]] | None = None,
    row_classes: Sequence[str | None] | None = None,
    digits: int = 3,
    cls: str = "",
) -> Markup:
    """An HTML table; `bold` holds (row, column) positions shown in bold. Cells are
    formatted by `fmt` and escaped, except `Markup` cells."""
    bold = bold or set()
    body = []
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes and i < len(row_classes) else None
        cells = [
            {"text": v if isinstance(v, Markup) else fmt(v, digits), "bold": (i, j) in bold}
            for j, v in enumerate(row)
        ]
        body.append({"cls": rc, "cells": cells})
    return _block("table", list(headers), body, caption=caption, cls=cls)


def kv_table(items: Iterable[tuple[str, Any]], digits: int = 3) -> Markup:
    """A two-column key/value table."""
    return table(["key", "value"], [(k, v) for k, v in items], digits=digits, cls="kv")


def not_available(*files: str, why: str = "") -> Markup:
    return _block("not_available", ", ".join(files), why)


def note(text: str, cls: str = "note") -> Markup:
    return _block("note", text, cls)


def png_img(data: bytes, alt: str) -> Markup:
    return _block("png_img", base64.b64encode(data).decode("ascii"), alt)


# -- the dataset card's Markdown ---------------------------------------------------------------


def _image(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: Any
) -> str:
    """A PNG inside `env["base_dir"]` is embedded (base64); anything else becomes a note."""
    token = tokens[idx]
    target = unquote(str(token.attrGet("src") or ""))
    alt = self.renderInlineAsText(token.children or [], options, env)
    base_dir = env.get("base_dir")
    if base_dir is not None and target.lower().endswith(".png"):
        base = Path(base_dir).resolve()
        path = (base / target).resolve()
        if path.is_relative_to(base) and path.is_file():
            return png_img(path.read_bytes(), alt or path.name)
    return _block("image_not_embedded", target)


@cache
def _markdown_it() -> MarkdownIt:
    # CommonMark with GitHub tables; `html` off, so raw HTML in a card is shown as text.
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("image", _image)
    return md


def markdown(text: str, base_dir: Path | None = None) -> Markup:
    """Render a Markdown card (CommonMark plus tables). Headings are nested two levels
    below the report's h2/h3 (`#` → h3, capped at h6). Images are embedded (base64) when
    they are PNG files inside `base_dir`; anything else is shown as a note."""
    md = _markdown_it()
    env = {"base_dir": base_dir}
    tokens = md.parse(text, env)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1:]) + 2, 6)}"
    return Markup(md.renderer.render(tokens, md.options, env))


# -- the page ----------------------------------------------------------------------------------


def page(title: str, header: str, body: str) -> str:
    """The whole report page (templates/page.html.jinja): `title` is text, `header` and
    `body` are HTML the report built."""
    template = _env().get_template("page.html.jinja")
    return template.render(title=title, header=Markup(header), body=Markup(body))
