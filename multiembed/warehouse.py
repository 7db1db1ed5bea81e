"""The bookkeeping tables as DuckDB tables and documented views: what the dashboard and BI tools read.

`_runs`, `_rejects` and `_metrics` become DuckDB tables `runs`, `rejects` and `metrics` (empty, with
the right columns, where one does not exist yet), and four views answer the questions people chart: how
each run went (`run_history`), where each table stands now (`table_status`), how each quality check
moved over versions (`metric_history`), and why rows were rejected (`reject_reasons`). The dashboard
queries them in memory; `multiembed export` writes them to a file, so Superset, Metabase or Grafana
chart the same numbers without touching LanceDB.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import lancedb
import pyarrow as pa

from multiembed.catalog import table_names
from schemas.tables import METRICS_SCHEMA, METRICS_TABLE, REJECTS_SCHEMA, REJECTS_TABLE, RUNS_SCHEMA, RUNS_TABLE

# DuckDB table name -> (LanceDB table, schema of an empty stand-in when it does not exist yet)
BOOKKEEPING: dict[str, tuple[str, pa.Schema]] = {
    "runs": (RUNS_TABLE, RUNS_SCHEMA),
    "rejects": (REJECTS_TABLE, REJECTS_SCHEMA),
    "metrics": (METRICS_TABLE, METRICS_SCHEMA),
}

# The text and audio baselines (tasks.embedders.registry.BASELINES, which imports every model library to load),
# charted beside the neural embedders.
BASELINE_EMBEDDERS = ("tfidf", "logmel")
SIGNIFICANCE = 0.05  # a bias effect with details.p_value below this is significant

# Parts of `<source>__<column>__<embedder>`: source before the first `__`, embedder after the last.
_SOURCE = """regexp_extract("table", '^(.*?)__', 1)"""
_FIELD = """regexp_extract("table", '^.*?__(.*)__', 1)"""
_EMBEDDER = """regexp_extract("table", '.*__(.*)$', 1)"""

# name -> (what it answers, SQL, column -> what it holds)
VIEWS: dict[str, tuple[str, str, dict[str, str]]] = {
    "run_history": (
        "One row per run and table: the row accounting, time taken and throughput.",
        """SELECT run_id, flow_run_id, source, "table", version, published, rows_read, rows_embedded, rows_unchanged,
                  rows_rejected, rows_deleted, rows_truncated, started_at, finished_at, seconds,
                  rows_read / nullif(seconds, 0) AS rows_per_second
           FROM runs""",
        {"published": "false when nothing changed and no version was written (version is the kept one)",
         "rows_per_second": "rows_read / seconds"},
    ),
    "metric_history": (
        "One row per quality statistic of a table version (evaluate, bias, drift), with its threshold and status.",
        f"""SELECT "table", {_SOURCE} AS source, {_FIELD} AS field, {_EMBEDDER} AS embedder,
                   {_EMBEDDER} IN {BASELINE_EMBEDDERS} AS baseline, stage, metric, version, reference_version,
                   value, threshold, status,
                   CASE WHEN json_valid(details) THEN TRY_CAST(details ->> '$.p_value' AS DOUBLE) END AS p_value,
                   details, run_id, computed_at,
                   row_number() OVER (PARTITION BY "table", stage, metric
                                      ORDER BY version DESC, computed_at DESC) = 1 AS is_latest
            FROM metrics""",
        {"field": "the embedded input column",
         "baseline": f"the embedder is a baseline ({', '.join(BASELINE_EMBEDDERS)})",
         "reference_version": "drift: the version compared against",
         "status": "ok, warn or fail", "p_value": "details.p_value (bias: the significance of the effect size)",
         "is_latest": "the newest value of this check (table, stage, metric)"},
    ),
    "table_status": (
        "One row per table: its latest run and the worst status among the newest value of each of its checks.",
        f"""WITH last_run AS (
               SELECT * FROM run_history
               QUALIFY row_number() OVER (PARTITION BY "table" ORDER BY finished_at DESC, run_id DESC) = 1),
           checks AS (
               SELECT "table", max(version) AS checked_version,
                      count(*) FILTER (WHERE status = 'ok') AS checks_ok,
                      count(*) FILTER (WHERE status = 'warn') AS checks_warn,
                      count(*) FILTER (WHERE status = 'fail') AS checks_fail
               FROM metric_history WHERE is_latest GROUP BY "table")
           SELECT "table", coalesce(r.source, {_SOURCE}) AS source,
                  r.run_id AS last_run_id, r.finished_at AS last_run_at, r.version, r.published,
                  r.rows_read, r.rows_embedded, r.rows_unchanged, r.rows_rejected, r.rows_deleted, r.seconds,
                  r.rows_per_second, c.checked_version, coalesce(c.checks_ok, 0) AS checks_ok,
                  coalesce(c.checks_warn, 0) AS checks_warn, coalesce(c.checks_fail, 0) AS checks_fail,
                  CASE WHEN c.checks_fail > 0 THEN 'fail' WHEN c.checks_warn > 0 THEN 'warn'
                       WHEN c.checks_ok > 0 THEN 'ok' END AS status
           FROM last_run r FULL OUTER JOIN checks c USING ("table")""",
        {"version": "the table's version after its latest run", "checked_version": "newest version with checks",
         "status": "fail if any check's newest value fails, else warn if any warns, else ok; NULL without checks"},
    ),
    "reject_reasons": (
        "One row per table, stage and reason: how many rows were rejected, in how many runs, with example ids.",
        r"""SELECT "table", source, stage,
                   regexp_replace(regexp_replace(reason, '(: | \().*$', ''), '\d+', 'N', 'g') AS reason,
                   count(*) AS rejects, count(DISTINCT run_id) AS runs,
                   array_to_string(list_slice(list(DISTINCT id ORDER BY id) FILTER (WHERE id IS NOT NULL), 1, 5),
                                   ', ') AS example_ids,
                   min(reason) AS example_reason
            FROM rejects GROUP BY ALL""",
        {"stage": "validate, prepare or embed",
         "reason": "the reason up to its first ': ' or ' (', numbers as N: the kind, without a path or a count",
         "example_ids": "up to five rejected ids (null ids are not shown)",
         "example_reason": "one full reason of this kind"},
    ),
}


def open_database(database: str) -> lancedb.DBConnection | None:
    """A connection to the LanceDB database, or None for a local folder that does not exist (nothing written yet).

    `lancedb.connect` would create the folder; reading a dashboard or an export must not.
    """
    if "://" not in database and not Path(database).is_dir():
        return None
    return lancedb.connect(database)


def connect(database: str, path: str | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB with the database's bookkeeping tables and the documented `VIEWS`.

    In memory (no `path`), the tables are the Lance datasets themselves, scanned in place (columns and
    filters pushed down) whenever a view is read; in a file at `path`, they are copies, so the file stands
    on its own.
    """
    db = open_database(database)
    present = set(table_names(db)) if db is not None else set()
    con = duckdb.connect(path or ":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for name, (lance_name, schema) in BOOKKEEPING.items():
        source = db.open_table(lance_name).to_lance() if lance_name in present else schema.empty_table()
        if path is None:
            con.register(name, source)
        else:
            con.register("_scan", source)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _scan")
            con.unregister("_scan")
    for name, (summary, sql, columns) in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
        con.execute(f"COMMENT ON VIEW {name} IS {sql_literal(summary)}")
        for column, doc in columns.items():
            con.execute(f'COMMENT ON COLUMN {name}."{column}" IS {sql_literal(doc)}')
    return con


def sql_literal(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
