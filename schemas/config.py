"""The pipeline config: a YAML file validated by pydantic before any work starts.

Every mistake a user can make in the file (an unknown key, a missing key, a bad value, a keep column
that is also the id) is reported with the key's path and what is allowed, so a run never starts on a
config it would later choke on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.tables import NAME_PATTERN

Modality = Literal["text", "image", "audio", "table"]
# An audio field's `max_seconds` when the config gives none: a few KB of FLAC can hold hours of silence,
# and decoding them costs minutes of CPU and hundreds of MB.
AUDIO_MAX_SECONDS = 600.0


class ConfigError(ValueError):
    """A config file that cannot be used; the message says which key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldConfig(_Strict):
    """What to embed from each row, with the embedders to run on it.

    Text, images and audio come from one `column`; a table field takes several `columns` and a `name`
    (default `row`) that stands for them in table names: `<source>__<name>__<embedder>`.
    """

    column: str | None = Field(default=None, min_length=1, description="the input column (text, image, audio)")
    columns: list[str] | None = Field(default=None, min_length=1, description="table: the input columns")
    name: str | None = Field(default=None, description="table: the field's name in table names (default row)")
    modality: Modality
    embedders: list[str] | None = Field(
        default=None, min_length=1, description="Embedder names; the modality's default if omitted."
    )
    label: str | None = Field(
        default=None, description="keep column with this field's class label for evaluation (default: quality.label)"
    )
    max_seconds: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description=f"audio: the longest clip in seconds (default {AUDIO_MAX_SECONDS:g}); a clip whose header says it "
                    "is longer is a reject of stage prepare, one whose header gives no length is cut there, "
                    "embedded from its first max_seconds and flagged",
    )

    @model_validator(mode="before")
    @classmethod
    def _audio_limit(cls, data: object) -> object:
        """An audio field without `max_seconds` gets the default, so every audio field has a limit."""
        if isinstance(data, dict) and data.get("modality") == "audio" and data.get("max_seconds") is None:
            return {**data, "max_seconds": AUDIO_MAX_SECONDS}
        return data

    @model_validator(mode="after")
    def _audio_only(self) -> FieldConfig:
        """`max_seconds` is an audio option: on another field it is a mistake, not something to ignore."""
        if self.modality != "audio" and self.max_seconds is not None:
            raise ValueError(f"max_seconds: limits the length of audio clips; a {self.modality} field takes none")
        return self

    @model_validator(mode="after")
    def _inputs(self) -> FieldConfig:
        if self.modality == "table":
            if self.column is not None or not self.columns:
                raise ValueError("a table field lists its input columns under 'columns:' (and takes no 'column:')")
            if len(set(self.columns)) != len(self.columns):
                raise ValueError("columns: a column is listed twice")
            if self.name is not None and not re.fullmatch(NAME_PATTERN, self.name):
                raise ValueError(f"name: {self.name!r} is not allowed: use lowercase letters, digits and _")
        elif self.column is None or self.columns is not None or self.name is not None:
            raise ValueError(f"a {self.modality} field names its input with 'column:' ('columns:'/'name:' are for "
                             "modality table)")
        return self

    @property
    def key(self) -> str:
        """The field's name in table names and rejects: its column, or a table field's name."""
        return self.column if self.column is not None else (self.name or "row")

    @property
    def inputs(self) -> list[str]:
        """The Parquet columns the field reads."""
        return [self.column] if self.column is not None else list(self.columns or [])


class ScheduleConfig(_Strict):
    """When the served deployments run a source (cron expressions, in `timezone`)."""

    refresh: str | None = Field(default=None, description="cron for the incremental refresh, e.g. '0 2 * * *'")
    backfill: str | None = Field(default=None, description="cron for a scheduled backfill, e.g. '0 3 * * 0'")
    timezone: str = "UTC"

    @field_validator("refresh", "backfill")
    @classmethod
    def _cron(cls, cron: str | None) -> str | None:
        if cron is not None:
            from cronsim import CronSim, CronSimError  # what Prefect's CronSchedule parses with

            try:
                CronSim(cron, datetime.now(UTC))
            except CronSimError as e:
                raise ValueError(f"{cron!r} is not a cron expression ({e}); e.g. '0 2 * * *' is 02:00 daily") from None
        return cron

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not a time zone name such as 'UTC' or 'Europe/Berlin'") from None
        return name


QualityStage = Literal["evaluate", "bias", "drift"]


class QualityConfig(_Strict):
    """The quality stages of a source's tables: what to check after each run, with which columns."""

    label: str | None = Field(default=None, description="keep column with a class label (kNN, probe, v-measure)")
    sensitive: str | None = Field(default=None, description="keep column with a group attribute (bias per group)")
    pairs: str | None = Field(
        default=None, description="Parquet file of (query, relevant[, score]) id pairs for retrieval metrics"
    )
    after: list[QualityStage] = Field(
        default_factory=lambda: ["evaluate", "drift"], description="stages run after each backfill or refresh"
    )
    on_fail: Literal["warn", "fail"] = Field(
        default="warn", description="a failed check warns (default) or fails the flow"
    )
    sample: int = Field(default=20_000, ge=100, description="rows sampled (seeded) per table for the statistics")
    thresholds: dict[str, float] = Field(default_factory=dict, description="metric name -> threshold override")


