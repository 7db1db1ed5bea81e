"""Write stage: stage each shard's vectors and rejects, then publish one LanceDB version per table.

Shards write Parquet files under `<database>/_staging/<run_id>/`, where every worker and the flow can
reach them (a local folder or object storage). Publishing streams the staged files into the table in
one commit, so a reader never sees part of a run and memory does not grow with the number of rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Callable
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

STAGED_REJECTS_SCHEMA = pa.schema([f for f in REJECTS_SCHEMA if f.name != "run_id"])


@dataclass(frozen=True)
class Staging:
    """Where a source's shard results wait for publishing: `<database>/_staging/<key>`.

    `key` is derived from everything that decides the results (inputs, models, base versions), so a run
    that died is resumed by the next identical run: shards with a done marker are not embedded again.
    """

    database: str
    key: str

    @property
    def root(self) -> str:
        return f"{self.database.rstrip('/')}/_staging/{self.key}"

    def folder(self, kind: str, table: str) -> str:
        return f"{self.root}/{kind}/{table}"

    def _put(self, uri: str, name: str, write_to: Callable[[str, pafs.FileSystem], None]) -> None:
        """Write file `name` in folder `uri` atomically (temp name, then rename), so a re-run never reads half
        a file.

        The temp name is unique, so two attempts at the same shard (a retry while a worker thought lost
        still runs) never write into one file, and hidden (a leading dot), so the half file of a killed
        attempt is skipped by `read`'s dataset discovery, which ignores such names."""
        fs, folder = pafs.FileSystem.from_uri(uri)
        fs.create_dir(folder, recursive=True)
        temp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        write_to(temp, fs)
        fs.move(temp, f"{folder}/{name}")

    def write(self, kind: str, table: str, shard_key: str, data: pa.Table) -> None:
        """Stage one shard's rows for `table` (kind: vectors or rejects)."""
        self._put(self.folder(kind, table), f"{shard_key}.parquet",
                  lambda path, fs: pq.write_table(data, path, filesystem=fs))

    def mark_done(self, table: str, shard_key: str, figures: dict[str, int]) -> None:
        """Record that a shard is fully staged for `table`, with its figures (written last)."""
        self._put(self.folder("done", table), f"{shard_key}.json", _bytes_writer(json.dumps(figures).encode()))

    def put_file(self, name: str, blob: bytes) -> None:
        """Write file `name` with `blob` at the top of the staging folder, atomically (the publish intent)."""
        self._put(self.root, name, _bytes_writer(blob))

    def done(self, table: str, shard_key: str) -> dict[str, int] | None:
        """The figures of a shard staged earlier for `table`, or None if it is not done."""
        fs, folder = pafs.FileSystem.from_uri(self.folder("done", table))
        try:
            with fs.open_input_stream(f"{folder}/{shard_key}.json") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

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


def _bytes_writer(blob: bytes) -> Callable[[str, pafs.FileSystem], None]:
    """A `Staging._put` writer of `blob`."""
    def put(path: str, fs: pafs.FileSystem) -> None:
        with fs.open_output_stream(path) as f:
            f.write(blob)

    return put


def staging_folders(database: str, source: str | None = None) -> list[Staging]:
    """The staging folders of `source`'s runs (`_staging/<source>-<key>`), or of every source's."""
    fs, root = pafs.FileSystem.from_uri(f"{database.rstrip('/')}/_staging")
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    return [Staging(database, f.base_name) for f in fs.get_file_info(pafs.FileSelector(root))
            if f.type == pafs.FileType.Directory and source in (None, f.base_name.rsplit("-", 1)[0])]


def shard_key(file: str, first_row: int) -> str:
    """A stable file name for a shard's staged results."""
    return f"{hashlib.sha256(file.encode()).hexdigest()[:12]}-{first_row:012d}"


def hash_sql(column: str, dtype: pa.DataType) -> str:
    """DuckDB expression for a row's content hash: sha256 of the fingerprint `$fp` and the payload.

    The one definition used both when writing rows and when diffing a source against a table.
    """
    if pa.types.is_struct(dtype):  # a table field: its columns' values as DuckDB prints the struct
        return f"sha256(encode($fp) || encode(CAST({column} AS VARCHAR)))"
    text = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    return f"sha256(encode($fp) || {f'encode({column})' if text else column})"


def content_hashes(values: pa.ChunkedArray | pa.Array, fingerprint: str) -> pa.Array:
    """sha256 of (embedder fingerprint, payload) per row: changes when the input or the model does."""
    payload = pa.table({"v": values})
    with duckdb.connect() as con:
        con.register("payload", payload)
        result = con.execute(f"SELECT {hash_sql('v', values.type)} AS h FROM payload", {"fp": fingerprint})
        return result.fetch_arrow_table()["h"].combine_chunks().cast(pa.string())


