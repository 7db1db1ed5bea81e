"""Read stage: resolving a source's files, checking them, cutting them into shards and reading a shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import FieldConfig, SourceConfig
from tasks.embedders.registry import modality
from tasks.embedders.text import TEXT
from tasks.sources import (
    InputError,
    Shard,
    SourceLayout,
    find_duplicates,
    inspect_source,
    plan_shards,
    read_shard,
    resolve_files,
)

MODALITIES = {"text": TEXT}


def write(path: Path, table: pa.Table | dict, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, dict):
        table = pa.table(table)
    pq.write_table(table, path, **kwargs)
    return path


def source(path: Path | str, id: str = "id", text: str = "text", keep: tuple[str, ...] = ()) -> SourceConfig:
    return SourceConfig(
        name="docs", path=str(path), id=id, fields=[FieldConfig(column=text, modality="text")], keep=list(keep)
    )


def simple(n: int = 3, start: int = 0) -> dict:
    return {"id": list(range(start, start + n)), "text": [f"t{i}" for i in range(start, start + n)]}


# resolve_files


def test_resolve_single_file(tmp_path: Path) -> None:
    f = write(tmp_path / "one.parquet", simple())
    assert resolve_files(str(f)) == [str(f)]


def test_resolve_folder_is_recursive_and_parquet_only(tmp_path: Path) -> None:
    b = write(tmp_path / "data" / "b.parquet", simple())
    a = write(tmp_path / "data" / "sub" / "deeper" / "a.parquet", simple())
    c = write(tmp_path / "data" / "a.parquet", simple())
    (tmp_path / "data" / "notes.txt").write_text("not parquet")
    (tmp_path / "data" / "old.parquet.bak").write_text("not parquet")
    got = resolve_files(str(tmp_path / "data"))
    assert got == sorted([str(a), str(b), str(c)])
    assert len(got) == 3


def test_resolve_glob(tmp_path: Path) -> None:
    a = write(tmp_path / "part-1.parquet", simple())
    b = write(tmp_path / "part-0.parquet", simple())
    write(tmp_path / "other.parquet", simple())
    assert resolve_files(str(tmp_path / "part-*.parquet")) == [str(b), str(a)]


def test_resolve_recursive_glob(tmp_path: Path) -> None:
    a = write(tmp_path / "x" / "y" / "a.parquet", simple())
    b = write(tmp_path / "b.parquet", simple())
    assert resolve_files(str(tmp_path / "**" / "*.parquet")) == sorted([str(a), str(b)])


def test_resolve_glob_skips_folders(tmp_path: Path) -> None:
    (tmp_path / "dir.parquet").mkdir()
    f = write(tmp_path / "f.parquet", simple())
    assert resolve_files(str(tmp_path / "*.parquet")) == [str(f)]


def test_resolve_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.parquet")
    with pytest.raises(InputError, match="no such file or folder") as info:
        resolve_files(missing)
    assert missing in str(info.value)


def test_resolve_empty_glob(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(InputError, match="matches no files") as info:
        resolve_files(pattern)
    assert pattern in str(info.value)


def test_resolve_folder_without_parquet(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="no \\*.parquet files") as info:
        resolve_files(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_resolve_uri_is_refused() -> None:
    with pytest.raises(InputError) as info:
        resolve_files("s3://bucket/data/*.parquet")
    assert "s3://bucket/data/*.parquet" in str(info.value)


# inspect_source


def test_inspect_source_layout(tmp_path: Path) -> None:
    f1 = write(
        tmp_path / "a.parquet",
        pa.table({
            "extra": [1.0],
            "title": ["x"],
            "id": pa.array([1], pa.int32()),
            "text": pa.array(["a"], pa.string()),
        }),
    )
    f2 = write(
        tmp_path / "b.parquet",
        pa.table({"id": pa.array([2], pa.int64()), "text": pa.array(["b"], pa.large_string()), "title": ["y"]}),
    )
    layout = inspect_source(source(tmp_path, keep=("title",)), MODALITIES)
    assert layout.files == (str(f1), str(f2))
    assert layout.schema.names == ["id", "text", "title"]
    assert layout.schema.field("id").type == pa.int64()
    assert layout.schema.field("text").type == pa.large_string()
    assert layout.schema.field("title").type == pa.string()


def test_inspect_source_string_ids(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", {"id": pa.array(["x"], pa.large_string()), "text": ["a"]})
    layout = inspect_source(source(tmp_path), {"text": modality("text")})
    assert layout.schema.field("id").type == pa.string()


@pytest.mark.parametrize(
    ("columns", "missing", "kwargs"),
    [
        ({"text": ["a"], "title": ["x"]}, "doc_id", {"id": "doc_id", "keep": ("title",)}),
        ({"doc_id": [1], "title": ["x"]}, "body", {"id": "doc_id", "text": "body", "keep": ("title",)}),
        ({"doc_id": [1], "body": ["a"]}, "title", {"id": "doc_id", "text": "body", "keep": ("title",)}),
    ],
    ids=["id", "text", "keep"],
)
def test_inspect_missing_column(tmp_path: Path, columns: dict, missing: str, kwargs: dict) -> None:
    f = write(tmp_path / "a.parquet", columns)
    with pytest.raises(InputError, match="missing column") as info:
        inspect_source(source(f, **kwargs), MODALITIES)
    message = str(info.value)
    assert str(f) in message
    assert repr(missing) in message


def test_inspect_missing_column_in_second_file(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", simple())
    bad = write(tmp_path / "b.parquet", {"id": [1]})
    with pytest.raises(InputError) as info:
        inspect_source(source(tmp_path), MODALITIES)
    assert str(bad) in str(info.value)
    assert "'text'" in str(info.value)


@pytest.mark.parametrize(
    ("data", "column", "found", "expected"),
    [({"id": [1.5], "text": ["a"]}, "id", "double", "integers or strings"),
     ({"id": [1], "text": [42]}, "text", "int64", "a string column")],
)
def test_inspect_wrong_column_type(tmp_path: Path, data: dict, column: str, found: str, expected: str) -> None:
    f = write(tmp_path / "a.parquet", data)
    with pytest.raises(InputError) as info:
        inspect_source(source(f), MODALITIES)
    message = str(info.value)
    assert str(f) in message
    assert f"'{column}'" in message
    assert found in message
    assert expected in message


def test_inspect_not_parquet(tmp_path: Path) -> None:
    f = tmp_path / "fake.parquet"
    f.write_text("id,text\n1,a\n")
    with pytest.raises(InputError) as info:
        inspect_source(source(f), MODALITIES)
    assert str(f) in str(info.value)
    assert "cannot be read as Parquet" in str(info.value)


def test_inspect_keep_type_differs_between_files(tmp_path: Path) -> None:
    first = write(tmp_path / "a.parquet", {"id": [1], "text": ["a"], "year": pa.array([2020], pa.int64())})
    second = write(tmp_path / "b.parquet", {"id": [2], "text": ["b"], "year": pa.array(["2021"], pa.string())})
    with pytest.raises(InputError) as info:
        inspect_source(source(tmp_path, keep=("year",)), MODALITIES)
    message = str(info.value)
    assert message.startswith(str(second))
    assert "'year'" in message
    assert str(first) in message
    assert "same types" in message


def test_inspect_id_integer_widths_are_compatible(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", {"id": pa.array([1], pa.int16()), "text": ["a"]})
    write(tmp_path / "b.parquet", {"id": pa.array([2], pa.uint32()), "text": ["b"]})
    layout = inspect_source(source(tmp_path), MODALITIES)
    assert layout.schema.field("id").type == pa.int64()


# plan_shards


def test_plan_shards_packs_row_groups(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", simple(10), row_group_size=3)  # groups of 3, 3, 3, 1
    assert pq.ParquetFile(f).metadata.num_row_groups == 4
    shards = plan_shards((str(f),), shard_rows=6)
    assert shards == [
        Shard(str(f), (0, 1), first_row=0, num_rows=6),
        Shard(str(f), (2, 3), first_row=6, num_rows=4),
    ]


def test_plan_shards_does_not_exceed_shard_rows_when_groups_fit(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", simple(10), row_group_size=3)  # 3, 3, 3, 1
    shards = plan_shards((str(f),), shard_rows=5)
    assert [(s.row_groups, s.first_row, s.num_rows) for s in shards] == [
        ((0,), 0, 3),
        ((1,), 3, 3),
        ((2, 3), 6, 4),
    ]
    assert sum(s.num_rows for s in shards) == 10


def test_plan_shards_slices_row_groups_bigger_than_a_shard(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", simple(11), row_group_size=5)  # 5, 5, 1
    shards = plan_shards((str(f),), shard_rows=2)
    assert [(s.row_groups, s.first_row, s.num_rows, s.partial) for s in shards] == [
        ((0,), 0, 2, True), ((0,), 2, 2, True), ((0,), 4, 1, True),
        ((1,), 5, 2, True), ((1,), 7, 2, True), ((1,), 9, 1, True),
        ((2,), 10, 1, False),
    ]


def test_plan_shards_a_big_row_group_between_small_ones(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    with pq.ParquetWriter(f, pa.schema([("id", pa.int64()), ("text", pa.string())])) as out:
        for n, start in ((2, 0), (2, 2), (9, 4), (1, 13)):
            out.write_table(pa.table(simple(n, start), schema=out.schema), row_group_size=n)
    shards = plan_shards((str(f),), shard_rows=4)
    assert [(s.row_groups, s.first_row, s.num_rows, s.partial) for s in shards] == [
        ((0, 1), 0, 4, False), ((2,), 4, 4, True), ((2,), 8, 4, True), ((2,), 12, 1, True), ((3,), 13, 1, False),
    ]


def test_a_slice_of_a_big_row_group_reads_as_the_group_would(tmp_path: Path) -> None:
    """A slice is read by DuckDB, row groups by pyarrow: the same rows, in order, with the same types, for
    every kind of column a source may keep."""
    n = 50
    data = pa.table({
        "id": pa.array(range(n), pa.int32()),
        "text": pa.array([f"t{i}" if i % 7 else None for i in range(n)], pa.string()).dictionary_encode(),
        "when": pa.array([1_700_000_000_000 + i for i in range(n)], pa.timestamp("ms", tz="Europe/Berlin")),
        "day": pa.array(range(n), pa.int32()).cast(pa.date32()),
        "price": pa.array([f"{i}.25" for i in range(n)]).cast(pa.decimal128(9, 2)),
        "tags": pa.array([[f"a{i}", "b"] if i % 3 else [] for i in range(n)], pa.list_(pa.string())),
        "blob": pa.array([bytes([i]) * i for i in range(n)], pa.binary()),
        "ratio": pa.array([i / 3 if i % 5 else None for i in range(n)], pa.float32()),
        "count": pa.array(range(n), pa.uint16()),
    })
    f = write(tmp_path / "a.parquet", data, row_group_size=n)
    layout = inspect_source(source(f, keep=("when", "day", "price", "tags", "blob", "ratio", "count")), MODALITIES)
    slices = plan_shards(layout.files, shard_rows=16)
    assert [(s.first_row, s.num_rows, s.partial) for s in slices] == [
        (0, 16, True), (16, 16, True), (32, 16, True), (48, 2, True)]
    whole = read_shard(Shard(str(f), (0,), 0, n), layout)
    read = pa.concat_tables(read_shard(s, layout) for s in slices)
    assert read.schema == whole.schema
    assert read.equals(whole)


def test_plan_shards_several_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.parquet", simple(5), row_group_size=5)
    b = write(tmp_path / "b.parquet", simple(4), row_group_size=2)
    shards = plan_shards((str(a), str(b)), shard_rows=100)
    # shards never span files; each file restarts at row 0
    assert shards == [Shard(str(a), (0,), 0, 5), Shard(str(b), (0, 1), 0, 4)]


def test_plan_shards_empty_file_has_no_shard(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}))
    assert plan_shards((str(f),), shard_rows=10) == []


# find_duplicates


def test_find_duplicates_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.parquet", {"id": ["x", "y", None, "x", "z"], "text": list("abcde")})
    b = write(tmp_path / "b.parquet", {"id": ["y", None, "w", "x"], "text": list("fghi")})
    dups = find_duplicates((str(a), str(b)), "id")
    assert dups.column_names == ["file", "row", "first_file", "first_row"]
    assert dups.to_pylist() == [
        {"file": str(a), "row": 3, "first_file": str(a), "first_row": 0},
        {"file": str(b), "row": 0, "first_file": str(a), "first_row": 1},
        {"file": str(b), "row": 3, "first_file": str(a), "first_row": 0},
    ]
    assert dups.schema.field("row").type == pa.int64()
    assert dups.schema.field("first_row").type == pa.int64()


def test_find_duplicates_integer_ids_in_one_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.parquet", {"doc": [5, 5, 5, 6, None, None], "text": list("abcdef")})
    dups = find_duplicates((str(a),), "doc")
    assert dups.to_pylist() == [
        {"file": str(a), "row": 1, "first_file": str(a), "first_row": 0},
        {"file": str(a), "row": 2, "first_file": str(a), "first_row": 0},
    ]


def test_find_duplicates_none(tmp_path: Path) -> None:
    a = write(tmp_path / "a.parquet", simple(3))
    b = write(tmp_path / "b.parquet", simple(3, start=3))
    assert find_duplicates((str(a), str(b)), "id").num_rows == 0


# read_shard


def test_read_shard_rows_and_types(tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.parquet",
        pa.table({
            "title": [f"title{i}" for i in range(10)],
            "text": pa.array([f"t{i}" for i in range(10)], pa.string()),
            "id": pa.array(range(100, 110), pa.int32()),
            "unused": list(range(10)),
        }),
        row_group_size=3,
    )
    layout = inspect_source(source(f, keep=("title",)), MODALITIES)
    shards = plan_shards(layout.files, shard_rows=4)
    assert [(s.first_row, s.num_rows) for s in shards] == [(0, 3), (3, 3), (6, 4)]
    table = read_shard(shards[2], layout)
    assert table.column_names == ["id", "text", "title", "_row"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("text").type == pa.large_string()
    assert table.schema.field("_row").type == pa.int64()
    assert table.to_pydict() == {
        "id": [106, 107, 108, 109],
        "text": ["t6", "t7", "t8", "t9"],
        "title": ["title6", "title7", "title8", "title9"],
        "_row": [6, 7, 8, 9],
    }


def test_read_shard_with_hand_made_layout(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", simple(6), row_group_size=2)
    layout = SourceLayout((str(f),), pa.schema([("id", pa.int64()), ("text", pa.large_string())]))
    table = read_shard(Shard(str(f), (1,), first_row=2, num_rows=2), layout)
    assert table.to_pydict() == {"id": [2, 3], "text": ["t2", "t3"], "_row": [2, 3]}


def test_uint64_id_beyond_int64_is_read_whole(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", {"id": pa.array([2**64 - 1], pa.uint64()), "text": ["a"]})
    try:
        layout = inspect_source(source(f), MODALITIES)
    except InputError as e:
        assert "'id'" in str(e)
        return
    # if the layout is accepted, reading the shard must not fail part way
    table = read_shard(plan_shards(layout.files, 10)[0], layout)
    assert table["id"].to_pylist() == [2**64 - 1]
