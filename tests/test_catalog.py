"""Versions of a table: opening one by number, tag or time; `show`, `restore` and `compact` on real LanceDB folders."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest
from conftest import write_config

from multiembed.catalog import open_as_of, parse_duration
from multiembed.cli import main
from schemas.config import ConfigError
from schemas.tables import embedding_schema

TABLE = "docs__body__minilm"
META_A = {"embedder": "minilm", "model_id": "model-a", "dim": "2"}
META_B = {"embedder": "minilm", "model_id": "model-b", "dim": "2"}
# The ids each version of TABLE holds, as the fixture writes them: v2 is tagged run-a, v4 run-b.
CONTENT = {1: [1, 2, 3], 2: [1, 2, 3, 4], 3: [1, 2, 3, 4, 5], 4: [10, 11], 5: [10, 11, 12]}
GAP = 0.02  # seconds between versions, so that a time between two of them is easy to name


def rows(ids: list[int], meta: dict[str, str]) -> pa.Table:
    schema = embedding_schema(pa.int64(), 2, [pa.field("title", pa.string())], meta)
    return pa.Table.from_pydict(
        {"id": ids, "content_hash": [f"h{i}" for i in ids], "vector": [[float(i), 0.0] for i in ids],
         "title": [f"title {i}" for i in ids]},
        schema=schema,
    )


def ids(table: lancedb.table.Table) -> list[int]:
    return sorted(table.to_arrow()["id"].to_pylist())


def pause() -> datetime:
    """Wait, note the time halfway (after the last version, before the next one), and wait again."""
    time.sleep(GAP)
    middle = datetime.now(UTC)
    time.sleep(GAP)
    return middle


@pytest.fixture
def database(tmp_path: Path) -> str:
    return str(tmp_path / "db")


@pytest.fixture
def after(database: str) -> dict[int, datetime]:
    """Build TABLE's five versions and a `_runs` table with three; a time just after each version of TABLE."""
    db = lancedb.connect(database)
    table = db.create_table(TABLE, rows([1, 2, 3], META_A))
    times = {1: pause()}
    table.add(rows([4], META_A))
    table.tags.create("run-a", 2)
    times[2] = pause()
    table.add(rows([5], META_A))
    times[3] = pause()
    table = db.create_table(TABLE, rows([10, 11], META_B), mode="overwrite")
    table.tags.create("run-b", 4)
    times[4] = pause()
    table.add(rows([12], META_B))
    times[5] = pause()
    runs = db.create_table("_runs", pa.table({"run": [1]}))
    runs.add(pa.table({"run": [2]}))
    runs.add(pa.table({"run": [3]}))
    return times


@pytest.fixture
def config(tmp_path: Path, database: str, after: dict[int, datetime]) -> str:
    source = {"name": "docs", "path": "unused.parquet", "id": "id", "fields": [{"column": "body", "modality": "text"}]}
    return str(write_config(tmp_path, [source], database=database))


def version_numbers(database: str, name: str = TABLE) -> list[int]:
    return [v["version"] for v in lancedb.connect(database).open_table(name).list_versions()]


# open_as_of


def test_open_as_of_version_number(database: str, after: dict[int, datetime]) -> None:
    for version, expected in CONTENT.items():
        table = open_as_of(database, TABLE, str(version))
        assert table.version == version
        assert ids(table) == expected


def test_open_as_of_tag(database: str, after: dict[int, datetime]) -> None:
    assert ids(open_as_of(database, TABLE, "run-a")) == CONTENT[2]
    table = open_as_of(database, TABLE, "run-b")
    assert table.version == 4
    assert ids(table) == CONTENT[4]
    assert (table.schema.metadata or {})[b"multiembed.model_id"] == b"model-b"


def test_open_as_of_none_is_latest(database: str, after: dict[int, datetime]) -> None:
    table = open_as_of(database, TABLE, None)
    assert table.version == 5
    assert ids(table) == CONTENT[5]


def test_open_as_of_time_takes_the_latest_version_at_or_before_it(database: str, after: dict[int, datetime]) -> None:
    for version, when in after.items():
        assert open_as_of(database, TABLE, when.isoformat()).version == version  # +00:00
    assert open_as_of(database, TABLE, after[1].strftime("%Y-%m-%dT%H:%M:%S.%fZ")).version == 1
    assert open_as_of(database, TABLE, after[2].replace(tzinfo=None).isoformat()).version == 2  # naive is UTC
    plus_two = after[3].astimezone(timezone(timedelta(hours=2)))
    assert plus_two.isoformat().endswith("+02:00")
    assert open_as_of(database, TABLE, plus_two.isoformat()).version == 3
    assert ids(open_as_of(database, TABLE, after[3].isoformat())) == CONTENT[3]


