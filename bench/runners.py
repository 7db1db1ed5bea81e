"""Scaling: the backfill on Ray and Dask clusters of 1 and 2 workers, each against the local runner side by side.

    python bench/runners.py --rows 4096 --repeats 3                  # ray x1, ray x2, dask x1, dask x2
    python bench/runners.py --rows 4096 --repeats 3 --runners ray:2

Each cluster is started in a fresh process (with its own temporary Prefect server), where its backfills
are interleaved with the local runner's on the same data, so the ratio cluster / local holds on a
machine whose load changes. Per cluster: seconds to start it; its first run (the worker processes
import the pipeline and load the model) against the local runner's first run; then warm full
backfills (a new source each time, so every row is embedded) in rows/s, and their ratio to local.
1 against 2 workers is the ratio of the two clusters' ratios. The clusters are the runner's own
(`flows.runners`: one single-threaded worker process per slot); the local runner uses both cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import interleaved, machine, prefect_server, rates, ratio, write_source

RUNNERS = ["ray:1", "ray:2", "dask:1", "dask:2"]


def start_cluster(kind: str, workers: int) -> tuple[dict, Callable[[], None]]:
    """Start a cluster that the runs then join, as `--address` would; returns the runner config and a closer."""
    from flows import runners
    from schemas.config import RunnerConfig

    spec = RunnerConfig(kind=kind, workers=workers)
    if kind == "ray":
        import ray

        ray.init(**runners.ray_init_kwargs(spec))
        return {"kind": "ray", "workers": workers}, ray.shutdown
    from distributed import LocalCluster

    cluster = LocalCluster(**runners.dask_cluster_kwargs(spec))
    return {"kind": "dask", "address": cluster.scheduler_address}, cluster.close


def measure(runner: str, rows: int, repeats: int) -> dict:
    """The child side: start the cluster, then time its backfills and the local runner's, interleaved."""
    from flows import runners
    from flows.backfill import backfill
    from schemas.config import RunnerConfig

    kind, _, workers = runner.partition(":")
    started = time.perf_counter()
    spec, close = start_cluster(kind, int(workers))
    figures: dict = {"runner": runner, "start_s": time.perf_counter() - started, "first_run_s": {}}
    flows = {"local": backfill, runner: runners.with_runner(backfill, RunnerConfig.model_validate(spec))}
    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        sources = {name: iter([write_source(Path(tmp) / f"{name}-{r}", rows) for r in range(repeats)])
                   for name in flows}
        for name, flow in flows.items():
            started = time.perf_counter()
            flow(config=str(write_source(Path(tmp) / f"{name}-warm", 2048)))
            figures["first_run_s"][name] = time.perf_counter() - started
        runs = {name: lambda name=name: flows[name](config=str(next(sources[name]))) for name in flows}
        figures["seconds"] = interleaved(runs, repeats)
    close()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4096, help="rows per backfill (shards of 1024 rows)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runners", nargs="+", default=RUNNERS, help="ray:N, dask:N (a cluster of N workers)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.rows, args.repeats)))
        return
    print(f"machine: {machine()}")
    print(f"rows: {args.rows} per backfill, {args.repeats} interleaved repeats per runner")
    medians = {}
    for runner in args.runners:
        out = subprocess.run([sys.executable, __file__, "--child", runner, "--rows", str(args.rows), "--repeats",
                              str(args.repeats)], capture_output=True, text=True, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        seconds, first = got["seconds"], got["first_run_s"]
        print(f"{runner}: cluster start {got['start_s']:.1f} s; first run {first[runner]:.1f} s (local "
              f"{first['local']:.1f} s); rows/s {rates(args.rows, seconds[runner])} (local "
              f"{rates(args.rows, seconds['local'])})")
        medians[runner], low, high = ratio(seconds["local"], seconds[runner])
        print(f"  {runner} / local rows/s: {medians[runner]:.2f}  (range {low:.2f}-{high:.2f})")
    for kind in ("ray", "dask"):
        if f"{kind}:1" in medians and f"{kind}:2" in medians:
            print(f"{kind}: 2 workers / 1 worker: {medians[f'{kind}:2'] / medians[f'{kind}:1']:.2f}")


if __name__ == "__main__":
    main()
