"""The embedding run's stages over one source, as plain typed functions (the flows only wire them).

plan (every source, before any work) -> diff (per source, against each table's latest version)
-> per shard: read -> validate -> prepare -> embed -> write (stage) -> publish (one version per table).
Every row read is accounted for per table: rows_read = rows_embedded + rows_unchanged + rows_rejected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import lancedb
import numpy as np
import pyarrow as pa

from schemas.config import SourceConfig
from schemas.tables import embedding_schema, table_name
from tasks import sources, write
from tasks import validate as checks
from tasks.diff import TableDiff, diff_table
from tasks.embedders import registry
from tasks.embedders.base import Prepared

Kind = Literal["backfill", "refresh"]


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: which field of the source, which embedder, and its Arrow schema."""

    name: str
    column: str
    modality: str
    embedder: str
    schema: pa.Schema
    fingerprint: str


@dataclass(frozen=True)
class SourcePlan:
    """Everything a source's shards need; `diffs` is filled in by `diff` just before the shards run."""

    source: SourceConfig
    layout: sources.SourceLayout
    shards: tuple[sources.Shard, ...]
    duplicates: pa.Table
    tables: tuple[TableSpec, ...]
    batch_size: int
    diffs: dict[str, TableDiff] | None = None

    @property
    def rows(self) -> int:
        return sum(s.num_rows for s in self.shards)


@dataclass(frozen=True)
class ShardFigures:
    """What one shard did for one table."""

    table: str
    rows_read: int
    rows_embedded: int
    rows_unchanged: int
    rows_rejected: int
    rows_truncated: int


def plan_source(source: SourceConfig, batch_size: int) -> SourcePlan:
    """Check the source's files and embedders and cut it into shards; raises before any work if it cannot run."""
    modalities = {f.modality: registry.modality(f.modality) for f in source.fields}
    layout = sources.inspect_source(source, modalities)
    keep = [layout.schema.field(c) for c in source.keep]
    tables = []
    for field in source.fields:
        for name in field.embedders or [modalities[field.modality].default_embedder]:
            info = registry.load_embedder(field.modality, name, batch_size).info
            schema = embedding_schema(layout.schema.field(source.id).type, info.dim, keep, info.metadata())
            tables.append(TableSpec(table_name(source.name, field.column, name), field.column, field.modality,
                                    name, schema, info.fingerprint()))
    return SourcePlan(
        source=source, layout=layout, shards=tuple(sources.plan_shards(layout.files, source.shard_rows)),
        duplicates=sources.find_duplicates(layout.files, source.id), tables=tuple(tables), batch_size=batch_size,
    )


def diff(database: str, plan: SourcePlan, full: bool) -> SourcePlan:
    """Diff stage: for each table, what this run must embed and may delete (everything if `full`)."""
    db = lancedb.connect(database)
    diffs = {
        spec.name: diff_table(db, spec.name, spec.schema, spec.fingerprint, plan.layout.files, list(plan.shards),
                              plan.source.id, spec.column, plan.layout.schema.field(spec.column).type, full)
        for spec in plan.tables
    }
    return replace(plan, diffs=diffs)


def staging_for(database: str, plan: SourcePlan, kind: Kind) -> write.Staging:
    """The staging area of this exact piece of work: same inputs, models and base versions, same place."""
    stats = [(f, Path(f).stat()) for f in plan.layout.files]
    files = [(f, st.st_size, st.st_mtime_ns) for f, st in stats]
    tables = [(t.name, t.fingerprint, str(t.schema), plan.diffs[t.name].mode, plan.diffs[t.name].base_version)
              for t in plan.tables]
    blob = json.dumps([kind, plan.source.model_dump(), files, tables], sort_keys=True, default=str)
    return write.Staging(database, f"{plan.source.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}")


def staged_figures(plan: SourcePlan, shard: sources.Shard, staging: write.Staging) -> list[ShardFigures] | None:
    """The figures of a shard a previous, interrupted run of the same work already staged for every table."""
    key = write.shard_key(shard.file, shard.first_row)
    done = [staging.done(spec.name, key) for spec in plan.tables]
    if any(d is None for d in done):
        return None
    return [ShardFigures(**d) for d in done]


def read(plan: SourcePlan, shard: sources.Shard) -> pa.Table:
    """Read stage: the shard's rows with their row index in the file."""
    return sources.read_shard(shard, plan.layout)


def validate(plan: SourcePlan, shard: sources.Shard, rows: pa.Table) -> dict[str, checks.Checked]:
    """Validate stage, per table: rows to embed (valid and changed), how many are unchanged, reject records."""
    whole_row = checks.row_reasons(rows, plan.source.id, shard.file, plan.duplicates)
    per_field = {
        f.column: checks.check_field(rows, plan.source.id, f.column, registry.modality(f.modality), shard.file,
                                     whole_row)
        for f in plan.source.fields
    }
    return {spec.name: checks.only_rows(per_field[spec.column], plan.diffs[spec.name].rows_to_embed(shard))
            for spec in plan.tables}


