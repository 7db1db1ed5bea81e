"""`multiembed export`: Parquet files and a DuckDB file whose views agree with the tables they were built from."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import lancedb
import pyarrow.parquet as pq
import pytest
from conftest import write_config
from sample_db import TABLES, SampleDb, sample_db

from multiembed.cli import main
from multiembed.export import DUCKDB_FILE, export
from multiembed.warehouse import BASELINE_EMBEDDERS, VIEWS

SEVERITY = {"ok": 0, "warn": 1, "fail": 2}


@pytest.fixture(scope="module")
def db(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> SampleDb:
    return sample_db(tmp_path_factory.getbasetemp() / "sample-db")


@pytest.fixture(scope="module")
def exported(db: SampleDb, tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    out = tmp_path_factory.mktemp("export")
    assert main(["export", str(db.config), "--out", str(out)]) == 0
    con = duckdb.connect(str(out / DUCKDB_FILE), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


def by_values(row: dict) -> list[str]:
    return [str(v) for v in row.values()]


def lance_rows(db: SampleDb, name: str) -> list[dict]:
    return lancedb.connect(db.database).open_table(name).to_arrow().to_pylist()


def expected_status(metrics: list[dict]) -> dict[str, tuple[int, str]]:
    """Per table: (newest version checked, worst status among the newest value of each check), from the rows."""
    newest: dict[tuple[str, str, str], dict] = {}
    for row in metrics:
        key = (row["table"], row["stage"], row["metric"])
        if key not in newest or (row["version"], row["computed_at"]) > (newest[key]["version"],
                                                                          newest[key]["computed_at"]):
            newest[key] = row
    status: dict[str, tuple[int, str]] = {}
    for (table, _, _), row in newest.items():
        version, worst = status.get(table, (0, "ok"))
        status[table] = (max(version, row["version"]), max(worst, row["status"], key=SEVERITY.get))
    return status


def test_parquet_files_hold_every_bookkeeping_row(db: SampleDb, exported: duckdb.DuckDBPyConnection) -> None:
    out = Path(exported.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
               .fetchone()[0]).parent
    for name, lance_name in (("runs", "_runs"), ("rejects", "_rejects"), ("metrics", "_metrics")):
        written = pq.read_table(out / f"{name}.parquet").to_pylist()
        assert sorted(written, key=by_values) == sorted(lance_rows(db, lance_name), key=by_values)
    names = {p.name for p in out.iterdir()}  # and no partial file left behind
    assert names == {DUCKDB_FILE, "metrics.parquet", "rejects.parquet", "runs.parquet"}


def test_table_status_is_each_tables_latest_run_and_worst_newest_check(db: SampleDb,
                                                                        exported: duckdb.DuckDBPyConnection) -> None:
    runs = lance_rows(db, "_runs")
    status = {r[0]: r[1:] for r in exported.execute(
        'SELECT "table", version, last_run_id, rows_embedded, rows_unchanged, published, checked_version, status '
        "FROM table_status").fetchall()}
    assert sorted(status) == TABLES
    checks = expected_status(db.metrics)
    for table in TABLES:
        last = max((r for r in runs if r["table"] == table), key=lambda r: r["finished_at"])
        version, checked = checks.get(table, (None, None))
        assert status[table] == (last["version"], last["run_id"], last["rows_embedded"], last["rows_unchanged"],
                                 last["published"], version, checked)
    # what the sample database was built to show: the third run changed nothing, the fake table fails a check
    assert status["reviews__body__fake"][4:] == (False, 2, "fail")
    assert status["notes__text__fake"][5:] == (None, None)  # no checks, no status


def test_metric_history_marks_the_newest_value_of_each_check(db: SampleDb,
                                                              exported: duckdb.DuckDBPyConnection) -> None:
    rows = exported.execute('SELECT "table", source, field, embedder, baseline, stage, metric, version, value, '
                            "p_value, is_latest FROM metric_history").fetchall()
    assert len(rows) == len(db.metrics)
    assert {r[1:5] for r in rows} == {("reviews", "body", "fake", False), ("reviews", "body", "tfidf", True)}
    latest = [r for r in rows if r[10]]
    assert len(latest) == len({(m["table"], m["stage"], m["metric"]) for m in db.metrics})
    knn = next(r for r in latest if r[0] == "reviews__body__fake" and r[6] == "knn_accuracy")
    assert (knn[7], knn[8]) == (2, 0.61)  # the later of two values computed for version 2
    bias = next(r for r in latest if r[0] == "reviews__body__fake" and r[5] == "bias")
    assert bias[9] == 0.01  # p_value from details


def test_reject_reasons_count_every_reject_by_kind_with_example_ids(db: SampleDb,
                                                                     exported: duckdb.DuckDBPyConnection) -> None:
    rejects = lance_rows(db, "_rejects")
    rows = exported.execute('SELECT "table", stage, reason, rejects, example_ids FROM reject_reasons').fetchall()
    by_stage: Counter = Counter()
    for table, stage, _, count, _ in rows:
        by_stage[(table, stage)] += count
    assert by_stage == Counter((r["table"], r["stage"]) for r in rejects)
    repeated = next(r for r in rows if r[0] == "reviews__body__fake" and r[2] == "id repeated in the input")
    assert repeated[4] == "5"  # the kind of reason, without the file and row it names; the id as an example
    runs = lance_rows(db, "_runs")
    for table in TABLES:
        assert sum(r[3] for r in rows if r[0] == table) == sum(r["rows_rejected"] for r in runs if r["table"] == table)


def test_views_are_documented_in_the_database(exported: duckdb.DuckDBPyConnection) -> None:
    comments = dict(exported.execute("SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall())
    assert set(comments) == set(VIEWS) and all(comments.values())
    columns = exported.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'table_status' "
                               "AND comment IS NOT NULL").fetchone()[0]
    assert columns >= 3


def test_readme_query_runs_on_the_export(exported: duckdb.DuckDBPyConnection) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    query = readme.split("```sql\n", 1)[1].split("```", 1)[0]
    rows = exported.execute(query).fetchall()
    assert rows and all(len(r) == len(rows[0]) for r in rows)


def test_empty_database_exports_empty_tables_and_creates_no_database(tmp_path: Path) -> None:
    done = export(str(tmp_path / "lancedb"), tmp_path / "out")
    assert done.rows == {"runs": 0, "rejects": 0, "metrics": 0}
    assert not (tmp_path / "lancedb").exists()
    con = duckdb.connect(str(tmp_path / "out" / DUCKDB_FILE), read_only=True)
    assert all(con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == 0 for view in VIEWS)
    assert pq.read_table(tmp_path / "out" / "runs.parquet").num_rows == 0


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path, [{"name": "s", "path": "x.parquet", "id": "id", "fields": []}])
    assert main(["export", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "sources.0.fields" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_baselines_are_the_registrys() -> None:
    from tasks.embedders.registry import BASELINES

    assert sorted(BASELINE_EMBEDDERS) == sorted(BASELINES.values())
