"""Views of a database's tables and versions, and their upkeep.

Reading: which tables and versions exist (`versions`), and a table as it was at a version, tag or
time (`open_as_of`: what `multiembed show` and the quality stages read). Upkeep: `restore` makes an
earlier version's content the newest version (history is kept) and `compact` merges small files and
removes versions older than a retention, never a tagged one: tags mark the runs a user can go back to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import lancedb
import polars as pl
import pyarrow.fs as pafs

from schemas.config import ConfigError
from schemas.tables import NAME_PATTERN, embedding_metadata, source_of
from tasks import publish as publishing
from tasks.lock import source_lock, unless_running
from tasks.write import Staging

_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class VersionRow:
    """One version of one table: its number, commit time (UTC), row count and tags."""

    table: str
    version: int
    timestamp: datetime
    rows: int
    tags: tuple[str, ...]


def table_names(db: lancedb.DBConnection) -> list[str]:
    """Every table in the database, following the listing's pages."""
    names, token = [], None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            return sorted(names)


def chosen_tables(db: lancedb.DBConnection, database: str, table: str | None) -> list[str]:
    """Every table, or only `table`; a ConfigError listing the tables there are if it is not one of them."""
    names = table_names(db)
    if table is None:
        return names
    if table not in names:
        raise ConfigError(f"no table {table!r} in {database}; it has {names}")
    return [table]


def version_rows(name: str, listed: list[dict[str, Any]], tags: dict[str, dict[str, Any]]) -> list[VersionRow]:
    """LanceDB's `list_versions()` and `tags.list()` as rows (oldest first), with times in UTC.

    LanceDB gives naive local times; `astimezone` reads a naive time as local, so this is right on
    any machine, not only on one that runs in UTC.
    """
    by_version: dict[int, list[str]] = {}
    for tag, info in tags.items():
        by_version.setdefault(info["version"], []).append(tag)
    return [
        VersionRow(name, v["version"], v["timestamp"].astimezone(UTC), int(v["metadata"].get("total_rows", -1)),
                   tuple(sorted(by_version.get(v["version"], []))))
        for v in sorted(listed, key=lambda v: v["version"])
    ]


def table_versions(table: lancedb.table.Table) -> list[VersionRow]:
    """The table's versions, oldest first, with UTC time, row count and tags."""
    return version_rows(table.name, table.list_versions(), table.tags.list())


def versions(database: str, table: str | None = None) -> list[VersionRow]:
    """Each table's versions (oldest first) with time, row count and tags; one table if `table` is given."""
    db = lancedb.connect(database)
    return [row for name in chosen_tables(db, database, table) for row in table_versions(db.open_table(name))]


def print_versions(database: str, table: str | None = None) -> None:
    """Print `versions()` as an aligned table."""
    rows = versions(database, table)
    if not rows:
        print(f"{database}: no tables yet; run `multiembed backfill CONFIG` first")
        return
    width = max(len(r.table) for r in rows)
    print(f"{'table':<{width}}  {'version':>7}  {'time (UTC)':<19}  {'rows':>9}  tags")
    for r in rows:
        print(f"{r.table:<{width}}  {r.version:>7}  {r.timestamp:%Y-%m-%d %H:%M:%S}  {r.rows:>9}  {', '.join(r.tags)}")
    for source, run_id in sorted(publishing.interrupted(database).items()):
        print(f"incomplete: source {source}: run {run_id} was stopped while publishing, so its tables may be at "
              "different runs; the next backfill or refresh of the source completes it first")


# A table as of a version, tag or time


@contextmanager
def writing(database: str, table: str) -> Iterator[None]:
    """Hold the lock of `table`'s source, after checking that the table exists and is an embedding table,
    and with any publish of the source that a killed run left unfinished completed first (a command that
    writes a version must not land between two of that publish's commits)."""
    db = lancedb.connect(database)
    name = chosen_tables(db, database, table)[0]
    try:
        source = source_of(name)
    except ValueError as e:
        raise ConfigError(f"{e}: only embedding tables can be restored or compacted one by one") from None
    with source_lock(database, source, logging.getLogger("multiembed")):
        publishing.complete_interrupted(database, source)
        yield


def open_as_of(database: str, table: str, as_of: str | None) -> lancedb.table.Table:
    """The table checked out at `as_of`; the latest version (and following new ones) when it is None.

    `as_of` is a version number ("3"), a tag ("run-20261121T130000-ab12cd"), or an ISO 8601 time
    ("2026-11-21T13:00:00", "...Z", "...+01:00"; UTC when it has no offset), which means the latest
    version committed at or before that time. A number is always read as a version, never as a tag.
    A checked-out table is read-only. Raises ConfigError, saying which versions and tags exist, for an
    unknown table, tag or version, or a time before the first version.
    """
    db = lancedb.connect(database)
    handle = db.open_table(chosen_tables(db, database, table)[0])
    if as_of is not None:
        handle.checkout(resolve_version(table_versions(handle), as_of))
    return handle


