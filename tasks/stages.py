"""The embedding run's stages over one source, as plain typed functions (the flows only wire them).

plan (every source, before any work) -> fit (embedders learnt from the data: reuse the table's state,
or fit one) -> diff (per source, against each table's latest version) -> per shard: read -> validate
-> prepare -> embed -> write (stage) -> publish (one version per table: `tasks.publish`).
Every row read is accounted for per table: rows_read = rows_embedded + rows_unchanged + rows_rejected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import SourceConfig
from schemas.tables import INPUT_STATS, embedding_metadata, embedding_schema, table_name
from tasks import fitted, sources, write
from tasks import validate as checks
from tasks.diff import TableDiff, diff_table
from tasks.embedders import registry
from tasks.embedders.base import Embedder, EmbedderInfo, Prepared

Kind = Literal["backfill", "refresh"]


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: which field of the source, which embedder, and its Arrow schema."""

    name: str
    column: str
    modality: str
    embedder: str
    schema: pa.Schema  # empty until `fit` has fitted (or found) the state of a fitted embedder
    fingerprint: str
    fit_id: str | None = None  # the stored state of a fitted embedder (`tasks.fitted`)


# Rows a fitted embedder is fit on: a seeded sample of the source (enough for a 20k-term vocabulary).
FIT_SAMPLE = 50_000


@dataclass(frozen=True)
class SourcePlan:
    """Everything a source's shards need; `diffs` is filled in by `diff` just before the shards run."""

    database: str
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
    flags: dict[str, int] = field(default_factory=dict)  # rows embedded but counted, by condition


def _spec(layout: sources.SourceLayout, source: SourceConfig, spec: TableSpec, info: EmbedderInfo) -> TableSpec:
    """The spec with the schema and fingerprint of the loaded embedder's `info`."""
    keep = [layout.schema.field(c) for c in source.keep]
    stats = registry.modality(spec.modality).stat_names(layout.schema.field(spec.column).type)
    schema = embedding_schema(layout.schema.field(source.id).type, info.dim, keep, info.metadata(), stats)
    return replace(spec, schema=schema, fingerprint=info.fingerprint())


def plan_source(source: SourceConfig, batch_size: int, database: str) -> SourcePlan:
    """Check the source's files and embedders and cut it into shards; raises before any work if it cannot run."""
    modalities = {f.modality: registry.modality(f.modality) for f in source.fields}
    layout = sources.inspect_source(source, modalities)
    tables = []
    for f in source.fields:
        for name in f.embedders or [modalities[f.modality].default_embedder]:
            spec = TableSpec(table_name(source.name, f.key, name), f.key, f.modality, name, pa.schema([]), "")
            if registry.is_fitted(f.modality, name):
                registry.check_embedder(f.modality, name)
                tables.append(spec)  # completed by `fit`
            else:
                tables.append(_spec(layout, source, spec, registry.load_embedder(f.modality, name, batch_size).info))
    return SourcePlan(
        database=database, source=source, layout=layout,
        shards=tuple(sources.plan_shards(layout.files, source.shard_rows)),
        duplicates=sources.find_duplicates(layout.files, source.id), tables=tuple(tables), batch_size=batch_size,
    )


def embedder_of(plan: SourcePlan, spec: TableSpec) -> Embedder:
    """The table's embedder, loaded once per process (with its fitted state, for a fitted one)."""
    ref = fitted.FitRef(plan.database, spec.fit_id) if spec.fit_id else None
    return registry.load_embedder(spec.modality, spec.embedder, plan.batch_size, ref)


def fit_sample(plan: SourcePlan, spec: TableSpec) -> pa.Array:
    """A seeded sample of the values a fitted embedder learns from: rows that would be embedded (what the
    modality rejects, text that is not valid UTF-8 included, is dropped from the sample, never fitted on)."""
    values = sources.sample_values(plan.layout, spec.column, plan.source.id, FIT_SAMPLE)
    return values.filter(pc.is_null(registry.modality(spec.modality).reasons(values)))


def fit(plan: SourcePlan, refit: bool) -> tuple[SourcePlan, list[str]]:
    """Fit stage: give each fitted embedder its state, the one its table was made with unless that is
    missing, made for other input columns, or `refit` asks for a new one (a new table generation).

    Returns the completed plan and one line per table saying which state it uses.
    """
    db = lancedb.connect(plan.database)
    tables, notes = [], []
    for spec in plan.tables:
        if not registry.is_fitted(spec.modality, spec.embedder):
            tables.append(spec)
            continue
        value_type = plan.layout.schema.field(spec.column).type
        table = write.open_table(db, spec.name)
        revision = embedding_metadata(table.schema).get("revision") if table is not None else None
        fit_id = None if refit else fitted.current(db, spec.name, spec.embedder, revision, value_type)
        if fit_id is None:
            sample = fit_sample(plan, spec)
            state = registry.fit_embedder(spec.modality, spec.embedder, sample)
            fit_id = fitted.save(db, state, spec.name, spec.embedder, value_type, len(sample))
            notes.append(f"{spec.name}: fitted {spec.embedder} on {len(sample)} sampled rows (fit {fit_id})")
        else:
            notes.append(f"{spec.name}: reusing fit {fit_id} of the table's latest version")
        spec = replace(spec, fit_id=fit_id)
        tables.append(_spec(plan.layout, plan.source, spec, embedder_of(plan, spec).info))
    return replace(plan, tables=tuple(tables)), notes


