"""The quality stages over embedding table versions: evaluate, bias and drift, as `_metrics` rows.

Each stage reads a seeded sample of one table version (the same ids for every table of a source, so a
neural embedder and its baseline are scored on the same rows), runs the statistics of this package and
returns `Metric`s; `metric_rows` turns them into `_metrics` rows. Plain functions: the flows wire them
after each backfill or refresh and on demand (`multiembed evaluate|bias|drift`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.config import ConfigError, SourceConfig
from schemas.tables import INPUT_STATS, METRICS_SCHEMA, METRICS_TABLE, embedding_metadata
from tasks import write
from tasks.embedders import registry
from tasks.embedders.base import ModelLoadError
from tasks.quality import bias, drift, health, labels, retrieval
from tasks.quality.metric import Metric, Severity, guarded

Stage = Literal["evaluate", "bias", "drift"]
SEED = 0
INDEX_QUERIES = 100  # sampled queries for a vector index's recall@10 against exact search
MIN_ROWS = 20  # fewer rows than this make neighbour, probe and two-sample statistics meaningless: skipped


@dataclass(frozen=True)
class VersionSample:
    """A seeded sample of one table version: ids, vectors and the kept columns the checks use."""

    table: str
    version: int
    rows: int  # rows in the version
    ids: pa.Array
    vectors: np.ndarray
    columns: dict[str, np.ndarray]
    metadata: dict[str, str]


Checked = tuple[VersionSample, list[Metric]]  # the sample a stage read, and its metrics


def _dataset(database: str, table: str, version: int | None):  # noqa: ANN202 (lance.LanceDataset)
    dataset = lancedb.connect(database).open_table(table).to_lance()
    return dataset if version is None else dataset.checkout_version(version)


def read_sample(database: str, table: str, version: int | None, columns: list[str], size: int,
                extra_ids: pa.Array | None = None) -> VersionSample:
    """Up to `size` rows of a version, chosen by a seeded draw over its sorted ids (so tables with the same
    ids give the same rows), plus the rows of `extra_ids`. Streams the version once; holds the sample only."""
    dataset = _dataset(database, table, version)
    ids = dataset.to_table(columns=["id"])["id"].combine_chunks()
    ordered = pc.take(ids, pc.sort_indices(ids))
    picked = np.sort(np.random.default_rng(SEED).choice(len(ordered), size=min(size, len(ordered)), replace=False))
    wanted = pc.take(ordered, pa.array(picked))
    if extra_ids is not None:
        wanted = pa.concat_arrays([wanted, extra_ids.cast(wanted.type)]).unique()
    kept = [c for c in columns if c in dataset.schema.names]
    parts = [b.filter(pc.is_in(b["id"], value_set=wanted))
             for b in dataset.to_batches(columns=["id", "vector", *kept])]
    schema = pa.schema([dataset.schema.field(c) for c in ["id", "vector", *kept]])
    data = pa.Table.from_batches(parts, schema=schema)
    vectors = data["vector"].combine_chunks()
    dim = vectors.type.list_size
    return VersionSample(
        table=table, version=dataset.version, rows=len(ids), ids=data["id"].combine_chunks(),
        vectors=vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(data), dim),
        columns=_flat_columns(data.select(kept)), metadata=embedding_metadata(dataset.schema),
    )


def _flat_columns(data: pa.Table) -> dict[str, np.ndarray]:
    """Columns as numpy arrays; a struct column (`input_stats`) as one array per field, `<column>.<field>`."""
    out = {}
    for name in data.column_names:
        column = data[name].combine_chunks()
        if pa.types.is_struct(column.type):
            out |= {f"{name}.{f.name}": column.field(f.name).to_numpy(zero_copy_only=False) for f in column.type}
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def read_pairs(path: str) -> pa.Table:
    """Configured pairs: (query, relevant) ids, or (a, b, score) for scored similarity."""
    pairs = pq.read_table(path)
    if {"query", "relevant"} <= set(pairs.column_names) or {"a", "b", "score"} <= set(pairs.column_names):
        return pairs
    raise ConfigError(f"{path}: pairs need columns (query, relevant) or (a, b, score); it has {pairs.column_names}")


def index_recall(database: str, table: str, sample: VersionSample, severity: Severity,
                 thresholds: dict[str, float]) -> list[Metric]:
    """A vector index's recall@10 against exact search, on sampled queries (nothing without an index)."""
    handle = lancedb.connect(database).open_table(table)
    index = next((i for i in handle.list_indices() if i.columns == ["vector"]
                  and i.index_type.lower().startswith(("ivf", "hnsw"))), None)
    if index is None:
        return []
    metric = (index.index_details or {}).get("metric_type", "l2").lower()
    queries = sample.vectors[: INDEX_QUERIES]

    def search(q: np.ndarray, exact: bool) -> list:
        query = handle.search(q).distance_type(metric).limit(10).select(["id"])
        return (query.bypass_vector_index() if exact else query).to_arrow()["id"].to_pylist()

    approx, exact = ([search(q, e) for q in queries] for e in (False, True))
    return [retrieval.index_recall(np.array(exact, dtype=object), np.array(approx, dtype=object),
                                   thresholds=thresholds, severity=severity)]


