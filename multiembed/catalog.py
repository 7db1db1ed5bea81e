"""Read-side views of a database: which tables exist and which versions they have."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import lancedb

from schemas.config import ConfigError


@dataclass(frozen=True)
class VersionRow:
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


def versions(database: str, table: str | None = None) -> list[VersionRow]:
    """Each table's versions (oldest first) with time, row count and tags; one table if `table` is given."""
    db = lancedb.connect(database)
    names = table_names(db)
    if table is not None:
        if table not in names:
            raise ConfigError(f"no table {table!r} in {database}; it has {names}")
        names = [table]
    out = []
    for name in names:
        t = db.open_table(name)
        tags: dict[int, list[str]] = {}
        for tag, info in t.tags.list().items():
            tags.setdefault(info["version"], []).append(tag)
        for v in t.list_versions():
            rows = int(v["metadata"].get("total_rows", -1))
            when = v["timestamp"].astimezone(UTC)  # LanceDB gives naive local time
            out.append(VersionRow(name, v["version"], when, rows, tuple(sorted(tags.get(v["version"], [])))))
    return out


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