def resolve_version(rows: list[VersionRow], as_of: str) -> int:
    """The version number `as_of` names among a table's `rows` (see `open_as_of`)."""
    if as_of.isdigit():
        return _by_number(rows, int(as_of))
    for row in rows:
        if as_of in row.tags:
            return row.version
    when = parse_time(as_of)
    if when is None:
        raise ConfigError(f"{as_of!r} is not a version number, a tag or an ISO 8601 time of table "
                          f"{rows[0].table!r}; {_describe(rows)}")
    return _by_time(rows, when)


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time in UTC (a time without an offset is UTC), or None if `text` is not one."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _by_number(rows: list[VersionRow], version: int) -> int:
    if version not in {r.version for r in rows}:
        raise ConfigError(f"table {rows[0].table!r} has no version {version}; {_describe(rows)}")
    return version


def _by_time(rows: list[VersionRow], when: datetime) -> int:
    earlier = [r for r in rows if r.timestamp <= when]
    if not earlier:
        first = min(rows, key=lambda r: r.timestamp)
        raise ConfigError(f"table {rows[0].table!r} has no version at or before {_utc(when)}: its first, "
                          f"version {first.version}, is from {_utc(first.timestamp)}")
    return max(earlier, key=lambda r: r.timestamp).version


def _describe(rows: list[VersionRow]) -> str:
    """What a user can ask for: the versions (as ranges), their time span and the tags."""
    tags = [tag for r in rows for tag in r.tags]
    span = f"{_utc(rows[0].timestamp)} to {_utc(rows[-1].timestamp)}"
    return f"it has versions {_ranges([r.version for r in rows])} ({span}) and tags {tags}"


def _ranges(numbers: list[int]) -> str:
    """Sorted numbers as runs: [1, 2, 3, 5] -> '1-3, 5'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _utc(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def print_table(database: str, table: str, as_of: str | None, limit: int) -> None:
    """Print a table as of a version, tag or time: the version, row count, `multiembed.*` metadata, first rows."""
    if limit < 0:
        raise ConfigError(f"--limit must be 0 or more, got {limit}")
    handle = open_as_of(database, table, as_of)
    rows = table_versions(handle)
    row = next(r for r in rows if r.version == handle.version)
    print(f"table:    {table}")
    print(f"version:  {row.version} of {_ranges([r.version for r in rows])}")
    print(f"time:     {_utc(row.timestamp)}")
    print(f"tags:     {', '.join(row.tags) or '(none)'}")
    print(f"rows:     {handle.count_rows()}")
    metadata = embedding_metadata(handle.schema)
    print("metadata:" + ("" if metadata else " (none)"))
    for key, value in sorted(metadata.items()):
        print(f"  {key}: {value}")
    first = handle.head(limit)
    first = first.select([name for name in first.column_names if name != "vector"])
    with pl.Config(tbl_rows=limit, tbl_cols=-1, tbl_width_chars=160, fmt_str_lengths=40):
        print(f"first {limit} rows:\n{pl.from_arrow(first)}")


# Restore


@dataclass(frozen=True)
class Restored:
    """What `restore` did: `source`'s content is now version `version` (tagged `tag`).

    When `source` was already the latest, nothing is written: `version == previous` and `tag` is None.
    """

    table: str
    source: int
    previous: int
    version: int
    tag: str | None


def restore(database: str, table: str, as_of: str) -> Restored:
    """Make the content of version `as_of` (number, tag or time, as for `open_as_of`) the newest version.

    LanceDB writes a new version that points at the old version's files (no data is copied); every
    version stays, so a restore can itself be undone. The new version is tagged `restore-<UTC time>`,
    which also keeps `compact` from removing it. The name is checked against the catalogue before any
    file is touched; then the restore holds the lock of the table's source, so it never lands between a
    running refresh's diff and its publish, and completes first a publish a killed run left unfinished.
    """
    with writing(database, table):
        handle = open_as_of(database, table, as_of)
        source = handle.version
        previous = table_versions(handle)[-1].version
        if source == previous:
            return Restored(table, source, previous, previous, None)
        handle.restore()
        tag = f"restore-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}"
        handle.tags.create(tag, handle.version)
        return Restored(table, source, previous, handle.version, tag)


def print_restore(database: str, table: str, as_of: str) -> None:
    """Restore (see `restore`) and say which version now holds which content."""
    done = restore(database, table, as_of)
    if done.tag is None:
        print(f"{table}: version {done.source} is already the latest; nothing restored")
        return
    print(f"{table}: restored version {done.source} as new version {done.version} (tagged {done.tag}); "
          f"the latest was version {done.previous}, which is kept")


# Compact


@dataclass(frozen=True)
class Compacted:
    """What `compact` did to one table."""

    table: str
    fragments_removed: int
    fragments_added: int
    versions_removed: int
    bytes_removed: int
    tagged: tuple[int, ...]  # tagged versions, all kept


def parse_duration(text: str) -> timedelta:
    """A retention such as 7d, 12h, 30m or 0s; raises ConfigError for anything else."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match is None:
        raise ConfigError(f"retention {text!r} is not a duration: use a whole number and a unit, "
                          "s, m, h or d (7d, 12h, 30m, 0s)")
    return timedelta(**{_DURATION_UNITS[match[2]]: int(match[1])})


