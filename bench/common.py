"""What the benchmarks share: offline settings, the machine's description, real text, Parquet sources and
side-by-side timing.

Every figure the suite reports is a ratio of two things run side by side in one process (or, for memory,
in one run), interleaved (the order alternates every repeat) and repeated, so it means something on a
shared, loaded machine: the median of the per-repeat ratios is reported with its range.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

BATCH = 64  # rows per forward pass, the config's default and sentence-transformers' usual


def texts(rows: int) -> list[str]:
    """The demo's real docstrings, cycled with a suffix to `rows` distinct texts."""
    from multiembed.demo import docstring_rows

    base = [r["body"] for r in docstring_rows()]
    return [f"{base[i % len(base)]} (variant {i // len(base)})" for i in range(rows)]


def write_source(folder: Path, rows: int, changed: Iterable[int] = (), embedders: list[str] | None = None,
                 column: str = "body", modality: str = "text", values: list | None = None,
                 batch_size: int = BATCH, quality: bool = False, row_group_size: int = 512,
                 shard_rows: int = 1024) -> Path:
    """A Parquet source of `rows` values (texts unless `values` are given; the texts at `changed` edited)
    and its config; returns the config's path. The quality stages that run after a backfill by default
    (evaluate, drift) are off unless `quality`: they are measured apart from the embedding pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    body = values if values is not None else texts(rows)
    edited = set(changed)
    body = [f"{t} (edited)" if i in edited else t for i, t in enumerate(body)]
    table = pa.table({"id": pa.array(range(len(body)), pa.int64()), column: body})
    pq.write_table(table, folder / "data.parquet", row_group_size=row_group_size)
    listed = f"        embedders: [{', '.join(embedders)}]\n" if embedders else ""
    (folder / "config.yaml").write_text(
        f"database: ./lancedb\nbatch_size: {batch_size}\nsources:\n  - name: bench\n    path: data.parquet\n"
        f"    id: id\n    shard_rows: {shard_rows}\n    fields:\n"
        f"      - column: {column}\n        modality: {modality}\n"
        f"{listed}" + ("" if quality else "    quality:\n      after: []\n")
    )
    return folder / "config.yaml"


def machine() -> str:
    """The machine in words, with the load it had when asked (other jobs share it)."""
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, load average {load}")


_worker = ThreadPoolExecutor(1, thread_name_prefix="bench")


def in_worker(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn`, run in a worker thread, as the flow runs its stages (Prefect's task threads).

    Baselines run this way so that both sides of a ratio compute from a worker thread: on this loaded
    machine the same torch work measured slower from the main thread (EfficientNet: ~10x), which
    would flatter the flow.
    """
    return lambda: _worker.submit(fn).result()


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` times, in an order that rotates every repeat."""
    names, seconds = list(runs), {name: [] for name in runs}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-repeat ratios numerator[i] / denominator[i]."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def show_ratio(label: str, numerator: list[float], denominator: list[float]) -> float:
    """Print a ratio as `label: median (min-max over n repeats)`; returns the median."""
    mid, low, high = ratio(numerator, denominator)
    print(f"{label}: {mid:.2f}  (range {low:.2f}-{high:.2f} over {len(numerator)} paired repeats)")
    return mid


def rates(rows: float, seconds: list[float]) -> str:
    return ", ".join(f"{rows / s:.1f}" for s in seconds)


@contextmanager
def prefect_server() -> Iterator[None]:
    """A temporary local Prefect server, run as a CLI run without PREFECT_API_URL runs flows: without
    heartbeats (`flows.settings.run_settings`)."""
    from prefect.settings import temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.settings import NO_HEARTBEATS

    with prefect_test_harness(server_startup_timeout=180), temporary_settings(updates=NO_HEARTBEATS):
        yield


def commands(doc: str, specs: dict[str, dict[str, Any]]) -> argparse.Namespace:
    """Parse `MODE [--option value ...]`: one sub-command per spec, each option with its default (and the
    default's type); an option named without dashes is positional."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode, options in specs.items():
        command = sub.add_parser(mode)
        for name, default in options.items():
            if name.startswith("--"):
                command.add_argument(name, type=type(default), default=default)
            else:
                command.add_argument(name)
    return parser.parse_args()
