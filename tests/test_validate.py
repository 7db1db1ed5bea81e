"""Validate stage: per-row and per-field reasons, and the split into kept rows and reject records.

Values that are not valid UTF-8 and text of invisible characters only are rejects here, from the read
stage through the fit sample to a whole backfill run.
"""

from __future__ import annotations

from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import write_config

from schemas.config import SourceConfig
from tasks import sources, stages
from tasks.embedders import registry
from tasks.embedders.media import media_reasons
from tasks.embedders.tabular import table_reasons
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


# invalid UTF-8 and invisible text: a reject of the validate stage, never a failed run

BAD_BYTES = [pytest.param(b"\xed\xa0\x80", id="lone-surrogate"), pytest.param(b"\xc0\xaf", id="overlong"),
             pytest.param(b"\xff", id="stray-byte")]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e\u200f", " \u200b\t\u2060\n "]


def unchecked(values: list[bytes | None], t: pa.DataType | None = None) -> pa.Array:
    """Bytes as an Arrow string array (large_string unless `t`) without a UTF-8 check: what pyarrow reads from
    a Parquet file holding them."""
    return pa.array(values, pa.binary()).view(pa.string()).cast(t or pa.large_string())


def bytes_of(values: pa.Array) -> list[bytes | None]:
    """A string array's values as bytes (to_pylist would raise on the bad ones)."""
    return values.cast(pa.large_string()).view(pa.large_binary()).to_pylist()


def write_unchecked(path: Path, columns: dict[str, list[bytes | int | None]], row_group_size: int) -> None:
    """A Parquet file whose bytes columns are typed string, as pyarrow writes them without a check."""
    arrays = {c: unchecked(v, pa.string()) if any(isinstance(x, bytes) for x in v) else pa.array(v, pa.int64())
              for c, v in columns.items()}
    pq.write_table(pa.table(arrays), path, row_group_size=row_group_size)


def read_all(source: SourceConfig) -> pa.Table:
    """Every shard of the source, read as the read stage reads them (DuckDB for slices of big row groups)."""
    layout = sources.inspect_source(source, {f.modality: registry.modality(f.modality) for f in source.fields})
    shards = sources.plan_shards(layout.files, source.shard_rows)
    return pa.concat_tables([sources.read_shard(s, layout) for s in shards])


@pytest.mark.parametrize("bad", BAD_BYTES)
@pytest.mark.parametrize("row_group_size", [2, 100], ids=["whole-row-groups", "sliced-row-group"])
def test_invalid_utf8_text_is_a_reject_and_other_rows_are_kept(tmp_path: Path, bad: bytes, row_group_size: int
                                                               ) -> None:
    path = tmp_path / "docs.parquet"
    bodies = [b"first text", bad, b"third", b"caf\xc3\xa9 " + bad + b" au lait", b"last"]
    write_unchecked(path, {"doc_id": [1, 2, 3, 4, 5], "body": bodies}, row_group_size)
    source = SourceConfig(name="docs", path=str(path), id="doc_id", shard_rows=2,
                          fields=[{"column": "body", "modality": "text"}])
    table = read_all(source)
    assert bytes_of(table["body"].combine_chunks()) == bodies  # read as they are, not replaced
    whole_row = row_reasons(table, "doc_id", str(path), no_duplicates())
    checked = check_field(table, "doc_id", "body", TEXT, str(path), whole_row)
    assert checked.kept["doc_id"].to_pylist() == [1, 3, 5]
    assert checked.kept["body"].to_pylist() == ["first text", "third", "last"]
    assert checked.rejects.select(["row", "id", "column", "stage", "reason"]).to_pylist() == [
        {"row": r, "id": str(r + 1), "column": "body", "stage": "validate", "reason": "invalid UTF-8 in the text"}
        for r in (1, 3)
    ]


@pytest.mark.parametrize("text", INVISIBLE)
def test_invisible_only_text_is_empty(text: str) -> None:
    assert text_reasons(pa.array([text, text * 1000], pa.large_string())).to_pylist() == ["empty text"] * 2


def test_invisible_characters_inside_real_text_are_kept() -> None:
    texts = ["\U0001f469\u200d\U0001f469\u200d\U0001f467 a family", "Schiff\u00adfahrt", "\ufeffhello",
             "\u0915\u094d\u200d\u0937", "zero\u200bwidth"]
    table = shard([1, 2, 3, 4, 5], texts)
    checked = check_field(table, "doc_id", "body", TEXT, FILE, row_reasons(table, "doc_id", FILE, no_duplicates()))
    assert checked.kept["body"].to_pylist() == texts
    assert checked.rejects.num_rows == 0


def test_text_reasons_order_null_then_invalid_then_empty() -> None:
    values = unchecked([None, b"\xff", b"\xe2\x80\x8b", b" \xff ", b"ok"])
    assert text_reasons(values).to_pylist() == [
        "null text", "invalid UTF-8 in the text", "empty text", "invalid UTF-8 in the text", None,
    ]


def test_invalid_utf8_id_is_a_row_reject_recorded_readably() -> None:
    table = pa.table({"doc_id": unchecked([b"a", b"b\xffc", None], pa.string()),
                      "body": pa.array(["x", "y", "z"], pa.large_string()), "_row": pa.array([0, 1, 2], pa.int64())})
    whole_row = row_reasons(table, "doc_id", FILE, no_duplicates())
    assert whole_row.to_pylist() == [None, "invalid UTF-8 in the id", "null id"]
    checked = check_field(table, "doc_id", "body", TEXT, FILE, whole_row)
    assert bytes_of(checked.kept["doc_id"].combine_chunks()) == [b"a"]
    checked.rejects["id"].validate(full=True)  # `_rejects` (Lance) stores only valid UTF-8
    assert checked.rejects.select(["id", "column", "reason"]).to_pylist() == [
        {"id": "b\\xffc", "column": "doc_id", "reason": "invalid UTF-8 in the id"},
        {"id": None, "column": "doc_id", "reason": "null id"},
    ]


