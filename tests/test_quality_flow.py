"""The quality stages wired into the flows: `_metrics` rows after backfill and refresh, on demand, and failing.

The statistics themselves are tested against independent computations in tests/test_quality_*.py; here
the question is whether the right table versions are checked, compared and recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
from conftest import write_config, write_parquet
from lancedb.index import IvfFlat

from flows.backfill import backfill, refresh
from flows.quality import QualityCheckFailed, quality
from schemas.tables import METRICS_SCHEMA, METRICS_TABLE
from tasks.quality.stages import read_sample

pytestmark = pytest.mark.usefixtures("prefect_server")

SCHEMA = pa.schema([("id", pa.int64()), ("body", pa.string()), ("topic", pa.string()), ("price", pa.float64())])
TOPICS = {"rivers": ["river", "water", "fish", "boat", "stream", "bank"],
          "money": ["money", "loan", "credit", "account", "bank", "rates"]}


def rows(n: int, offset: int = 0) -> list[dict]:
    rng = np.random.default_rng(offset)
    out = []
    for i in range(offset, offset + n):
        topic = list(TOPICS)[i % 2]
        out.append({"id": i, "body": " ".join(rng.choice(TOPICS[topic], 8)), "topic": topic,
                    "price": float(rng.normal(100 if topic == "money" else 10, 5))})
    return out


def project(tmp_path: Path, data: list[dict], quality_config: dict) -> Path:
    write_parquet(tmp_path / "raw" / "part-0.parquet", data, SCHEMA, row_group_size=64)
    fields = [{"column": "body", "modality": "text", "embedders": ["fake", "tfidf"]},
              {"columns": ["price"], "modality": "table", "name": "deal"}]
    return write_config(tmp_path, [{"name": "docs", "path": "raw", "id": "id", "fields": fields, "keep": ["topic"],
                                    "quality": {"label": "topic", "sample": 100, **quality_config}}])


def metrics(tmp_path: Path) -> list[dict]:
    return lancedb.connect(str(tmp_path / "lancedb")).open_table(METRICS_TABLE).to_arrow().to_pylist()


def test_checks_run_after_each_run_on_the_published_versions(tmp_path: Path) -> None:
    cfg = project(tmp_path, rows(200), {"after": ["evaluate", "drift"]})
    backfill(config=str(cfg))
    first = metrics(tmp_path)
    tables = {"docs__body__fake", "docs__body__tfidf", "docs__deal__tabular"}
    assert {(r["table"], r["version"], r["stage"]) for r in first} == {(t, 1, "evaluate") for t in tables}
    assert len({r["run_id"] for r in first}) == 1
    by_metric = {(r["table"], r["metric"]): r for r in first}
    assert by_metric[("docs__body__tfidf", "knn_accuracy")]["value"] > 0.9  # topics are separable by their words
    assert 0.3 < by_metric[("docs__body__fake", "knn_accuracy")]["value"] < 0.7  # hash vectors know no topics
    assert json.loads(by_metric[("docs__body__fake", "anisotropy")]["details"])["rows"] == 200

    # A refresh with a new topic mix publishes version 2 of every table: evaluated and compared with version 1.
    data = rows(200)[:150] + [{**r, "topic": "money"} for r in rows(50, offset=1000) if r["topic"] == "money"]
    project(tmp_path, data, {"after": ["evaluate", "drift"]})
    refresh(config=str(cfg))
    second = [r for r in metrics(tmp_path) if r["run_id"] not in {x["run_id"] for x in first}]
    drift = [r for r in second if r["stage"] == "drift"]
    assert {(r["table"], r["version"], r["reference_version"]) for r in drift} == {(t, 2, 1) for t in tables}
    vector_drift = {"mmd_p_value", "domain_classifier_auc", "drifted_components_share", "centroid_cosine_distance",
                    "drift"}
    # input drift on what the models saw: text length for any text embedder, the number columns of a table
    assert {r["metric"] for r in drift if r["table"] == "docs__body__fake"} == vector_drift | {
        "psi:characters", "ks_p_value:characters"}
    assert {r["metric"] for r in drift if r["table"] == "docs__deal__tabular"} == vector_drift | {
        "psi:price", "ks_p_value:price"}
    table = lancedb.connect(str(tmp_path / "lancedb")).open_table("docs__deal__tabular").to_arrow()
    prices = dict(zip(table["id"].to_pylist(), table["input_stats"].combine_chunks().field("price").to_pylist(),
                      strict=True))
    assert prices == {r["id"]: r["price"] for r in data}


def test_on_demand_versions_and_a_model_change(tmp_path: Path) -> None:
    data = rows(120)
    cfg = project(tmp_path, data, {"after": []})
    backfill(config=str(cfg))
    project(tmp_path, [{**r, "price": r["price"] * 3} for r in data], {"after": []})
    backfill(config=str(cfg), refit=True)  # a new tabular state: a new model for docs__deal__tabular
    rows_out = quality(config=str(cfg), stages=["drift"], table="docs__deal__tabular", reference="1")
    assert [(r["metric"], r["version"], r["reference_version"]) for r in rows_out] == [
        ("psi:price", 2, 1), ("ks_p_value:price", 2, 1), ("knn_overlap", 2, 1)]  # no vector drift across models
    by_metric = {r["metric"]: r for r in rows_out}
    assert 0 <= by_metric["knn_overlap"]["value"] <= 1
    assert by_metric["psi:price"]["status"] != "ok" and by_metric["ks_p_value:price"]["value"] < 1e-6  # prices x3
    old = quality(config=str(cfg), stages=["evaluate"], table="docs__body__tfidf", as_of="1")
    assert {r["version"] for r in old} == {1}
    assert not any(r["stage"] == "drift" for r in quality(config=str(cfg), stages=["drift"], table="docs__body__fake"))


def test_a_failed_check_fails_the_flow_when_the_source_asks_and_is_recorded(tmp_path: Path) -> None:
    cfg = project(tmp_path, rows(100), {"after": ["evaluate"], "on_fail": "fail",
                                        "thresholds": {"anisotropy": -1.0}})  # every space fails this one
    with pytest.raises(QualityCheckFailed, match="docs__body__fake:anisotropy"):
        backfill(config=str(cfg))
    recorded = metrics(tmp_path)
    assert {r["status"] for r in recorded if r["metric"] == "anisotropy"} == {"fail"}
    assert lancedb.connect(str(tmp_path / "lancedb")).open_table("docs__body__fake").count_rows() == 100
    assert lancedb.connect(str(tmp_path / "lancedb")).open_table(METRICS_TABLE).schema == METRICS_SCHEMA

    project(tmp_path, rows(100), {"after": ["evaluate"], "thresholds": {"anisotropy": -1.0}})  # on_fail: warn
    quality(config=str(cfg), stages=["evaluate"], table="docs__body__fake")
    assert {r["status"] for r in metrics(tmp_path) if r["metric"] == "anisotropy"} == {"fail", "warn"}


def test_tables_with_the_same_ids_are_sampled_on_the_same_rows(tmp_path: Path) -> None:
    cfg = project(tmp_path, rows(300), {"after": []})
    backfill(config=str(cfg))
    db = str(tmp_path / "lancedb")
    a, b = (read_sample(db, t, None, ["topic"], 50) for t in ("docs__body__fake", "docs__body__tfidf"))
    assert len(a.ids) == 50 and sorted(a.ids.to_pylist()) == sorted(b.ids.to_pylist())
    assert read_sample(db, "docs__body__fake", None, [], 50).ids.to_pylist() == a.ids.to_pylist()  # seeded


def test_pairs_give_retrieval_metrics_and_an_index_its_recall(tmp_path: Path) -> None:
    data = rows(300)
    for i in range(4):  # each query's relevant row repeats its text; one pair names an id the table lacks
        data[100 + i] = {**data[100 + i], "body": data[i]["body"]}
    pairs = tmp_path / "pairs.parquet"
    pa.parquet.write_table(pa.table({"query": [0, 1, 2, 3, 5], "relevant": [100, 101, 102, 103, 99999]}), pairs)
    cfg = project(tmp_path, data, {"after": [], "pairs": "pairs.parquet"})
    backfill(config=str(cfg))
    handle = lancedb.connect(str(tmp_path / "lancedb")).open_table("docs__body__tfidf")
    handle.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=2))
    out = {r["metric"]: r for r in quality(config=str(cfg), stages=["evaluate"], table="docs__body__tfidf")}
    assert {"recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10", "index_recall_at_10"} <= set(out)
    details = json.loads(out["mrr"]["details"])
    assert (details["queries"], details["pairs_missing"]) == (4, 1)
    assert out["recall_at_1"]["value"] == out["mrr"]["value"] == 1.0  # the same text is the nearest
    assert 0 < out["index_recall_at_10"]["value"] <= 1


def pathological_project(tmp_path: Path, n: int, offset: int = 0) -> Path:
    """Rows real tables have: a constant number column and one that repeats another (dead dimensions for a
    fitted projection), exact duplicates, and texts without a term tf-idf knows (zero vectors)."""
    data = []
    for r in rows(n, offset):
        i = r["id"]
        body = f"zq{i}x" if i % 10 == 0 else r["body"] if i % 7 else rows(1)[0]["body"]
        data.append({**r, "body": body, "flat": 5.0, "twice": 2 * r["price"]})
    schema = SCHEMA.append(pa.field("flat", pa.float64())).append(pa.field("twice", pa.float64()))
    write_parquet(tmp_path / "raw" / "part-0.parquet", data, schema, row_group_size=64)
    fields = [{"column": "body", "modality": "text", "embedders": ["fake", "tfidf"]},
              {"columns": ["price", "flat", "twice"], "modality": "table", "name": "deal"}]
    return write_config(tmp_path, [{"name": "docs", "path": "raw", "id": "id", "fields": fields, "keep": ["topic"],
                                    "quality": {"label": "topic", "sample": 100, "after": ["evaluate", "drift"]}}])


def test_pathological_tables_get_every_statistic_finite_or_none(tmp_path: Path) -> None:
    """Evaluate and drift over tables with constant columns, duplicated rows and zero vectors: no error, every
    value finite or None with the reason."""
    cfg = pathological_project(tmp_path, 200)
    backfill(config=str(cfg))
    pathological_project(tmp_path, 260, offset=100)  # a refresh: new rows, deleted rows, version 2
    refresh(config=str(cfg))
    recorded = metrics(tmp_path)
    assert {(r["stage"], r["version"]) for r in recorded} == {("evaluate", 1), ("evaluate", 2), ("drift", 2)}
    assert [r for r in recorded if r["status"] == "error"] == []
    assert all(r["value"] is None or np.isfinite(r["value"]) for r in recorded)
    assert all(json.loads(r["details"]).get("reason") for r in recorded if r["value"] is None)
    by_metric = {(r["table"], r["metric"], r["version"]): r for r in recorded}
    assert by_metric[("docs__body__tfidf", "norm_min", 1)]["value"] == 0  # the rows without a known term
    assert by_metric[("docs__body__tfidf", "duplicate_share", 1)]["value"] > 0
    assert by_metric[("docs__deal__tabular", "linear_probe_accuracy", 2)]["value"] > 0.9  # price tells topics
    table = lancedb.connect(str(tmp_path / "lancedb")).open_table("docs__deal__tabular")
    assert table.schema.field("vector").type.list_size == 1  # price alone varies independently


def test_a_statistic_that_raises_is_recorded_and_the_rest_go_on(tmp_path: Path, monkeypatch) -> None:
    from tasks.quality import labels, stages

    def broken(*args, **kwargs):
        raise ValueError("Input X contains NaN")

    monkeypatch.setitem(labels.LABEL_METRICS, "linear_probe_accuracy", broken)
    cfg = project(tmp_path, rows(100), {"after": ["evaluate"]})
    summary = backfill(config=str(cfg))  # returns: an error is a result, not a crash
    assert all(r["published"] for r in summary)
    recorded = {(r["table"], r["metric"]): r for r in metrics(tmp_path)}
    for table in ("docs__body__fake", "docs__body__tfidf", "docs__deal__tabular"):
        error = recorded[(table, "linear_probe_accuracy")]
        assert error["status"] == "error" and error["value"] is None
        assert json.loads(error["details"])["error"] == "ValueError: Input X contains NaN"
        assert recorded[(table, "knn_accuracy")]["value"] is not None  # the other statistics went on
        assert recorded[(table, "v_measure")]["value"] is not None

    # A stage that fails before any statistic: one "error" row named after the stage, other tables go on.
    real = stages.read_sample

    def unreadable(database, table, *args, **kwargs):
        if table == "docs__body__fake":
            raise OSError("version 1 cannot be read")
        return real(database, table, *args, **kwargs)

    monkeypatch.setattr(stages, "read_sample", unreadable)
    rows_out = quality(config=str(cfg), stages=["evaluate"])
    errors = [r for r in rows_out if r["status"] == "error" and r["metric"] == "evaluate"]
    assert [(r["table"], r["version"], json.loads(r["details"])["error"]) for r in errors] == [
        ("docs__body__fake", 1, "OSError: version 1 cannot be read")]
    assert {r["table"] for r in rows_out if r["metric"] == "knn_accuracy"} == {"docs__body__tfidf",
                                                                               "docs__deal__tabular"}

    # With on_fail: fail the error fails the flow, after everything is recorded; the data stays published.
    project(tmp_path, rows(100), {"after": [], "on_fail": "fail"})
    with pytest.raises(QualityCheckFailed, match="docs__body__fake:evaluate"):
        quality(config=str(cfg), stages=["evaluate"])
    assert lancedb.connect(str(tmp_path / "lancedb")).open_table("docs__body__fake").count_rows() == 100
