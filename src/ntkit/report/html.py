"""Write report sections as one self-contained HTML page (figures embedded)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ntkit.report.sections import Section

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5rem 0; }
td, th { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
td:first-child { text-align: left; }
th { background: #f3f3f3; } figure { margin: 1rem 0; }
figcaption { font-size: .9rem; max-width: 50rem; }
img { max-width: 100%; height: auto; }
"""


def render_html(title: str, sections: list[Section]) -> str:
    """The page as a string."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in sec.paragraphs]
        if sec.table_rows:
            parts.append("<table><tr>")
            parts += [f"<th>{html.escape(h)}</th>" for h in sec.table_header]
            parts.append("</tr>")
            for row in sec.table_rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        for fig in sec.figures:
            data = base64.b64encode(fig.png).decode("ascii")
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(fig.caption)}'>"
                f"<figcaption><b>{html.escape(fig.caption)}</b>"
                + (f" {html.escape(fig.reading)}" if fig.reading else "")
                + "</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, title: str, sections: list[Section]) -> Path:
    """Write the HTML page to ``path`` (parents created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title, sections), encoding="utf-8")
    return path
