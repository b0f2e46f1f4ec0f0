"""`ttpa_ray.report.html`: the templates escape run data, keep `Markup`, and the card's
Markdown nests headings, renders tables and embeds only PNGs inside the card's folder."""

from __future__ import annotations

from pathlib import Path

from ttpa_ray.report.html import Markup, markdown, not_available, note, page, png_img, table

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_table_escapes_text_keeps_markup_and_formats_numbers():
    flag = Markup('<span class="flag">!</span>')
    out = table(
        ["name", "<v>"],
        [("a<b>", 0.5), ("c", flag), ("d", None)],
        bold={(0, 1)},
        row_classes=[None, "acct-mismatch"],
        caption="C & D",
        digits=2,
        cls="kv",
    )
    assert out == (
        '<table class="kv"><caption>C &amp; D</caption>'
        "<thead><tr><th>name</th><th>&lt;v&gt;</th></tr></thead><tbody>"
        "<tr><td>a&lt;b&gt;</td><td><strong>0.50</strong></td></tr>"
        f'<tr class="acct-mismatch"><td>c</td><td>{flag}</td></tr>'
        "<tr><td>d</td><td>—</td></tr></tbody></table>"
    )
    assert isinstance(out, Markup)


def test_notes_and_images_escape_their_text():
    assert not_available("eval/<m>.json", why="bad") == (
        '<p class="na">not available: eval/&lt;m&gt;.json (bad)</p>'
    )
    assert note("<b>", cls="warn") == '<p class="warn">&lt;b&gt;</p>'
    img = png_img(PNG, 'a "plot"')
    assert img.startswith('<img class="plot" src="data:image/png;base64,iVBORw0KGgo')
    assert img.endswith('alt="a &#34;plot&#34;">')


def test_page_escapes_the_title_not_the_body():
    html = page("run <x>", "<h1>H</h1>", "<p>B</p>")
    assert html.startswith("<!DOCTYPE html>\n") and html.endswith("</html>\n")
    assert "<title>run &lt;x&gt;</title>" in html
    assert "<main>\n<h1>H</h1>\n<p>B</p>\n</main>" in html


def test_markdown_card(tmp_path: Path):
    card = tmp_path / "card"
    card.mkdir()
    (card / "stats.png").write_bytes(PNG)
    (tmp_path / "outside.png").write_bytes(PNG)
    text = (
        "# Card\n\n#### Deep\n\nTeacher: `t` **b** <script>x</script>\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n\n"
        "![stats](stats.png)\n\n![out](../outside.png)\n\n![gone](gone.png)\n"
    )
    html = markdown(text, card)
    assert "<h3>Card</h3>" in html and "<h6>Deep</h6>" in html  # nested below h2, capped
    assert "<code>t</code> <strong>b</strong> &lt;script&gt;x&lt;/script&gt;" in html
    assert "<th>a</th>" in html and "<td>2</td>" in html
    assert "<li>one</li>" in html
    assert html.count("<img") == 1
    assert '<img class="plot" src="data:image/png;base64,' in html and 'alt="stats"' in html
    assert "image not embedded: ../outside.png" in html
    assert "image not embedded: gone.png" in html
    assert "image not embedded: stats.png" in markdown("![s](stats.png)")  # no folder given
