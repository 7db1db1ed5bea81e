"""Read stage: find a source's Parquet files, check them before any work, cut them into shards, read a shard.

Everything that would make a run fail part way (a missing file, an empty glob, a missing or mistyped
column, a file that is not Parquet) is found here, from the files' footers alone, and reported as an
InputError naming the file, the column and what was expected.

A value is not checked here: a string column may hold bytes that are not UTF-8 (Parquet writers, pyarrow
included, do not check), and such a row is a reject of the validate stage (`invalid_utf8`), not a failed run.
pyarrow reads those bytes as they are; DuckDB refuses the whole file, so every DuckDB read here falls back to
the same rows streamed by pyarrow with text as bytes when it does (`over_rows`, `_read_slice`).
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.config import SourceConfig
from tasks.embedders.base import Modality


class InputError(ValueError):
    """Input that cannot be read as configured; found before any work, so nothing is written."""


@dataclass(frozen=True)
class Shard:
    """Rows of one file: the unit of work of one task (seconds, not milliseconds). Whole row groups, or
    (`partial`) a slice of a row group bigger than a shard, read by row number."""

    file: str
    row_groups: tuple[int, ...]
    first_row: int  # index in the file of the shard's first row
    num_rows: int
    partial: bool = False


@dataclass(frozen=True)
class SourceLayout:
    """The checked files of a source and the Arrow types every shard is cast to."""

    files: tuple[str, ...]
    schema: pa.Schema  # id, the fields (a table field as a struct of its columns) and the keep columns
    composites: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table field -> its input columns

    def input_types(self, key: str) -> dict[str, pa.DataType]:
        """The Parquet columns a field is read from, with the types they are read as (a table field: its inputs)."""
        value_type = self.schema.field(key).type
        return {f.name: f.type for f in value_type} if key in self.composites else {key: value_type}

    def field_sql(self, key: str) -> str:
        """DuckDB expression for a field's value straight from the Parquet files (a struct for a table field)."""
        if key in self.composites:
            return "struct_pack(" + ", ".join(f"{quote(c)} := {quote(c)}" for c in self.composites[key]) + ")"
        return quote(key)


def quote(column: str) -> str:
    """A column name as a DuckDB identifier."""
    return '"' + column.replace('"', '""') + '"'


def resolve_files(path: str) -> list[str]:
    """A Parquet file, every *.parquet below a folder, or a glob's matches, sorted."""
    if "://" in path:
        raise InputError(f"{path}: only local paths are supported for sources so far")
    p = Path(path)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet") if f.is_file())
        if not files:
            raise InputError(f"{path}: the folder holds no *.parquet files")
        return files
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise InputError(f"{path}: the pattern matches no files")
        return files
    raise InputError(f"{path}: no such file or folder")


def is_text_type(t: pa.DataType) -> bool:
    """Strings of any Arrow layout, dictionary-encoded ones (pandas categoricals) included."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


# Valid UTF-8 (RFC 3629: shortest forms only, no surrogates, nothing above U+10FFFF) as a pattern over bytes:
# RE2 matches a binary value byte by byte (as Latin-1), so each `\xNN` here is one byte.
UTF8 = (r"\A(?:[\x00-\x7F]|[\xC2-\xDF][\x80-\xBF]|\xE0[\xA0-\xBF][\x80-\xBF]|[\xE1-\xEC\xEE\xEF][\x80-\xBF]{2}"
        r"|\xED[\x80-\x9F][\x80-\xBF]|\xF0[\x90-\xBF][\x80-\xBF]{2}|[\xF1-\xF3][\x80-\xBF]{3}"
        r"|\xF4[\x80-\x8F][\x80-\xBF]{2})*\z")


def invalid_utf8(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Per value, whether it is a string whose bytes are not valid UTF-8 (a lone surrogate, an overlong form,
    a stray byte); False for nulls and for values that are not strings.

    Arrow's string kernels raise on such a value for the whole array, so every check of source text runs
    this first. Arrow has no per-value UTF-8 check: the array is validated whole (SIMD, the usual case), and
    only when that fails does a regular expression over the values' bytes say which ones are bad.
    """
    if isinstance(values, pa.ChunkedArray):
        return pa.chunked_array([invalid_utf8(chunk) for chunk in values.chunks], pa.bool_())
    if not is_text_type(values.type):
        return pa.repeat(pa.scalar(False), len(values))
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.large_string())  # decodes dictionaries and views; checks nothing
    try:
        values.validate(full=True)
        return pa.repeat(pa.scalar(False), len(values))
    except pa.ArrowInvalid:
        as_bytes = values.view(pa.binary() if pa.types.is_string(values.type) else pa.large_binary())
        return pc.fill_null(pc.invert(pc.match_substring_regex(as_bytes, UTF8)), False)


