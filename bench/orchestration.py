"""Share of a backfill's wall time spent in orchestration (Prefect) rather than in the stages.

    python bench/orchestration.py --rows 4000 --repeats 2

Each stage's function (plan, fit, diff, read, validate, prepare, embed, write, publish) is wrapped to
record when it runs, inside the Prefect tasks of a real `backfill` flow run through a temporary Prefect
server. Orchestration is the flow's wall time not covered by any stage (stages of two shards overlap:
their union counts once): flow-run creation and state reporting, task submission and result passing,
the heartbeat join at the end, the flow's own wiring. For scale, an empty flow run is timed beside it.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import threading
import time
from pathlib import Path

from common import machine, prefect_server, write_source

STAGES = ("plan", "fit", "diff", "read", "validate", "prepare", "embed", "stage", "publish")


class StageClock:
    """Intervals (start, end) of every stage call, by stage."""

    def __init__(self) -> None:
        self.intervals: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
        self.lock = threading.Lock()

    def wrap(self, name: str, fn):  # noqa: ANN001, ANN202 (any stage function)
        @functools.wraps(fn)
        def timed(*args, **kwargs):  # noqa: ANN202
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.intervals[name].append((start, time.perf_counter()))
        return timed

    def covered(self, start: float, end: float) -> float:
        """Seconds between start and end during which at least one stage ran."""
        spans = sorted((max(a, start), min(b, end)) for v in self.intervals.values() for a, b in v if b > start)
        total, reach = 0.0, start
        for a, b in spans:
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total

    def clear(self) -> None:
        for v in self.intervals.values():
            v.clear()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from prefect import flow

    from flows import stages as prefect_stages
    from flows.backfill import backfill

    clock = StageClock()
    for name in STAGES:
        task = getattr(prefect_stages, name)
        task.fn = clock.wrap(name, task.fn)

    @flow(name="empty")
    def empty() -> None:
        return None

    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        backfill(config=str(write_source(Path(tmp) / "warm", 64)))  # model load, first flow run
        results = []
        for r in range(args.repeats):
            for rows in (args.rows // 10, args.rows):
                config = str(write_source(Path(tmp) / f"run{r}-{rows}", rows))
                clock.clear()
                start = time.perf_counter()
                backfill(config=config)
                end = time.perf_counter()
                per_stage = {s: sum(b - a for a, b in v) for s, v in clock.intervals.items()}
                results.append((rows, end - start, clock.covered(start, end), per_stage))
            start = time.perf_counter()
            empty()
            results.append((0, time.perf_counter() - start, 0.0, {}))
    print(f"machine: {machine()}")
    for rows, wall, covered, per_stage in results:
        if not rows:
            print(f"empty flow run: {wall:.2f} s")
            continue
        busy = ", ".join(f"{s} {t:.2f}" for s, t in per_stage.items() if t >= 0.005)
        print(f"rows {rows}: wall {wall:.2f} s, stages {covered:.2f} s, orchestration {wall - covered:.2f} s "
              f"= {(wall - covered) / wall:.1%} of wall time  (stage seconds: {busy})")


if __name__ == "__main__":
    main()
