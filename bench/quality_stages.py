"""Time of each quality stage (evaluate, bias per group, drift) on a large table against a small one.

The stages sample a seeded, bounded number of rows (`quality.sample`, SAMPLE_SIZES), so their cost
should hardly grow with the table: the figure is the ratio of a stage's time on `--rows` rows to its
time on `--base` rows, run side by side in one process. Vectors are a labelled mixture of Gaussian
clusters (384-d, like MiniLM), with a second version shifted for drift.

    python bench/quality_stages.py --rows 1000000 --base 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from schemas.config import SourceConfig
from schemas.tables import embedding_schema
from tasks.quality import stages

DIM, CLUSTERS, BATCH = 384, 10, 50_000


def batches(rows: int, shift: float, seed: int):  # noqa: ANN201 (a generator of record batches)
    """Rows in batches: unit vectors around CLUSTERS centres, `shift` added to the first coordinate."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, BATCH):
        n = min(BATCH, rows - start)
        label = rng.integers(0, CLUSTERS, n)
        v = centres[label] + 2.0 * rng.standard_normal((n, DIM)).astype(np.float32)
        v[:, 0] += shift
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        yield pa.record_batch({
            "id": pa.array(np.arange(start, start + n)), "content_hash": pa.array(["x"] * n),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), DIM),
            "label": pa.array(label.astype(str)), "group": pa.array(np.where(label % 2 == 0, "a", "b")),
        })


def build(database: str, name: str, rows: int) -> None:
    """Version 1, then version 2 with a shift (drift compares the two)."""
    keep = [pa.field("label", pa.string()), pa.field("group", pa.string())]
    schema = embedding_schema(pa.int64(), DIM, keep, {"embedder": "bench", "modality": "image"})
    db = lancedb.connect(database)
    db.create_table(name, data=pa.RecordBatchReader.from_batches(schema, batches(rows, 0.0, 1)), schema=schema)
    db.create_table(name, data=pa.RecordBatchReader.from_batches(schema, batches(rows, 0.3, 2)), schema=schema,
                    mode="overwrite")


def timed(fn, *args) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--base", type=int, default=20_000)
    args = parser.parse_args()
    source = SourceConfig.model_validate({
        "name": "bench", "path": "unused", "id": "id", "keep": ["label", "group"],
        "fields": [{"column": "text", "modality": "text"}], "quality": {"label": "label", "sensitive": "group"},
    })
    with tempfile.TemporaryDirectory() as folder:
        database = str(Path(folder) / "db")
        results = {}
        for rows in (args.base, args.rows):
            name = f"t{rows}"
            build_seconds = timed(build, database, name, rows)
            results[rows] = {
                "evaluate": timed(stages.evaluate, database, source, name, None, "label"),
                "bias (groups)": timed(stages.bias_checks, database, source, name, None, 64),
                "drift": timed(stages.drift_checks, database, source, name, 2, 1),
            }
            print(f"{rows:>9} rows (built in {build_seconds:.0f} s): "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in results[rows].items()), flush=True)
    for stage in results[args.base]:
        big, small = results[args.rows][stage], results[args.base][stage]
        print(f"{stage:14} {args.rows} rows: {big:6.1f} s, {args.base} rows: {small:6.1f} s, ratio {big / small:.2f}")


if __name__ == "__main__":
    main()
