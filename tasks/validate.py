"""Validate stage: decide, per row and field, whether it can be embedded, and why not if it cannot.

Rejected rows are data, not exceptions: each gets a reason and goes to `_rejects`, and the run goes
on. Row-level reasons (null id, id repeated in the input, an id or kept column that is not valid UTF-8)
apply to every field of the row; a field's own reasons (null or empty text, ...) come from its modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.embedders.base import Modality
from tasks.sources import invalid_utf8

REJECT_COLUMNS = pa.schema(
    [("file", pa.string()), ("row", pa.int64()), ("id", pa.string()), ("column", pa.string()),
     ("stage", pa.string()), ("reason", pa.string())]
)


@dataclass
class Checked:
    """Rows to embed, how many valid rows are unchanged (not embedded again), and reject records."""

    kept: pa.Table
    rejects: pa.Table
    unchanged: int = 0


def rejects_table(
    file: str, rows: pa.Table, id_column: str, columns: pa.Array, stage: str, reasons: pa.Array
) -> pa.Table:
    """Reject records for `rows` (which carry the id column and `_row`)."""
    n = rows.num_rows
    return pa.table(
        [pa.repeat(pa.scalar(file), n), rows["_row"], readable(rows[id_column].combine_chunks().cast(pa.string())),
         columns, pa.repeat(pa.scalar(stage), n), reasons],
        schema=REJECT_COLUMNS,
    )


def readable(values: pa.Array) -> pa.Array:
    """Strings as they are, but those that are not valid UTF-8 with each bad byte written `\\xNN`: a reject
    record names a bad id in a form `_rejects` can store (Lance refuses bytes that are not UTF-8). Only the
    bad values are rewritten, one at a time: they are rejects, few, and off the path of valid rows."""
    bad = invalid_utf8(values)
    if not pc.any(bad).as_py():
        return values
    positions = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
    as_bytes = values.view(pa.large_binary() if pa.types.is_large_string(values.type) else pa.binary())
    raw = as_bytes.take(pa.array(positions)).to_pylist()
    fixed = pa.array([v.decode("utf-8", "backslashreplace") for v in raw], values.type)
    at = pc.index_in(pa.array(np.arange(len(values))), value_set=pa.array(positions))
    return pc.if_else(bad, pc.take(fixed, at), values)


def row_reasons(table: pa.Table, id_column: str, file: str, duplicates: pa.Table,
                keep: Sequence[str] = ()) -> pa.ChunkedArray:
    """Null, or why the whole row is rejected: a null id, an id that is not valid UTF-8, an id already seen
    earlier in the input, or a `keep` column (copied into every table as it is) that is not valid UTF-8."""
    dups = duplicates.filter(pc.equal(duplicates["file"], file))
    position = pc.index_in(table["_row"], value_set=dups["row"])
    first_seen = pc.binary_join_element_wise(
        "id repeated in the input (first at ", pc.take(dups["first_file"], position),
        " row ", pc.take(dups["first_row"], position).cast(pa.string()), ")", "",
    )
    reasons = pc.if_else(invalid_utf8(table[id_column]), pa.scalar("invalid UTF-8 in the id"), first_seen)
    for column in keep:
        bad = pa.scalar(f"invalid UTF-8 in kept column {column!r}")
        reasons = pc.coalesce(reasons, pc.if_else(invalid_utf8(table[column]), bad, pa.scalar(None, pa.string())))
    return pc.if_else(pc.is_null(table[id_column]), pa.scalar("null id"), reasons)


def check_field(
    table: pa.Table, id_column: str, column: str, modality: Modality, file: str, whole_row: pa.ChunkedArray
) -> Checked:
    """Split the shard into rows whose `column` can be embedded and reject records for the rest."""
    own = modality.reasons(table[column].combine_chunks())
    reasons = pc.coalesce(whole_row, own)
    bad = pc.is_valid(reasons)
    rejected = table.filter(bad)
    columns = pc.if_else(pc.is_valid(whole_row.filter(bad)), pa.scalar(id_column), pa.scalar(column))
    rejects = rejects_table(file, rejected, id_column, columns, "validate", reasons.filter(bad))
    return Checked(kept=table.filter(pc.invert(bad)), rejects=rejects)


def split_failures(kept: pa.Table, failures: dict[int, str], id_column: str, column: str, file: str
                   ) -> tuple[pa.Table, pa.Table]:
    """Separate the rows the prepare stage could not handle (by position) into reject records."""
    failed = np.zeros(kept.num_rows, dtype=bool)
    failed[list(failures)] = True
    reasons = pa.array([failures[i] for i in sorted(failures)], pa.string())
    bad = kept.filter(failed)
    rejects = rejects_table(file, bad, id_column, pa.repeat(pa.scalar(column), bad.num_rows), "prepare", reasons)
    return kept.filter(~failed), rejects


def only_rows(checked: Checked, rows: np.ndarray | None) -> Checked:
    """Keep only the valid rows whose index in the file is in `rows` (None: all); the rest are unchanged."""
    if rows is None:
        return checked
    wanted = pc.is_in(checked.kept["_row"], value_set=pa.array(rows, pa.int64()))
    kept = checked.kept.filter(wanted)
    return Checked(kept, checked.rejects, unchanged=checked.kept.num_rows - kept.num_rows)
