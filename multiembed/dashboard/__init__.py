"""`multiembed dashboard`: one self-contained HTML page about a database's runs, rejects, quality and vectors.

`data` reads (DuckDB views of the bookkeeping tables, Lance versions and a bounded sample of vectors),
`figures` draws with Plotly, `page` assembles the HTML with Plotly's JavaScript inlined once, `serve`
serves it on a loopback port.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from multiembed.dashboard.data import load
from multiembed.dashboard.page import render
from schemas.config import ConfigError, PipelineConfig

PAGE_NAME = "index.html"


def build_dashboard(config: PipelineConfig, out: str | Path) -> Path:
    """Write the dashboard of `config`'s database to `out/index.html` (replacing it whole) and return its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = out / PAGE_NAME
    partial = out / f".{PAGE_NAME}.partial"
    partial.write_text(render(load(config), datetime.now(UTC)), encoding="utf-8")
    os.replace(partial, page)
    return page


def print_dashboard(config: PipelineConfig, out: str | Path, serve: bool, port: int) -> None:
    """Build the dashboard, say where it is, and serve it on 127.0.0.1:`port` until Ctrl-C if `serve`."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0 (any free port) to 65535, got {port}")
    page = build_dashboard(config, out)
    print(f"wrote {page} ({page.stat().st_size // 1024} KiB); open it in a browser, offline")
    if serve:
        from multiembed.dashboard.serve import serve as serve_page

        serve_page(page, port)