def prepare(plan: SourcePlan, spec: TableSpec, shard: sources.Shard, checked: dict[str, checks.Checked]) -> Prepared:
    """Prepare stage: CPU work (tokenise, decode) on the rows to embed."""
    embedder = registry.load_embedder(spec.modality, spec.embedder, plan.batch_size)
    return embedder.prepare(checked[spec.name].kept[spec.column].combine_chunks(), str(Path(shard.file).parent))


def embed(plan: SourcePlan, spec: TableSpec, prepared: Prepared) -> np.ndarray:
    """Embed stage: batched inference, on the GPU when there is one."""
    return registry.load_embedder(spec.modality, spec.embedder, plan.batch_size).embed(prepared)


def stage(
    plan: SourcePlan, spec: TableSpec, shard: sources.Shard, checked: dict[str, checks.Checked],
    prepared: Prepared, vectors: np.ndarray, staging: write.Staging,
) -> ShardFigures:
    """Write stage (per shard): stage the vectors and every reject, then mark the shard done for the table."""
    work = checked[spec.name]
    kept, unprepared = checks.split_failures(work.kept, prepared.failures, plan.source.id, spec.column, shard.file)
    ok = np.ones(len(vectors), dtype=bool)
    ok[list(prepared.failures)] = False
    rows, bad_vectors = write.vectors_table(kept, vectors[ok], plan.source.id, spec.column, spec.schema,
                                            spec.fingerprint, shard.file)
    key = write.shard_key(shard.file, shard.first_row)
    rejects = pa.concat_tables([work.rejects, unprepared, bad_vectors])
    if rejects.num_rows:
        staging.write("rejects", spec.name, key, write.staged_rejects(rejects, plan.source.name, spec.name))
    staging.write("vectors", spec.name, key, rows)
    figures = ShardFigures(spec.name, shard.num_rows, rows.num_rows, work.unchanged, rejects.num_rows,
                           prepared.truncated)
    staging.mark_done(spec.name, key, asdict(figures))
    return figures


@dataclass(frozen=True)
class RunInfo:
    """Identity of one run of a flow: what `_runs` and `_rejects` rows are keyed by."""

    run_id: str
    flow_run_id: str | None
    started_at: datetime


def publish_table(db: lancedb.DBConnection, plan: SourcePlan, spec: TableSpec, staging: write.Staging,
                  embedded: int, kind: Kind, tag: str) -> tuple[int, int, bool]:
    """Publish one table as its diff says; returns (version, rows_deleted, published)."""
    change = plan.diffs[spec.name]
    if change.mode != "merge":
        version, deleted = write.replace(db, spec.name, spec.schema, staging)
    else:
        keep_gone = kind == "refresh" and plan.source.deletes == "keep"
        delete = change.stale.slice(0, 0) if keep_gone else write.ids_to_delete(change.stale, staging, spec.name,
                                                                                 spec.schema)
        if not embedded and not len(delete):
            return change.base_version, 0, False  # nothing changed: no new version
        version, deleted = write.merge(db, spec.name, spec.schema, staging, delete), len(delete)
    db.open_table(spec.name).tags.create(tag, version)
    return version, deleted, True


def publish(database: str, plan: SourcePlan, staging: write.Staging, figures: list[ShardFigures], run: RunInfo,
            kind: Kind) -> list[dict]:
    """Publish stage: at most one new version per table of the source, then its `_rejects` and `_runs` rows."""
    db = lancedb.connect(database)
    rows = []
    for spec in plan.tables:
        mine = [f for f in figures if f.table == spec.name]
        totals = {k: sum(getattr(f, k) for f in mine) for k in ("rows_read", "rows_embedded", "rows_unchanged",
                                                                 "rows_rejected", "rows_truncated")}
        version, deleted, published = publish_table(db, plan, spec, staging, totals["rows_embedded"], kind,
                                                    tag=f"run-{run.run_id}")
        finished = datetime.now(UTC)
        rows.append({
            "run_id": run.run_id, "flow_run_id": run.flow_run_id, "source": plan.source.name, "table": spec.name,
            "version": version, **totals, "rows_deleted": deleted, "published": published,
            "started_at": run.started_at, "finished_at": finished,
            "seconds": (finished - run.started_at).total_seconds(),
        })
    if any(r["rows_rejected"] for r in rows):
        write.record_rejects(db, staging, [t.name for t in plan.tables], run.run_id)
    write.record_run(db, rows)
    return rows
