"""Publish stage: make a source's staged shards the new versions of its tables, recoverably.

LanceDB has no transaction over several tables, so a source's publish is a journal. Before the first
commit, `intent.json` in the run's staging folder records every step the run will take: per table the
commit (replace or merge, the base version it starts from, the ids it deletes) and its `_runs` row;
then the `_rejects` rows; then the `_runs` rows. Each step is idempotent: a table whose latest version
is past the recorded base (or carries the run's tag) is committed already and only gets its tag, and
`_rejects` and `_runs` rows of the run are written once. The intent is removed last, with the staging.

A run of the source that finds an intent (its run was killed mid-publish) completes it first, under the
source's lock, before planning its own work. So after any kill and the next run, every table of the
source is at the same run, and every version a run tagged has its `_runs` row.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

import lancedb
import pyarrow as pa
import pyarrow.fs as pafs

from schemas.tables import REJECTS_TABLE, RUNS_TABLE
from tasks import failpoints, write
from tasks.stages import Kind, RunInfo, ShardFigures, SourcePlan

INTENT = "intent.json"
DELETES = "deletes"  # the staging kind holding each merge's ids to delete
Mode = Literal["replace", "merge"]


@dataclass(frozen=True)
class TableCommit:
    """One table's step of a publish: what to commit from the staging, and the table's `_runs` row."""

    table: str
    mode: Mode
    base_version: int | None  # the latest version when the run diffed (None: the table is new)
    commit: bool  # False: nothing changed, no new version (the row records the base version)
    schema: str  # the table's Arrow schema, IPC-serialised, base64
    run_row: dict  # the `_runs` row without version and finish time (JSON-ready)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.schema)))


@dataclass(frozen=True)
class Intent:
    """Every step of one source's publish, written before the first of them."""

    run_id: str
    source: str
    staging_key: str
    commits: tuple[TableCommit, ...]
    rejects: bool  # whether the run staged rejects to record

    @property
    def tag(self) -> str:
        return f"run-{self.run_id}"


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def write_intent(staging: write.Staging, intent: Intent) -> None:
    """Record the intent in the staging folder (atomically: a reader sees all of it or none)."""
    staging.put_file(INTENT, json.dumps(asdict(intent), default=str, sort_keys=True).encode())


def read_intent(staging: write.Staging) -> Intent | None:
    """The intent recorded in a staging folder, if its run did not finish publishing."""
    fs, root = pafs.FileSystem.from_uri(staging.root)
    try:
        with fs.open_input_stream(f"{root}/{INTENT}") as f:
            raw = json.loads(f.read())
    except FileNotFoundError:
        return None
    commits = tuple(TableCommit(**c) for c in raw.pop("commits"))
    return Intent(commits=commits, **raw)


def pending(database: str, source: str | None = None) -> list[tuple[write.Staging, Intent]]:
    """The staging folders of `source` (or of every source) that hold an unfinished publish, with its intent."""
    found = ((staging, read_intent(staging)) for staging in write.staging_folders(database, source))
    return [(staging, intent) for staging, intent in found if intent is not None]


def interrupted(database: str) -> dict[str, str]:
    """Source -> id of its run that was killed while publishing (the next run of the source completes it)."""
    return {intent.source: intent.run_id for _, intent in pending(database)}


def stage_deletes(staging: write.Staging, table: str, ids: pa.Array) -> None:
    """Keep the ids a merge deletes with the staged shards, so a resumed publish deletes the same ids."""
    staging.write(DELETES, table, "ids", pa.table({"id": ids}))


def staged_deletes(staging: write.Staging, table: str, schema: pa.Schema) -> pa.Array:
    ids = staging.read(DELETES, table, pa.schema([schema.field("id")])).read_all()["id"]
    return ids.combine_chunks()


def commit_table(db: lancedb.DBConnection, staging: write.Staging, step: TableCommit, tag: str) -> int:
    """Commit one table's step unless it is committed already; tag the version; returns it."""
    if not step.commit:
        return step.base_version
    handle = write.open_table(db, step.table)
    if handle is not None and (tag in handle.tags.list() or handle.version != step.base_version):
        if tag not in handle.tags.list():  # killed between the commit and its tag
            handle.tags.create(tag, handle.version)
        return handle.tags.get_version(tag)
    schema = step.arrow_schema
    if step.mode == "replace":
        version = write.replace(db, step.table, schema, staging)
    else:
        version = write.merge(db, step.table, schema, staging, staged_deletes(staging, step.table, schema))
    failpoints.reached(f"committed:{step.table}")
    db.open_table(step.table).tags.create(tag, version)
    return version


