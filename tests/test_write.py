"""Write stage: staging files, content hashes, vector rows, and one-version publishing into LanceDB."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from schemas.tables import REJECTS_SCHEMA, REJECTS_TABLE, RUNS_SCHEMA, RUNS_TABLE, embedding_schema
from tasks import write
from tasks.validate import REJECT_COLUMNS
from tasks.write import (
    STAGED_REJECTS_SCHEMA,
    Staging,
    content_hashes,
    ids_to_delete,
    merge,
    record_rejects,
    record_run,
    shard_key,
    sql_in,
    staged_rejects,
    vectors_table,
)

DIM = 3
META = {"embedder": "minilm", "model_id": "some/model", "dim": "3"}


def sha(fingerprint: str, text: str) -> str:
    return hashlib.sha256((fingerprint + text).encode()).hexdigest()


def schema() -> pa.Schema:
    return embedding_schema(pa.int64(), DIM, [pa.field("title", pa.string())], META)


def rows(ids: list[int], fingerprint: str = "fp") -> pa.Table:
    """Embedding-table rows built by hand (no code under test)."""
    vectors = [[float(i), float(i) + 0.5, -float(i)] for i in ids]
    return pa.Table.from_pydict(
        {
            "id": ids,
            "content_hash": [sha(fingerprint, f"text {i}") for i in ids],
            "vector": vectors,
            "title": [f"title {i}" for i in ids],
        },
        schema=schema(),
    )


@pytest.fixture
def database(tmp_path: Path) -> str:
    return str(tmp_path / "db")


# Staging


def test_staging_paths(database: str) -> None:
    staging = Staging(database + "/", "run-1")
    assert staging.root == f"{database}/_staging/run-1"
    assert staging.folder("vectors", "t") == f"{database}/_staging/run-1/vectors/t"


def test_staging_round_trip(database: str) -> None:
    staging = Staging(database, "run-1")
    first, second = rows([1, 2]), rows([3])
    staging.write("vectors", "t", shard_key("/data/a.parquet", 0), first)
    staging.write("vectors", "t", shard_key("/data/a.parquet", 2), second)
    folder = Path(staging.folder("vectors", "t"))
    assert sorted(p.suffix for p in folder.iterdir()) == [".parquet", ".parquet"]  # no .tmp left behind
    reader = staging.read("vectors", "t", schema())
    assert isinstance(reader, pa.RecordBatchReader)
    back = reader.read_all().sort_by("id")
    assert back.to_pylist() == rows([1, 2, 3]).to_pylist()
    assert back.schema.field("vector").type == pa.list_(pa.float32(), DIM)


def test_staging_write_same_shard_twice_replaces(database: str) -> None:
    staging = Staging(database, "run-1")
    key = shard_key("/data/a.parquet", 0)
    staging.write("vectors", "t", key, rows([1, 2]))
    staging.write("vectors", "t", key, rows([5]))
    assert staging.read("vectors", "t", schema()).read_all()["id"].to_pylist() == [5]


def test_a_killed_attempts_half_file_is_never_read_and_attempts_never_share_a_temp_file(database: str,
                                                                                       monkeypatch) -> None:
    staging = Staging(database, "run-1")
    key = shard_key("/data/a.parquet", 0)
    staged: list[str] = []

    def killed(data, path, filesystem):  # the worker dies mid-write: a partial file stays where it was
        staged.append(path)
        with filesystem.open_output_stream(path) as f:
            f.write(b"PAR1 half a parquet file")
        raise KeyboardInterrupt

    monkeypatch.setattr("tasks.write.pq.write_table", killed)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            staging.write("vectors", "t", key, rows([1, 2]))
    monkeypatch.undo()
    assert len(set(staged)) == 2  # each attempt had a temp file of its own
    assert staging.read("vectors", "t", schema()).read_all().num_rows == 0  # the halves are not data
    staging.write("vectors", "t", key, rows([1, 2]))
    assert sorted(staging.read("vectors", "t", schema()).read_all()["id"].to_pylist()) == [1, 2]


def test_staging_read_columns(database: str) -> None:
    staging = Staging(database, "run-1")
    staging.write("vectors", "t", "k", rows([4, 5]))
    ids = staging.read("vectors", "t", schema(), columns=["id"]).read_all()
    assert ids.column_names == ["id"]
    assert sorted(ids["id"].to_pylist()) == [4, 5]


def test_staging_read_missing_folder_is_empty(database: str) -> None:
    staging = Staging(database, "never-written")
    reader = staging.read("vectors", "t", schema())
    assert reader.schema == schema()
    assert reader.read_all().num_rows == 0
    only_id = staging.read("vectors", "t", schema(), columns=["id"])
    assert only_id.schema.names == ["id"]
    assert only_id.schema.field("id").type == pa.int64()
    assert only_id.read_all().num_rows == 0


def test_staging_kinds_and_tables_are_separate(database: str) -> None:
    staging = Staging(database, "run-1")
    staging.write("vectors", "t1", "k", rows([1]))
    staging.write("vectors", "t2", "k", rows([2]))
    assert staging.read("vectors", "t1", schema()).read_all()["id"].to_pylist() == [1]
    assert staging.read("rejects", "t1", REJECTS_SCHEMA).read_all().num_rows == 0
    other_run = Staging(database, "run-2")
    assert other_run.read("vectors", "t1", schema()).read_all().num_rows == 0


def test_staging_remove(database: str) -> None:
    staging = Staging(database, "run-1")
    staging.write("vectors", "t", "k", rows([1]))
    staging.remove()
    assert not Path(staging.root).exists()
    staging.remove()  # nothing left: no error


def test_shard_key_is_stable_and_distinct() -> None:
    key = shard_key("/data/a.parquet", 4096)
    assert key == f"{hashlib.sha256(b'/data/a.parquet').hexdigest()[:12]}-000000004096"
    assert shard_key("/data/a.parquet", 4096) == key
    assert shard_key("/data/b.parquet", 4096) != key
    assert shard_key("/data/a.parquet", 0) != key


# content_hashes


@pytest.mark.parametrize("text_type", [pa.string(), pa.large_string()])
def test_content_hashes_match_independent_sha256(text_type: pa.DataType) -> None:
    texts = ["hello", "", "héllo wörld ✓", "line\nbreak"]
    hashes = content_hashes(pa.array(texts, text_type), "abc123")
    assert hashes.type == pa.string()
    assert hashes.to_pylist() == [sha("abc123", t) for t in texts]


def test_content_hashes_deterministic_and_sensitive() -> None:
    values = pa.array(["a", "b"], pa.large_string())
    once = content_hashes(values, "fp1").to_pylist()
    assert content_hashes(values, "fp1").to_pylist() == once
    assert once[0] != once[1]
    changed_payload = content_hashes(pa.array(["a", "b!"], pa.large_string()), "fp1").to_pylist()
    assert changed_payload[0] == once[0]
    assert changed_payload[1] != once[1]
    changed_fingerprint = content_hashes(values, "fp2").to_pylist()
    assert changed_fingerprint[0] != once[0]
    assert changed_fingerprint[1] != once[1]


def test_content_hashes_chunked_input_keeps_order() -> None:
    chunked = pa.chunked_array([pa.array(["x", "y"], pa.large_string()), pa.array(["z"], pa.large_string())])
    assert content_hashes(chunked, "f").to_pylist() == [sha("f", "x"), sha("f", "y"), sha("f", "z")]


def test_content_hashes_binary_payload() -> None:
    payload = [b"\x00\x01\xff", b"img"]
    expected = [hashlib.sha256(b"fp" + p).hexdigest() for p in payload]
    assert content_hashes(pa.array(payload, pa.binary()), "fp").to_pylist() == expected


# vectors_table


def kept_shard() -> pa.Table:
    return pa.table({
        "doc_id": pa.array([10, 11, 12, 13], pa.int64()),
        "body": pa.array(["a", "b", "c", "d"], pa.large_string()),
        "title": pa.array(["ta", "tb", "tc", "td"], pa.string()),
        "_row": pa.array([5, 6, 7, 8], pa.int64()),
    })


def test_vectors_table_rows_and_rejects() -> None:
    vectors = np.array(
        [[0.1, 0.2, 0.3], [np.nan, 0.0, 0.0], [1.0, np.inf, 2.0], [-1.5, 2.5, 0.0]], dtype=np.float64
    )
    table, rejects = vectors_table(kept_shard(), vectors, "doc_id", "body", schema(), "fp", "/data/a.parquet")

    assert table.schema == schema()
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert table["id"].to_pylist() == [10, 13]
    assert table["title"].to_pylist() == ["ta", "td"]
    assert table["content_hash"].to_pylist() == [sha("fp", "a"), sha("fp", "d")]
    got = table["vector"].to_pylist()
    assert got[0] == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)
    assert got[1] == [-1.5, 2.5, 0.0]

    assert rejects.schema == REJECT_COLUMNS
    assert rejects.to_pylist() == [
        {"file": "/data/a.parquet", "row": 6, "id": "11", "column": "body", "stage": "embed",
         "reason": "model produced a non-finite vector"},
        {"file": "/data/a.parquet", "row": 7, "id": "12", "column": "body", "stage": "embed",
         "reason": "model produced a non-finite vector"},
    ]


def test_vectors_table_all_finite() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    table, rejects = vectors_table(kept_shard(), vectors, "doc_id", "body", schema(), "fp", "/f")
    assert table.num_rows == 4
    assert rejects.num_rows == 0
    assert table["vector"].to_pylist()[3] == [9.0, 10.0, 11.0]
    assert all(math.isfinite(x) for v in table["vector"].to_pylist() for x in v)


def test_vectors_table_negative_inf_rejected() -> None:
    vectors = np.zeros((4, 3), dtype=np.float32)
    vectors[0, 2] = -np.inf
    table, rejects = vectors_table(kept_shard(), vectors, "doc_id", "body", schema(), "fp", "/f")
    assert table["id"].to_pylist() == [11, 12, 13]
    assert rejects["id"].to_pylist() == ["10"]
    assert rejects["stage"].to_pylist() == ["embed"]


def test_staged_rejects() -> None:
    rejects = pa.Table.from_pylist(
        [{"file": "/f", "row": 3, "id": "x", "column": "body", "stage": "validate", "reason": "null text"}],
        schema=REJECT_COLUMNS,
    )
    out = staged_rejects(rejects, "docs", "docs__body__minilm")
    assert out.schema == STAGED_REJECTS_SCHEMA
    assert out.to_pylist() == [{
        "source": "docs", "table": "docs__body__minilm", "file": "/f", "row": 3, "id": "x",
        "column": "body", "stage": "validate", "reason": "null text",
    }]


# publish


def stage(database: str, run_id: str, name: str, *parts: pa.Table) -> Staging:
    staging = Staging(database, run_id)
    for i, part in enumerate(parts):
        staging.write("vectors", name, f"shard-{i}", part)
    return staging


def replace_counting(db: lancedb.DBConnection, name: str, staging: Staging) -> tuple[int, int]:
    """(version, ids of the previous version gone): what the publish stage records for a replace."""
    previous = write.open_table(db, name)
    ids = staging.read("vectors", name, schema(), columns=["id"])
    deleted = 0 if previous is None else write.count_deleted(previous, ids)
    return write.replace(db, name, schema(), staging), deleted


def test_publish_first_then_replace(database: str) -> None:
    db = lancedb.connect(database)
    name = "docs__body__minilm"

    version, deleted = replace_counting(db, name, stage(database, "run-1", name, rows([1, 2]), rows([3])))
    assert (version, deleted) == (1, 0)
    table = db.open_table(name)
    assert table.version == 1
    assert sorted(table.to_arrow()["id"].to_pylist()) == [1, 2, 3]
    first_versions = len(table.list_versions())

    second = pa.concat_tables([rows([2]), rows([3], fingerprint="new"), rows([4, 5])])
    version, deleted = replace_counting(db, name, stage(database, "run-2", name, second))
    assert version == 2
    assert deleted == 1  # id 1 is gone
    table = db.open_table(name)
    assert table.version == 2
    assert len(table.list_versions()) == first_versions + 1
    now = table.to_arrow().sort_by("id")
    assert now["id"].to_pylist() == [2, 3, 4, 5]
    assert now.select(["content_hash"]).to_pylist()[1] == {"content_hash": sha("new", "text 3")}

    # the schema keeps its types and the multiembed.* metadata
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    metadata = table.schema.metadata or {}
    for key, value in META.items():
        assert metadata[f"multiembed.{key}".encode()] == value.encode()

    # the previous version stays readable
    table.checkout(1)
    assert sorted(table.to_arrow()["id"].to_pylist()) == [1, 2, 3]
    table.checkout_latest()
    assert sorted(table.to_arrow()["id"].to_pylist()) == [2, 3, 4, 5]


def test_publish_counts_every_vanished_id(database: str) -> None:
    db = lancedb.connect(database)
    name = "t"
    write.replace(db, name, schema(), stage(database, "r1", name, rows([1, 2, 3, 4, 5])))
    version, deleted = replace_counting(db, name, stage(database, "r2", name, rows([5, 6])))
    assert (version, deleted) == (2, 4)
    version, deleted = replace_counting(db, name, stage(database, "r3", name, rows([5, 6, 7])))
    assert (version, deleted) == (3, 0)


def test_publish_with_nothing_staged_empties_the_table(database: str) -> None:
    db = lancedb.connect(database)
    name = "t"
    write.replace(db, name, schema(), stage(database, "r1", name, rows([1, 2])))
    version, deleted = replace_counting(db, name, Staging(database, "r2"))
    assert (version, deleted) == (2, 2)
    table = db.open_table(name)
    assert table.count_rows() == 0
    table.checkout(1)
    assert table.count_rows() == 2


def test_open_table_missing_is_none(database: str) -> None:
    db = lancedb.connect(database)
    assert write.open_table(db, "nope") is None


# _runs and _rejects


def run_row(run_id: str, table: str, version: int) -> dict:
    start = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    end = datetime(2024, 1, 2, 3, 4, 15, tzinfo=UTC)
    return {
        "run_id": run_id, "flow_run_id": None, "source": "docs", "table": table, "version": version,
        "rows_read": 10, "rows_embedded": 6, "rows_unchanged": 2, "rows_rejected": 2, "rows_deleted": 1,
        "rows_truncated": 0, "published": True, "flags": "{}", "started_at": start, "finished_at": end, "seconds": 10.0,
    }


def test_record_run_appends(database: str) -> None:
    db = lancedb.connect(database)
    record_run(db, [run_row("r1", "t1", 1), run_row("r1", "t2", 1)])
    record_run(db, [run_row("r2", "t1", 2)])
    table = db.open_table(RUNS_TABLE)
    assert table.schema.names == RUNS_SCHEMA.names
    for field in RUNS_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    got = table.to_arrow().sort_by([("run_id", "ascending"), ("table", "ascending")]).to_pylist()
    assert [(r["run_id"], r["table"], r["version"]) for r in got] == [("r1", "t1", 1), ("r1", "t2", 1), ("r2", "t1", 2)]
    assert got[0]["started_at"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert got[0]["flow_run_id"] is None
    assert got[0]["rows_read"] == 10
    assert table.version == 2  # one version per call


def reject(file: str, row: int, reason: str) -> dict:
    return {"file": file, "row": row, "id": str(row), "column": "body", "stage": "validate", "reason": reason}


def test_record_rejects_appends_staged_rejects(database: str) -> None:
    db = lancedb.connect(database)
    staging = Staging(database, "r1")
    for name, records in {"t1": [reject("/a", 1, "null text"), reject("/a", 2, "empty text")],
                          "t2": [reject("/b", 7, "null id")]}.items():
        part = pa.Table.from_pylist(records, schema=REJECT_COLUMNS)
        staging.write("rejects", name, "k", staged_rejects(part, "docs", name))
    record_rejects(db, staging, ["t1", "t2", "t3_nothing_staged"], "r1")

    table = db.open_table(REJECTS_TABLE)
    assert table.schema.names == REJECTS_SCHEMA.names
    for field in REJECTS_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    got = table.to_arrow().sort_by([("table", "ascending"), ("row", "ascending")])
    assert got.select(["run_id", "table", "file", "row", "reason"]).to_pylist() == [
        {"run_id": "r1", "table": "t1", "file": "/a", "row": 1, "reason": "null text"},
        {"run_id": "r1", "table": "t1", "file": "/a", "row": 2, "reason": "empty text"},
        {"run_id": "r1", "table": "t2", "file": "/b", "row": 7, "reason": "null id"},
    ]

    staging2 = Staging(database, "r2")
    part = pa.Table.from_pylist([reject("/a", 9, "null text")], schema=REJECT_COLUMNS)
    staging2.write("rejects", "t1", "k", staged_rejects(part, "docs", "t1"))
    record_rejects(db, staging2, ["t1"], "r2")
    table = db.open_table(REJECTS_TABLE)
    assert table.count_rows() == 4
    assert sorted(table.to_arrow()["run_id"].to_pylist()) == ["r1", "r1", "r1", "r2"]


def test_record_rejects_with_nothing_staged_creates_empty_table(database: str) -> None:
    db = lancedb.connect(database)
    record_rejects(db, Staging(database, "r1"), ["t1"], "r1")
    table = db.open_table(REJECTS_TABLE)
    assert table.count_rows() == 0
    assert table.schema.names == REJECTS_SCHEMA.names


def test_done_markers_carry_a_shards_figures(database: str) -> None:
    staging = Staging(database, "work-1")
    assert staging.done("t", "shard-a") is None
    staging.mark_done("t", "shard-a", {"rows_read": 8, "rows_embedded": 7})
    assert staging.done("t", "shard-a") == {"rows_read": 8, "rows_embedded": 7}
    assert Staging(database, "work-2").done("t", "shard-a") is None  # other work, other markers
    staging.remove()
    assert staging.done("t", "shard-a") is None


def test_merge_upserts_and_deletes_in_one_version(database: str) -> None:
    db = lancedb.connect(database)
    name = "t"
    write.replace(db, name, schema(), stage(database, "r1", name, rows([1, 2, 3, 4])))
    staging = stage(database, "r2", name, pa.concat_tables([rows([2], fingerprint="new"), rows([9])]))
    stale = pa.array([2, 3, 4], pa.int64())  # 2 changed (and re-embedded), 3 and 4 left the input
    delete = ids_to_delete(stale, staging, name, schema())
    assert sorted(delete.to_pylist()) == [3, 4]
    version = merge(db, name, schema(), staging, delete)
    assert version == 2
    table = db.open_table(name).to_arrow().sort_by("id")
    assert table["id"].to_pylist() == [1, 2, 9]
    assert table["content_hash"].to_pylist()[1] == sha("new", "text 2")


def test_sql_in_quotes_strings() -> None:
    assert sql_in("id", pa.array([1, 22])) == "id IN (1, 22)"
    assert sql_in("id", pa.array(["a", "it's"])) == "id IN ('a', 'it''s')"


def test_a_runs_table_from_an_earlier_version_gets_the_new_columns(database: str) -> None:
    """`_runs` as the version before `flags` wrote it: the next run's row is appended, old rows read null."""
    from datetime import UTC, datetime

    from schemas.tables import RUNS_SCHEMA, RUNS_TABLE
    from tasks.write import record_run

    def row(run_id: str) -> dict:
        now = datetime.now(UTC)
        return {"run_id": run_id, "flow_run_id": None, "source": "s", "table": "t", "version": 1, "rows_read": 2,
                "rows_embedded": 2, "rows_unchanged": 0, "rows_rejected": 0, "rows_truncated": 0, "rows_deleted": 0,
                "published": True, "flags": "{}", "started_at": now, "finished_at": now, "seconds": 0.0}

    old_schema = pa.schema([f for f in RUNS_SCHEMA if f.name != "flags"])
    db = lancedb.connect(database)
    db.create_table(RUNS_TABLE, pa.Table.from_pylist([row("old")], schema=old_schema))
    record_run(db, [row("new") | {"flags": '{"silent clip": 1}'}])
    runs = {r["run_id"]: r["flags"] for r in db.open_table(RUNS_TABLE).to_arrow().to_pylist()}
    assert runs == {"old": None, "new": '{"silent clip": 1}'}
