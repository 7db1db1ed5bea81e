"""A small real database for the dashboard and export tests, built once per test session.

Three real backfill runs (fake embedders, a real Prefect server) write `_runs`, `_rejects` and the
embedding tables; `_metrics` rows are written directly, as the quality stages would write them.

- source `reviews` (label column `label`): field `body` embedded by `fake` and by the `tfidf` baseline,
  so a neural and a baseline table sit side by side; bad rows are rejected.
- source `notes` (no label): field `text` embedded by `fake`.
- run 1 writes version 1 of each table, run 2 changes, adds and deletes rows (version 2), run 3 changes
  nothing (no new version).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lancedb
import pyarrow as pa
from conftest import POISON, write_config, write_parquet

from schemas.tables import METRICS_SCHEMA, METRICS_TABLE

TABLES = ["notes__text__fake", "reviews__body__fake", "reviews__body__tfidf"]


@dataclass(frozen=True)
class SampleDb:
    """The project folder, its config file and database, and the `_metrics` rows written into it."""

    folder: Path
    config: Path
    database: Path
    metrics: list[dict]


WORDS = {  # each label's reviews use its own words, so the baseline's tf-idf space separates them
    "pos": "great lovely superb delightful charming excellent wonderful brilliant".split(),
    "neg": "awful broken dull boring terrible useless refund disappointing".split(),
    "mixed": "decent okay average fine uneven partly sometimes fair".split(),
}


def text(i: int, words: list[str], edition: str) -> str:
    """A few of `words`, picked by `i`, and the edition (a changed edition is a changed row)."""
    return " ".join(words[(i * k) % len(words)] for k in (1, 3, 5, 7)) + f" {edition} item {i}"


def reviews(ids: range, edition: str) -> list[dict]:
    labels = [("pos", "neg", "mixed")[i % 3] for i in ids]
    return [{"review_id": i, "body": text(i, WORDS[label], edition), "label": label, "lang": "en" if i % 4 else "de"}
            for i, label in zip(ids, labels, strict=True)]


def notes(ids: range, edition: str) -> list[dict]:
    return [{"note_id": f"n{i}", "text": text(i, WORDS["mixed"] + WORDS["pos"], edition)} for i in ids]


BAD_REVIEWS = [
    {"review_id": 900, "body": None, "label": "pos", "lang": "en"},  # null text
    {"review_id": 901, "body": " ", "label": "neg", "lang": "en"},  # empty text
    {"review_id": 5, "body": "id 5 again", "label": "neg", "lang": "en"},  # repeated id
    {"review_id": 902, "body": f"breaks the model: {POISON}", "label": "pos", "lang": "de"},  # non-finite vector
]


def metric(table: str, version: int, stage: str, name: str, value: float, threshold: float, status: str,
           minutes: int, reference: int | None = None, **details: float) -> dict:
    """One `_metrics` row as the quality stages write it."""
    return {"run_id": f"quality-{version}", "table": table, "version": version, "reference_version": reference,
            "stage": stage, "metric": name, "value": value, "threshold": threshold, "status": status,
            "details": json.dumps(details), "computed_at": datetime(2026, 11, 21, 12, tzinfo=UTC)
            + timedelta(minutes=minutes)}


def sample_metrics() -> list[dict]:
    """Evaluation, drift and bias statistics of both `reviews__body__*` tables at versions 1 and 2."""
    fake, tfidf = "reviews__body__fake", "reviews__body__tfidf"
    return [
        metric(fake, 1, "evaluate", "knn_accuracy", 0.82, 0.7, "ok", 0, k=10),
        metric(tfidf, 1, "evaluate", "knn_accuracy", 0.74, 0.7, "ok", 0, k=10),
        metric(fake, 1, "evaluate", "v_measure", 0.31, 0.2, "ok", 0),
        metric(tfidf, 1, "evaluate", "v_measure", 0.22, 0.2, "ok", 0),
        metric(fake, 2, "evaluate", "knn_accuracy", 0.66, 0.7, "warn", 10, k=10),
        metric(fake, 2, "evaluate", "knn_accuracy", 0.61, 0.7, "warn", 20, k=10),  # recomputed later: this one counts
        metric(tfidf, 2, "evaluate", "knn_accuracy", 0.72, 0.7, "ok", 10, k=10),
        metric(fake, 2, "evaluate", "v_measure", 0.12, 0.2, "fail", 10),
        metric(tfidf, 2, "evaluate", "v_measure", 0.21, 0.2, "ok", 10),
        metric(fake, 2, "drift", "mean_cosine_shift", 0.04, 0.1, "ok", 10, reference=1),
        metric(tfidf, 2, "drift", "mean_cosine_shift", 0.15, 0.1, "fail", 10, reference=1),
        metric(fake, 2, "drift", "domain_auc", 0.58, 0.75, "ok", 10, reference=1),
        metric(tfidf, 2, "drift", "domain_auc", 0.61, 0.75, "ok", 10, reference=1),
        metric(fake, 1, "bias", "knn_accuracy_gap:lang", 0.03, 0.05, "ok", 0, p_value=0.4),
        metric(fake, 2, "bias", "knn_accuracy_gap:lang", 0.08, 0.05, "warn", 10, p_value=0.01),
        metric(tfidf, 2, "bias", "knn_accuracy_gap:lang", 0.02, 0.05, "ok", 10, p_value=0.6),
    ]


@functools.cache
def sample_db(folder: Path) -> SampleDb:
    """Build the sample database in `folder` (once per session; tests must only read it)."""
    from flows.backfill import backfill

    write_parquet(folder / "raw" / "reviews" / "a.parquet", reviews(range(1, 41), "first"), row_group_size=16)
    write_parquet(folder / "raw" / "notes.parquet", notes(range(1, 31), "first"), row_group_size=16)
    config = write_config(folder, [
        {"name": "reviews", "path": "raw/reviews", "id": "review_id", "shard_rows": 16, "keep": ["label", "lang"],
         "quality": {"label": "label", "sensitive": "lang", "after": []},
         "fields": [{"column": "body", "modality": "text", "embedders": ["fake", "tfidf"]}]},
        {"name": "notes", "path": "raw/notes.parquet", "id": "note_id", "shard_rows": 16, "quality": {"after": []},
         "fields": [{"column": "text", "modality": "text", "embedders": ["fake"]}]},
    ])
    backfill(config=str(config))
    write_parquet(folder / "raw" / "reviews" / "a.parquet",
                  reviews(range(1, 31), "first") + reviews(range(31, 61), "second") + BAD_REVIEWS, row_group_size=16)
    write_parquet(folder / "raw" / "notes.parquet", notes(range(5, 41), "first"), row_group_size=16)
    backfill(config=str(config))
    backfill(config=str(config))
    rows = sample_metrics()
    lancedb.connect(folder / "lancedb").create_table(METRICS_TABLE, pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))
    return SampleDb(folder, config, folder / "lancedb", rows)
