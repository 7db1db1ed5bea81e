"""The `backfill` and `refresh` flows: bring every table of the configured sources up to date.

Wiring only: plan every source first (so bad input fails before anything is written); then, per
source and under its lock, give fitted embedders their state (fit), diff against the tables, run the
shards through read -> validate -> prepare -> embed -> write with a bounded number in flight (so memory
does not grow with the input), skipping shards an interrupted run already staged, and publish. A run
killed while publishing is completed by the next run of its source before anything else (`tasks.publish`). The
task runner is a parameter of the flow (`runners.with_runner(backfill, spec)`), so a Ray or Dask
cluster runs the same shards.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from datetime import UTC, datetime

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture

from flows import runners
from flows import stages as t
from flows.memory import steady_heap
from flows.quality import QualityCheckFailed, run_checks
from schemas.config import RunnerConfig, SourceConfig, load_config
from tasks import failpoints
from tasks.lock import source_lock
from tasks.sources import Shard
from tasks.stages import Kind, RunInfo, ShardFigures, SourcePlan, staged_figures, staging_for, work_shards
from tasks.write import Staging


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


ShardFutures = tuple[list[PrefectFuture], list[PrefectFuture]]  # every stage in order, and the writes


def submit_shard(plan: SourcePlan, shared: SourcePlan, shard: Shard, staging: Staging, gpus: float) -> ShardFutures:
    """Chain one shard's stages (each embedding table gets its own prepare/embed/write); the embed stages
    ask the runner for `gpus` GPUs each. Tasks get the plan as `shared` (`runners.share(plan)`).
    Returns every future in order, and the write futures."""
    rows = t.read.submit(shared, shard)
    checked = t.validate.submit(shared, shard, rows)
    futures, writes = [rows, checked], []
    for spec in plan.tables:
        prepared = t.prepare.submit(shared, spec, shard, checked)
        with runners.embed_resources(gpus):
            vectors = t.embed.submit(shared, spec, prepared)
        writes.append(t.stage.submit(shared, spec, shard, checked, prepared, vectors, staging))
        futures += [prepared, vectors, writes[-1]]
    return futures, writes


def wait_shard(futures: ShardFutures) -> list[ShardFigures]:
    """The shard's figures per table; raises the first stage's error (downstream stages never ran).

    Only the writes' figures come back to the flow: on a cluster the shard's rows, tokens and vectors
    pass from worker to worker, never through the flow's process.
    """
    stages, writes = futures
    try:
        return [f.result() for f in writes]
    except Exception:
        for f in stages:
            f.result()
        raise


def run_shards(plan: SourcePlan, staging: Staging, runner: RunnerConfig) -> list[ShardFigures]:
    """Run every shard of a source that has work (`work_shards`), logging progress (rows and rows/s) as
    shards finish."""
    logger = get_run_logger()
    work, results = work_shards(plan)
    to_read = sum(s.num_rows for s in work)
    if to_read < plan.rows:
        logger.info("%s: %d of %d rows are in shards with nothing to embed: not read", plan.source.name,
                    plan.rows - to_read, plan.rows)
    started, done, resumed = time.monotonic(), 0, 0
    in_flight, shared = runners.shards_in_flight(runner), runners.share(plan)
    pending: deque[ShardFutures] = deque()
    for i, shard in enumerate(work):
        staged = staged_figures(plan, shard, staging)
        if staged is not None:  # an interrupted run of the same work finished this shard
            results += staged
            resumed += 1
        else:
            pending.append(submit_shard(plan, shared, shard, staging, runner.gpus_per_embed_task))
        while pending and (len(pending) > in_flight or i == len(work) - 1):
            figures = wait_shard(pending.popleft())
            results += figures
            done += figures[0].rows_read
            failpoints.reached(f"staged:{len(results) // len(plan.tables)}")
            rate = done / max(time.monotonic() - started, 1e-9)
            logger.info("%s: %d/%d rows (%.0f rows/s)", plan.source.name, done, to_read, rate)
    if resumed:
        logger.info("%s: resumed %d of %d shards from an interrupted run's staged results", plan.source.name,
                    resumed, len(work))
    return results


def embed_sources(config: str, source: str | None, kind: Kind, full: bool = False, refit: bool = False) -> list[dict]:
    """The body of both flows: plan all, then per source fit, diff, embed what changed, publish."""
    steady_heap()  # the CLI did already; a flow called as a library gets it here
    logger = get_run_logger()
    run = RunInfo(new_run_id(), runtime.flow_run.id, datetime.now(UTC))
    settings = load_config(config)
    selected = [settings.source(source)] if source else settings.sources
    if shortfall := runners.gpu_shortfall(settings.runner.gpus_per_embed_task):
        logger.warning(shortfall)
    plans = [t.plan(s, settings.batch_size, settings.database) for s in selected]
    failpoints.reached("planned")
    summary = []
    for plan in plans:
        with source_lock(settings.database, plan.source.name, logger):
            for row in t.complete_interrupted(settings.database, plan.source.name):
                logger.warning("%s: completed the publish of interrupted run %s: version %d", row["table"],
                               row["run_id"], row["version"])
            plan, notes = t.fit(plan, refit)
            for note in notes:
                logger.info(note)
            plan = t.diff(plan, full)
            failpoints.reached("diffed")
            staging = staging_for(plan, kind)
            summary += t.publish(plan, staging, run_shards(plan, staging, settings.runner), run, kind)
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
    check_published(settings.database, [p.source for p in plans], summary, run.run_id, settings.batch_size)
    return summary


def check_published(database: str, sources: list[SourceConfig], summary: list[dict], run_id: str,
                    batch_size: int) -> None:
    """Run each source's `quality.after` stages on the versions this run published (after every source is
    published, so a failed check never keeps another source from being embedded)."""
    failures = []
    for s in sources:
        published = {r["table"]: r["version"] for r in summary if r["source"] == s.name and r["published"]}
        if s.quality.after and published:
            try:
                run_checks(database, s, published, s.quality.after, run_id, batch_size)
            except QualityCheckFailed as e:
                failures.append(str(e))
    if failures:
        raise QualityCheckFailed("; ".join(failures))


@flow(name="backfill", task_runner=runners.local())
def backfill(config: str, source: str | None = None, full: bool = False, refit: bool = False) -> list[dict]:
    """Make every table of the config's sources (or of `source`) match its input.

    Rows whose content hash is unchanged are not embedded again (so a repeated backfill does nothing);
    `full` re-embeds every row into a new version; `refit` fits the fitted embedders (tfidf, tabular)
    anew, which re-embeds their tables into a new generation. Run as defined (a deployment, a call from
    Python), it runs its shards on the config's `runner:`, in a subflow (see `runners.configured_cluster`).
    """
    if spec := runners.configured_cluster(backfill, load_config(config).runner):
        return runners.with_runner(backfill, spec)(config=config, source=source, full=full, refit=refit)
    return embed_sources(config, source, "backfill", full, refit)


@flow(name="refresh", task_runner=runners.local())
def refresh(config: str, source: str | None = None) -> list[dict]:
    """Embed only new and changed rows, and remove (or keep, per source) rows whose ids left the input.
    Run as defined, it runs its shards on the config's `runner:`, like `backfill`."""
    if spec := runners.configured_cluster(refresh, load_config(config).runner):
        return runners.with_runner(refresh, spec)(config=config, source=source)
    return embed_sources(config, source, "refresh")