def test_open_as_of_the_exact_time_of_a_version_is_that_version(database: str, after: dict[int, datetime]) -> None:
    listed = lancedb.connect(database).open_table(TABLE).list_versions()
    exact = listed[2]["timestamp"].astimezone(UTC)  # version 3, as LanceDB reports it (naive local time)
    assert listed[2]["version"] == 3
    assert open_as_of(database, TABLE, exact.isoformat()).version == 3
    assert open_as_of(database, TABLE, (exact - timedelta(microseconds=1)).isoformat()).version == 2


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch):
    """Run with the machine's local time 5h30 ahead of UTC (LanceDB reports versions in local time)."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    assert time.localtime().tm_gmtoff == 5 * 3600 + 30 * 60
    yield
    monkeypatch.undo()
    time.tzset()


def test_open_as_of_time_is_right_when_local_time_is_not_utc(
    database: str, after: dict[int, datetime], local_time_not_utc: None
) -> None:
    assert open_as_of(database, TABLE, after[1].isoformat()).version == 1
    assert open_as_of(database, TABLE, after[4].strftime("%Y-%m-%dT%H:%M:%S.%f")).version == 4


@pytest.mark.parametrize(
    ("table", "as_of", "words"),
    [
        ("nope", None, ["no table 'nope'", TABLE, "_runs"]),
        ("nope", "1", ["no table 'nope'"]),
        (TABLE, "run-zzz", ["'run-zzz' is not a version number, a tag or an ISO 8601 time", "versions 1-5",
                            "'run-a'", "'run-b'"]),
        (TABLE, "9", ["has no version 9", "versions 1-5", "'run-a'"]),
        (TABLE, "0", ["has no version 0"]),
        (TABLE, "2000-01-01T00:00:00Z", ["no version at or before 2000-01-01 00:00:00 UTC", "its first, version 1"]),
        (TABLE, "yesterday", ["not a version number, a tag or an ISO 8601 time"]),
    ],
)
def test_open_as_of_errors_say_what_exists(
    database: str, after: dict[int, datetime], table: str, as_of: str | None, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as error:
        open_as_of(database, table, as_of)
    for word in words:
        assert word in str(error.value)


# show


def test_show_a_tagged_version(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", config, TABLE, "--as-of", "run-a", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "version:  2 of 1-5" in out
    assert "tags:     run-a" in out
    assert "rows:     4" in out
    assert "  model_id: model-a" in out
    assert "  embedder: minilm" in out
    assert "title 1" in out and "title 2" in out
    assert "title 3" not in out and "title 4" not in out
    assert "vector" not in out
    assert "content_hash" in out


def test_show_latest_by_default(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", config, TABLE]) == 0
    out = capsys.readouterr().out
    assert "version:  5 of 1-5" in out
    assert "rows:     3" in out
    assert "model_id: model-b" in out
    assert all(f"title {i}" in out for i in CONTENT[5])


def test_show_a_time_and_a_bookkeeping_table(
    config: str, after: dict[int, datetime], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", config, TABLE, "--as-of", after[3].isoformat(), "--limit", "0"]) == 0
    out = capsys.readouterr().out
    assert "version:  3 of 1-5" in out and "rows:     5" in out and "title 1" not in out
    assert main(["show", config, "_runs"]) == 0
    out = capsys.readouterr().out
    assert "metadata: (none)" in out and "rows:     3" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([TABLE, "--as-of", "run-zzz"], "'run-zzz' is not a version number"),
        (["nope"], "no table 'nope'"),
        ([TABLE, "--limit", "-1"], "--limit must be 0 or more"),
    ],
)
def test_show_errors_exit_2(config: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["show", config, *args]) == 2
    assert message in capsys.readouterr().err


# restore


def test_restore_a_tag_makes_its_content_the_newest_version(
    config: str, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["restore", config, TABLE, "run-a"]) == 0
    out = capsys.readouterr().out
    assert "restored version 2 as new version 6" in out and "the latest was version 5" in out

    table = lancedb.connect(database).open_table(TABLE)
    assert table.version == 6
    assert ids(table) == CONTENT[2]
    assert (table.schema.metadata or {})[b"multiembed.model_id"] == b"model-a"
    assert version_numbers(database) == [1, 2, 3, 4, 5, 6]
    restore_tags = [tag for tag in table.tags.list() if tag.startswith("restore-")]
    assert len(restore_tags) == 1
    assert table.tags.list()[restore_tags[0]]["version"] == 6
    assert "restore-" + datetime.now(UTC).strftime("%Y%m%d") in restore_tags[0]
    for version, expected in CONTENT.items():  # history is kept
        table.checkout(version)
        assert ids(table) == expected


def test_restore_a_version_number(config: str, database: str) -> None:
    assert main(["restore", config, TABLE, "1"]) == 0
    assert ids(lancedb.connect(database).open_table(TABLE)) == CONTENT[1]
    assert version_numbers(database) == [1, 2, 3, 4, 5, 6]


def test_restore_the_latest_writes_nothing(config: str, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["restore", config, TABLE, "5"]) == 0
    assert "version 5 is already the latest; nothing restored" in capsys.readouterr().out
    assert version_numbers(database) == [1, 2, 3, 4, 5]
    assert not [t for t in lancedb.connect(database).open_table(TABLE).tags.list() if t.startswith("restore-")]


@pytest.mark.parametrize(("table", "version"), [(TABLE, "run-zzz"), (TABLE, "7"), ("nope", "1")])
def test_restore_errors_exit_2_and_write_nothing(
    config: str, database: str, capsys: pytest.CaptureFixture[str], table: str, version: str
) -> None:
    assert main(["restore", config, table, version]) == 2
    assert "multiembed restore: " in capsys.readouterr().err
    assert version_numbers(database) == [1, 2, 3, 4, 5]


# compact


def test_lancedb_refuses_to_clean_past_a_tagged_version(database: str, after: dict[int, datetime]) -> None:
    """Why compact uses the Lance dataset API: LanceDB's optimize raises, removing nothing, past a tagged version."""

    async def optimize_everything_old() -> None:
        table = await (await lancedb.connect_async(database)).open_table(TABLE)
        await table.optimize(cleanup_older_than=timedelta(0))

    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="tagged version"):
        asyncio.run(optimize_everything_old())
    assert set(version_numbers(database)) >= {1, 2, 3, 4, 5}


