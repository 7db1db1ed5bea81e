"""The `backfill` flow: embed every row of the configured sources and publish one version per table.

Wiring only: plan every source first (so bad input fails before anything is written), run the
shards through read -> validate -> prepare -> embed -> write with a bounded number in flight (so
memory does not grow with the input), then publish. The task runner is a parameter of the flow
(`backfill.with_options(task_runner=...)`), so Ray or Dask can run the same shards.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows import stages as t
from schemas.config import load_config
from tasks.stages import RunInfo, ShardFigures, SourcePlan
from tasks.write import Staging

# Shards in flight at once: enough to overlap one shard's preparation with another's inference,
# few enough that memory stays a few shards' worth whatever the size of the input.
IN_FLIGHT = 2


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def submit_shard(plan: SourcePlan, shard, staging: Staging) -> list[PrefectFuture]:
    """Chain one shard's stages (each embedding table gets its own prepare/embed/write); futures in order."""
    rows = t.read.submit(plan, shard)
    checked = t.validate.submit(plan, shard, rows)
    futures = [rows, checked]
    for spec in plan.tables:
        prepared = t.prepare.submit(plan, spec, shard, checked)
        vectors = t.embed.submit(plan, spec, prepared)
        futures += [prepared, vectors, t.stage.submit(plan, spec, shard, checked, prepared, vectors, staging)]
    return futures


def wait_shard(futures: list[PrefectFuture]) -> list[ShardFigures]:
    """The shard's figures per table; raises the first stage's error (downstream stages never ran)."""
    return [r for r in (f.result() for f in futures) if isinstance(r, ShardFigures)]


def run_shards(plan: SourcePlan, staging: Staging) -> list[ShardFigures]:
    """Run every shard of a source, logging progress (rows and rows/s) as shards finish."""
    logger = get_run_logger()
    started, done, results = time.monotonic(), 0, []
    pending: deque[list[PrefectFuture]] = deque()
    for i, shard in enumerate(plan.shards):
        pending.append(submit_shard(plan, shard, staging))
        while pending and (len(pending) > IN_FLIGHT or i == len(plan.shards) - 1):
            figures = wait_shard(pending.popleft())
            results += figures
            done += figures[0].rows_read
            rate = done / max(time.monotonic() - started, 1e-9)
            logger.info("%s: %d/%d rows (%.0f rows/s)", plan.source.name, done, plan.rows, rate)
    return results


@flow(name="backfill", task_runner=ThreadPoolTaskRunner(max_workers=IN_FLIGHT))
def backfill(config: str, source: str | None = None) -> list[dict]:
    """Embed every row of the config's sources (or of `source` only) and publish a version per table."""
    logger = get_run_logger()
    run = RunInfo(new_run_id(), runtime.flow_run.id, datetime.now(UTC))
    settings = load_config(config)
    selected = [settings.source(source)] if source else settings.sources
    plans = [t.plan(s, settings.batch_size) for s in selected]
    staging = Staging(settings.database, run.run_id)
    summary = []
    for plan in plans:
        summary += t.publish(settings.database, plan, staging, run_shards(plan, staging), run)
    staging.remove()
    for row in summary:
        logger.info(
            "%s: version %d, %d read, %d embedded, %d rejected, %d truncated, %d deleted, %.1f s",
            row["table"], row["version"], row["rows_read"], row["rows_embedded"], row["rows_rejected"],
            row["rows_truncated"], row["rows_deleted"], row["seconds"],
        )
    create_table_artifact(
        key="backfill-summary", table=[{k: str(v) for k, v in r.items()} for r in summary],
        description=f"backfill run {run.run_id}",
    )
    return summary
