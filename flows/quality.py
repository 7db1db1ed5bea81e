"""The quality flow (`multiembed evaluate|bias|drift`) and the checks a backfill or refresh runs after it.

Wiring only: for each table version and stage, a task runs the stage (`tasks.quality.stages`), then
the metrics go to `_metrics` in one version, a Prefect artifact summarises them (markdown and a table),
and a source whose `quality.on_fail` is `fail` fails the flow when a check failed.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import lancedb
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from multiembed.catalog import open_as_of, resolve_version, table_versions
from schemas.config import ConfigError, SourceConfig, load_config
from schemas.tables import METRIC_STATUSES, table_name
from tasks.embedders import registry
from tasks.quality import stages as q
from tasks.write import open_table


class QualityCheckFailed(RuntimeError):
    """A check failed for a source that asked for failures to fail the flow (`quality.on_fail: fail`)."""


def _task(fn, name: str):
    return task(fn, name=name, cache_policy=NO_CACHE, persist_result=False)


evaluate_task = _task(q.evaluate, "evaluate")
bias_task = _task(q.bias_checks, "bias")
drift_task = _task(q.drift_checks, "drift")


def source_tables(source: SourceConfig) -> dict[str, str | None]:
    """The embedding tables a source's config makes, with the label column each is evaluated against."""
    return {table_name(source.name, f.key, name): f.label or source.quality.label for f in source.fields
            for name in f.embedders or [registry.modality(f.modality).default_embedder]}


def run_checks(database: str, source: SourceConfig, versions: dict[str, int | None], stages: list[q.Stage],
               run_id: str, batch_size: int, references: dict[str, int] | None = None) -> list[dict]:
    """Run `stages` over each table version, record the metrics, publish an artifact; the `_metrics` rows.

    Drift compares with `references[table]`, else with the version the previous run published; a table
    with nothing to compare with (its first version) has no drift rows. A stage that raises is recorded
    as an "error" row and the other stages and tables go on; with `quality.on_fail: fail`, failed checks
    and errors fail the flow once everything is recorded (published data is never touched).
    """
    logger = get_run_logger()
    rows: list[dict] = []
    for table, version in versions.items():
        current = version if version is not None else open_as_of(database, table, None).version
        for stage in stages:
            try:
                rows += stage_rows(database, source, table, current, stage, run_id, batch_size, references)
            except Exception as e:  # noqa: BLE001 (a stage's failure is a result: recorded, not raised)
                logger.exception("%s v%d: the %s stage failed", table, current, stage)
                rows.append(q.error_row(run_id, stage, table, current, e))
    q.record_metrics(database, rows)
    summarise(rows, run_id)
    for r in (r for r in rows if r["status"] != "ok"):
        logger.warning("%s v%d %s %s = %s (threshold %s): %s%s", r["table"], r["version"], r["stage"], r["metric"],
                       _number(r["value"]), _number(r["threshold"]), r["status"],
                       f" ({json.loads(r['details'])['error']})" if r["status"] == "error" else "")
    failed = [r for r in rows if r["status"] in ("fail", "error")]
    if failed and source.quality.on_fail == "fail":
        names = sorted({f"{r['table']}:{r['metric']}" for r in failed})
        raise QualityCheckFailed(f"{source.name}: {len(failed)} quality check(s) failed: {', '.join(names)}")
    return rows


def stage_rows(database: str, source: SourceConfig, table: str, version: int, stage: q.Stage, run_id: str,
               batch_size: int, references: dict[str, int] | None) -> list[dict]:
    """The `_metrics` rows of one stage over one table version (none for drift on a first version)."""
    reference = None
    if stage == "evaluate":
        sample, metrics = evaluate_task(database, source, table, version, source_tables(source).get(table))
    elif stage == "bias":
        sample, metrics = bias_task(database, source, table, version, batch_size)
    else:
        reference = (references or {}).get(table) or q.previous_version(database, table, version)
        if reference is None:
            get_run_logger().info("%s: version %d is the first; no drift to check", table, version)
            return []
        sample, metrics = drift_task(database, source, table, version, reference)
    return q.metric_rows(run_id, stage, sample, metrics, reference)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def summarise(rows: list[dict], run_id: str) -> None:
    """A Prefect artifact of the run's checks: counts by status in markdown, and every metric as a table."""
    if not rows:
        return
    counts = {s: sum(r["status"] == s for r in rows) for s in METRIC_STATUSES}
    lines = [f"# Quality checks of run {run_id}", "",
             f"{len(rows)} metrics: " + ", ".join(f"{n} {s}" for s, n in counts.items()), "",
             "| table | version | stage | metric | value | threshold | status |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['table']} | {r['version']} | {r['stage']} | {r['metric']} | {_number(r['value'])} | "
              f"{_number(r['threshold'])} | {r['status']} |" for r in rows if r["status"] != "ok"]
    create_markdown_artifact(key="quality-summary", markdown="\n".join(lines), description=f"quality {run_id}")
    create_table_artifact(key="quality-metrics", description=f"quality {run_id}", table=[
        {k: str(r[k]) for k in ("table", "version", "reference_version", "stage", "metric", "value", "threshold",
                                "status")} for r in rows])


def _version(database: str, table: str, as_of: str | None) -> int | None:
    handle = open_as_of(database, table, None)
    return None if as_of is None else resolve_version(table_versions(handle), as_of)


@flow(name="quality")
def quality(config: str, stages: list[q.Stage], source: str | None = None, table: str | None = None,
            as_of: str | None = None, reference: str | None = None) -> list[dict]:
    """Run quality stages on demand over the config's tables (or `table`), at `as_of` (default: latest);
    drift compares with `reference` (a version or tag), else with the previous run's version."""
    settings = load_config(config)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    rows, found = [], False
    for s in [settings.source(source)] if source else settings.sources:
        names = [n for n in source_tables(s) if (table is None or n == table)
                 and open_table(lancedb.connect(settings.database), n) is not None]
        found = found or bool(names)
        versions = {n: _version(settings.database, n, as_of) for n in names}
        references = {n: _version(settings.database, n, reference) for n in names} if reference else None
        rows += run_checks(settings.database, s, versions, stages, run_id, settings.batch_size, references)
    if not found:
        raise ConfigError(f"no embedding table {'named ' + repr(table) if table else 'yet'} in {settings.database}; "
                          "run a backfill first")
    return rows



def print_metrics(rows: list[dict]) -> None:
    """The metrics as an aligned table, worst first."""
    order = {"error": 0, "fail": 1, "warn": 2, "ok": 3}
    rows = sorted(rows, key=lambda r: (order[r["status"]], r["table"], r["stage"], r["metric"]))
    print(f"{'status':6}  {'table':40}  {'version':>7}  {'stage':8}  {'metric':40}  {'value':>10}  threshold")
    for r in rows:
        print(f"{r['status']:6}  {r['table']:40}  {r['version']:>7}  {r['stage']:8}  {r['metric']:40}  "
              f"{_number(r['value']):>10}  {_number(r['threshold'])}")
