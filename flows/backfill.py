"""The `backfill` and `refresh` flows: bring every table of the configured sources up to date.

Wiring only: plan every source first (so bad input fails before anything is written); then, per
source and under its lock, diff against the tables, run the shards through read -> validate ->
prepare -> embed -> write with a bounded number in flight (so memory does not grow with the input),
skipping shards an interrupted run already staged, and publish. The task runner is a parameter of
the flow (`backfill.with_options(task_runner=...)`), so Ray or Dask can run the same shards.
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
from tasks.lock import source_lock
from tasks.sources import Shard
from tasks.stages import Kind, RunInfo, ShardFigures, SourcePlan, staged_figures, staging_for
from tasks.write import Staging

# Shards in flight at once: enough to overlap one shard's preparation with another's inference,
# few enough that memory stays a few shards' worth whatever the size of the input.
IN_FLIGHT = 2


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def submit_shard(plan: SourcePlan, shard: Shard, staging: Staging) -> list[PrefectFuture]:
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
    started, done, results, resumed = time.monotonic(), 0, [], 0
    pending: deque[list[PrefectFuture]] = deque()
    for i, shard in enumerate(plan.shards):
        staged = staged_figures(plan, shard, staging)
        if staged is not None:  # an interrupted run of the same work finished this shard
            results += staged
            resumed += 1
        else:
            pending.append(submit_shard(plan, shard, staging))
        while pending and (len(pending) > IN_FLIGHT or i == len(plan.shards) - 1):
            figures = wait_shard(pending.popleft())
            results += figures
            done += figures[0].rows_read
            rate = done / max(time.monotonic() - started, 1e-9)
            logger.info("%s: %d/%d rows (%.0f rows/s)", plan.source.name, done, plan.rows, rate)
    if resumed:
        logger.info("%s: resumed %d of %d shards from an interrupted run's staged results", plan.source.name,
                    resumed, len(plan.shards))
    return results


def embed_sources(config: str, source: str | None, kind: Kind, full: bool = False) -> list[dict]:
    """The body of both flows: plan all, then per source diff, embed what changed, publish."""
    logger = get_run_logger()
    run = RunInfo(new_run_id(), runtime.flow_run.id, datetime.now(UTC))
    settings = load_config(config)
    selected = [settings.source(source)] if source else settings.sources
    plans = [t.plan(s, settings.batch_size) for s in selected]
    summary = []
    for plan in plans:
        with source_lock(settings.database, plan.source.name, logger):
            plan = t.diff(settings.database, plan, full)
            staging = staging_for(settings.database, plan, kind)
            summary += t.publish(settings.database, plan, staging, run_shards(plan, staging), run, kind)
            staging.remove()
    for row in summary:
        logger.info(
            "%s: %s, %d read, %d embedded, %d unchanged, %d rejected, %d truncated, %d deleted, %.1f s",
            row["table"], f"version {row['version']}" if row["published"] else "nothing changed, no new version",
            row["rows_read"], row["rows_embedded"], row["rows_unchanged"], row["rows_rejected"],
            row["rows_truncated"], row["rows_deleted"], row["seconds"],
        )
    create_table_artifact(
        key=f"{kind}-summary", table=[{k: str(v) for k, v in r.items()} for r in summary],
        description=f"{kind} run {run.run_id}",
    )
    return summary


@flow(name="backfill", task_runner=ThreadPoolTaskRunner(max_workers=IN_FLIGHT))
def backfill(config: str, source: str | None = None, full: bool = False) -> list[dict]:
    """Make every table of the config's sources (or of `source`) match its input.

    Rows whose content hash is unchanged are not embedded again (so a repeated backfill does nothing);
    `full` re-embeds every row into a new version.
    """
    return embed_sources(config, source, "backfill", full)


@flow(name="refresh", task_runner=ThreadPoolTaskRunner(max_workers=IN_FLIGHT))
def refresh(config: str, source: str | None = None) -> list[dict]:
    """Embed only new and changed rows, and remove (or keep, per source) rows whose ids left the input."""
    return embed_sources(config, source, "refresh")