def diff(plan: SourcePlan, full: bool) -> SourcePlan:
    """Diff stage: for each table, what this run must embed and may delete (everything if `full`)."""
    db = lancedb.connect(plan.database)
    diffs = {
        spec.name: diff_table(db, spec.name, spec.schema, spec.fingerprint, plan.layout.files, plan.source.id,
                              plan.layout.field_sql(spec.column), plan.layout.schema.field(spec.column).type, full,
                              registry.modality(spec.modality).payload,
                              {plan.source.id: plan.layout.schema.field(plan.source.id).type,
                               **plan.layout.input_types(spec.column)})
        for spec in plan.tables
    }
    return replace(plan, diffs=diffs)


def staging_for(plan: SourcePlan, kind: Kind) -> write.Staging:
    """The staging area of this exact piece of work: same inputs, models and base versions, same place."""
    stats = [(f, Path(f).stat()) for f in plan.layout.files]
    files = [(f, st.st_size, st.st_mtime_ns) for f, st in stats]
    tables = [(t.name, t.fingerprint, str(t.schema), plan.diffs[t.name].mode, plan.diffs[t.name].base_version)
              for t in plan.tables]
    blob = json.dumps([kind, plan.source.model_dump(), files, tables], sort_keys=True, default=str)
    return write.Staging(plan.database, f"{plan.source.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}")


def staged_figures(plan: SourcePlan, shard: sources.Shard, staging: write.Staging) -> list[ShardFigures] | None:
    """The figures of a shard a previous, interrupted run of the same work already staged for every table."""
    key = write.shard_key(shard.file, shard.first_row)
    done = [staging.done(spec.name, key) for spec in plan.tables]
    if any(d is None for d in done):
        return None
    return [ShardFigures(**d) for d in done]


# A merge run (only new and changed rows embedded) joins neighbouring shards of a file into one task while
# their rows to embed fit in one shard and the task reads at most MERGED_SHARDS shards' rows: a 1% change
# spread over a source then costs a few tasks and forward passes, not one of each per shard.
MERGED_SHARDS = 4


def work_shards(plan: SourcePlan) -> tuple[list[sources.Shard], list[ShardFigures]]:
    """The shards this run reads, neighbours merged (see MERGED_SHARDS), and the figures of the shards it
    leaves alone. The same work gives the same shards, so a resumed run finds the shards an interrupted one
    staged. Only a merge run (every table has a base version) leaves shards alone or merges them.

    A shard is left alone, counted unchanged without being read, when no table has rows of it to embed. A
    row is unchanged only when its (id, content hash) is already in the table, and only valid rows ever got
    there; rows that must be rejected again (null ids, invalid values) are never in the table, so the diff
    lists them. The exception is a repeated id whose repeat has the same content: the diff cannot tell the
    repeat from the first, so a shard holding a repeat is read and validated as usual.
    """
    diffs = [plan.diffs[spec.name] for spec in plan.tables]
    if any(d.mode != "merge" for d in diffs):
        return list(plan.shards), []
    repeats = {f: np.sort(plan.duplicates.filter(pc.equal(plan.duplicates["file"], f))["row"].to_numpy())
               for f in pc.unique(plan.duplicates["file"]).to_pylist()}

    def to_embed(shard: sources.Shard) -> int:
        return max(len(d.rows_to_embed(shard)) for d in diffs)

    def holds_repeat(shard: sources.Shard) -> bool:
        rows = repeats.get(shard.file, np.empty(0, np.int64))
        return bool(np.searchsorted(rows, shard.first_row + shard.num_rows) - np.searchsorted(rows, shard.first_row))

    work: list[sources.Shard] = []
    left_alone: list[ShardFigures] = []
    for shard in plan.shards:
        if not to_embed(shard) and not holds_repeat(shard):
            left_alone += [ShardFigures(spec.name, shard.num_rows, 0, shard.num_rows, 0, 0) for spec in plan.tables]
            continue
        merged = _joined(work[-1], shard) if work else None
        fits = merged is not None and merged.num_rows <= MERGED_SHARDS * plan.source.shard_rows
        if fits and to_embed(merged) <= plan.source.shard_rows:
            work[-1] = merged
        else:
            work.append(shard)
    return work, left_alone