def compact(database: str, retention: timedelta, table: str | None = None) -> list[Compacted]:
    """Compact every table (or one) and remove its untagged versions older than `retention`.

    Tagged versions (every run's publish) and the latest are never removed. LanceDB's own `optimize`
    refuses to clean up past a tagged version, so this uses the Lance dataset API, which can skip them.
    An embedding table is compacted under its source's lock (`writing`), so a compaction never lands
    between a run's diff and its merge; the bookkeeping tables only ever get appends, which LanceDB's
    conflict resolution lets commit beside a compaction.
    """
    db = lancedb.connect(database)
    done = []
    for name in chosen_tables(db, database, table):
        with writing(database, name) if is_embedding_table(name) else nullcontext():
            dataset = db.open_table(name).to_lance()
            merged = dataset.optimize.compact_files()
            cleaned = dataset.cleanup_old_versions(older_than=retention, error_if_tagged_old_versions=False)
        tagged = tuple(sorted(info["version"] for info in dataset.tags.list().values()))
        done.append(Compacted(name, merged.fragments_removed, merged.fragments_added, cleaned.old_versions,
                              cleaned.bytes_removed, tagged))
    return done


def is_embedding_table(name: str) -> bool:
    """Whether `name` is a source's embedding table (not `_runs`, `_rejects`, `_metrics`, `_fitted`)."""
    try:
        source_of(name)
    except ValueError:
        return False
    return True


def remove_stale_staging(database: str, older_than: timedelta) -> list[str]:
    """Remove the staged shard results no run will resume; returns the names of the folders removed.

    A run stages shards under `_staging/<source>-<key>` and removes them when it publishes. A run that died
    leaves them for the next run of the same work (same key) to resume; once its inputs, models or base
    versions changed, the next run has another key and the folder is orphaned. Folders in which nothing
    changed for `older_than` are removed, unless a run holds their source now.
    """
    fs, root = pafs.FileSystem.from_uri(f"{database.rstrip('/')}/_staging")
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    cutoff = datetime.now(UTC) - older_than
    removed = []
    for folder in fs.get_file_info(pafs.FileSelector(root)):
        if folder.type != pafs.FileType.Directory or publishing.read_intent(Staging(database, folder.base_name)):
            continue  # a publish to complete is never stale
        inside = fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
        if any(f.mtime is not None and f.mtime > cutoff for f in [folder, *inside]):
            continue
        source = folder.base_name.rsplit("-", 1)[0]
        if not re.fullmatch(NAME_PATTERN, source):
            continue  # not a run's staging folder: nothing of ours to remove
        with unless_running(database, source) as idle:
            if idle:
                fs.delete_dir(folder.path)
                removed.append(folder.base_name)
    return removed


def print_compact(database: str, retention: str, table: str | None = None) -> None:
    """Compact (see `compact`) and print per table what was merged, removed and kept; compacting every
    table also removes stale staged results (see `remove_stale_staging`)."""
    for done in compact(database, parse_duration(retention), table):
        print(_compact_line(done, retention))
    if table is None and (stale := remove_stale_staging(database, parse_duration(retention))):
        print(f"removed {len(stale)} staging folder(s) of runs that died and can no longer be resumed, "
              f"unchanged for over {retention}: {', '.join(stale)}")


def _compact_line(done: Compacted, retention: str) -> str:
    merged = (f"compacted {done.fragments_removed} fragments into {done.fragments_added}"
              if done.fragments_removed else "nothing to compact")
    parts = [merged, f"removed {done.versions_removed} version(s) older than {retention}, {done.bytes_removed} bytes"]
    if done.tagged:
        parts.append(f"tagged versions kept: {_ranges(list(done.tagged))}")
    return f"{done.table}: " + "; ".join(parts)
