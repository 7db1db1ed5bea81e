"""Fitted state of the embedders learnt from the data (`tfidf`, `tabular`), kept with the table versions.

A fitted embedder (vocabulary, idf and projection; means, scales, vocabularies and projection) is fit
once on a seeded sample of its source and stored in the `_fitted` table under `fit_id`, the hash of its
state. The embedding table's metadata names it (`revision: fit-<fit_id>`), so every version says which
state made its vectors, later runs reuse it (vectors of different runs stay comparable), and an old
version restored still finds its state. Refitting gives a new `fit_id`, hence a new table generation.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa

FITTED_TABLE = "_fitted"
FITTED_SCHEMA = pa.schema(
    [
        pa.field("fit_id", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("embedder", pa.string(), nullable=False),
        pa.field("input_type", pa.string(), nullable=False),  # the Arrow type fitted on; another type refits
        pa.field("rows", pa.int64(), nullable=False),  # rows in the fitting sample
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("state", pa.large_binary(), nullable=False),
    ]
)
REVISION_PREFIX = "fit-"


@dataclass(frozen=True)
class FitRef:
    """Where a worker finds a fitted state: the database and the state's id."""

    database: str
    fit_id: str


def pack(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """A fitted state as bytes: JSON metadata plus numpy arrays, in the `.npz` layout (no pickle, so loading
    runs no code). Written with fixed zip timestamps, so equal states are equal bytes (and share an id)."""
    buffer = io.BytesIO()
    entries = {"__meta__": np.array(json.dumps(meta, sort_keys=True)), **arrays}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in sorted(entries.items()):
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack(state: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and arrays `pack` stored."""
    with np.load(io.BytesIO(state), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
        return json.loads(str(npz["__meta__"])), arrays


def state_id(state: bytes) -> str:
    """The id of a fitted state: a hash of its bytes, so equal fits share an id."""
    return hashlib.sha256(state).hexdigest()[:16]


def save(db: lancedb.DBConnection, state: bytes, table: str, embedder: str, input_type: pa.DataType,
         rows: int) -> str:
    """Store a fitted state (once per id) and return its id."""
    fit_id = state_id(state)
    record = pa.Table.from_pylist([{
        "fit_id": fit_id, "table": table, "embedder": embedder, "input_type": str(input_type), "rows": rows,
        "created_at": datetime.now(UTC), "state": state,
    }], schema=FITTED_SCHEMA)
    try:
        stored = db.open_table(FITTED_TABLE)
    except ValueError:
        db.create_table(FITTED_TABLE, data=record, schema=FITTED_SCHEMA)
        return fit_id
    stored.merge_insert("fit_id").when_not_matched_insert_all().execute(record)
    return fit_id


def _records(db: lancedb.DBConnection, where: str, columns: list[str]) -> list[dict]:
    try:
        stored = db.open_table(FITTED_TABLE)
    except ValueError:
        return []
    return stored.search().where(where).select([*columns, "created_at"]).limit(None).to_list()


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def load(database: str, fit_id: str) -> bytes:
    """The state stored under `fit_id`; a clear error if the database lost it."""
    records = _records(lancedb.connect(database), f"fit_id = {_quoted(fit_id)}", ["state"])
    if not records:
        raise LookupError(f"{database}: fitted state {fit_id!r} is missing from {FITTED_TABLE}; "
                          "re-run the backfill with --refit to fit a new one")
    return records[0]["state"]


def current(db: lancedb.DBConnection, table: str, embedder: str, revision: str | None,
            input_type: pa.DataType) -> str | None:
    """The fit id to reuse for `table`, if any fits this input type.

    That is the state its latest version was made with (`revision`); when the table does not exist yet,
    the newest state fitted for it (a first run killed after fitting resumes with the same state).
    """
    if revision is not None and not revision.startswith(REVISION_PREFIX):
        return None
    where = f"table = {_quoted(table)} AND embedder = {_quoted(embedder)} AND input_type = {_quoted(str(input_type))}"
    if revision is not None:
        where += f" AND fit_id = {_quoted(revision[len(REVISION_PREFIX):])}"
    records = _records(db, where, ["fit_id"])
    return max(records, key=lambda r: r["created_at"])["fit_id"] if records else None
