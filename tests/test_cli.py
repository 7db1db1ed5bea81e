"""The `multiembed` console script, run as a user would: exit codes, messages, and the demo on real text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lancedb
import pyarrow.compute as pc
import pytest
from conftest import write_config, write_parquet

CLI = shutil.which("multiembed", path=str(Path(sys.executable).parent)) or "multiembed"


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home for the module's commands, so the temporary server's database is migrated once."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def run(prefect_home: Path):
    def run(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(prefect_home)}
        env.pop("PREFECT_API_URL", None)  # the command starts its own temporary server, as for a user
        return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.mark.parametrize("command", [[], ["backfill"], ["versions"], ["demo"]])
def test_every_command_has_help(command: list[str], tmp_path: Path, run) -> None:
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "usage: multiembed" in result.stdout


def test_usage_error_exits_2(tmp_path: Path, run) -> None:
    result = run("backfill", cwd=tmp_path)
    assert result.returncode == 2
    assert "the following arguments are required: config" in result.stderr


def test_config_error_exits_2_names_the_key_and_writes_nothing(tmp_path: Path, run) -> None:
    write_parquet(tmp_path / "a.parquet", [{"id": 1, "body": "text"}])
    write_config(tmp_path, [{"name": "s", "path": "a.parquet", "id": "id", "colour": "red",
                             "fields": [{"column": "body", "modality": "txt"}]}])
    result = run("backfill", "config.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "sources.0.colour: unknown key" in result.stderr
    assert "sources.0.fields.0.modality: Input should be 'text', 'image', 'audio' or 'table'" in result.stderr
    assert not (tmp_path / "lancedb").exists()


@pytest.mark.slow
def test_input_errors_exit_2_with_file_and_column_and_write_nothing(tmp_path: Path, run) -> None:
    write_parquet(tmp_path / "a.parquet", [{"id": 1, "body": 5}])
    write_config(tmp_path, [{"name": "s", "path": "a.parquet", "id": "id",
                             "fields": [{"column": "body", "modality": "text"}]}])
    result = run("backfill", "config.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'a.parquet'}: column 'body' is int64; modality 'text' expects a string column" in result.stderr
    write_config(tmp_path, [{"name": "s", "path": "missing/*.parquet", "id": "id",
                             "fields": [{"column": "body", "modality": "text"}]}])
    result = run("backfill", "config.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "missing/*.parquet: the pattern matches no files" in result.stderr
    assert not (tmp_path / "lancedb").exists()


@pytest.mark.slow
def test_failure_exits_1(tmp_path: Path, run) -> None:
    write_parquet(tmp_path / "a.parquet", [{"id": 1, "body": "text"}])
    (tmp_path / "db").write_text("a file where the database folder should be")
    write_config(tmp_path, [{"name": "s", "path": "a.parquet", "id": "id",
                             "fields": [{"column": "body", "modality": "text"}]}], database="./db")
    result = run("backfill", "config.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "multiembed backfill: failed:" in result.stderr


@pytest.mark.slow
def test_demo_embeds_real_text_offline_and_versions_lists_it(tmp_path: Path, run) -> None:
    result = run("demo", "--dir", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Results in" in result.stdout
    assert "math.sqrt" in result.stdout  # the square-root query finds the square-root docstring
    assert "rows/s" in result.stdout + result.stderr  # progress was shown
    db = lancedb.connect(tmp_path / "demo" / "lancedb")
    runs = {r["table"]: r for r in db.open_table("_runs").to_arrow().to_pylist()}
    assert set(runs) == {"docs__body__minilm", "docs__body__tfidf", "media__caption__minilm",
                         "media__picture__efficientnet-lite0", "media__clip__whisper-tiny", "media__wine__tabular"}
    for name, r in runs.items():
        assert r["rows_read"] == r["rows_embedded"] + r["rows_unchanged"] + r["rows_rejected"]
        assert db.open_table(name).count_rows() == r["rows_embedded"]
    run_row = runs["docs__body__minilm"]
    assert run_row["rows_rejected"] == 4 and run_row["rows_truncated"] >= 1
    assert json.loads(runs["media__clip__whisper-tiny"]["flags"]) == {"silent clip": 1}
    rejects = db.open_table("_rejects").to_arrow()
    docs = rejects.filter(pc.equal(rejects["table"], "docs__body__minilm"))
    assert sorted(docs["reason"].to_pylist())[:3] == ["empty text", "id repeated in the input (first at "
                                                      f"{tmp_path / 'demo' / 'raw' / 'docs' / 'part-0.parquet'} "
                                                      "row 0)", "null id"]
    assert pc.sum(pc.equal(docs["stage"], "validate")).as_py() == 4
    metrics = db.open_table("_metrics").to_arrow().to_pylist()
    knn = {m["table"]: m["value"] for m in metrics if m["metric"] == "knn_accuracy"}
    assert knn["docs__body__minilm"] > knn["docs__body__tfidf"] > 0.3  # the neural model beats its baseline
    assert knn["media__wine__tabular"] > 0.8 and knn["media__clip__whisper-tiny"] > 0.8
    assert {m["stage"] for m in metrics if m["table"] == "docs__body__minilm"} == {"evaluate", "bias"}
    assert "Nearest neighbours sharing the label" in result.stdout
    media = {(r["table"], r["stage"]): r["reason"] for r in rejects.to_pylist() if r["source"] == "media"}
    assert media[("media__picture__efficientnet-lite0", "prepare")].startswith("cannot decode image")
    assert media[("media__clip__whisper-tiny", "prepare")].startswith("no such file")

    listing = run("versions", "demo/config.yaml", "--table", "docs__body__minilm", cwd=tmp_path)
    assert listing.returncode == 0
    line = next(x for x in listing.stdout.splitlines() if x.startswith("docs__body__minilm"))
    assert f"run-{run_row['run_id']}" in line and f" {run_row['rows_embedded']} " in f" {line} "
    missing = run("versions", "demo/config.yaml", "--table", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no table 'nope'" in missing.stderr