def recorded(db: lancedb.DBConnection, table: str, intent: Intent) -> bool:
    """Whether a bookkeeping table already has rows of the intent's run and source (a run covers several
    sources, each published on its own)."""
    handle = write.open_table(db, table)
    if handle is None:
        return False
    return handle.count_rows(f"run_id = '{intent.run_id}' AND source = '{intent.source}'") > 0


def complete(database: str, staging: write.Staging, intent: Intent) -> list[dict]:
    """Carry out every step of `intent` that is not done yet, then remove the staging; the `_runs` rows."""
    db = lancedb.connect(database)
    versions = {step.table: commit_table(db, staging, step, intent.tag) for step in intent.commits}
    failpoints.reached("before-rejects")
    if intent.rejects and not recorded(db, REJECTS_TABLE, intent):
        write.record_rejects(db, staging, [step.table for step in intent.commits], intent.run_id)
    failpoints.reached("before-runs")
    finished = datetime.now(UTC)
    rows = [run_row(step, versions[step.table], finished) for step in intent.commits]
    if not recorded(db, RUNS_TABLE, intent):
        write.record_run(db, rows)
    failpoints.reached("before-cleanup")
    staging.remove()
    return rows


def run_row(step: TableCommit, version: int, finished: datetime) -> dict:
    """The step's `_runs` row with its version and finish time."""
    started = datetime.fromisoformat(step.run_row["started_at"])
    return {**step.run_row, "version": version, "started_at": started, "finished_at": finished,
            "seconds": (finished - started).total_seconds()}


def complete_interrupted(database: str, source: str) -> list[dict]:
    """Complete the publish of a run of `source` that was killed in the middle of it; its `_runs` rows."""
    rows = []
    for staging, intent in pending(database, source):
        rows += complete(database, staging, intent)
    return rows


def plan_intent(plan: SourcePlan, staging: write.Staging, figures: list[ShardFigures], run: RunInfo,
                kind: Kind) -> Intent:
    """Everything the run's publish will do, decided before any commit: per table the mode, base version and
    ids to delete (staged), and its `_runs` row. Reads the tables; writes only to the staging."""
    db = lancedb.connect(plan.database)
    commits = []
    for spec in plan.tables:
        change = plan.diffs[spec.name]
        mine = [f for f in figures if f.table == spec.name]
        totals = {k: sum(getattr(f, k) for f in mine) for k in ("rows_read", "rows_embedded", "rows_unchanged",
                                                                 "rows_rejected", "rows_truncated")}
        flags: dict[str, int] = {}
        for f in mine:
            for condition, count in f.flags.items():
                flags[condition] = flags.get(condition, 0) + count
        if change.mode != "merge":
            previous = write.open_table(db, spec.name)
            staged_ids = staging.read("vectors", spec.name, spec.schema, columns=["id"])
            deleted = 0 if previous is None else write.count_deleted(previous, staged_ids)
            commit = True
        else:
            keep_gone = kind == "refresh" and plan.source.deletes == "keep"
            delete = change.stale.slice(0, 0) if keep_gone else write.ids_to_delete(change.stale, staging,
                                                                                     spec.name, spec.schema)
            stage_deletes(staging, spec.name, delete)
            deleted, commit = len(delete), bool(totals["rows_embedded"] or len(delete))
        row = {"run_id": run.run_id, "flow_run_id": run.flow_run_id, "source": plan.source.name,
               "table": spec.name, **totals, "rows_deleted": deleted if commit else 0, "published": commit,
               "flags": json.dumps(flags, sort_keys=True), "started_at": run.started_at.isoformat()}
        commits.append(TableCommit(spec.name, "merge" if change.mode == "merge" else "replace",
                                   change.base_version, commit, encode_schema(spec.schema), row))
    rejects = any(step.run_row["rows_rejected"] for step in commits)
    return Intent(run.run_id, plan.source.name, staging.key, tuple(commits), rejects)


def publish(plan: SourcePlan, staging: write.Staging, figures: list[ShardFigures], run: RunInfo,
            kind: Kind) -> list[dict]:
    """Publish stage: at most one new version per table of the source, then its `_rejects` and `_runs` rows,
    through a recorded intent (see the module's docstring); the `_runs` rows."""
    intent = plan_intent(plan, staging, figures, run, kind)
    write_intent(staging, intent)
    failpoints.reached("intent-written")
    return complete(plan.database, staging, intent)
