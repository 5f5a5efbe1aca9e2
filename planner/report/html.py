"""The self-contained HTML writer: a ``Report`` of sections and blocks in, one offline HTML file out.

plotly.js is inlined once in the head; each figure is a div and a ``Plotly.newPlot`` call with its JSON
(plotly's encoder writes ``<`` as ``\\u003c``, so no string can close the script element). Every text
that reaches the page is escaped with ``html.escape``. A Content-Security-Policy meta tag forbids every
network request (no ``connect-src``, ``img-src`` or ``font-src`` beyond ``data:``), so the page cannot
reach out even by accident, and the browser test would see the violation.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from planner.errors import PlannerError

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}


# ------------------------------------------------------------------ the document model


@dataclass(frozen=True)
class Paragraph:
    text: str
    kind: str = ""  # "", "note", "warning", "error"


@dataclass(frozen=True)
class KeyValues:
    items: Sequence[tuple[str, str]]
    caption: str = ""


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""
    # Per-row CSS class ("fits", "nofit", "chosen", "") for colouring; same length as rows or empty.
    row_classes: Sequence[str] = ()
    # Long tables start folded (<details>), the caption as their summary line.
    collapsible: bool = False


@dataclass(frozen=True)
class Figure:
    figure: go.Figure
    name: str  # stable, unique within the report: becomes the div id ("fig-" + name)
    caption: str = ""


@dataclass(frozen=True)
class Code:
    title: str
    text: str
    open: bool = False


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    blocks: Sequence[object] = field(default_factory=list)
    subtitle: str = ""


@dataclass(frozen=True)
class Report:
    title: str
    sections: Sequence[Section]
    generated: str = ""
    summary: str = ""


# ------------------------------------------------------------------ rendering

_CSS = """
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#e3e3e3; --bg:#fafafa; --accent:#4C78A8; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: var(--fg); background: var(--bg); line-height: 1.45; }
header { background:#fff; border-bottom:1px solid var(--line); padding: 20px 32px 12px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header .meta { color: var(--muted); font-size: 13px; }
nav { padding: 8px 32px; background:#fff; border-bottom:1px solid var(--line); font-size: 14px; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
main { max-width: 1680px; margin: 0 auto; padding: 12px 24px 48px; }
section { background:#fff; border:1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 18px 0; }
section h2 { margin: 0 0 4px; font-size: 20px; }
section .subtitle { color: var(--muted); margin: 0 0 12px; font-size: 14px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; width: auto; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
.scroll th { font-size: 12px; }
th { background: #f3f4f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.fits td:first-child { border-left: 4px solid #2CA02C; }
tr.nofit td:first-child { border-left: 4px solid #D62728; }
tr.chosen { background: #eef6ee; font-weight: 600; }
/* Wide tables scroll inside their section (the scrollbar always shows where one is needed), never cut off. */
.scroll { overflow-x: auto; max-width: 100%; scrollbar-width: auto; scrollbar-gutter: auto; }
.scroll::-webkit-scrollbar { height: 10px; }
.scroll::-webkit-scrollbar-thumb { background: #c4c7cc; border-radius: 5px; }
.kv th { width: 220px; background: none; }
.figure { margin: 8px 0 20px; }
.figure .caption { color: var(--muted); font-size: 13px; margin: 2px 0 0; }
p.note, p.warning, p.error { padding: 8px 12px; border-radius: 6px; font-size: 14px; }
p.note { background: #eef3fa; } p.warning { background: #fff6e0; } p.error { background: #fdecea; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px; overflow: auto;
  font-size: 12px; max-height: 520px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 12px; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{esc(value)}</td>' if is_num else f"<td>{esc(value)}</td>"


def _table(block: Table) -> str:
    out = ['<div class="scroll"><table>']
    if block.collapsible:
        out = [f"<details><summary>{esc(block.caption)} ({len(block.rows)} rows)</summary>", *out]
    elif block.caption:
        out.append(f"<caption>{esc(block.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in block.columns) + "</tr></thead><tbody>")
    for i, row in enumerate(block.rows):
        cls = block.row_classes[i] if i < len(block.row_classes) and block.row_classes[i] else ""
        attr = f' class="{esc(cls)}"' if cls else ""
        out.append(f"<tr{attr}>" + "".join(_cell(v) for v in row) + "</tr>")
    out.append("</tbody></table></div>")
    if block.collapsible:
        out.append("</details>")
    return "".join(out)


def _kv(block: KeyValues) -> str:
    out = ['<table class="kv">']
    if block.caption:
        out.append(f"<caption>{esc(block.caption)}</caption>")
    out += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in block.items]
    out.append("</table>")
    return "".join(out)


def figure_id(name: str) -> str:
    return "fig-" + "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "-" for ch in name)


def figure_html(block: Figure) -> str:
    """A div and a script that queues its figure; the JSON is plotly's own (``<`` written as ``\\u003c``)."""
    div_id = figure_id(block.name)
    fig_json = pio.to_json(block.figure, validate=False, remove_uids=True)
    height = block.figure.layout.height or 450
    caption = f'<p class="caption">{esc(block.caption)}</p>' if block.caption else ""
    return (
        f'<div class="figure"><div id="{div_id}" class="plotly-graph-div" data-figure="{esc(block.name)}" '
        f'style="height:{int(height)}px;width:100%"></div>{caption}'
        f'<script>(window.__plannerFigures=window.__plannerFigures||[]).push({{id:"{div_id}",f:{fig_json}}});'
        "</script></div>"
    )


# Draws the queued figures: those in the first screen at once (before the load event), then the rest one
# at a time in DOM order, sooner when scrolled near, so a report with dozens of panels opens quickly and
# stays responsive. Printing draws everything first. The <html> element gets data-planner-open="1" when
# the first screen is drawn and data-planner-rendered="N" (the figure count) when every figure is drawn;
# data-planner-{start,open,rendered}-ms record those moments in ms since navigation start.
_RUNTIME = """
(function () {
  var items = window.__plannerFigures || [], config = %s, left = items.length, root = document.documentElement;
  function finish() {
    root.setAttribute("data-planner-rendered-ms", String(Math.round(performance.now())));
    root.setAttribute("data-planner-rendered", String(items.length));
  }
  function draw(item) {
    if (item.started) return item.promise;
    item.started = true;
    var el = document.getElementById(item.id);
    var done = function () { el.setAttribute("data-rendered", "1"); item.f = null; if (--left === 0) finish(); };
    item.promise = Plotly.newPlot(el, item.f.data, item.f.layout, config).then(done, function (err) {
      console.error("planner report: figure " + item.id + " failed: " + err); });
    return item.promise;
  }
  function nearView(el, margin) {
    var r = el.getBoundingClientRect();
    return r.bottom >= -margin && r.top <= window.innerHeight + margin;
  }
  function opened() {
    root.setAttribute("data-planner-open-ms", String(Math.round(performance.now())));
    root.setAttribute("data-planner-open", "1");
  }
  root.setAttribute("data-planner-start-ms", String(Math.round(performance.now())));
  if (!items.length) { finish(); opened(); return; }
  var first = items.filter(function (item) { return nearView(document.getElementById(item.id), 0); });
  Promise.all(first.map(draw)).then(function () {
    opened();
    setTimeout(pump, 0);
  });
  var next = 0;
  function pump() {
    var pick = null;
    for (var i = 0; i < items.length && !pick; i++) {
      if (!items[i].started && nearView(document.getElementById(items[i].id), window.innerHeight)) pick = items[i];
    }
    while (!pick && next < items.length) { if (!items[next].started) pick = items[next]; next++; }
    if (pick) draw(pick).then(function () { setTimeout(pump, 0); });
  }
  window.addEventListener("beforeprint", function () { items.forEach(draw); });
})();
"""


def _block(block: object) -> str:
    if isinstance(block, Paragraph):
        cls = f' class="{esc(block.kind)}"' if block.kind else ""
        return f"<p{cls}>{esc(block.text)}</p>"
    if isinstance(block, KeyValues):
        return _kv(block)
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return figure_html(block)
    if isinstance(block, Code):
        opened = " open" if block.open else ""
        return f"<details{opened}><summary>{esc(block.title)}</summary><pre>{esc(block.text)}</pre></details>"
    if isinstance(block, Section):
        return _section(block, level=3)
    raise TypeError(f"unknown report block {type(block).__name__}")


def _section(section: Section, level: int = 2) -> str:
    sub = f'<p class="subtitle">{esc(section.subtitle)}</p>' if section.subtitle else ""
    body = "".join(_block(b) for b in section.blocks)
    if level == 2:
        return f'<section id="{esc(section.anchor)}"><h2>{esc(section.title)}</h2>{sub}{body}</section>'
    return f'<div id="{esc(section.anchor)}"><h{level}>{esc(section.title)}</h{level}>{sub}{body}</div>'


def _figure_blocks(blocks: Sequence[object]) -> list[Figure]:
    out: list[Figure] = []
    for b in blocks:
        if isinstance(b, Figure):
            out.append(b)
        elif isinstance(b, Section):
            out += _figure_blocks(b.blocks)
    return out


def _figures(blocks: Sequence[object]) -> list[go.Figure]:
    return [b.figure for b in _figure_blocks(blocks)]


def render(report: Report, plotly_js: str | None = None) -> str:
    """The whole page as one string. ``plotly_js`` defaults to the smallest bundle that draws every figure."""
    if plotly_js is None:
        from planner.report.plotlyjs import bundle_for

        plotly_js = bundle_for(_figures(report.sections))
    if re.search(r"</script|<!--", plotly_js, re.IGNORECASE):
        raise ValueError("the plotly.js bundle contains '</script' or '<!--' and cannot be inlined safely")
    ids = [figure_id(b.name) for b in _figure_blocks(report.sections)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"figure names must be unique within a report: {ids}")
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in report.sections)
    names = ",".join(ids)
    meta = esc(report.generated)
    summary = f"<div>{esc(report.summary)}</div>" if report.summary else ""
    body = "".join(_section(s) for s in report.sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="planner report">'
        f'<meta name="planner-figures" content="{esc(names)}">'
        f"<title>{esc(report.title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{plotly_js}</script></head>'
        f"<body><header><h1>{esc(report.title)}</h1>{summary}<div class=\"meta\">{meta}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<script>{_RUNTIME % json.dumps(PLOTLY_CONFIG)}</script>"
        "<footer>Generated by planner. 1 GiB = 2^30 bytes. Self-contained: this file makes no network requests.</footer>"
        "</body></html>\n"
    )


def write(report: Report, path: Path, *, inputs: dict | None = None) -> int:
    """Render and write atomically with planner.safe_write (a new or regular file, never one of ``inputs``);
    returns bytes."""
    from planner.safe_write import check_output_file, write_atomic

    path = Path(path)
    if path.is_dir():
        raise PlannerError(f"-o {str(path)!r} is a directory; give a file path such as reports/NAME.html.")
    if path.suffix.lower() not in (".html", ".htm"):
        raise PlannerError(f"-o {str(path)!r} must end in .html (the report is one HTML file).")
    check_output_file(path, flag="-o", inputs=inputs)  # before rendering
    return write_atomic(path, render(report).encode("utf-8"), flag="-o", inputs=inputs, make_parents=True)
