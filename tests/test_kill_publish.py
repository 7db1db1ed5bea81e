"""A run SIGKILLed at every boundary of its work, then run again: the promise of `tasks.publish`.

After any kill and the next run, every table of the source is at the same run, every version a run
tagged has its `_runs` row, no intent or staging is left, and the tables hold what an uninterrupted run
gives. The killed run is a real CLI process that kills itself at a named point (`tasks.failpoints`); the
next run is the flow in-process, on the session's Prefect server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lancedb
import pytest
from conftest import write_config, write_parquet

from flows.backfill import backfill, refresh
from multiembed.catalog import print_versions
from tasks import publish
from tasks.failpoints import FAILPOINT_ENV
from tasks.write import staging_folders

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
CLI = str(Path(sys.executable).parent / "multiembed")
TABLES = ("docs__body__fake", "docs__body__tfidf")
POINTS = ["planned", "diffed", "staged:1", "intent-written", "committed:docs__body__fake",
          "committed:docs__body__tfidf", "before-rejects", "before-runs", "before-cleanup"]


def texts(n: int, edition: str) -> list[dict]:
    words = ["river", "bank", "loan", "fish", "rates", "boat", "credit", "stream"]
    return [{"doc_id": i, "body": "" if i % 50 == 7 else f"{words[i % 8]} {words[(i * 3) % 8]} {edition} {i}"}
            for i in range(n)]


def project(folder: Path, data: list[dict]) -> Path:
    write_parquet(folder / "raw" / "docs.parquet", data, row_group_size=64)
    fields = [{"column": "body", "modality": "text", "embedders": ["fake", "tfidf"]}]
    return write_config(folder, [{"name": "docs", "path": "raw/docs.parquet", "id": "doc_id", "shard_rows": 64,
                                  "fields": fields, "quality": {"after": []}}])


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after its first backfill (copied by each trial), with the next edition of its input."""
    folder = tmp_path_factory.mktemp("backfilled")
    config = project(folder, texts(150, "first"))
    backfill(config=str(config))
    write_parquet(folder / "raw" / "docs.parquet", texts(220, "second")[20:], row_group_size=64)  # 20 gone
    return folder


@pytest.fixture(scope="module")
def uninterrupted(backfilled: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each table's id -> content hash after a refresh that nobody stopped."""
    folder = tmp_path_factory.mktemp("reference") / "project"
    shutil.copytree(backfilled, folder)
    refresh(config=str(folder / "config.yaml"))
    return contents(folder)


def contents(folder: Path) -> dict[str, dict]:
    db = lancedb.connect(folder / "lancedb")
    out = {}
    for name in TABLES:
        table = db.open_table(name).to_arrow()
        out[name] = dict(zip(table["id"].to_pylist(), table["content_hash"].to_pylist(), strict=True))
    return out


def killed_refresh(config: Path, point: str, home: Path) -> None:
    """The CLI's refresh, reporting to the session's Prefect server, killed by itself at `point`."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(home), FAILPOINT_ENV: point,
           "MULTIEMBED_PLUGINS": "fake_embedders", "PYTHONPATH": str(Path(__file__).parent),
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([CLI, "refresh", str(config)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, _ = proc.communicate(timeout=300)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed at {point}: {out[-3000:]}"


def run_tags(folder: Path) -> dict[str, dict[int, set[str]]]:
    """Table -> version -> the run ids its `run-<id>` tags name."""
    db = lancedb.connect(folder / "lancedb")
    out: dict[str, dict[int, set[str]]] = {}
    for name in TABLES:
        for tag, info in db.open_table(name).tags.list().items():
            if tag.startswith("run-"):
                out.setdefault(name, {}).setdefault(info["version"], set()).add(tag.removeprefix("run-"))
    return out


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_anywhere_is_repaired_by_the_next_run(point: str, backfilled: Path, uninterrupted: dict,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "project"
    shutil.copytree(backfilled, folder)
    config = folder / "config.yaml"
    killed_refresh(config, point, tmp_path / "prefect-home")
    database = str(folder / "lancedb")
    if point.startswith(("committed", "before")):  # killed while publishing: the source is marked incomplete
        assert set(publish.interrupted(database)) == {"docs"}
        print_versions(database)
        assert "incomplete: source docs" in capsys.readouterr().out

    refresh(config=str(config))

    db = lancedb.connect(database)
    tags = run_tags(folder)
    latest = {name: db.open_table(name).version for name in TABLES}
    at = {name: tags[name][latest[name]] for name in TABLES}
    assert len(at[TABLES[0]]) == 1 and at[TABLES[0]] == at[TABLES[1]]  # every table at the same run
    runs = db.open_table("_runs").to_arrow().to_pylist()
    recorded = {(r["table"], r["version"], r["run_id"]) for r in runs if r["published"]}
    tagged = {(name, v, run) for name in TABLES for v, ids in tags[name].items() for run in ids}
    assert tagged <= recorded  # every version a run tagged has its `_runs` row
    assert len(runs) == len({(r["table"], r["run_id"]) for r in runs})  # no run recorded twice
    assert [v["version"] for v in db.open_table(TABLES[0]).list_versions()] == [1, 2]  # no commit twice
    assert publish.interrupted(database) == {} and staging_folders(database) == []
    assert contents(folder) == uninterrupted
    rejects = db.open_table("_rejects").to_arrow().to_pylist()
    assert len(rejects) == len({(r["run_id"], r["table"], r["row"]) for r in rejects})  # rejects once per run
