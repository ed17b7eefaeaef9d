"""Small HTML builders for the report: escaped text, tables, figures; one self-contained page.

Everything the page shows is a file next to it (relative links), styled by an inline stylesheet:
it opens offline, from a copied folder too.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .3em 0; }
figure { margin: 1em 0; } figcaption { font-size: .85em; color: #555; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: .5em 1em; }
.meta td { text-align: left; }
nav a { margin-right: 1em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: float | None, digits: int = 3) -> str:
    """A metric cell: COCO's -1 ("undefined") and None are a dash."""
    if value is None or value < 0:
        return "-"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], name_columns: int = 1, css_class: str = "") -> str:
    """A table whose first ``name_columns`` columns are left-aligned names."""

    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="name"' if i < name_columns else ""
        return f"<{tag}{cls}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def figure(src: str, caption: str = "", alt: str = "") -> str:
    """An image by its path relative to the page."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(src)}" alt="{esc(alt or caption)}">{cap}</figure>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def page(title: str, sections: Sequence[tuple[str, str, str]], intro: str = "") -> str:
    """The whole page: title, a table of contents, then each (anchor, title, body) section."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n{intro}\n<nav>{nav}</nav>\n"
        f"{body}\n</body></html>\n"
    )
