"""Diff stage: compare a source with the latest version of each of its tables, before anything is embedded.

A row needs embedding when its id is new or its content hash (payload + everything that shapes the
vector) differs from the table's. DuckDB computes the hashes straight from the Parquet files and
anti-joins them with the table's (id, content_hash), spilling to disk if it must, so the diff does
not hold the source in memory. What comes back is small: the rows to embed, and the table's ids
whose (id, hash) no longer occurs in the source (changed, invalid now, or gone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import duckdb
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import embedding_metadata
from tasks.sources import Shard, quote
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
    todo: dict[tuple[str, int], np.ndarray] | None = None  # (file, shard first row) -> rows to embed
    stale: pa.Array | None = field(default=None)

    def rows_to_embed(self, shard: Shard) -> np.ndarray | None:
        """Row indices (in the file) of the shard to embed; None when every row is."""
        if self.todo is None:
            return None
        return self.todo.get((shard.file, shard.first_row), np.empty(0, dtype=np.int64))


def same_contract(table: lancedb.table.Table, schema: pa.Schema) -> bool:
    """Whether the table was written by the same embedder, preprocessing and columns as `schema` says."""
    current = table.schema
    return ([(f.name, f.type) for f in current] == [(f.name, f.type) for f in schema]
            and embedding_metadata(current) == embedding_metadata(schema))


def _todo_by_shard(rows: pa.Table, shards: list[Shard]) -> dict[tuple[str, int], np.ndarray]:
    """Group (file, row) pairs by the shard that holds them."""
    out: dict[tuple[str, int], np.ndarray] = {}
    by_file: dict[str, list[Shard]] = {}
    for s in shards:
        by_file.setdefault(s.file, []).append(s)
    for file, group in by_file.items():
        in_file = np.sort(rows.filter(pc.equal(rows["file"], file))["row"].to_numpy())
        for s in group:
            lo, hi = np.searchsorted(in_file, [s.first_row, s.first_row + s.num_rows])
            if hi > lo:
                out[(file, s.first_row)] = in_file[lo:hi]
    return out


def diff_table(
    db: lancedb.DBConnection, name: str, schema: pa.Schema, fingerprint: str, files: tuple[str, ...],
    shards: list[Shard], id_column: str, value_sql: str, value_type: pa.DataType, full: bool,
) -> TableDiff:
    """What this run must embed and may delete for table `name`, against its latest version.

    `value_sql` is the DuckDB expression of the embedded value over the Parquet files (see
    `SourceLayout.field_sql`) and `value_type` its Arrow type when read, so the hashes match the written ones.
    """
    table = open_table(db, name)
    if table is None:
        return TableDiff("create", None)
    if full or not same_contract(table, schema):
        return TableDiff("rebuild", table.version)
    old = table.search().select(["id", "content_hash"]).limit(None).to_batches()
    with duckdb.connect() as con:
        con.register("old", old)
        con.execute("CREATE TEMP TABLE old_rows AS SELECT id, content_hash FROM old")  # a reader scans once
        src = f"""src AS (
            SELECT filename AS file, file_row_number AS row, {quote(id_column)} AS id,
                   {hash_sql(value_sql, value_type)} AS h
            FROM read_parquet($files, filename = true, file_row_number = true))"""
        params = {"fp": fingerprint, "files": list(files)}
        todo = con.execute(f"""WITH {src}
            SELECT file, row::BIGINT AS row FROM src
            ANTI JOIN old_rows ON src.id = old_rows.id AND src.h = old_rows.content_hash
        """, params).fetch_arrow_table()
        stale = con.execute(f"""WITH {src}
            SELECT id FROM old_rows ANTI JOIN src ON src.id = old_rows.id AND src.h = old_rows.content_hash
        """, params).fetch_arrow_table()
    return TableDiff("merge", table.version, _todo_by_shard(todo, shards), stale["id"].combine_chunks())
