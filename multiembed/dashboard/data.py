"""What the dashboard shows, read from the database: the warehouse views, each table's versions with the
model behind them, and a seeded sample of each table's vectors projected to 2-D.

Everything is read column-wise (DuckDB over the bookkeeping tables, Lance `take` of a bounded sample of
rows), so the cost of a dashboard does not grow with the size of the embedding tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import lance
import numpy as np
import polars as pl
import pyarrow as pa
from sklearn.decomposition import PCA

from multiembed.catalog import table_names, version_rows
from multiembed.warehouse import connect, open_database
from schemas.config import PipelineConfig
from schemas.tables import embedding_metadata
from tasks import publish as publishing

MAP_ROWS = 2_000  # rows sampled per version for the embedding map
MAP_VERSIONS = 3  # the latest versions made by the latest version's model, sampled for "colour by version"
HISTORY = 100  # runs and versions shown per table, the latest ones
SEED = 0
# `multiembed.*` metadata keys, in the order a reader wants them (others follow, sorted)
MODEL_KEYS = ("embedder", "model_id", "revision", "dim", "pooling", "normalize", "max_tokens", "precision",
              "modality", "pipeline_version")


@dataclass(frozen=True)
class TableData:
    """One embedding table: its runs (`run_history`), versions with their `multiembed.*` metadata, map points."""

    name: str
    runs: pl.DataFrame
    versions: pl.DataFrame  # version, committed, rows, tags, then one column per metadata key
    points: pl.DataFrame  # id, version, label (null without a label column), x, y
    label: str | None  # the label column the points are coloured by, if the table has it


@dataclass(frozen=True)
class DashboardData:
    """Everything on the page."""

    database: str
    status: pl.DataFrame  # table_status
    rejects: pl.DataFrame  # reject_reasons
    metrics: pl.DataFrame  # metric_history
    tables: list[TableData]
    interrupted: dict[str, str]  # source -> its run stopped while publishing (the next run completes it)

    @property
    def empty(self) -> bool:
        """Nothing has been written yet: no embedding table and no run."""
        return not self.tables and self.status.is_empty()


def load(config: PipelineConfig) -> DashboardData:
    """Read what the dashboard of `config`'s database shows."""
    con = connect(config.database)
    try:
        view = {name: con.execute(f'SELECT * FROM {name} ORDER BY ALL').pl()
                for name in ("table_status", "reject_reasons", "metric_history", "run_history")}
    finally:
        con.close()
    db = open_database(config.database)
    datasets = {name: db.open_table(name).to_lance() for name in table_names(db)} if db is not None else {}
    labels = {s.name: s.quality.label for s in config.sources}
    tables = [  # the embedding tables: those whose schema says what made them (not _runs, _fitted, ...)
        table_data(dataset, name, view["run_history"], labels.get(name.split("__")[0]))
        for name, dataset in datasets.items() if embedding_metadata(dataset.schema)
    ]
    return DashboardData(config.database, view["table_status"], view["reject_reasons"], view["metric_history"],
                         tables, publishing.interrupted(config.database))


def table_data(dataset: lance.LanceDataset, name: str, runs: pl.DataFrame, label: str | None) -> TableData:
    """The runs, versions and map points of one embedding table."""
    versions = version_frame(dataset, name)
    points = sample_points(dataset, versions, label)
    mine = runs.filter(pl.col("table") == name).sort("finished_at").tail(HISTORY)
    has_label = label is not None and points["label"].is_not_null().any()
    return TableData(name, mine, versions, points, label if has_label else None)


def version_frame(dataset: lance.LanceDataset, name: str) -> pl.DataFrame:
    """The latest `HISTORY` versions: number, commit time, rows, tags and the schema metadata of each."""
    rows = [
        {"version": v.version, "committed": v.timestamp, "rows": v.rows, "tags": ", ".join(v.tags),
         **embedding_metadata(dataset.checkout_version(v.version).schema)}
        for v in version_rows(name, dataset.versions(), dataset.tags.list())[-HISTORY:]
    ]
    frame = pl.DataFrame(rows, infer_schema_length=None)  # an older version may lack a key a newer one has
    known = [c for c in ("version", "committed", "rows", "tags", *MODEL_KEYS) if c in frame.columns]
    return frame.select(*known, *sorted(set(frame.columns) - set(known)))


def sample_points(dataset: lance.LanceDataset, versions: pl.DataFrame, label: str | None) -> pl.DataFrame:
    """A seeded sample of the latest versions made by the latest model, projected to 2-D with one PCA.

    Only versions whose `multiembed.*` metadata equals the latest version's are sampled: vectors of two
    models do not share a space (nor, often, a dimension).
    """
    model = [c for c in versions.columns if c not in ("version", "committed", "rows", "tags")]
    same = versions.join(versions.tail(1).select(model), on=model, nulls_equal=True).sort("version")
    parts, vectors = [], []
    for version in same["version"].tail(MAP_VERSIONS).to_list():
        ids, labels, matrix = _take(dataset.checkout_version(version), label)
        parts.append(pl.DataFrame({"id": ids, "version": version, "label": labels},
                                  schema={"id": pl.String, "version": pl.Int64, "label": pl.String}))
        vectors.append(matrix)
    matrix = np.concatenate(vectors)
    if matrix.shape[0] < 2 or matrix.shape[1] < 2:
        return pl.DataFrame(schema={"id": pl.String, "version": pl.Int64, "label": pl.String, "x": pl.Float64,
                                    "y": pl.Float64})
    xy = PCA(n_components=2, random_state=SEED).fit_transform(matrix)
    return pl.concat(parts).with_columns(x=pl.Series(xy[:, 0]), y=pl.Series(xy[:, 1]))


def _take(dataset: lance.LanceDataset, label: str | None) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """Ids (as strings), labels (as strings, or nulls) and vectors of up to `MAP_ROWS` rows, seeded."""
    total = dataset.count_rows()
    picked = np.sort(np.random.default_rng(SEED).choice(total, size=min(MAP_ROWS, total), replace=False))
    columns = ["id", "vector"] + ([label] if label in dataset.schema.names else [])
    rows = dataset.take(picked.tolist(), columns=columns)
    vectors = rows["vector"].combine_chunks()
    matrix = vectors.flatten().to_numpy().reshape(len(rows), vectors.type.list_size)
    labels = rows[label].cast(pa.string()) if label in rows.column_names else pa.nulls(len(rows), pa.string())
    return rows["id"].cast(pa.string()), labels, matrix
