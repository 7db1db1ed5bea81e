"""Validate stage: per-row and per-field reasons, and the split into kept rows and reject records."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.embedders.text import TEXT, text_reasons
from tasks.validate import REJECT_COLUMNS, check_field, rejects_table, row_reasons

FILE = "/data/b.parquet"
OTHER = "/data/a.parquet"

DUPS_SCHEMA = pa.schema([("file", pa.string()), ("row", pa.int64()), ("first_file", pa.string()),
                         ("first_row", pa.int64())])


def no_duplicates() -> pa.Table:
    return DUPS_SCHEMA.empty_table()


def duplicates(rows: list[tuple[str, int, str, int]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"file": f, "row": r, "first_file": ff, "first_row": fr} for f, r, ff, fr in rows], schema=DUPS_SCHEMA
    )


def shard(ids: list, texts: list, first_row: int = 0, id_type: pa.DataType | None = None) -> pa.Table:
    return pa.table({
        "doc_id": pa.array(ids, id_type or pa.int64()),
        "body": pa.array(texts, pa.large_string()),
        "_row": pa.array(range(first_row, first_row + len(ids)), pa.int64()),
    })


# text_reasons


def test_text_reasons() -> None:
    values = pa.array(["hello", None, "", " ", "\t", "\n", " \t\r\n ", "  x  ", "0", "\u00e9"], pa.large_string())
    assert text_reasons(values).to_pylist() == [
        None, "null text", "empty text", "empty text", "empty text", "empty text", "empty text", None, None, None,
    ]


def test_text_reasons_plain_string_type() -> None:
    assert text_reasons(pa.array(["a", None, "  "], pa.string())).to_pylist() == [None, "null text", "empty text"]


def test_text_modality_contract() -> None:
    assert TEXT.name == "text"
    assert TEXT.storage(pa.string()) == TEXT.storage(pa.dictionary(pa.int32(), pa.string())) == pa.large_string()
    assert TEXT.accepts(pa.string())
    assert TEXT.accepts(pa.large_string())
    assert not TEXT.accepts(pa.int64())
    assert not TEXT.accepts(pa.binary())


# row_reasons


def test_row_reasons_null_id() -> None:
    table = shard([1, None, 3], ["a", "b", "c"])
    assert row_reasons(table, "doc_id", FILE, no_duplicates()).to_pylist() == [None, "null id", None]


def test_row_reasons_repeated_id_names_first_file_and_row() -> None:
    table = shard([7, 8, 7, 9], ["a", "b", "c", "d"], first_row=100)
    dups = duplicates([
        (FILE, 102, FILE, 100),  # repeat inside this file
        (FILE, 103, OTHER, 41),  # repeat of a row in an earlier file
        (OTHER, 101, OTHER, 5),  # another file's repeat at a row number this shard also has
    ])
    reasons = row_reasons(table, "doc_id", FILE, dups).to_pylist()
    assert reasons[0] is None
    assert reasons[1] is None
    assert reasons[2] == f"id repeated in the input (first at {FILE} row 100)"
    assert reasons[3] == f"id repeated in the input (first at {OTHER} row 41)"


def test_row_reasons_null_id_wins_over_duplicate() -> None:
    table = shard([None], ["a"], first_row=3)
    dups = duplicates([(FILE, 3, OTHER, 0)])
    assert row_reasons(table, "doc_id", FILE, dups).to_pylist() == ["null id"]


# check_field


def test_check_field_splits_rows() -> None:
    table = shard(
        [1, None, 3, 1, 5, 6, 7, 8, None],
        ["ok", "b", None, "dup", "   ", "\t\n", " \n\t x", "fine", None],
        first_row=10,
    )
    dups = duplicates([(FILE, 13, OTHER, 2)])
    whole_row = row_reasons(table, "doc_id", FILE, dups)
    checked = check_field(table, "doc_id", "body", TEXT, FILE, whole_row)

    assert checked.kept.to_pydict() == {
        "doc_id": [1, 7, 8],
        "body": ["ok", " \n\t x", "fine"],
        "_row": [10, 16, 17],
    }
    assert checked.kept.schema == table.schema
    assert checked.rejects.schema == REJECT_COLUMNS
    assert checked.rejects.to_pylist() == [
        {"file": FILE, "row": 11, "id": None, "column": "doc_id", "stage": "validate", "reason": "null id"},
        {"file": FILE, "row": 12, "id": "3", "column": "body", "stage": "validate", "reason": "null text"},
        {"file": FILE, "row": 13, "id": "1", "column": "doc_id", "stage": "validate",
         "reason": f"id repeated in the input (first at {OTHER} row 2)"},
        {"file": FILE, "row": 14, "id": "5", "column": "body", "stage": "validate", "reason": "empty text"},
        {"file": FILE, "row": 15, "id": "6", "column": "body", "stage": "validate", "reason": "empty text"},
        # a null id and a null text: the row-level reason wins, against the id column
        {"file": FILE, "row": 18, "id": None, "column": "doc_id", "stage": "validate", "reason": "null id"},
    ]
    assert checked.kept.num_rows + checked.rejects.num_rows == table.num_rows
    kept_rows = set(checked.kept["_row"].to_pylist())
    rejected_rows = set(checked.rejects["row"].to_pylist())
    assert kept_rows.isdisjoint(rejected_rows)
    assert kept_rows | rejected_rows == set(range(10, 19))


def test_check_field_all_valid() -> None:
    table = shard(["a", "b"], ["x", "y"], id_type=pa.string())
    whole_row = row_reasons(table, "doc_id", FILE, no_duplicates())
    checked = check_field(table, "doc_id", "body", TEXT, FILE, whole_row)
    assert checked.kept.equals(table)
    assert checked.rejects.num_rows == 0
    assert checked.rejects.schema == REJECT_COLUMNS


def test_check_field_all_rejected_with_string_ids() -> None:
    table = shard(["a", "b"], [None, ""], id_type=pa.string())
    whole_row = row_reasons(table, "doc_id", FILE, no_duplicates())
    checked = check_field(table, "doc_id", "body", TEXT, FILE, whole_row)
    assert checked.kept.num_rows == 0
    assert checked.rejects.column("id").to_pylist() == ["a", "b"]
    assert checked.rejects.column("reason").to_pylist() == ["null text", "empty text"]
    assert checked.rejects.column("column").to_pylist() == ["body", "body"]


def test_check_field_over_chunked_table() -> None:
    part1 = shard([1, 2], ["a", " "], first_row=0)
    part2 = shard([None, 4], ["c", "d"], first_row=2)
    table = pa.concat_tables([part1, part2])
    assert table.column("body").num_chunks == 2
    whole_row = row_reasons(table, "doc_id", FILE, no_duplicates())
    checked = check_field(table, "doc_id", "body", TEXT, FILE, whole_row)
    assert checked.kept["_row"].to_pylist() == [0, 3]
    assert checked.rejects.select(["row", "column", "reason"]).to_pylist() == [
        {"row": 1, "column": "body", "reason": "empty text"},
        {"row": 2, "column": "doc_id", "reason": "null id"},
    ]


@pytest.mark.parametrize("stage", ["validate", "embed"])
def test_rejects_table(stage: str) -> None:
    rows = shard([4, 5], ["a", "b"], first_row=20)
    out = rejects_table(FILE, rows, "doc_id", pa.array(["body", "body"]), stage, pa.array(["r1", "r2"]))
    assert out.schema == REJECT_COLUMNS
    assert out.to_pylist() == [
        {"file": FILE, "row": 20, "id": "4", "column": "body", "stage": stage, "reason": "r1"},
        {"file": FILE, "row": 21, "id": "5", "column": "body", "stage": stage, "reason": "r2"},
    ]
