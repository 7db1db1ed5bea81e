"""Kill -9 a real refresh mid-run: the table stays at its previous version, and a re-run finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import pytest
from conftest import write_config, write_parquet

from multiembed.demo import docstring_rows

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "multiembed")
TABLE = "docs__body__minilm"


def texts(n: int, edition: str) -> list[dict]:
    base = [r["body"] for r in docstring_rows()]
    return [{"doc_id": i, "body": f"{base[i % len(base)]} ({edition} {i // len(base)})"} for i in range(n)]


def project(folder: Path, data: list[dict]) -> Path:
    write_parquet(folder / "raw" / "docs.parquet", data, row_group_size=64)
    return write_config(folder, [{"name": "docs", "path": "raw/docs.parquet", "id": "doc_id", "shard_rows": 64,
                                  "fields": [{"column": "body", "modality": "text"}]}])


def start(command: str, config: Path, prefect_home: Path) -> subprocess.Popen:
    """The CLI in its own process group, so a kill takes its temporary Prefect server with it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([CLI, command, str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(command: str, config: Path, prefect_home: Path) -> str:
    proc = start(command, config, prefect_home)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def snapshot(folder: Path) -> dict[int, tuple[str, np.ndarray]]:
    table = lancedb.connect(folder / "lancedb").open_table(TABLE).to_arrow()
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    return {i: (h, v) for i, h, v in zip(table["id"].to_pylist(), table["content_hash"].to_pylist(), vectors,
                                         strict=True)}


def test_kill_9_mid_refresh_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    first, second = texts(150, "first"), texts(150, "second") + texts(400, "second")[150:]
    config = project(tmp_path / "killed", first)
    finish("backfill", config, home)
    before = snapshot(tmp_path / "killed")

    write_parquet(tmp_path / "killed" / "raw" / "docs.parquet", second, row_group_size=64)
    proc = start("refresh", config, home)
    done = tmp_path / "killed" / "lancedb" / "_staging"
    deadline = time.monotonic() + 300
    while len(list(done.glob(f"*/done/{TABLE}/*.json"))) < 2:  # let it finish a couple of shards
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the refresh made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    db = lancedb.connect(tmp_path / "killed" / "lancedb")
    assert [v["version"] for v in db.open_table(TABLE).list_versions()] == [1]  # still the previous version
    after_kill = snapshot(tmp_path / "killed")
    assert after_kill.keys() == before.keys()  # no partial rows visible
    assert all(after_kill[i][0] == before[i][0] for i in before)
    assert db.open_table("_runs").count_rows() == 1

    out = finish("refresh", config, home)
    assert "resumed" in out and "shards from an interrupted run" in out
    assert [v["version"] for v in db.open_table(TABLE).list_versions()] == [1, 2]

    reference = project(tmp_path / "reference", first)
    finish("backfill", reference, home)
    write_parquet(tmp_path / "reference" / "raw" / "docs.parquet", second, row_group_size=64)
    finish("refresh", reference, home)
    resumed, uninterrupted = snapshot(tmp_path / "killed"), snapshot(tmp_path / "reference")
    assert resumed.keys() == uninterrupted.keys() == set(range(400))
    assert all(resumed[i][0] == uninterrupted[i][0] for i in resumed)
    cosines = [float(resumed[i][1] @ uninterrupted[i][1]) for i in resumed]
    assert min(cosines) > 0.99999
    runs = db.open_table("_runs").to_arrow().to_pylist()
    last = runs[-1]
    assert (last["rows_read"], last["rows_embedded"], last["rows_unchanged"]) == (400, 400, 0)
