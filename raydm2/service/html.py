"""Self-contained HTML pages (images inline as data URIs, no scripts, no network) for reports and simulations."""

from __future__ import annotations

import base64
import html

STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}
.note{color:#666;font-size:.9em}"""


def image(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def page(title: str, sections: list[tuple[str, str]], note: str = "") -> str:
    """`sections`: (heading, HTML body) pairs; headings are escaped, bodies are trusted HTML built here."""
    parts = [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            + (f'<p class="note">{html.escape(note)}</p>' if note else "") + "".join(parts) + "</body></html>\n")
