"""Diff stage: compare a source with the latest version of each of its tables, before anything is embedded.

A row needs embedding when its id is new or its content hash (payload + everything that shapes the
vector) differs from the table's. DuckDB computes the hashes straight from the Parquet files and
anti-joins them with the table's (id, content_hash), spilling to disk if it must, so the diff does
not hold the source in memory. What comes back is small: the rows to embed, and the table's ids
whose (id, hash) no longer occurs in the source (changed, invalid now, or gone). A file DuckDB refuses
(text that is not valid UTF-8) is streamed to it by pyarrow instead, the bad values made null: valid
rows hash as always, and the bad ones are read again and rejected again, as rows never embedded are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import duckdb
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import embedding_metadata
from tasks.sources import Shard, is_bad_encoding, is_text_type, quote, rows_as_text
from tasks.write import hash_sql, open_table

Mode = Literal["create", "rebuild", "merge"]


@dataclass(frozen=True)
class TableDiff:
    """How one run changes one table.

    - create: the table does not exist; every row is embedded.
    - rebuild: the model, its preprocessing or the columns changed (or a full run was asked for): every
      row is embedded into a new version that replaces the table, so two models never share a version.
    - merge: only `todo` rows are embedded and merged in; `stale` ids are deleted unless re-embedded.
    """

    mode: Mode
    base_version: int | None
    todo: dict[str, np.ndarray] | None = None  # file -> sorted indices of its rows to embed
    stale: pa.Array | None = field(default=None)

    def rows_to_embed(self, shard: Shard) -> np.ndarray | None:
        """Row indices (in the file) of the shard to embed; None when every row is."""
        if self.todo is None:
            return None
        rows = self.todo.get(shard.file, np.empty(0, dtype=np.int64))
        lo, hi = np.searchsorted(rows, [shard.first_row, shard.first_row + shard.num_rows])
        return rows[lo:hi]


def same_contract(table: lancedb.table.Table, schema: pa.Schema) -> bool:
    """Whether the table was written by the same embedder, preprocessing and columns as `schema` says."""
    current = table.schema
    return ([(f.name, f.type) for f in current] == [(f.name, f.type) for f in schema]
            and embedding_metadata(current) == embedding_metadata(schema))


def _todo_by_file(rows: pa.Table) -> dict[str, np.ndarray]:
    """(file, row) pairs as each file's sorted row indices."""
    return {f: np.sort(rows.filter(pc.equal(rows["file"], f))["row"].to_numpy())
            for f in pc.unique(rows["file"]).to_pylist()}


def _payloads(con: duckdb.DuckDBPyConnection, value_sql: str, rows: Rows,
              payload: Callable[[pa.Array, str], pa.Array]) -> pa.Table:
    """(file, v, payload) for every distinct value of every Parquet file: what its content hash covers
    (`Modality.payload`, given the file's folder), for the values that name files."""
    values = rows.query(con, f"SELECT DISTINCT filename AS file, {value_sql} AS v FROM {{rows}} WHERE v IS NOT NULL")
    parts = []
    for file in pc.unique(values["file"]).to_pylist():
        mine = values.filter(pc.equal(values["file"], file))
        parts.append(mine.append_column("payload", payload(mine["v"].combine_chunks(), str(Path(file).parent))))
    return pa.concat_tables(parts) if parts else values.append_column("payload", pa.array([], pa.large_string()))


@dataclass(frozen=True)
class Rows:
    """The source's rows for the diff's queries (`{rows}` in them): DuckDB's own Parquet reader, or, for files it
    refuses, the same rows of `columns` streamed by pyarrow with text that is not valid UTF-8 made null."""

    files: tuple[str, ...]
    columns: dict[str, pa.DataType]
    streamed: bool = False

    def query(self, con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pa.Table:
        if self.streamed:  # a stream is read once: each query gets its own
            con.register("source_rows", rows_as_text(self.files, self.columns))
            return con.execute(sql.replace("{rows}", "source_rows"), params or {}).fetch_arrow_table()
        native = "read_parquet($files, filename = true, file_row_number = true)"
        return con.execute(sql.replace("{rows}", native), {"files": list(self.files), **(params or {})}
                           ).fetch_arrow_table()


def diff_table(
    db: lancedb.DBConnection, name: str, schema: pa.Schema, fingerprint: str, files: tuple[str, ...],
    id_column: str, value_sql: str, value_type: pa.DataType, full: bool,
    payload: Callable[[pa.Array, str], pa.Array] | None = None, columns: dict[str, pa.DataType] | None = None,
) -> TableDiff:
    """What this run must embed and may delete for table `name`, against its latest version.

    `value_sql` is the DuckDB expression of the embedded value over the Parquet files (see
    `SourceLayout.field_sql`) and `value_type` its Arrow type when read, so the hashes match the written ones;
    `columns` are the Parquet columns both read (id and the value's inputs, with their types).
    For string values of a modality with a `payload` (media paths), the hash covers the payload instead: the
    distinct paths are stamped once (a stat each) and joined in.
    """
    table = open_table(db, name)
    if table is None:
        return TableDiff("create", None)
    if full or not same_contract(table, schema):
        return TableDiff("rebuild", table.version)
    old = table.search().select(["id", "content_hash"]).limit(None).to_batches()
    rows = Rows(files, columns or {})
    with duckdb.connect() as con:
        con.register("old", old)
        con.execute("CREATE TEMP TABLE old_rows AS SELECT id, content_hash FROM old")  # a reader scans once
        try:
            todo, stale = _compare(con, rows, fingerprint, id_column, value_sql, value_type, payload)
        except duckdb.Error as e:
            if not is_bad_encoding(e) or not columns:
                raise
            todo, stale = _compare(con, replace(rows, streamed=True), fingerprint, id_column, value_sql, value_type,
                                   payload)
    return TableDiff("merge", table.version, _todo_by_file(todo), stale["id"].combine_chunks())


def _compare(con: duckdb.DuckDBPyConnection, rows: Rows, fingerprint: str, id_column: str, value_sql: str,
             value_type: pa.DataType, payload: Callable[[pa.Array, str], pa.Array] | None) -> tuple[pa.Table, pa.Table]:
    """(rows to embed as (file, row), the old ids whose (id, hash) is not in the source) against `old_rows`."""
    hashed, join = hash_sql("raw.v", value_type), ""
    if payload is not None and is_text_type(value_type):
        con.register("payloads", _payloads(con, value_sql, rows, payload))
        hashed = hash_sql("p.payload", pa.large_string())
        join = "LEFT JOIN payloads p ON p.file = raw.file AND p.v = raw.v"
    src = f"""raw AS (
        SELECT filename AS file, file_row_number AS row, {quote(id_column)} AS id, {value_sql} AS v FROM {{rows}}),
    src AS (SELECT raw.file, raw.row, raw.id, {hashed} AS h FROM raw {join})"""
    params = {"fp": fingerprint}
    todo = rows.query(con, f"""WITH {src}
        SELECT file, row::BIGINT AS row FROM src
        ANTI JOIN old_rows ON src.id = old_rows.id AND src.h = old_rows.content_hash""", params)
    stale = rows.query(con, f"""WITH {src}
        SELECT id FROM old_rows ANTI JOIN src ON src.id = old_rows.id AND src.h = old_rows.content_hash""", params)
    return todo, stale