def test_invalid_utf8_in_a_kept_column_rejects_the_row() -> None:
    table = shard([1, 2, 3], ["a", "b", "c"]).append_column("label", unchecked([b"pos", b"\xc0\xaf", None]))
    reasons = row_reasons(table, "doc_id", FILE, no_duplicates(), keep=["label"]).to_pylist()
    assert reasons == [None, "invalid UTF-8 in kept column 'label'", None]
    assert row_reasons(table, "doc_id", FILE, no_duplicates()).to_pylist() == [None, None, None]


@pytest.mark.parametrize("bad", BAD_BYTES)
def test_invalid_utf8_media_path_is_a_reject(bad: bytes) -> None:
    paths = unchecked([b"a.png", b"img/" + bad + b".png", b"  ", None])
    assert media_reasons("image", paths).to_pylist() == [None, "invalid UTF-8 in the image path", "empty image",
                                                         "null image"]
    encoded = pa.array([bad, b"", None], pa.binary())  # bytes are an encoded file: any bytes are fine here
    assert media_reasons("image", encoded).to_pylist() == [None, "empty image", "null image"]


@pytest.mark.parametrize("bad", BAD_BYTES)
def test_invalid_utf8_in_a_table_string_column_is_a_reject(bad: bytes) -> None:
    values = pa.StructArray.from_arrays(
        [unchecked([b"oslo", bad, None, b"rome"]), pa.array([1.0, 2.0, None, None])], names=["city", "price"])
    assert table_reasons(values).to_pylist() == [None, "invalid UTF-8 in column 'city'",
                                                 "every column of the row is null", None]


def test_repeated_invalid_utf8_ids_are_found_without_failing(tmp_path: Path) -> None:
    path = tmp_path / "ids.parquet"
    write_unchecked(path, {"doc": [b"a", b"\xff", b"b", b"\xff", b"a"], "n": [1, 2, 3, 4, 5]}, row_group_size=2)
    dups = sources.find_duplicates((str(path),), "doc")
    assert dups.select(["row", "first_row"]).to_pylist() == [{"row": 3, "first_row": 1}, {"row": 4, "first_row": 0}]


def test_fit_sample_never_holds_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    bodies = [f"river bank {i}".encode() for i in range(30)]
    bodies[7], bodies[19] = b"\xed\xa0\x80", b"bank \xc0\xaf"
    write_unchecked(path, {"doc_id": list(range(30)), "body": bodies}, row_group_size=8)
    source = SourceConfig(name="docs", path=str(path), id="doc_id",
                          fields=[{"column": "body", "modality": "text", "embedders": ["tfidf"]}])
    plan = stages.plan_source(source, batch_size=8, database=str(tmp_path / "db"))
    sample = stages.fit_sample(plan, plan.tables[0])
    sample.validate(full=True)
    assert sorted(sample.to_pylist()) == sorted(b.decode() for i, b in enumerate(bodies) if i not in (7, 19))


@pytest.mark.usefixtures("prefect_server")
def test_backfill_rejects_an_invalid_utf8_row_and_embeds_the_rest(tmp_path: Path) -> None:
    from flows.backfill import backfill, refresh

    words = ["river", "bank", "money", "loan", "water", "fish"]
    bodies = [" ".join(words[(i + k) % len(words)] for k in range(4)).encode() for i in range(24)]
    bodies[9] = b"river \xff bank"
    (tmp_path / "raw").mkdir()
    write_unchecked(tmp_path / "raw" / "docs.parquet", {"doc_id": list(range(24)), "body": bodies},
                    row_group_size=12)  # bigger than a shard: slices read by DuckDB, or pyarrow when DuckDB refuses
    config = write_config(tmp_path, [{"name": "docs", "path": "raw", "id": "doc_id", "shard_rows": 5,
                                      "fields": [{"column": "body", "modality": "text",
                                                  "embedders": ["fake", "tfidf"]}]}])
    summary = {r["table"]: r for r in backfill(config=str(config))}
    assert set(summary) == {"docs__body__fake", "docs__body__tfidf"}
    db = lancedb.connect(tmp_path / "lancedb")
    rejects = db.open_table("_rejects").to_arrow()
    for name, run in summary.items():
        assert (run["rows_read"], run["rows_embedded"], run["rows_rejected"]) == (24, 23, 1)
        assert sorted(db.open_table(name).to_arrow()["id"].to_pylist()) == [i for i in range(24) if i != 9]
        mine = rejects.filter(pc.equal(rejects["table"], name))
        assert mine.select(["id", "column", "stage", "reason"]).to_pylist() == [
            {"id": "9", "column": "body", "stage": "validate", "reason": "invalid UTF-8 in the text"}]
    assert db.open_table("_fitted").to_arrow()["rows"].to_pylist() == [23]  # fitted without the bad row
    staging = tmp_path / "lancedb" / "_staging"
    assert not staging.exists() or not any(staging.iterdir())

    # The next run diffs the same file: the valid rows are unchanged, the bad one is read and rejected again.
    bodies[3] = b"a changed text"
    write_unchecked(tmp_path / "raw" / "docs.parquet", {"doc_id": list(range(24)), "body": bodies},
                    row_group_size=12)
    again = {r["table"]: r for r in refresh(config=str(config))}
    for run in again.values():
        assert (run["rows_read"], run["rows_embedded"], run["rows_unchanged"], run["rows_rejected"],
                run["rows_deleted"]) == (24, 1, 22, 1, 0)