def vectors_table(
    kept: pa.Table, vectors: np.ndarray, id_column: str, column: str, schema: pa.Schema, fingerprint: str,
    file: str, payload: pa.Array | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The embedding table rows for a shard, and reject records for rows whose vector is not finite.
    The content hash covers `payload` (`Modality.payload`), or else the column's values."""
    finite = pa.array(np.isfinite(vectors).all(axis=1))
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    columns = {
        "id": kept[id_column],
        "content_hash": content_hashes(kept[column] if payload is None else payload, fingerprint),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        **{f.name: kept[f.name] for f in schema if f.name not in ("id", "content_hash", "vector")},
    }
    rows = pa.table(columns).cast(schema)
    bad = kept.filter(pc.invert(finite))
    n = bad.num_rows
    rejects = rejects_table(file, bad, id_column, pa.repeat(pa.scalar(column), n), "embed",
                            pa.repeat(pa.scalar("model produced a non-finite vector"), n))
    return rows.filter(finite), rejects


def staged_rejects(rejects: pa.Table, source: str, table: str) -> pa.Table:
    """Reject records with the source and table they count against (the run id is added when recorded)."""
    n = rejects.num_rows
    columns = {"source": pa.repeat(pa.scalar(source), n), "table": pa.repeat(pa.scalar(table), n)}
    return pa.table({**columns, **{c: rejects[c] for c in rejects.column_names}}).select(
        STAGED_REJECTS_SCHEMA.names).cast(STAGED_REJECTS_SCHEMA)


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


def replace(db: lancedb.DBConnection, name: str, schema: pa.Schema, staging: Staging) -> int:
    """Make everything staged for the table its new content, in one new version; returns it.

    Earlier versions stay readable (LanceDB keeps them).
    """
    table = db.create_table(
        name, data=staging.read("vectors", name, schema), schema=schema,
        mode="overwrite" if open_table(db, name) is not None else "create",
    )
    return table.version


def ids_to_delete(stale: pa.Array, staging: Staging, name: str, schema: pa.Schema) -> pa.Array:
    """The stale ids (no longer in the source with the same content) that this run did not re-embed."""
    with duckdb.connect() as con:
        con.register("stale", pa.table({"id": stale}))
        con.register("embedded", staging.read("vectors", name, schema, columns=["id"]))
        return con.execute("SELECT id FROM stale ANTI JOIN embedded USING (id)").fetch_arrow_table()["id"]


def sql_in(column: str, values: pa.Array) -> str:
    """A SQL `column IN (...)` predicate for LanceDB, with string values quoted."""
    if pa.types.is_integer(values.type):
        items = ", ".join(str(v) for v in values.to_pylist())
    else:
        items = ", ".join("'" + v.replace("'", "''") + "'" for v in values.to_pylist())
    return f"{column} IN ({items})"


def merge(db: lancedb.DBConnection, name: str, schema: pa.Schema, staging: Staging, delete: pa.Array) -> int:
    """Upsert the staged rows by id and delete the `delete` ids, in one new version; returns it.

    LanceDB retries the commit if another writer committed in between, so concurrent writers never
    lose or duplicate rows.
    """
    table = db.open_table(name)
    builder = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
    if len(delete):
        builder = builder.when_not_matched_by_source_delete(sql_in("id", delete))
    return builder.execute(staging.read("vectors", name, schema)).version


def append(db: lancedb.DBConnection, name: str, schema: pa.Schema, data: pa.RecordBatchReader | pa.Table) -> None:
    """Append rows to a bookkeeping table (`_runs`, `_rejects`, `_metrics`), creating it on first use.

    A table an earlier version of multiembed created gets the columns added since (nulls in its old rows)."""
    table = open_table(db, name)
    if table is None:
        db.create_table(name, data=data, schema=schema)
        return
    if missing := [f.with_nullable(True) for f in schema if f.name not in table.schema.names]:
        table.add_columns(pa.schema(missing))
    table.add(data)


def record_run(db: lancedb.DBConnection, rows: list[dict]) -> None:
    """Append one `_runs` row per table of a run."""
    append(db, RUNS_TABLE, RUNS_SCHEMA, pa.Table.from_pylist(rows, schema=RUNS_SCHEMA))


def record_rejects(db: lancedb.DBConnection, staging: Staging, tables: list[str], run_id: str) -> None:
    """Append every reject staged for `tables`, with the run id, in one version of `_rejects`."""
    staged = itertools.chain.from_iterable(staging.read("rejects", t, STAGED_REJECTS_SCHEMA) for t in tables)
    batches = (pa.RecordBatch.from_arrays([pa.repeat(pa.scalar(run_id), b.num_rows), *b.columns],
                                          schema=REJECTS_SCHEMA) for b in staged)
    append(db, REJECTS_TABLE, REJECTS_SCHEMA, pa.RecordBatchReader.from_batches(REJECTS_SCHEMA, batches))