def _id_type(t: pa.DataType) -> pa.DataType | None:
    """The type ids are read as: uint64 kept whole (it does not fit int64), other integers int64, strings."""
    if pa.types.is_uint64(t):
        return pa.uint64()
    if pa.types.is_integer(t):
        return pa.int64()
    return pa.string() if is_text_type(t) else None


def _read_schema(file: str) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{file}: cannot be read as Parquet ({e})") from None


def inspect_source(source: SourceConfig, modalities: dict[str, Modality]) -> SourceLayout:
    """Check every file's columns and types against the config; the layout shards are read with."""
    files = resolve_files(source.path)
    wanted: dict[str, pa.DataType] = {}
    for file in files:
        schema = _read_schema(file)
        needed = [source.id, *(c for f in source.fields for c in f.inputs), *source.keep]
        missing = [c for c in dict.fromkeys(needed) if c not in schema.names]
        if missing:
            raise InputError(
                f"{file}: missing column(s) {missing}; the file has {schema.names}. "
                "Fix the config's id/fields/keep or the file."
            )
        id_type = _id_type(schema.field(source.id).type)
        if id_type is None:
            raise InputError(
                f"{file}: id column {source.id!r} is {schema.field(source.id).type}; "
                "expected integers or strings"
            )
        fields = {}
        for f in source.fields:
            modality = modalities[f.modality]
            for column in f.inputs:
                found = schema.field(column).type
                if not modality.accepts(found):
                    raise InputError(
                        f"{file}: column {column!r} is {found}; modality {f.modality!r} expects {modality.expected}"
                    )
            storage = [pa.field(c, modality.storage(schema.field(c).type)) for c in f.inputs]
            fields[f.key] = storage[0].type if f.column is not None else pa.struct(storage)
        types = {source.id: id_type, **fields, **{c: schema.field(c).type for c in source.keep}}
        for column, t in types.items():
            if wanted.setdefault(column, t) != t:
                raise InputError(
                    f"{file}: column {column!r} is {t} here but {wanted[column]} in {files[0]}; "
                    "every file of a source must use the same types"
                )
    composites = {f.key: tuple(f.inputs) for f in source.fields if f.column is None}
    return SourceLayout(tuple(files), pa.schema([pa.field(c, t) for c, t in wanted.items()]), composites)


def plan_shards(files: tuple[str, ...], shard_rows: int) -> list[Shard]:
    """Pack consecutive row groups into shards of about `shard_rows` rows; a row group bigger than that is
    cut into slices of `shard_rows` rows, so no task holds more than a shard's rows however the file was
    written (pandas and pyarrow write a million rows per row group by default)."""
    shards = []
    for file in files:
        meta = pq.ParquetFile(file).metadata
        groups: list[int] = []
        first = rows = offset = 0  # the pending shard's first row and rows; the file row of row group i
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if groups and (rows + n > shard_rows or n > shard_rows):
                shards.append(Shard(file, tuple(groups), first, rows))
                groups, rows = [], 0
            if n > shard_rows:
                shards += [Shard(file, (i,), offset + start, min(shard_rows, n - start), partial=True)
                           for start in range(0, n, shard_rows)]
            elif n:
                if not groups:
                    first = offset
                groups.append(i)
                rows += n
            offset += n
        if groups:
            shards.append(Shard(file, tuple(groups), first, rows))
    return shards


def find_duplicates(files: tuple[str, ...], id_column: str) -> pa.Table:
    """Every repeat of an id after its first appearance (file order, then row order).

    Returns columns file, row, first_file, first_row. DuckDB reads only the id column and spills to
    disk if it must, so this stays within memory however many rows the source has. String ids compare
    as bytes, so ids that are not valid UTF-8 (rejected later) do not stop the run.
    """
    query = f"""
        WITH src AS (
            SELECT {quote(id_column)} AS id, filename AS file, file_row_number AS row
            FROM {{rows}}
        ),
        repeated AS (SELECT id FROM src WHERE id IS NOT NULL GROUP BY id HAVING count(*) > 1),
        ranked AS (
            SELECT file, row,
                   first_value(file) OVER w AS first_file, first_value(row) OVER w AS first_row,
                   row_number() OVER w AS k
            FROM src SEMI JOIN repeated USING (id)
            WINDOW w AS (PARTITION BY id ORDER BY file, row)
        )
        SELECT file, row::BIGINT AS row, first_file, first_row::BIGINT AS first_row
        FROM ranked WHERE k > 1 ORDER BY file, row
    """
    id_type = _id_type(_read_schema(files[0]).field(id_column).type) if files else pa.int64()
    with duckdb.connect() as con:
        return over_rows(con, query, "read_parquet($files, filename = true, file_row_number = true)", files,
                         {id_column: id_type or pa.large_string()})