def evaluate(database: str, source: SourceConfig, table: str, version: int | None, label: str | None) -> Checked:
    """Health of the vectors; with a `label` column, kNN / probe / clustering; with pairs, retrieval; index
    recall."""
    q = source.quality
    pairs = read_pairs(q.pairs) if q.pairs else None
    extra = None
    if pairs is not None:
        extra = pa.concat_arrays([pairs[c].combine_chunks() for c in pairs.column_names if c != "score"])
    sample = read_sample(database, table, version, [label] if label else [], q.sample, extra)
    opts = {"thresholds": q.thresholds, "severity": q.on_fail}
    metrics = guarded("health", lambda: health.health_metrics(sample.vectors, seed=SEED, **opts))
    if label and len(sample.ids) < MIN_ROWS:
        metrics.append(too_few("knn_accuracy", len(sample.ids)))
    elif label:
        classes = sample.columns[label].astype(str)
        for name, statistic in labels.LABEL_METRICS.items():
            metrics += guarded(name, lambda f=statistic: f(sample.vectors, classes, seed=SEED, **opts))
    if pairs is not None:
        ids = sample.ids.to_numpy(zero_copy_only=False)
        if "query" in pairs.column_names:
            metrics += guarded("retrieval", lambda: retrieval.retrieval_metrics(
                sample.vectors, ids, pairs["query"].to_numpy(), pairs["relevant"].to_numpy(), **opts))
        else:
            metrics += guarded("spearman", lambda: retrieval.score_correlation(
                sample.vectors, ids, pairs["a"].to_numpy(), pairs["b"].to_numpy(), pairs["score"].to_numpy(), **opts))
    return sample, metrics + guarded("index_recall_at_10",
                                     lambda: index_recall(database, table, sample, q.on_fail, q.thresholds))


def table_embedder(sample: VersionSample, batch_size: int) -> registry.Embedder | None:
    """The pretrained text model that made a version, or None: not text, fitted on the corpus (association
    tests need a model that knows the test words), or the configured model no longer matches the version."""
    meta = sample.metadata
    if meta.get("modality") != "text" or registry.is_fitted("text", meta["embedder"]):
        return None
    try:
        embedder = registry.load_embedder("text", meta["embedder"], batch_size)
    except ModelLoadError:  # an embedder this installation does not have (any more)
        return None
    return embedder if embedder.info.metadata() == meta else None


def bias_checks(database: str, source: SourceConfig, table: str, version: int | None,
                batch_size: int) -> Checked:
    """Text: WEAT, SEAT and the gender direction with the version's model; any modality with a sensitive
    column: per-group gaps."""
    q = source.quality
    sample = read_sample(database, table, version, [c for c in (q.sensitive, q.label) if c], q.sample)
    opts = {"thresholds": q.thresholds, "severity": q.on_fail}
    metrics: list[Metric] = []
    embedder = table_embedder(sample, batch_size)
    if embedder is not None:
        def embed(texts: list[str]) -> np.ndarray:
            return embedder.embed(embedder.prepare(pa.array(texts, pa.large_string()), ""))

        metrics += guarded("weat_effect_size", lambda: bias.weat_tests(embed, seed=SEED, **opts))
        metrics += guarded("seat_effect_size", lambda: bias.seat_tests(embed, seed=SEED, **opts))
        metrics += guarded("direct_bias", lambda: bias.gender_bias(embed, **opts))
    if q.sensitive and len(sample.ids) < MIN_ROWS:
        metrics.append(too_few("neighbour_share_gap", len(sample.ids)))
    elif q.sensitive:
        groups = sample.columns[q.sensitive].astype(str)
        label_values = sample.columns[q.label].astype(str) if q.label else None
        metrics += guarded("group_bias", lambda: bias.group_bias(sample.vectors, groups, label_values, seed=SEED,
                                                                 **opts))
    return sample, metrics


