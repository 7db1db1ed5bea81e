"""The dashboard's charts, as Plotly figures: run timelines, rejects, quality over versions, embedding maps."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from multiembed.dashboard.data import TableData
from multiembed.warehouse import SIGNIFICANCE

STATUS_COLOURS = {"ok": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828", "error": "#6a1b9a"}
ROW_KINDS = {  # run_history column -> (bar name, colour)
    "rows_embedded": ("embedded", "#1f77b4"),
    "rows_unchanged": ("unchanged", "#b0b0b0"),
    "rows_rejected": ("rejected", "#d62728"),
    "rows_deleted": ("deleted", "#8c564b"),
}
PALETTE = qualitative.D3  # categories: tables, embedders, labels
MAP_LABELS = len(PALETTE) - 1  # the most frequent labels get a colour each, the rest are "other"
METRICS_PER_ROW = 3


def _layout(fig: go.Figure, height: int, **layout: object) -> go.Figure:
    """The look every chart shares; `layout` overrides it."""
    fig.update_layout({"template": "plotly_white", "margin": {"l": 60, "r": 30, "t": 50, "b": 50},
                       "legend": {"orientation": "h", "y": -0.15, "traceorder": "normal"}}, height=height, **layout)
    return fig


def timeline(table: TableData) -> go.Figure:
    """Rows embedded, unchanged, rejected and deleted per run (stacked bars) and rows/s (line), with the model
    that made each version written over the run where it changed."""
    model = [c for c in ("embedder", "model_id", "revision") if c in table.versions.columns]
    runs = table.runs.join(table.versions.select("version", *model), on="version", how="left").with_columns(
        run=pl.format("{} v{}{}", pl.col("finished_at").dt.strftime("%Y-%m-%d %H:%M:%S"), pl.col("version"),
                      pl.when(pl.col("published")).then(pl.lit("")).otherwise(pl.lit(" (no change)"))),
        model=pl.concat_str([pl.col(c).fill_null("?") for c in model], separator=" ") if model else pl.lit(""),
    )
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    hover = "%{x}<br>%{y} rows %{fullData.name}<br>run %{customdata[0]}<br>model %{customdata[1]}<extra></extra>"
    custom = runs.select("run_id", "model").to_numpy()
    for column, (name, colour) in ROW_KINDS.items():
        fig.add_trace(go.Bar(x=runs["run"], y=runs[column], name=name, marker_color=colour, customdata=custom,
                             hovertemplate=hover), secondary_y=False)
    fig.add_trace(go.Scatter(x=runs["run"], y=runs["rows_per_second"], name="rows/s", mode="lines+markers",
                             line={"color": "#222"}, customdata=runs.select("seconds").to_numpy(),
                             hovertemplate="%{y:.0f} rows/s, %{customdata[0]:.1f} s<extra></extra>"),
                  secondary_y=True)
    changed = runs.filter(pl.col("model") != pl.col("model").shift(1).fill_null(""))
    for run, text in zip(changed["run"], changed["model"], strict=True):
        fig.add_annotation(x=run, y=1.02, yref="paper", text=f"model: {text}", showarrow=False, font={"size": 11},
                           xanchor="center")
    fig.update_yaxes(title_text="rows", secondary_y=False)
    fig.update_yaxes(title_text="rows/s", secondary_y=True, rangemode="tozero", showgrid=False, tickformat=".0f")
    return _layout(fig, 380, barmode="stack", xaxis={"type": "category"})


def rejects_chart(reasons: pl.DataFrame) -> go.Figure:
    """Rejected rows by stage and reason (one bar each), stacked by table."""
    reasons = reasons.with_columns(kind=pl.format("{}: {}", pl.col("stage"), pl.col("reason")))
    fig = go.Figure()
    for i, (name,) in enumerate(reasons.select("table").unique().sort("table").iter_rows()):
        mine = reasons.filter(pl.col("table") == name)
        fig.add_trace(go.Bar(y=mine["kind"], x=mine["rejects"], orientation="h", name=name,
                             marker_color=PALETTE[i % len(PALETTE)], customdata=mine.select("example_ids").to_numpy(),
                             hovertemplate="%{y}<br>%{x} rows<br>e.g. ids %{customdata[0]}<extra>%{fullData.name}"
                                           "</extra>"))
    kinds = reasons["kind"].n_unique()
    return _layout(fig, 160 + 28 * kinds, barmode="stack", xaxis={"title": {"text": "rejected rows"}},
                   yaxis={"automargin": True, "categoryorder": "total ascending"})


def quality_chart(metrics: pl.DataFrame, title: str) -> go.Figure:
    """One panel per metric of one field and stage: the value over versions per embedder (baselines dotted, with
    diamonds), markers filled with the status colour (open when a bias effect is not significant), thresholds
    dashed."""
    latest = metrics.sort("computed_at").unique(["table", "stage", "metric", "version"], keep="last")
    names = sorted(latest["metric"].unique())
    cols = min(METRICS_PER_ROW, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, vertical_spacing=0.25 / rows)
    embedders = latest.select("embedder", "baseline").unique().sort("baseline", "embedder")
    for i, (embedder, baseline) in enumerate(embedders.iter_rows()):
        colour = PALETTE[i % len(PALETTE)]
        for j, metric in enumerate(names):
            mine = latest.filter((pl.col("embedder") == embedder) & (pl.col("metric") == metric)).sort("version")
            if mine.is_empty():
                continue
            where = {"row": j // cols + 1, "col": j % cols + 1}
            significant = mine["p_value"].is_null() | (mine["p_value"] < SIGNIFICANCE)
            fig.add_trace(go.Scatter(
                x=mine["version"], y=mine["value"], mode="lines+markers", name=embedder, legendgroup=embedder,
                showlegend=j == 0, line={"color": colour, "dash": "dot" if baseline else "solid"},
                marker={"size": 12, "color": [STATUS_COLOURS.get(s, "#000") for s in mine["status"]],
                        "symbol": [("diamond" if baseline else "circle") + ("" if s else "-open") for s in significant],
                        "line": {"width": 2, "color": colour}},
                customdata=mine.select("status", "threshold", "p_value", "reference_version").to_numpy(),
                hovertemplate=f"{embedder} {metric}<br>version %{{x}}: %{{y:.4g}} (%{{customdata[0]}})<br>"
                              "threshold %{customdata[1]}<br>p %{customdata[2]}<br>reference version "
                              "%{customdata[3]}<extra></extra>",
            ), **where)
            fig.add_trace(go.Scatter(x=mine["version"], y=mine["threshold"], mode="lines", name="threshold",
                                     legendgroup="threshold", showlegend=i == 0 and j == 0, hoverinfo="skip",
                                     line={"color": colour, "dash": "dash", "width": 1}), **where)
    fig.update_xaxes(title_text="version", tickmode="linear", dtick=1)
    return _layout(fig, 120 + 280 * rows, title={"text": title, "font": {"size": 14}})


def embedding_map(table: TableData) -> go.Figure:
    """The sampled vectors in 2-D (PCA), hover showing the id; coloured by label (latest version) with a
    button to colour by version instead, or by version only when the table has no label column."""
    points = table.points
    traces = []
    if table.label is not None:
        latest = points.filter(pl.col("version") == points["version"].max())
        top = latest["label"].drop_nulls().value_counts(sort=True)["label"].head(MAP_LABELS)
        latest = latest.with_columns(group=pl.when(pl.col("label").is_null()).then(pl.lit("(none)"))
                                     .when(pl.col("label").is_in(top.implode())).then(pl.col("label"))
                                     .otherwise(pl.lit("other")))
        traces += [("label", f"{table.label}={name}", latest.filter(pl.col("group") == name))
                   for name in latest["group"].unique().sort()]
    versions = points["version"].unique().sort()
    traces += [("version", f"v{v}", points.filter(pl.col("version") == v)) for v in versions]
    by_version = sample_colorscale("Viridis", max(len(versions), 2), high=0.85)[: len(versions)]  # needs 2 points
    colours = [*PALETTE[: len(traces) - len(versions)], *by_version]
    fig = go.Figure()
    first = traces[0][0]
    for (kind, name, mine), colour in zip(traces, colours, strict=True):
        fig.add_trace(go.Scatter(x=mine["x"], y=mine["y"], mode="markers", name=name, hovertext=mine["id"],
                                 visible=kind == first, marker={"size": 7, "opacity": 0.75, "color": colour},
                                 hovertemplate="id %{hovertext}<extra>%{fullData.name}</extra>"))
    kinds = [kind for kind, _, _ in traces]
    buttons = [{"label": f"colour by {k}", "method": "restyle", "args": [{"visible": [x == k for x in kinds]}]}
               for k in dict.fromkeys(kinds)]
    menus = [{"buttons": buttons, "type": "buttons", "direction": "right", "x": 0, "y": 1.12}] if len(buttons) > 1 \
        else []
    return _layout(fig, 460, updatemenus=menus, xaxis={"title": {"text": "PC 1"}},
                   yaxis={"title": {"text": "PC 2"}}, legend={"orientation": "v"})