def _as_bytes_type(t: pa.DataType) -> pa.DataType:
    """The type a column travels to DuckDB as in the fallback: text as bytes (DuckDB checks text, not bytes)."""
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _as_bytes_type(f.type)) for f in t])
    return pa.large_binary() if is_text_type(t) else t


def _as_bytes(values: pa.Array, t: pa.DataType) -> pa.Array:
    """`values` cast to `t`, text then reinterpreted as bytes (no copy, no check)."""
    values = values.cast(pa.large_string() if is_text_type(t) else t)
    return values.view(pa.large_binary()) if is_text_type(t) else values


def _from_bytes(values: pa.Array, t: pa.DataType) -> pa.Array:
    """The inverse of `_as_bytes` on what DuckDB returns: bytes where `t` is text read back as text, unchecked."""
    if pa.types.is_struct(t):
        children = [_from_bytes(values.field(i), f.type) for i, f in enumerate(t)]
        return pa.StructArray.from_arrays(children, fields=list(t), mask=values.is_null())
    if is_text_type(t) and not is_text_type(values.type):
        return values.cast(pa.large_binary()).view(pa.large_string()).cast(t)
    return values.cast(t)


def _stream_rows(files: tuple[str, ...], types: dict[str, pa.DataType], stored: Callable[[pa.DataType], pa.DataType],
                 convert: Callable[[pa.Array, pa.DataType], pa.Array]) -> pa.RecordBatchReader:
    """The files' columns named in `types`, each made `convert(values, type)` of type `stored(type)`, with
    `filename` and `file_row_number`, as DuckDB's read_parquet(filename = true, file_row_number = true) names
    them; streamed batch by batch."""
    schema = pa.schema([*((c, stored(t)) for c, t in types.items()),
                        ("filename", pa.string()), ("file_row_number", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        for file in files:
            first = 0
            for batch in pq.ParquetFile(file, pre_buffer=False).iter_batches(columns=list(types)):
                n = batch.num_rows
                columns = [convert(batch.column(c), t) for c, t in types.items()]
                yield pa.record_batch([*columns, pa.repeat(pa.scalar(file), n),
                                       pa.array(np.arange(first, first + n, dtype=np.int64))], schema=schema)
                first += n

    return pa.RecordBatchReader.from_batches(schema, batches())


def _rows_as_bytes(files: tuple[str, ...], types: dict[str, pa.DataType]) -> pa.RecordBatchReader:
    """The files' columns named in `types`, cast to them, text as bytes (`_stream_rows`)."""
    return _stream_rows(files, types, _as_bytes_type, _as_bytes)


def _text_or_null(values: pa.Array, t: pa.DataType) -> pa.Array:
    """`values` cast to `t`; text as large_string with each value that is not valid UTF-8 made null."""
    if not is_text_type(t):
        return values.cast(t)
    raw = values.cast(pa.large_string()).view(pa.large_binary())
    return pc.if_else(invalid_utf8(values), pa.scalar(None, pa.large_binary()), raw).cast(pa.large_string())


def rows_as_text(files: tuple[str, ...], types: dict[str, pa.DataType]) -> pa.RecordBatchReader:
    """Like `_rows_as_bytes`, but text stays text, with each value that is not valid UTF-8 made null: for queries
    that must treat every valid value exactly as DuckDB's own reader does (the diff's content hashes), while
    the rows with bad text look like rows never embedded (so they are read again, and rejected again)."""
    return _stream_rows(files, types, lambda t: pa.large_string() if is_text_type(t) else t, _text_or_null)


def is_bad_encoding(error: duckdb.Error) -> bool:
    """Whether DuckDB refused a Parquet file because a string column holds bytes that are not UTF-8."""
    return isinstance(error, duckdb.InvalidInputException) and "Invalid string encoding" in str(error)


def over_rows(con: duckdb.DuckDBPyConnection, query: str, native: str, files: tuple[str, ...],
              types: dict[str, pa.DataType]) -> pa.Table:
    """`query` with `{rows}` the files' rows as DuckDB reads them (`native`, over `$files`).

    DuckDB refuses a file whose string column holds bytes that are not UTF-8; then the query runs over the
    same rows of the columns in `types` streamed by pyarrow (`_rows_as_bytes`), text as bytes. Same rows,
    same order, one pass; only such files pay for it.
    """
    try:
        return con.execute(query.replace("{rows}", native), {"files": list(files)}).to_arrow_table()
    except duckdb.InvalidInputException as e:
        if not is_bad_encoding(e):
            raise
    con.register("source_rows", _rows_as_bytes(files, types))
    return con.execute(query.replace("{rows}", "source_rows")).to_arrow_table()


def read_shard(shard: Shard, layout: SourceLayout) -> pa.Table:
    """The shard's rows, cast to the layout's types (a table field's columns gathered into its struct),
    with `_row`: each row's index in its file."""
    inputs = [c for cols in layout.composites.values() for c in cols]
    physical = list(dict.fromkeys([c for c in layout.schema.names if c not in layout.composites] + inputs))
    if shard.partial:
        table = _read_slice(shard, physical)
    else:
        table = pq.ParquetFile(shard.file).read_row_groups(list(shard.row_groups), columns=physical)
    columns = []
    for f in layout.schema:
        if f.name in layout.composites:
            inputs = zip(layout.composites[f.name], f.type, strict=True)
            children = [table[c].cast(child.type).combine_chunks() for c, child in inputs]
            columns.append(pa.StructArray.from_arrays(children, fields=list(f.type)))
        else:
            columns.append(table[f.name].cast(f.type))
    table = pa.table(columns, schema=layout.schema)
    rows = pa.array(np.arange(shard.first_row, shard.first_row + table.num_rows, dtype=np.int64))
    return table.append_column("_row", rows)


def _read_slice(shard: Shard, columns: list[str]) -> pa.Table:
    """The shard's rows by row number. pyarrow reads a row group whole; DuckDB skips to the rows asked for
    inside it (4,096 rows from the middle of a 2-million-row group: 30 ms, against 0.8 s for the group)."""
    query = f"""SELECT {", ".join(quote(c) for c in columns)} FROM read_parquet($file, file_row_number = true)
        WHERE file_row_number >= $first AND file_row_number < $end ORDER BY file_row_number"""
    params = {"file": shard.file, "first": shard.first_row, "end": shard.first_row + shard.num_rows}
    with duckdb.connect() as con:
        try:
            return con.execute(query, params).to_arrow_table()
        except duckdb.InvalidInputException as e:
            if not is_bad_encoding(e):
                raise
    return _stream_slice(shard, columns)


def _stream_slice(shard: Shard, columns: list[str]) -> pa.Table:
    """The shard's rows, streamed by pyarrow from the start of their row group: for a file DuckDB refuses
    (text that is not UTF-8, a reject of the validate stage). Memory stays at a shard's rows; time grows
    with the slice's place in its group (rows before it are decoded and dropped)."""
    file = pq.ParquetFile(shard.file, pre_buffer=False)
    group = shard.row_groups[0]
    start = shard.first_row - sum(file.metadata.row_group(i).num_rows for i in range(group))
    end, offset, pieces = start + shard.num_rows, 0, []
    for batch in file.iter_batches(batch_size=shard.num_rows, row_groups=[group], columns=columns):
        lo, hi = max(start - offset, 0), min(end - offset, batch.num_rows)
        if lo < hi:
            pieces.append(batch.slice(lo, hi - lo))
        offset += batch.num_rows
        if offset >= end:
            break
    return pa.Table.from_batches(pieces, schema=pa.schema([file.schema_arrow.field(c) for c in columns]))


def sample_values(layout: SourceLayout, key: str, id_column: str, size: int, seed: int = 0) -> pa.Array:
    """A seeded reservoir sample of a field's values over every file (rows with an id), as read by shards.

    DuckDB reads only the field's columns and keeps `size` rows, so fitting an embedder on a source
    costs memory for the sample, not for the source. Values that are not valid UTF-8 come back as they are
    (the caller drops what the modality rejects).
    """
    query = f"""SELECT {layout.field_sql(key)} AS v FROM {{rows}} WHERE {quote(id_column)} IS NOT NULL
                USING SAMPLE reservoir({int(size)} ROWS) REPEATABLE ({int(seed)})"""
    value_type = layout.schema.field(key).type
    inputs = layout.input_types(key)
    with duckdb.connect() as con:
        con.execute("SET threads = 1")  # DuckDB's seeded sample is only repeatable on one thread
        values = over_rows(con, query, "read_parquet($files)", layout.files,
                           {id_column: layout.schema.field(id_column).type, **inputs})["v"]
    return _from_bytes(values.combine_chunks(), value_type)