def test_compact_removes_old_untagged_versions_and_keeps_tagged_ones(
    config: str, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compact", config, "--retention", "0s"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith(f"{TABLE}: "))
    assert "tagged versions kept: 2, 4" in line
    assert "compacted 2 fragments into 1" in line

    table = lancedb.connect(database).open_table(TABLE)
    remaining = version_numbers(database)
    assert remaining == [2, 4, table.version]  # every untagged version but the (compacted) latest is gone
    assert f"removed {table.version - 3} version(s) older than 0s" in line
    assert table.tags.list()["run-a"]["version"] == 2 and table.tags.list()["run-b"]["version"] == 4
    assert ids(table) == CONTENT[5]
    assert table.list_versions()[-1]["metadata"]["total_fragments"] == "1"
    for version in remaining:  # every version left is readable, with the rows it had
        table.checkout(version)
        assert ids(table) == CONTENT.get(version, CONTENT[5])
    for gone in (1, 3, 5):
        with pytest.raises(ValueError):
            table.checkout(gone)

    runs_line = next(x for x in out if x.startswith("_runs: "))
    assert "compacted 3 fragments into 1" in runs_line
    runs = lancedb.connect(database).open_table("_runs")
    assert [v["version"] for v in runs.list_versions()] == [runs.version]  # untagged: only the latest is left
    assert sorted(runs.to_arrow()["run"].to_pylist()) == [1, 2, 3]


def test_compact_default_retention_removes_nothing_recent(
    config: str, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compact", config]) == 0
    out = capsys.readouterr().out
    assert f"{TABLE}: compacted 2 fragments into 1; removed 0 version(s) older than 7d" in out
    assert version_numbers(database)[:5] == [1, 2, 3, 4, 5]
    assert version_numbers(database, "_runs")[:3] == [1, 2, 3]
    table = lancedb.connect(database).open_table(TABLE)
    for version, expected in CONTENT.items():
        table.checkout(version)
        assert ids(table) == expected


def test_compact_one_table(config: str, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compact", config, "--retention", "0s", "--table", "_runs"]) == 0
    assert capsys.readouterr().out.startswith("_runs: compacted 3 fragments into 1; removed ")
    assert version_numbers(database) == [1, 2, 3, 4, 5]  # the other table is untouched
    assert len(version_numbers(database, "_runs")) == 1


def test_compact_twice_finds_nothing_more_to_do(config: str, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compact", config, "--retention", "0s", "--table", "_runs"]) == 0
    capsys.readouterr()
    assert main(["compact", config, "--retention", "0s", "--table", "_runs"]) == 0
    assert capsys.readouterr().out.strip() == "_runs: nothing to compact; removed 0 version(s) older than 0s, 0 bytes"
    assert len(version_numbers(database, "_runs")) == 1


def test_compact_removes_staging_no_run_will_resume_and_keeps_recent_or_held_staging(
    config: str, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three staging folders a dead run left: an old one, a recent one (a resume may still come) and an old
    one whose source a run holds now (it may be resuming it)."""
    import logging
    import os

    from tasks.lock import source_lock
    from tasks.write import Staging

    for key in ("docs-00aa", "docs-11bb", "busy_source-22cc"):
        Staging(database, key).mark_done(TABLE, "shard-0", {"rows_read": 1})
    old = time.time() - 3 * 86400
    for key in ("docs-00aa", "busy_source-22cc"):
        folder = Path(database) / "_staging" / key
        for path in [*folder.rglob("*"), folder]:
            os.utime(path, (old, old))
    with source_lock(database, "busy_source", logging.getLogger("test")):
        assert main(["compact", config, "--retention", "2d"]) == 0
    assert "removed 1 staging folder(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (Path(database) / "_staging").iterdir()) == ["busy_source-22cc", "docs-11bb"]
    assert main(["compact", config, "--retention", "2d"]) == 0  # the run is over: its old folder goes too
    assert sorted(p.name for p in (Path(database) / "_staging").iterdir()) == ["docs-11bb"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--retention", "7x"], "retention '7x' is not a duration"), (["--table", "nope"], "no table 'nope'")],
)
def test_compact_errors_exit_2_and_change_nothing(
    config: str, database: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["compact", config, *args]) == 2
    assert message in capsys.readouterr().err
    assert version_numbers(database) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
     ("0s", timedelta(0)), ("90s", timedelta(seconds=90))],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7", "d", "7x", "-1d", "1.5h", "7 days", ""])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        parse_duration(text)


def test_restore_waits_for_a_run_holding_the_source_lock(config: str, database: str) -> None:
    """A restore never lands between a refresh's diff and its publish: it takes the source's lock."""
    import logging
    import threading

    from tasks.lock import source_lock

    source = TABLE.split("__")[0]
    finished = threading.Event()
    with source_lock(database, source, logging.getLogger("test")):
        worker = threading.Thread(target=lambda: (main(["restore", config, TABLE, "2"]), finished.set()))
        worker.start()
        assert not finished.wait(1.0)  # blocked while the "run" holds the lock
        assert version_numbers(database) == [1, 2, 3, 4, 5]
    worker.join(timeout=30)
    assert finished.is_set() and version_numbers(database)[-1] == 6


# Hostile names: checked against the catalogue before any file is touched


@pytest.mark.parametrize("name", ["../elsewhere/victim", "docs__../../x", "/etc/passwd", "docs"])
@pytest.mark.parametrize("command", [["restore", "{name}", "1"], ["compact", "--table", "{name}"],
                                     ["show", "{name}"]])
def test_a_hostile_table_name_exits_2_and_touches_no_file(tmp_path: Path, config: str, database: str,
                                                         capsys: pytest.CaptureFixture[str], name: str,
                                                         command: list[str]) -> None:
    victim = tmp_path.parent / "elsewhere" / "victim.lock"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("precious")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [part.format(name=name) for part in command]
    assert main([argv[0], config, *argv[1:]]) == 2
    assert capsys.readouterr().err.strip()
    assert victim.read_text() == "precious"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no lock, no folder
    assert version_numbers(database) == [1, 2, 3, 4, 5]


def test_only_embedding_tables_are_restored(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["restore", config, "_runs", "1"]) == 2
    assert "not an embedding table name" in capsys.readouterr().err


def test_restore_in_an_empty_database_leaves_no_lock(tmp_path: Path) -> None:
    source = {"name": "docs", "path": "unused.parquet", "id": "id", "fields": [{"column": "body", "modality": "text"}]}
    config = write_config(tmp_path, [source], database=str(tmp_path / "empty-db"))
    assert main(["restore", str(config), "docs__body__minilm", "1"]) == 2
    assert not (tmp_path / "empty-db" / "_locks").exists()


def test_lock_files_are_made_only_for_source_names(database: str) -> None:
    from tasks.lock import source_lock

    for name in ("../victim", "Docs", "a/b", ""):
        with pytest.raises(ValueError, match="not a source name"), source_lock(database, name,
                                                                               logging.getLogger("test")):
            pass
    assert not (Path(database) / "_locks").exists()


def test_compact_waits_for_a_run_holding_the_source(config: str, database: str) -> None:
    """A run's diff and its merge must not have a compaction between them: compact takes the source's lock."""
    import threading

    from tasks.lock import source_lock

    finished = threading.Event()

    def compact() -> None:
        main(["compact", config, "--retention", "0s", "--table", TABLE])
        finished.set()

    with source_lock(database, "docs", logging.getLogger("test")):
        thread = threading.Thread(target=compact)
        thread.start()
        assert not finished.wait(3)  # blocked behind the run
        assert version_numbers(database) == [1, 2, 3, 4, 5]
    thread.join(60)
    assert finished.is_set()
