"""Property tests of the validate stage over generated shards: whatever a Parquet file holds (any bytes in a
string column, huge or empty values, nulls, string or integer ids, several string layouts), validating never
raises, and every row of every field is either kept or rejected, with the reason a plain-Python reading of
the value gives: a row is never lost, counted twice, or rejected for the wrong reason.
"""

from __future__ import annotations

import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import SourceConfig
from tasks import sources
from tasks.embedders import registry
from tasks.embedders.text import TEXT
from tasks.validate import Checked, check_field, row_reasons

FILE = "/data/part.parquet"
NO_DUPLICATES = pa.schema([("file", pa.string()), ("row", pa.int64()), ("first_file", pa.string()),
                           ("first_row", pa.int64())]).empty_table()
BAD = (b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\x80", b"\xe2\x82", b"\xf4\x90\x80\x80")  # surrogate, overlong, ...
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u2061"
SPACE = " \t\n\r\x0b\x0c\x1f\x85\u00a0\u2028\u3000"
# Format characters Unicode 15 added (RE2 knows them, this Python's unicodedata does not): never generated,
# so that the oracle and the Arrow kernels read every generated text with the same tables.
NEWER_CF = "".join(map(chr, range(0x13439, 0x13440)))
HUGE = (b"x" * 100_000, b"word " * 20_000, "\u200b".encode() * 100_000, "\u00e9".encode() * 50_000 + b"\xff",
        b" " * 100_000, b"")

CHARS = st.characters(exclude_categories=("Cs",), exclude_characters=NEWER_CF)
VALUES = st.one_of(
    st.none(),
    st.text(CHARS, max_size=12).map(str.encode),
    st.text(INVISIBLE + SPACE, max_size=6).map(str.encode),
    st.tuples(st.text(CHARS, max_size=4), st.sampled_from(BAD), st.text(CHARS, max_size=4)).map(
        lambda t: t[0].encode() + t[1] + t[2].encode()),
    st.binary(max_size=6),  # mostly not UTF-8
    st.sampled_from(HUGE),
)
STRING_IDS = st.sampled_from([None, b"a", b"b", b"c\xc0\xaf", b"\xff", "\u00e9".encode()])  # few: repeats
INT_IDS = st.none() | st.integers(0, 4)
# How a string column may be laid out in a file (a shard reads each as large_string, `TEXT.storage`).
LAYOUTS: dict[str, Callable[[pa.Array], pa.Array]] = {
    "string": lambda a: a,
    "large_string": lambda a: a.cast(pa.large_string()),
    "dictionary": lambda a: a.dictionary_encode(),
    "string_view": lambda a: a.cast(pa.string_view()),
}
IN_MEMORY = ("string", "large_string", "dictionary")  # what check_field may be given (Arrow cannot filter views)


def unchecked(values: list[bytes | None]) -> pa.Array:
    """Bytes typed string without a UTF-8 check: what pyarrow reads (and writes) for such a Parquet column."""
    return pa.array(values, pa.binary()).view(pa.string())


def text_of(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_reason(value: bytes | None) -> str | None:
    if value is None:
        return "null text"
    text = text_of(value)
    if text is None:
        return "invalid UTF-8 in the text"
    if all(c.isspace() or unicodedata.category(c) == "Cf" for c in text):
        return "empty text"
    return None


def path_reason(value: bytes | None) -> str | None:
    if value is None:
        return "null image"
    text = text_of(value)
    if text is None:
        return "invalid UTF-8 in the image path"
    return "empty image" if not text.strip() else None


def table_reason(city: bytes | None, n: int | None) -> str | None:
    if city is None and n is None:
        return "every column of the row is null"
    return "invalid UTF-8 in column 'city'" if city is not None and text_of(city) is None else None


def row_reason(ids: list, i: int, labels: list[bytes | None], file: str, repeats: bool) -> str | None:
    """The whole row's reason: null id, invalid id, an earlier row with the same id, an invalid kept column."""
    if ids[i] is None:
        return "null id"
    if isinstance(ids[i], bytes) and text_of(ids[i]) is None:
        return "invalid UTF-8 in the id"
    if repeats and ids[i] in ids[:i]:
        return f"id repeated in the input (first at {file} row {ids.index(ids[i])})"
    if labels[i] is not None and text_of(labels[i]) is None:
        return "invalid UTF-8 in kept column 'label'"
    return None


def outcomes(checked: Checked) -> dict[int, tuple[str, str] | None]:
    """Row -> None if kept, else (column, reason) of its reject record."""
    out: dict[int, tuple[str, str] | None] = {}
    for row in checked.kept["_row"].to_pylist():
        assert row not in out
        out[row] = None
    for reject in checked.rejects.to_pylist():
        assert reject["row"] not in out, "a row both kept and rejected, or rejected twice"
        assert reject["stage"] == "validate" and reject["reason"]
        out[reject["row"]] = (reject["column"], reject["reason"])
    checked.rejects["id"].validate(full=True)  # `_rejects` stores only valid UTF-8
    return out


def expected(whole_row: str | None, own: str | None, id_column: str, column: str) -> tuple[str, str] | None:
    """What check_field must record: the row's reason against the id column, else the field's own."""
    if whole_row is not None:
        return id_column, whole_row
    return (column, own) if own is not None else None


@st.composite
def shards(draw: st.DrawFn) -> dict:
    """Columns of one generated shard, as bytes (and ints), with how the text column is laid out."""
    n = draw(st.integers(1, 10))
    column = st.lists(VALUES, min_size=n, max_size=n)
    return {
        "ids": draw(st.lists(STRING_IDS if draw(st.booleans()) else INT_IDS, min_size=n, max_size=n)),
        "body": draw(column), "path": draw(column), "city": draw(column), "label": draw(column),
        "n": draw(st.lists(st.none() | st.integers(-3, 3), min_size=n, max_size=n)),
        "layout": draw(st.sampled_from(sorted(LAYOUTS))),
    }


def id_array(ids: list) -> pa.Array:
    return unchecked(ids) if any(isinstance(i, bytes) for i in ids) else pa.array(ids, pa.int64())


@settings(max_examples=50, deadline=None)
@given(shards(), st.sampled_from(IN_MEMORY))
def test_check_field_keeps_or_rejects_every_text_row(data: dict, layout: str) -> None:
    n = len(data["ids"])
    table = pa.table({"doc_id": id_array(data["ids"]), "body": LAYOUTS[layout](unchecked(data["body"])),
                      "_row": pa.array(range(n), pa.int64())})
    whole_row = row_reasons(table, "doc_id", FILE, NO_DUPLICATES)
    checked = check_field(table, "doc_id", "body", TEXT, FILE, whole_row)

    assert checked.kept.num_rows + checked.rejects.num_rows == n
    got = outcomes(checked)
    no_label = [None] * n
    assert got == {i: expected(row_reason(data["ids"], i, no_label, FILE, repeats=False),
                               text_reason(data["body"][i]), "doc_id", "body") for i in range(n)}
    checked.kept["body"].combine_chunks().cast(pa.large_string()).validate(full=True)


@settings(max_examples=50, deadline=None)
@given(shards(), st.integers(1, 11), st.integers(1, 11))
def test_every_field_of_a_parquet_file_is_kept_or_rejected(data: dict, row_group_size: int, shard_rows: int
                                                          ) -> None:
    ids, n = data["ids"], len(data["ids"])
    columns = {"doc_id": id_array(ids), "body": LAYOUTS[data["layout"]](unchecked(data["body"])),
               "path": unchecked(data["path"]), "city": unchecked(data["city"]),
               "n": pa.array(data["n"], pa.int64()), "label": unchecked(data["label"])}
    with tempfile.TemporaryDirectory() as folder:
        file = str(Path(folder) / "part.parquet")
        pq.write_table(pa.table(columns), file, row_group_size=row_group_size)
        source = SourceConfig(name="docs", path=file, id="doc_id", shard_rows=shard_rows, keep=["label"], fields=[
            {"column": "body", "modality": "text"}, {"column": "path", "modality": "image"},
            {"columns": ["city", "n"], "modality": "table"}])
        modalities = {f.key: registry.modality(f.modality) for f in source.fields}
        layout = sources.inspect_source(source, {f.modality: modalities[f.key] for f in source.fields})
        duplicates = sources.find_duplicates(layout.files, "doc_id")
        got: dict[str, dict] = {key: {} for key in modalities}
        for shard in sources.plan_shards(layout.files, shard_rows):
            rows = sources.read_shard(shard, layout)
            whole_row = row_reasons(rows, "doc_id", file, duplicates, keep=["label"])
            for key, modality in modalities.items():
                checked = check_field(rows, "doc_id", key, modality, file, whole_row)
                assert checked.kept.num_rows + checked.rejects.num_rows == rows.num_rows
                mine = outcomes(checked)
                assert got[key].keys().isdisjoint(mine)
                got[key] |= mine
        sample = sources.sample_values(layout, "body", "doc_id", 5)
        sample.filter(pc.is_null(TEXT.reasons(sample))).validate(full=True)  # what a fit may see is valid text
        sources.sample_values(layout, "row", "doc_id", 5)

    whole = [row_reason(ids, i, data["label"], file, repeats=True) for i in range(n)]
    own = {"body": [text_reason(v) for v in data["body"]], "path": [path_reason(v) for v in data["path"]],
           "row": [table_reason(c, v) for c, v in zip(data["city"], data["n"], strict=True)]}
    for key in modalities:
        assert got[key] == {i: expected(whole[i], own[key][i], "doc_id", key) for i in range(n)}, key