class SourceConfig(_Strict):
    """A set of Parquet files with a stable row id, and the fields to embed from them."""

    name: str = Field(description="lowercase letters, digits and _, starting with a letter")
    path: str = Field(min_length=1, description="a Parquet file, a folder of them, or a glob")
    id: str = Field(min_length=1, description="column holding a unique, stable row id")
    fields: list[FieldConfig] = Field(min_length=1)
    keep: list[str] = Field(default_factory=list)
    shard_rows: int = Field(default=4096, ge=1,
                            description="rows per task (row groups packed up to this; a bigger row group is sliced)")
    deletes: Literal["delete", "keep"] = Field(
        default="delete", description="refresh: remove rows whose ids left the source, or keep them"
    )
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"{name!r} is not allowed: use lowercase letters, digits and _, starting with a letter")
        return name

    @model_validator(mode="after")
    def _distinct_columns(self) -> SourceConfig:
        if self.id in self.keep:
            raise ValueError(f"keep: {self.id!r} is the id column, which every table has already")
        reserved = {"id", "content_hash", "vector", "input_stats"} & set(self.keep)
        if reserved:
            raise ValueError(f"keep: {sorted(reserved)} are names the embedding table uses itself")
        if len(set(self.keep)) != len(self.keep):
            raise ValueError("keep: a column is listed twice")
        wanted = {f"quality.{k}": getattr(self.quality, k) for k in ("label", "sensitive")}
        wanted |= {f"fields.{f.key}.label": f.label for f in self.fields}
        for key, column in wanted.items():
            if column is not None and column not in self.keep:
                raise ValueError(f"{key}: {column!r} must be one of the keep columns {self.keep}")
        seen = [f.key for f in self.fields]
        if len(set(seen)) != len(seen):
            raise ValueError("fields: a column (or table field name) is listed twice; list several embedders on one "
                             "field")
        clash = {f.key for f in self.fields if f.column is None} & {self.id, *self.keep}
        if clash:
            raise ValueError(f"fields: table field name(s) {sorted(clash)} clash with the id or keep columns")
        return self


RunnerKind = Literal["local", "ray", "dask"]


class RunnerConfig(_Strict):
    """Where a run's shards execute: threads of the flow's process (local), or the workers of a Ray or
    Dask cluster, started for the run or joined at `address`. `--runner` and `--address` override it."""

    kind: RunnerKind = "local"
    address: str | None = Field(
        default=None, min_length=1,
        description="an existing cluster to join (ray: auto, host:6379 or ray://host:10001; dask: tcp://host:8786); "
                    "none starts a local cluster for the run",
    )
    workers: int | None = Field(
        default=None, ge=1,
        description="worker processes of the cluster started for the run (default: one per CPU core); with an "
                    "address, the task slots to keep busy (default: the cluster's CPUs when the run starts)",
    )
    gpus_per_embed_task: float = Field(
        default=0, ge=0, description="GPUs each embed task asks the cluster for (e.g. 1); other stages ask for none",
    )

    @model_validator(mode="after")
    def _fits_kind(self) -> RunnerConfig:
        if self.kind == "local" and (self.address or self.workers or self.gpus_per_embed_task):
            raise ValueError("address, workers and gpus_per_embed_task are for kind ray or dask (a cluster); "
                             "the local runner uses this machine")
        return self

    def overridden(self, kind: RunnerKind | None, address: str | None) -> RunnerConfig:
        """The runner as `--runner KIND` and `--address ADDRESS` change it (None: not given).

        A different kind starts from that kind's defaults except workers and GPUs (the config's address
        belongs to the config's kind); an address replaces the config's.
        """
        data = self.model_dump()
        if kind is not None and kind != self.kind:
            data = {"kind": kind} if kind == "local" else {**data, "kind": kind, "address": None}
        if address is not None:
            data["address"] = address
        try:
            return RunnerConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"--runner/--address with the config's runner:\n{_describe(e)}") from None


class PipelineConfig(_Strict):
    """The whole file: where the tables go and which sources feed them."""

    database: str = Field(min_length=1, description="LanceDB URI: a folder, s3://... or gs://...")
    sources: list[SourceConfig] = Field(min_length=1)
    batch_size: int = Field(default=64, ge=1, description="rows per forward pass")
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return sources

    def source(self, name: str) -> SourceConfig:
        """The source called `name`, or a ConfigError listing the names there are."""
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(f"no source named {name!r}; the config has {[s.name for s in self.sources]}")


def _is_uri(path: str) -> bool:
    return "://" in path


def _resolve(path: str, base: Path) -> str:
    """A relative local path is taken against the config file's folder; URIs stay as they are."""
    if _is_uri(path) or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            lines.append(f"{where}: {e['msg']}")
    return "\n".join(f"  - {line}" for line in lines)


def parse_config(data: object, base: Path) -> PipelineConfig:
    """Validate a loaded YAML document and resolve its relative paths against `base`."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping with keys 'database' and 'sources'")
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config:\n{_describe(e)}") from None
    sources = [
        s.model_copy(update={
            "path": _resolve(s.path, base),
            "quality": s.quality.model_copy(update={"pairs": s.quality.pairs and _resolve(s.quality.pairs, base)}),
        })
        for s in config.sources
    ]
    return config.model_copy(update={"database": _resolve(config.database, base), "sources": sources})


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a config file; raises ConfigError naming the file and the bad keys."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return parse_config(data, path.resolve().parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
