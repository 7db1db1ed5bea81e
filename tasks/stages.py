"""The backfill's stages over one shard, as plain typed functions (the flow only wires them).

plan (per source, before any work) -> read -> validate -> prepare -> embed -> write (stage) per shard
-> publish (per table, one version). Every row read is accounted for: each shard's figures satisfy
rows_read = rows_embedded + rows_rejected (backfill embeds every accepted row).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from schemas.config import SourceConfig
from schemas.tables import embedding_schema, table_name
from tasks import sources, write
from tasks import validate as checks
from tasks.embedders import registry
from tasks.embedders.base import Prepared


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
    """Everything a source's shards need, settled before any work starts."""

    source: SourceConfig
    layout: sources.SourceLayout
    shards: tuple[sources.Shard, ...]
    duplicates: pa.Table
    tables: tuple[TableSpec, ...]
    batch_size: int

    @property
    def rows(self) -> int:
        return sum(s.num_rows for s in self.shards)


@dataclass(frozen=True)
class ShardFigures:
    """What one shard did for one table."""

    table: str
    rows_read: int
    rows_embedded: int
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


def read(plan: SourcePlan, shard: sources.Shard) -> pa.Table:
    """Read stage: the shard's rows with their row index in the file."""
    return sources.read_shard(shard, plan.layout)


def validate(plan: SourcePlan, shard: sources.Shard, rows: pa.Table) -> dict[str, checks.Checked]:
    """Validate stage: per field, the rows that can be embedded and reject records for the others."""
    whole_row = checks.row_reasons(rows, plan.source.id, shard.file, plan.duplicates)
    return {
        f.column: checks.check_field(rows, plan.source.id, f.column, registry.modality(f.modality), shard.file,
                                     whole_row)
        for f in plan.source.fields
    }


def prepare(plan: SourcePlan, spec: TableSpec, shard: sources.Shard, checked: dict[str, checks.Checked]) -> Prepared:
    """Prepare stage: CPU work (tokenise, decode) on the field's accepted rows."""
    embedder = registry.load_embedder(spec.modality, spec.embedder, plan.batch_size)
    return embedder.prepare(checked[spec.column].kept[spec.column].combine_chunks(), str(Path(shard.file).parent))


def embed(plan: SourcePlan, spec: TableSpec, prepared: Prepared) -> np.ndarray:
    """Embed stage: batched inference, on the GPU when there is one."""
    return registry.load_embedder(spec.modality, spec.embedder, plan.batch_size).embed(prepared)


def stage(
    plan: SourcePlan, spec: TableSpec, shard: sources.Shard, checked: dict[str, checks.Checked],
    prepared: Prepared, vectors: np.ndarray, staging: write.Staging,
) -> ShardFigures:
    """Write stage (per shard): stage the vectors and every reject where the publish step will find them."""
    field = checked[spec.column]
    kept, unprepared = checks.split_failures(field.kept, prepared.failures, plan.source.id, spec.column, shard.file)
    ok = np.ones(len(vectors), dtype=bool)
    ok[list(prepared.failures)] = False
    rows, bad_vectors = write.vectors_table(kept, vectors[ok], plan.source.id, spec.column, spec.schema,
                                            spec.fingerprint, shard.file)
    key = write.shard_key(shard.file, shard.first_row)
    rejects = pa.concat_tables([field.rejects, unprepared, bad_vectors])
    if rejects.num_rows:
        staging.write("rejects", spec.name, key,
                      write.with_run_columns(rejects, staging.run_id, plan.source.name, spec.name))
    staging.write("vectors", spec.name, key, rows)
    return ShardFigures(spec.name, shard.num_rows, rows.num_rows, rejects.num_rows, prepared.truncated)


@dataclass(frozen=True)
class RunInfo:
    """Identity of one run of a flow: what `_runs` and `_rejects` rows are keyed by."""

    run_id: str
    flow_run_id: str | None
    started_at: datetime


def publish(database: str, plan: SourcePlan, staging: write.Staging, figures: list[ShardFigures],
            run: RunInfo) -> list[dict]:
    """Publish stage: one new version per table of the source, then its `_rejects` and `_runs` rows."""
    db = lancedb.connect(database)
    rows = []
    for spec in plan.tables:
        version, deleted = write.publish(db, spec.name, spec.schema, staging, tag=f"run-{run.run_id}")
        mine = [f for f in figures if f.table == spec.name]
        finished = datetime.now(UTC)
        rows.append({
            "run_id": run.run_id, "flow_run_id": run.flow_run_id, "source": plan.source.name, "table": spec.name,
            "version": version, "rows_read": sum(f.rows_read for f in mine),
            "rows_embedded": sum(f.rows_embedded for f in mine), "rows_unchanged": 0,
            "rows_rejected": sum(f.rows_rejected for f in mine), "rows_deleted": deleted,
            "rows_truncated": sum(f.rows_truncated for f in mine), "started_at": run.started_at,
            "finished_at": finished, "seconds": (finished - run.started_at).total_seconds(),
        })
    if any(r["rows_rejected"] for r in rows):
        write.record_rejects(db, staging, [t.name for t in plan.tables])
    write.record_run(db, rows)
    return rows