def _joined(last: sources.Shard, shard: sources.Shard) -> sources.Shard | None:
    """`last` and `shard` as one shard, if `shard` follows `last` in the same file."""
    if shard.file != last.file or shard.first_row != last.first_row + last.num_rows:
        return None
    return sources.Shard(last.file, tuple(dict.fromkeys(last.row_groups + shard.row_groups)), last.first_row,
                         last.num_rows + shard.num_rows, last.partial or shard.partial)


def read(plan: SourcePlan, shard: sources.Shard) -> pa.Table:
    """Read stage: the shard's rows with their row index in the file."""
    return sources.read_shard(shard, plan.layout)


def validate(plan: SourcePlan, shard: sources.Shard, rows: pa.Table) -> dict[str, checks.Checked]:
    """Validate stage, per table: rows to embed (valid and changed), how many are unchanged, reject records."""
    whole_row = checks.row_reasons(rows, plan.source.id, shard.file, plan.duplicates, plan.source.keep)
    per_field = {
        f.key: checks.check_field(rows, plan.source.id, f.key, registry.modality(f.modality), shard.file,
                                     whole_row)
        for f in plan.source.fields
    }
    return {spec.name: checks.only_rows(per_field[spec.column], plan.diffs[spec.name].rows_to_embed(shard))
            for spec in plan.tables}


def prepare(plan: SourcePlan, spec: TableSpec, shard: sources.Shard, checked: dict[str, checks.Checked]) -> Prepared:
    """Prepare stage: CPU work (tokenise, decode) on the rows to embed.

    The field's `max_seconds` (audio fields only: the config gives every one a limit) goes to the embedder
    with the values: one loaded model serves fields with different limits.
    """
    values = checked[spec.name].kept[spec.column].combine_chunks()
    embedder, base_dir = embedder_of(plan, spec), str(Path(shard.file).parent)
    max_seconds = next(f.max_seconds for f in plan.source.fields if f.key == spec.column)
    if max_seconds is None:
        return embedder.prepare(values, base_dir)
    return embedder.prepare(values, base_dir, max_seconds=max_seconds)


def embed(plan: SourcePlan, spec: TableSpec, prepared: Prepared) -> np.ndarray:
    """Embed stage: batched inference, on the GPU when there is one."""
    return embedder_of(plan, spec).embed(prepared)


def input_stats(spec: TableSpec, values: pa.Array, prepared: Prepared) -> pa.StructArray:
    """What the model saw, per row (the table's `input_stats`): statistics read off the values by the
    modality, and those the embedder measured while preparing; NaN where one was not measured."""
    modality = registry.modality(spec.modality)
    measured = dict(modality.describe(values) if modality.describe else {})
    measured |= getattr(prepared, "stats", {})
    fields = list(spec.schema.field(INPUT_STATS).type)
    missing = np.full(len(values), np.nan)
    return pa.StructArray.from_arrays([pa.array(measured.get(f.name, missing), pa.float64()) for f in fields],
                                      fields=fields)


def stage(
    plan: SourcePlan, spec: TableSpec, shard: sources.Shard, checked: dict[str, checks.Checked],
    prepared: Prepared, vectors: np.ndarray, staging: write.Staging,
) -> ShardFigures:
    """Write stage (per shard): stage the vectors and every reject, then mark the shard done for the table."""
    work = checked[spec.name]
    if INPUT_STATS in spec.schema.names:
        stats = input_stats(spec, work.kept[spec.column].combine_chunks(), prepared)
        work = replace(work, kept=work.kept.append_column(INPUT_STATS, stats))
    kept, unprepared = checks.split_failures(work.kept, prepared.failures, plan.source.id, spec.column, shard.file)
    ok = np.ones(len(vectors), dtype=bool)
    ok[list(prepared.failures)] = False
    payload = registry.modality(spec.modality).payload
    hashed = payload(kept[spec.column].combine_chunks(), str(Path(shard.file).parent)) if payload else None
    rows, bad_vectors = write.vectors_table(kept, vectors[ok], plan.source.id, spec.column, spec.schema,
                                            spec.fingerprint, shard.file, hashed)
    key = write.shard_key(shard.file, shard.first_row)
    rejects = pa.concat_tables([work.rejects, unprepared, bad_vectors])
    if rejects.num_rows:
        staging.write("rejects", spec.name, key, write.staged_rejects(rejects, plan.source.name, spec.name))
    staging.write("vectors", spec.name, key, rows)
    figures = ShardFigures(spec.name, shard.num_rows, rows.num_rows, work.unchanged, rejects.num_rows,
                           prepared.truncated, dict(prepared.flags))
    staging.mark_done(spec.name, key, asdict(figures))
    return figures


@dataclass(frozen=True)
class RunInfo:
    """Identity of one run of a flow: what `_runs` and `_rejects` rows are keyed by."""

    run_id: str
    flow_run_id: str | None
    started_at: datetime
