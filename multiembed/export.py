"""`multiembed export`: the bookkeeping tables for BI tools, as Parquet files and one DuckDB database file.

The folder gets `runs.parquet`, `rejects.parquet`, `metrics.parquet` and `multiembed.duckdb`, which holds
the same three tables and the documented views of `multiembed.warehouse` (`COMMENT ON` each view and
its less obvious columns, so a BI tool's schema browser shows what they mean). Each file is written
under a temporary name and then renamed, so a dashboard reading the folder never sees half a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from multiembed.warehouse import BOOKKEEPING, VIEWS, connect, sql_literal

DUCKDB_FILE = "multiembed.duckdb"


@dataclass(frozen=True)
class Exported:
    """What `export` wrote: the folder, and the row count of each bookkeeping table."""

    out: Path
    rows: dict[str, int]


def export(database: str, out: str | Path) -> Exported:
    """Write the database's bookkeeping tables and views to `out` (created if missing; earlier files replaced)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{DUCKDB_FILE}.partial"
    partial.unlink(missing_ok=True)
    con = connect(database, str(partial))
    try:
        rows = {}
        for name in BOOKKEEPING:
            rows[name] = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            target = out / f"{name}.parquet"
            con.execute(f"COPY {name} TO {sql_literal(f'{target}.partial')} (FORMAT parquet)")
            os.replace(f"{target}.partial", target)
    finally:
        con.close()
    os.replace(partial, out / DUCKDB_FILE)
    return Exported(out, rows)


def print_export(database: str, out: str | Path) -> None:
    """Export (see `export`) and say what was written and which views to query."""
    done = export(database, out)
    counts = ", ".join(f"{name}.parquet ({n} rows)" for name, n in done.rows.items())
    print(f"wrote to {done.out}: {counts}, and {DUCKDB_FILE} with the same tables and the views {', '.join(VIEWS)}")
