"""HTML building blocks for the run report: escaping, number formatting, tables, notes,
a tiny Markdown renderer (for the dataset card) and the page template.

Everything that reaches the page from run files goes through `esc`; only `Markup` (HTML
this module or `plots` produced) is inserted as is.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class Markup(str):
    """A string that is already HTML (not escaped again by `cell`/`table`)."""


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


def cell(v: Any, digits: int = 3) -> str:
    return v if isinstance(v, Markup) else esc(fmt(v, digits))


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
    """An HTML table; `bold` holds (row, column) positions shown in bold."""
    bold = bold or set()
    out = [f'<table class="{esc(cls)}">' if cls else "<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes and i < len(row_classes) else None
        tr = f'<tr class="{esc(rc)}">' if rc else "<tr>"
        tds = []
        for j, v in enumerate(row):
            text = cell(v, digits)
            tds.append(
                f"<td><strong>{text}</strong></td>" if (i, j) in bold else f"<td>{text}</td>"
            )
        out.append(tr + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return Markup("".join(out))


def kv_table(items: Iterable[tuple[str, Any]], digits: int = 3) -> Markup:
    """A two-column key/value table."""
    return table(["key", "value"], [(k, v) for k, v in items], digits=digits, cls="kv")


def not_available(*files: str, why: str = "") -> Markup:
    what = ", ".join(files)
    tail = f" ({esc(why)})" if why else ""
    return Markup(f'<p class="na">not available: {esc(what)}{tail}</p>')


def note(text: str, cls: str = "note") -> Markup:
    return Markup(f'<p class="{esc(cls)}">{esc(text)}</p>')


def png_img(data: bytes, alt: str) -> Markup:
    b64 = base64.b64encode(data).decode("ascii")
    return Markup(f'<img class="plot" src="data:image/png;base64,{b64}" alt="{esc(alt)}">')


# -- a small Markdown subset (headings, tables, lists, images, paragraphs) -------------------

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$")


def _inline(text: str) -> str:
    s = esc(text)
    s = _INLINE_CODE.sub(r"<code>\1</code>", s)
    return _BOLD.sub(r"<strong>\1</strong>", s)


def markdown(text: str, base_dir: Path | None = None) -> Markup:
    """Render the Markdown subset the dataset card uses. Images are embedded (base64) when
    they are PNG files inside `base_dir`; anything else is shown as a note."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    para: list[str] = []

    def flush_para() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(p) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if not stripped:
            flush_para()
            i += 1
            continue
        m_head = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if m_head:
            flush_para()
            level = min(len(m_head.group(1)) + 2, 6)  # nested below the report's h2/h3
            out.append(f"<h{level}>{_inline(m_head.group(2))}</h{level}>")
            i += 1
            continue
        if stripped.startswith("|"):
            flush_para()
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i].strip())
                i += 1
            rows = [[c.strip() for c in r.strip("|").split("|")] for r in block]
            rows = [r for r in rows if not all(re.fullmatch(r":?-{2,}:?", c) for c in r if c)]
            if rows:
                head, body = rows[0], rows[1:]
                out.append(
                    "<table><thead><tr>"
                    + "".join(f"<th>{_inline(c)}</th>" for c in head)
                    + "</tr></thead><tbody>"
                    + "".join(
                        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                        for r in body
                    )
                    + "</tbody></table>"
                )
            continue
        if re.match(r"^[-*]\s+", stripped):
            flush_para()
            items = []
            while i < len(lines) and re.match(r"^[-*]\s+", lines[i].strip()):
                items.append(re.sub(r"^[-*]\s+", "", lines[i].strip()))
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(it)}</li>" for it in items) + "</ul>")
            continue
        m_img = _IMAGE.match(stripped)
        if m_img:
            flush_para()
            out.append(_md_image(m_img.group(1), m_img.group(2), base_dir))
            i += 1
            continue
        para.append(stripped)
        i += 1
    flush_para()
    return Markup("\n".join(out))


def _md_image(alt: str, target: str, base_dir: Path | None) -> str:
    if base_dir is not None and target.lower().endswith(".png"):
        base = base_dir.resolve()
        path = (base / target).resolve()
        if path.is_relative_to(base) and path.is_file():
            return png_img(path.read_bytes(), alt or path.name)
    return str(note(f"image not embedded: {target}", cls="na"))


# -- the page ----------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2228; background: #fafbfc; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: .25rem; margin-top: 2.4rem; }
h3 { margin-top: 1.6rem; }
.meta { color: #57606a; font-size: .9rem; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; background: #fff; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; }
th { background: #f0f3f6; }
td { font-variant-numeric: tabular-nums; }
tr.acct-mismatch td { background: #ffebe9; }
tr.status-failed td { background: #ffebe9; }
span.flag { color: #cf222e; font-weight: 700; }
p.na { color: #8c6d1f; background: #fff8c5; border-left: 4px solid #d4a72c;
       padding: .35rem .7rem; font-style: italic; }
p.warn { color: #cf222e; font-weight: 600; }
p.error { color: #cf222e; background: #ffebe9; padding: .35rem .7rem; }
img.plot { display: block; max-width: 100%; height: auto; margin: .6rem 0 1rem;
           border: 1px solid #d0d7de; background: #fff; }
nav.toc { background: #fff; border: 1px solid #d0d7de; padding: .5rem 1.2rem; display: inline-block; }
nav.toc ol { margin: .3rem 0; padding-left: 1.2rem; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: .6rem; overflow-x: auto;
      font-size: .8rem; max-height: 30rem; }
.card { background: #fff; border: 1px solid #d0d7de; padding: .2rem 1rem; }
.plots { display: flex; flex-wrap: wrap; gap: 0 1rem; align-items: flex-start; }
.plots img.plot { max-width: calc(50% - .5rem); box-sizing: border-box; }
"""

# Marks <body> once everything loaded, for headless-browser checks: how many images
# decoded (naturalWidth > 0) and are laid out, and how many tables have a visible box.
LOAD_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var r = imgs[i].getBoundingClientRect();
    if (imgs[i].complete && imgs[i].naturalWidth > 0 && r.width > 0 && r.height > 0) ok++;
  }
  var tables = document.querySelectorAll("table"), vis = 0;
  for (var j = 0; j < tables.length; j++) {
    var t = tables[j].getBoundingClientRect();
    if (t.width > 0 && t.height > 0) vis++;
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
  document.body.setAttribute("data-tables-visible", vis + "/" + tables.length);
});
"""


def page(title: str, header: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n"
        f"<script>{LOAD_SCRIPT}</script>\n</head>\n"
        f"<body>\n<main>\n{header}\n{body}\n</main>\n</body>\n</html>\n"
    )
