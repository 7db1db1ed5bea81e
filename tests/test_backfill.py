"""The backfill flow end to end on a real Prefect server and a real LanceDB folder, with the fake embedder."""

from __future__ import annotations

import json
from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import POISON, UNDECODABLE, write_config, write_parquet

import tasks.stages
from flows.backfill import backfill
from tasks.sources import InputError

pytestmark = pytest.mark.usefixtures("prefect_server")

TABLES = ["reviews__body__fake", "reviews__body__fake2", "reviews__title__fake"]


def good_rows(ids: range) -> list[dict]:
    return [{"review_id": i, "body": f"review number {i} " + "long " * (i % 15), "title": f"title {i}",
             "label": "pos" if i % 2 else "neg"} for i in ids]


BAD_ROWS = [
    {"review_id": 100, "body": None, "title": "t"},  # null text
    {"review_id": 101, "body": " \t\n", "title": "t"},  # blank text
    {"review_id": 3, "body": "repeats id 3", "title": "t"},  # id seen in the first file
    {"review_id": None, "body": "no id", "title": "t"},  # null id
    {"review_id": 102, "body": f"the model breaks on {POISON}", "title": "t"},  # non-finite vector
    {"review_id": 103, "body": "fine body", "title": None},  # null title: rejected for the title table only
    {"review_id": 104, "body": f"{UNDECODABLE} payload", "title": "t"},  # fails the prepare stage
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_parquet(tmp_path / "raw" / "a.parquet", good_rows(range(1, 21)))
    write_parquet(tmp_path / "raw" / "b.parquet", good_rows(range(21, 31)) + BAD_ROWS)
    write_config(tmp_path, [{
        "name": "reviews", "path": "raw/*.parquet", "id": "review_id", "shard_rows": 4, "keep": ["label"],
        "fields": [{"column": "body", "modality": "text", "embedders": ["fake", "fake2"]},
                   {"column": "title", "modality": "text", "embedders": ["fake"]}],
    }])
    return tmp_path


def open_db(project: Path) -> lancedb.DBConnection:
    return lancedb.connect(project / "lancedb")


def read(project: Path, name: str) -> pa.Table:
    return open_db(project).open_table(name).to_arrow()


def test_every_row_is_accounted_for_in_runs_and_rejects(project: Path) -> None:
    summary = backfill(config=str(project / "config.yaml"))
    runs, rejects = read(project, "_runs"), read(project, "_rejects")
    assert sorted(runs["table"].to_pylist()) == TABLES == sorted(r["table"] for r in summary)
    for run in runs.to_pylist():
        assert run["rows_read"] == 37
        assert run["rows_read"] == run["rows_embedded"] + run["rows_unchanged"] + run["rows_rejected"]
        mine = rejects.filter(pc.equal(rejects["table"], run["table"]))
        assert mine.num_rows == run["rows_rejected"]
        assert read(project, run["table"]).num_rows == run["rows_embedded"]
    body = rejects.filter(pc.equal(rejects["table"], "reviews__body__fake")).to_pylist()
    reasons = {(r["id"], r["stage"], r["column"]): r["reason"] for r in body}
    assert reasons[("100", "validate", "body")] == "null text"
    assert reasons[("101", "validate", "body")] == "empty text"
    assert reasons[(None, "validate", "review_id")] == "null id"
    assert reasons[("102", "embed", "body")] == "model produced a non-finite vector"
    assert reasons[("104", "prepare", "body")] == f"cannot decode ({project / 'raw'})"
    assert "a.parquet row 2" in reasons[("3", "validate", "review_id")]
    assert {r["file"] for r in body} == {str(project / "raw" / "b.parquet")}
    title = rejects.filter(pc.equal(rejects["table"], "reviews__title__fake"))
    assert sorted(title["reason"].to_pylist()) == sorted(["id repeated in the input (first at "
                                                          f"{project / 'raw' / 'a.parquet'} row 2)", "null id",
                                                          "null text"])


def test_table_holds_ids_keep_columns_unit_vectors_and_self_description(project: Path) -> None:
    backfill(config=str(project / "config.yaml"))
    table = open_db(project).open_table("reviews__body__fake")
    data = table.to_arrow()
    assert data.column_names == ["id", "content_hash", "vector", "label", "input_stats"]
    stats = data["input_stats"].combine_chunks()
    assert stats.type == pa.struct([(n, pa.float64()) for n in ("characters", "tokens", "unknown_token_rate")])
    assert pc.min(stats.field("characters")).as_py() >= 1
    assert stats.field("tokens").null_count == 0 and pc.all(pc.is_nan(stats.field("tokens"))).as_py()  # no tokenizer
    assert data.schema.field("vector").type == pa.list_(pa.float32(), 8)
    assert sorted(data["id"].to_pylist()) == list(range(1, 31)) + [103]
    first = data.filter(pc.equal(data["id"], 3)).to_pylist()[0]
    assert first["label"] == "pos"  # the first occurrence of id 3 is kept, not the repeat
    norms = pc.list_value_length(data["vector"])  # fixed size
    assert set(norms.to_pylist()) == {8}
    import numpy as np

    vectors = np.stack(data["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["multiembed.embedder"] == "fake"
    assert meta["multiembed.model_id"] == "fake/fake"
    assert meta["multiembed.dim"] == "8"
    assert {"multiembed.revision", "multiembed.pooling", "multiembed.normalize", "multiembed.max_tokens",
            "multiembed.pipeline_version"} <= meta.keys()
    assert len(set(data["content_hash"].to_pylist())) == data.num_rows


def test_each_run_publishes_exactly_one_version_per_table(project: Path) -> None:
    backfill(config=str(project / "config.yaml"))  # 10 shards over two files
    db = open_db(project)
    assert all(len(db.open_table(t).list_versions()) == 1 for t in TABLES)
    # The source shrinks: a second run publishes one more version and counts the ids that left.
    write_parquet(project / "raw" / "b.parquet", good_rows(range(21, 26)))
    summary = backfill(config=str(project / "config.yaml"))
    for t in TABLES:
        assert [v["version"] for v in db.open_table(t).list_versions()] == [1, 2]
    body = next(r for r in summary if r["table"] == "reviews__body__fake")
    assert body["version"] == 2 and body["rows_deleted"] == 6  # ids 26-30 and 103
    assert db.open_table("reviews__body__fake").count_rows() == 25
    old = db.open_table("reviews__body__fake")
    old.checkout(1)
    assert old.count_rows() == 31  # the earlier version stays readable
    runs = read(project, "_runs")
    assert runs.num_rows == 6 and len(set(runs["run_id"].to_pylist())) == 2
    assert not (project / "lancedb" / "_staging").exists() or not any((project / "lancedb" / "_staging").iterdir())


def test_content_hash_depends_on_the_embedder(project: Path) -> None:
    backfill(config=str(project / "config.yaml"))
    one = read(project, "reviews__body__fake").sort_by("id")
    two = read(project, "reviews__body__fake2").sort_by("id")
    assert one["id"].equals(two["id"])
    assert not set(one["content_hash"].to_pylist()) & set(two["content_hash"].to_pylist())


def test_bad_input_fails_before_anything_is_written(tmp_path: Path) -> None:
    write_parquet(tmp_path / "ok.parquet", good_rows(range(1, 5)))
    write_parquet(tmp_path / "bad.parquet", [{"review_id": 1, "text": "no body column here"}])
    config = write_config(tmp_path, [
        {"name": "good", "path": "ok.parquet", "id": "review_id", "fields": [{"column": "body", "modality": "text",
                                                                               "embedders": ["fake"]}]},
        {"name": "broken", "path": "bad.parquet", "id": "review_id", "fields": [{"column": "body", "modality": "text",
                                                                                  "embedders": ["fake"]}]},
    ])
    with pytest.raises(InputError, match=r"bad\.parquet: missing column\(s\) \['body'\]"):
        backfill(config=str(config))
    assert not (tmp_path / "lancedb").exists()  # the good source was not written either


def test_transient_read_error_is_retried_and_bad_data_is_not(project: Path, monkeypatch) -> None:
    calls = {"read": 0}
    real_read = tasks.stages.sources.read_shard

    def flaky(shard, layout):
        calls["read"] += 1
        if calls["read"] == 1:
            raise OSError("connection reset while reading")
        return real_read(shard, layout)

    monkeypatch.setattr(tasks.stages.sources, "read_shard", flaky)
    summary = backfill(config=str(project / "config.yaml"))
    assert all(r["rows_read"] == 37 for r in summary)
    assert calls["read"] == 11  # 10 shards + 1 retry

    tries: dict[tuple[str, int], int] = {}

    def broken(shard, layout):
        tries[(shard.file, shard.first_row)] = tries.get((shard.file, shard.first_row), 0) + 1
        raise ValueError("not a transient problem")

    monkeypatch.setattr(tasks.stages.sources, "read_shard", broken)
    with pytest.raises(ValueError, match="not a transient"):
        backfill(config=str(project / "config.yaml"))
    assert tries and set(tries.values()) == {1}  # each shard tried once: bad data is never retried
    assert read(project, "_runs").num_rows == 3  # and the failed run published nothing


def test_source_option_runs_one_source_and_summary_is_a_prefect_artifact(project: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    summary = backfill(config=str(project / "config.yaml"), source="reviews")
    assert {r["source"] for r in summary} == {"reviews"}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["backfill-summary"])),
            sort=ArtifactSort.CREATED_DESC, limit=1,
        )
    assert summary[0]["run_id"] in artifacts[0].description
    assert {row["table"] for row in json.loads(artifacts[0].data)} == set(TABLES)