def drift_checks(database: str, source: SourceConfig, table: str, version: int | None,
                 reference: int) -> Checked:
    """Between a reference version and this one: input drift on what the models saw (PSI and KS per input
    statistic), and the drift statistics of the vectors when one model made both; when the models differ,
    the overlap of each row's 10 nearest neighbours under the old and the new model instead."""
    q = source.quality
    current = read_sample(database, table, version, [INPUT_STATS], q.sample)
    old = read_sample(database, table, reference, [INPUT_STATS], q.sample)
    opts = {"thresholds": q.thresholds, "severity": q.on_fail}
    if min(len(old.ids), len(current.ids)) < MIN_ROWS:
        return current, [too_few("drift", min(len(old.ids), len(current.ids)))]
    inputs = guarded("input_drift", lambda: input_drift(old, current, opts))
    if old.metadata == current.metadata:
        return current, inputs + guarded("drift", lambda: drift.drift_metrics(old.vectors, current.vectors,
                                                                               seed=SEED, **opts))
    common, in_old, in_new = np.intersect1d(old.ids.to_numpy(zero_copy_only=False),
                                            current.ids.to_numpy(zero_copy_only=False), return_indices=True)
    if len(common) < MIN_ROWS:
        return current, inputs + [too_few("knn_overlap", len(common))]
    return current, inputs + guarded("knn_overlap", lambda: drift.knn_overlap(old.vectors[in_old],
                                                                              current.vectors[in_new], seed=SEED,
                                                                              **opts))


def too_few(metric: str, rows: int) -> Metric:
    """A statistic not computed because the version has too few rows for it to mean anything."""
    return Metric(metric, None, None, "ok", {"reason": f"{rows} rows: fewer than {MIN_ROWS}, not computed"})


def input_drift(old: VersionSample, current: VersionSample, opts: dict) -> list[Metric]:
    """`psi:<stat>` and `ks_p_value:<stat>` for each input statistic both versions measured."""
    prefix = INPUT_STATS + "."
    def measured(sample: VersionSample, column: str) -> bool:
        return column in sample.columns and bool(np.isfinite(sample.columns[column].astype(float)).any())

    names = [c for c in current.columns if c.startswith(prefix) and measured(current, c) and measured(old, c)]
    if not names:
        return []
    ref = np.column_stack([old.columns[c].astype(float) for c in names])
    cur = np.column_stack([current.columns[c].astype(float) for c in names])
    return drift.feature_drift(ref, cur, [c[len(prefix):] for c in names], **opts)


def metric_rows(run_id: str, stage: Stage, sample: VersionSample, metrics: list[Metric],
                reference: int | None = None) -> list[dict]:
    """`_metrics` rows for the metrics of one stage over one table version."""
    sizes = {"rows": sample.rows, "sampled": len(sample.ids)}
    return [_row(run_id, stage, sample.table, sample.version, reference, m, sizes) for m in metrics]


def error_row(run_id: str, stage: Stage, table: str, version: int, error: Exception,
              reference: int | None = None) -> dict:
    """The `_metrics` row of a stage that failed before any statistic (a version that cannot be read, ...):
    metric = the stage's name, status "error", the exception's message in details."""
    metric = Metric(stage, None, None, "error", {"error": f"{type(error).__name__}: {error}"})
    return _row(run_id, stage, table, version, reference, metric, {})


def _row(run_id: str, stage: Stage, table: str, version: int, reference: int | None, m: Metric,
         sizes: dict) -> dict:
    return {
        "run_id": run_id, "table": table, "version": version, "reference_version": reference,
        "stage": stage, "metric": m.metric, "value": m.value, "threshold": m.threshold, "status": m.status,
        "details": json.dumps({**sizes, **m.details}, default=float), "computed_at": datetime.now(UTC),
    }


def record_metrics(database: str, rows: list[dict]) -> None:
    """Append a run's metric rows to `_metrics` in one version."""
    if rows:
        write.append(lancedb.connect(database), METRICS_TABLE, METRICS_SCHEMA,
                     pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))


def previous_version(database: str, table: str, version: int) -> int | None:
    """The version the last run before `version` published for `table` (from `_runs`), if any."""
    runs = write.open_table(lancedb.connect(database), "_runs")
    if runs is None:
        return None
    rows = runs.search().where(f"\"table\" = '{table}' AND published AND version < {int(version)}") \
        .select(["version"]).limit(None).to_arrow()
    return pc.max(rows["version"]).as_py() if rows.num_rows else None
