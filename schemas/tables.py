"""Arrow schemas of everything the pipeline writes: the contract dashboards and users query.

- `<source>__<column>__<embedder>`: one embedding table per (source, field, embedder).
- `_runs`: one row per run and table, with the row accounting
  (rows_read = rows_embedded + rows_unchanged + rows_rejected).
- `_rejects`: one row per rejected input row and table, with the stage and the reason.
- `_metrics`: one row per quality statistic (evaluation, bias, drift) of a table version, with its
  threshold and status; what dashboards chart and alert on.
"""

from __future__ import annotations

import re

import pyarrow as pa

# Source and field names: what may stand in table names and in paths made from them (lock files).
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"

RUNS_TABLE = "_runs"
REJECTS_TABLE = "_rejects"
METRICS_TABLE = "_metrics"
METADATA_PREFIX = "multiembed."

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("flow_run_id", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("rows_read", pa.int64(), nullable=False),
        pa.field("rows_embedded", pa.int64(), nullable=False),
        pa.field("rows_unchanged", pa.int64(), nullable=False),
        pa.field("rows_rejected", pa.int64(), nullable=False),
        pa.field("rows_deleted", pa.int64(), nullable=False),
        pa.field("rows_truncated", pa.int64(), nullable=False),
        pa.field("published", pa.bool_(), nullable=False),  # false: nothing changed, `version` is kept
        pa.field("flags", pa.string(), nullable=False),  # JSON {condition: rows}: embedded but counted (silent clip)
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string()),
        pa.field("column", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

METRIC_STATUSES = ("ok", "warn", "fail", "error")  # error: the statistic raised

METRICS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("reference_version", pa.int64()),  # drift: the version compared against
        pa.field("stage", pa.string(), nullable=False),  # evaluate, bias, drift
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("status", pa.string(), nullable=False),  # METRIC_STATUSES
        pa.field("details", pa.string()),  # JSON
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def table_name(source: str, column: str, embedder: str) -> str:
    """`<source>__<column>__<embedder>`, with characters LanceDB does not allow in names made `_`."""
    safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in embedder)
    return f"{source}__{column}__{safe}"


def source_of(table: str) -> str:
    """The source an embedding table belongs to (what `table_name` put first); ValueError for a name that
    no source makes (a bookkeeping table, `../`, any other character), so the name is safe in a path."""
    source = table.split("__", 1)[0]
    if "__" not in table or not re.fullmatch(NAME_PATTERN, source):
        raise ValueError(f"{table!r} is not an embedding table name (<source>__<field>__<embedder>)")
    return source


INPUT_STATS = "input_stats"


def embedding_schema(
    id_type: pa.DataType, dim: int, keep: list[pa.Field], metadata: dict[str, str], stats: tuple[str, ...] = ()
) -> pa.Schema:
    """Schema of an embedding table; `metadata` says what produced the vectors (self-describing).

    `stats` name the input statistics kept per row (`input_stats`: what the model saw, such as a text's
    tokens or an image's size), which input drift compares between versions.
    """
    fields = [
        pa.field("id", id_type, nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        *keep,
    ]
    if stats:
        fields.append(pa.field(INPUT_STATS, pa.struct([pa.field(n, pa.float64()) for n in stats])))
    return pa.schema(fields, metadata={METADATA_PREFIX + k: v for k, v in metadata.items()})


def embedding_metadata(schema: pa.Schema) -> dict[str, str]:
    """The `multiembed.*` metadata of an embedding table's schema, without the prefix."""
    raw = schema.metadata or {}
    return {
        k.decode()[len(METADATA_PREFIX) :]: v.decode()
        for k, v in raw.items()
        if k.decode().startswith(METADATA_PREFIX)
    }
