"""A self-contained HTML report: inline CSS, no scripts, pictures by relative path (readable offline)."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, List, Sequence, Tuple

__all__ = ["Section", "render", "fmt"]

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f5fbf; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #eef2f8; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
.headline { font-size: 1.1em; background: #f5f8fc; border-left: 4px solid #1f5fbf; padding: .5em 1em; }
.note { font-size: .85em; color: #555; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for tables: floats with ``digits`` significant decimals, NaN as an en dash."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:+.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


@dataclass
class Section:
    """A heading, then paragraphs (plain text, escaped), figures (src, caption) and tables (caption, header, rows)."""

    title: str
    paragraphs: List[str] = field(default_factory=list)
    figures: List[Tuple[str, str]] = field(default_factory=list)
    tables: List[Tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render(title: str, headline: Sequence[str], summary: Sequence[Tuple[str, Any]],
           sections: Sequence[Section]) -> str:
    """The report's HTML text."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for line in headline:
        parts.append(f'<p class="headline">{e(line)}</p>')
    parts.append(_table("", ["", "value"], [(k, v) for k, v in summary]))
    for section in sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        for text in section.paragraphs:
            parts.append(f"<p>{e(text)}</p>")
        for src, caption in section.figures:
            parts.append(f'<figure><img src="{e(src, quote=True)}" alt="{e(caption, quote=True)}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        for caption, header, rows in section.tables:
            parts.append(_table(caption, header, rows))
        for text in section.notes:
            parts.append(f'<p class="note">{e(text)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
