"""The dashboard as one self-contained HTML page: Plotly's JavaScript inlined once, every figure and style
inline, so it opens offline from a file or a Prefect artifact link and makes no request of its own."""

from __future__ import annotations

import html
from datetime import datetime
from string import Template

import plotly.graph_objects as go
import polars as pl
from plotly.offline import get_plotlyjs

from multiembed.dashboard import figures
from multiembed.dashboard.data import HISTORY, MAP_ROWS, DashboardData, TableData
from multiembed.warehouse import SIGNIFICANCE

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>multiembed: $database</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0 2rem 3rem; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1rem; }
nav a { margin-right: 1rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #eee; }
.frame { overflow-x: auto; margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f6f6f6; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.status-ok { color: #2e7d32; font-weight: 600; }
td.status-warn { color: #ef6c00; font-weight: 600; }
td.status-fail { color: #c62828; font-weight: 600; }
.chart { margin: 0.5rem 0 1.5rem; }
.note { color: #666; font-size: 0.85rem; }
.warning { color: #c62828; font-weight: 600; }
.empty { font-size: 1.2rem; padding: 3rem 0; }
</style>
$script
</head>
<body>
<header><h1>multiembed</h1><p class="note">Database <code>$database</code>, generated $generated.</p></header>
$body
</body>
</html>
""")


def render(data: DashboardData, generated: datetime) -> str:
    """The whole page; a short page saying there is nothing yet when the database holds no run and no table."""
    fields = {"database": html.escape(data.database), "generated": f"{generated:%Y-%m-%d %H:%M:%S} UTC"}
    if data.empty:
        return PAGE.substitute(fields, script="", body='<p class="empty">Nothing yet: this database has no runs '
                               "and no embedding tables. Run <code>multiembed backfill CONFIG</code> first.</p>")
    charts = Charts()
    sections = [
        ("status", "Status", status_section(data)),
        ("quality", "Quality", quality_section(data, charts)),
        ("rejects", "Rejects", rejects_section(data, charts)),
        *((anchor(t.name), t.name, table_section(t, charts)) for t in data.tables),
    ]
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in sections)
    body = f"<nav>{nav}</nav>" + "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'
                                          for key, title, content in sections)
    script = f'<script>window.PlotlyConfig = {{MathJaxConfig: "local"}};</script>\n<script>{get_plotlyjs()}</script>'
    return PAGE.substitute(fields, script=script, body=f'<main data-charts="{charts.count}">{body}</main>')


class Charts:
    """Numbers the page's figures (unique div ids) and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: go.Figure) -> str:
        """A figure as a `div.chart` holding its Plotly div and the script that draws it (no Plotly.js)."""
        self.count += 1
        inner = fig.to_html(full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG,
                            div_id=f"chart-{self.count}", default_height=f"{fig.layout.height}px")
        return f'<div class="chart">{inner}</div>'


def status_section(data: DashboardData) -> str:
    """Where each table stands: its latest run and the worst status of its newest checks."""
    columns = ["table", "status", "version", "last_run_at", "rows_read", "rows_embedded", "rows_unchanged",
               "rows_rejected", "rows_deleted", "seconds", "rows_per_second", "checks_ok", "checks_warn",
               "checks_fail", "checked_version"]
    notes = "".join(f'<p class="warning">Incomplete: source <b>{html.escape(source)}</b>: run {html.escape(run)} was '
                    "stopped while publishing, so its tables may be at different runs; the next backfill or refresh "
                    "of the source completes it first.</p>" for source, run in sorted(data.interrupted.items()))
    return notes + frame_html(data.status.select(columns))


def quality_section(data: DashboardData, charts: Charts) -> str:
    """Per field (neural and baseline embedders side by side) and stage: the checks over versions, then the
    newest value of each check as numbers."""
    if data.metrics.is_empty():
        return '<p class="note">No quality checks yet.</p>'
    markers = ", ".join(f'<b style="color:{colour}">{status}</b>' for status, colour in figures.STATUS_COLOURS.items())
    parts = [f'<p class="note">Markers: {markers} (the statistic raised; no value); dashed lines are thresholds, '
             f"dotted lines baseline embedders; an open marker is a bias effect with p &ge; {SIGNIFICANCE}.</p>"]
    groups = data.metrics.select("source", "field", "stage").unique().sort("source", "field", "stage")
    for source, field, stage in groups.iter_rows():
        mine = data.metrics.filter((pl.col("source") == source) & (pl.col("field") == field)
                                   & (pl.col("stage") == stage))
        parts.append(charts.html(figures.quality_chart(mine, f"{source}.{field}: {stage}")))
    newest = data.metrics.filter(pl.col("is_latest")).sort("table", "stage", "metric")
    parts.append("<h3>Newest value of each check</h3>" + frame_html(newest.select(
        "table", "stage", "metric", "version", "value", "threshold", "status", "p_value", "reference_version",
        "computed_at")))
    return "".join(parts)


def rejects_section(data: DashboardData, charts: Charts) -> str:
    """Rejected rows by stage and reason: a chart, then the counts with example ids."""
    if data.rejects.is_empty():
        return '<p class="note">No rows rejected.</p>'
    table = data.rejects.sort("rejects", descending=True).select(
        "table", "stage", "reason", "rejects", "runs", "example_ids", "example_reason")
    return charts.html(figures.rejects_chart(data.rejects)) + frame_html(table)


def table_section(table: TableData, charts: Charts) -> str:
    """One embedding table: its run timeline, its versions with the model behind each, its embedding map."""
    parts = []
    if table.runs.is_empty():
        parts.append('<p class="note">No runs recorded for this table.</p>')
    else:
        parts.append(f"<h3>Runs (latest {HISTORY})</h3>" + charts.html(figures.timeline(table)))
    parts.append("<h3>Versions: model and preprocessing</h3>" + frame_html(table.versions.reverse()))
    if table.points.is_empty():
        parts.append('<p class="note">Too few rows for an embedding map.</p>')
    else:
        by = f"label column <code>{html.escape(table.label)}</code> or by version" if table.label else "version"
        parts.append(f'<h3>Embedding map</h3><p class="note">PCA of a seeded sample of up to {MAP_ROWS} rows per '
                     f"version, coloured by {by}; hover shows the id.</p>" + charts.html(figures.embedding_map(table)))
    return "".join(parts)


def anchor(name: str) -> str:
    """An element id for a table's section."""
    return "table-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def frame_html(frame: pl.DataFrame) -> str:
    """A small frame as an HTML table: numbers right-aligned and rounded, times in UTC, statuses coloured."""
    numeric = [name for name, dtype in frame.schema.items() if dtype.is_numeric()]
    shown = frame.with_columns(
        *(pl.col(c).round_sig_figs(4) for c in numeric if frame.schema[c].is_float()),
        *(pl.col(c).dt.strftime("%Y-%m-%d %H:%M:%S") for c, t in frame.schema.items() if t.is_temporal()),
    ).with_columns(pl.all().cast(pl.String).fill_null(""))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for values in shown.iter_rows():
        cells = []
        for column, value in zip(frame.columns, values, strict=True):
            kind = "number" if column in numeric else f"status-{value}" if column == "status" else ""
            cells.append(f'<td class="{kind}">{html.escape(value)}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="frame"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
