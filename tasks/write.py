"""Write stage: stage each shard's vectors and rejects, then publish one LanceDB version per table.

Shards write Parquet files under `<database>/_staging/<run_id>/`, where every worker and the flow can
reach them (a local folder or object storage). Publishing streams the staged files into the table in
one commit, so a reader never sees part of a run and memory does not grow with the number of rows.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import duckdb
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.tables import REJECTS_SCHEMA, REJECTS_TABLE, RUNS_SCHEMA, RUNS_TABLE
from tasks.validate import rejects_table


@dataclass(frozen=True)
class Staging:
    """Where one run stages its shard results: `<database>/_staging/<run_id>`."""

    database: str
    run_id: str

    @property
    def root(self) -> str:
        return f"{self.database.rstrip('/')}/_staging/{self.run_id}"

    def folder(self, kind: str, table: str) -> str:
        return f"{self.root}/{kind}/{table}"

    def write(self, kind: str, table: str, shard_key: str, data: pa.Table) -> None:
        """Write one shard's file atomically (temp name, then rename), so a re-run never reads half a file."""
        fs, folder = pafs.FileSystem.from_uri(self.folder(kind, table))
        fs.create_dir(folder, recursive=True)
        final = f"{folder}/{shard_key}.parquet"
        pq.write_table(data, final + ".tmp", filesystem=fs)
        fs.move(final + ".tmp", final)

    def read(self, kind: str, table: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.RecordBatchReader:
        """A stream over everything staged for `table` (empty if nothing was), optionally some columns only."""
        fs, folder = pafs.FileSystem.from_uri(self.folder(kind, table))
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
            return pa.RecordBatchReader.from_batches(wanted, iter(()))
        dataset = ds.dataset(folder, schema=schema, format="parquet", filesystem=fs)
        return dataset.scanner(columns=columns).to_reader()

    def remove(self) -> None:
        fs, root = pafs.FileSystem.from_uri(self.root)
        if fs.get_file_info(root).type == pafs.FileType.Directory:
            fs.delete_dir(root)


def shard_key(file: str, first_row: int) -> str:
    """A stable file name for a shard's staged results."""
    return f"{hashlib.sha256(file.encode()).hexdigest()[:12]}-{first_row:012d}"


def content_hashes(values: pa.ChunkedArray | pa.Array, fingerprint: str) -> pa.Array:
    """sha256 of (embedder fingerprint, payload) per row: changes when the input or the model does."""
    payload = pa.table({"v": values})
    cast = "encode(v)" if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else "v"
    with duckdb.connect() as con:
        con.register("payload", payload)
        result = con.execute(f"SELECT sha256(encode($fp) || {cast}) AS h FROM payload", {"fp": fingerprint})
        return result.fetch_arrow_table()["h"].combine_chunks().cast(pa.string())


def vectors_table(
    kept: pa.Table, vectors: np.ndarray, id_column: str, column: str, schema: pa.Schema, fingerprint: str,
    file: str,
) -> tuple[pa.Table, pa.Table]:
    """The embedding table rows for a shard, and reject records for rows whose vector is not finite."""
    finite = pa.array(np.isfinite(vectors).all(axis=1))
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    columns = {
        "id": kept[id_column],
        "content_hash": content_hashes(kept[column], fingerprint),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        **{f.name: kept[f.name] for f in schema if f.name not in ("id", "content_hash", "vector")},
    }
    rows = pa.table(columns).cast(schema)
    bad = kept.filter(pc.invert(finite))
    n = bad.num_rows
    rejects = rejects_table(file, bad, id_column, pa.repeat(pa.scalar(column), n), "embed",
                            pa.repeat(pa.scalar("model produced a non-finite vector"), n))
    return rows.filter(finite), rejects


def with_run_columns(rejects: pa.Table, run_id: str, source: str, table: str) -> pa.Table:
    """Reject records in `_rejects` form: the run, source and table they count against."""
    n = rejects.num_rows
    extra = {"run_id": run_id, "source": source, "table": table}
    columns = {name: pa.repeat(pa.scalar(value), n) for name, value in extra.items()}
    return pa.table({**columns, **{c: rejects[c] for c in rejects.column_names}}).select(REJECTS_SCHEMA.names).cast(
        REJECTS_SCHEMA
    )


def open_table(db: lancedb.DBConnection, name: str) -> lancedb.table.Table | None:
    """The table, or None if the database does not have it yet."""
    try:
        return db.open_table(name)
    except ValueError:
        return None


def count_deleted(previous: lancedb.table.Table, new_ids: pa.RecordBatchReader) -> int:
    """How many ids of the table's latest version are not among `new_ids`."""
    old_ids = previous.search().select(["id"]).limit(None).to_batches()
    with duckdb.connect() as con:
        con.register("old_ids", old_ids)
        con.register("new_ids", new_ids)
        return con.execute("SELECT count(*) FROM old_ids ANTI JOIN new_ids USING (id)").fetchone()[0]


def publish(db: lancedb.DBConnection, name: str, schema: pa.Schema, staging: Staging, tag: str) -> tuple[int, int]:
    """Replace the table's rows with everything staged for it, in one new version tagged `tag`.

    Returns (version, rows_deleted), where rows_deleted counts ids of the previous version that the
    new one no longer has. Earlier versions stay readable (LanceDB keeps them).
    """
    previous = open_table(db, name)
    deleted = 0
    if previous is not None:
        deleted = count_deleted(previous, staging.read("vectors", name, schema, columns=["id"]))
    table = db.create_table(
        name, data=staging.read("vectors", name, schema), schema=schema,
        mode="overwrite" if previous is not None else "create",
    )
    table.tags.create(tag, table.version)
    return table.version, deleted


def append(db: lancedb.DBConnection, name: str, schema: pa.Schema, data: pa.RecordBatchReader | pa.Table) -> None:
    """Append rows to a bookkeeping table (`_runs`, `_rejects`), creating it on first use."""
    table = open_table(db, name)
    if table is None:
        db.create_table(name, data=data, schema=schema)
    else:
        table.add(data)


def record_run(db: lancedb.DBConnection, rows: list[dict]) -> None:
    """Append one `_runs` row per table of a run."""
    append(db, RUNS_TABLE, RUNS_SCHEMA, pa.Table.from_pylist(rows, schema=RUNS_SCHEMA))


def record_rejects(db: lancedb.DBConnection, staging: Staging, tables: list[str]) -> None:
    """Append every reject the run staged, for all its tables, in one version of `_rejects`."""
    readers = [staging.read("rejects", t, REJECTS_SCHEMA) for t in tables]
    append(db, REJECTS_TABLE, REJECTS_SCHEMA,
           pa.RecordBatchReader.from_batches(REJECTS_SCHEMA, itertools.chain.from_iterable(readers)))
