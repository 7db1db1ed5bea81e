"""A stopped `multiembed` leaves no temporary Prefect server behind: SIGTERM takes Ctrl-C's way out (exit 143), and
after SIGKILL the server's watchdog (`flows.server_guard`) ends it within seconds."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import write_config, write_parquet

from flows.server_guard import LOOP_ENV, PARENT_ENV, USER_LOOP_ENV, guard_environment

CLI = str(Path(sys.executable).parent / "multiembed")
TESTS = Path(__file__).parent
SERVER = "prefect.server.api.server:create_app"  # in the command line of Prefect's temporary server


def gone(proc: psutil.Process) -> bool:
    """Whether `proc` has ended (a zombie that no one reaped has ended too)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Wait up to `seconds` for every process of `procs` to end; those still running."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in procs if not gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_guard_environment_names_the_guard_and_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOOP_ENV, "asyncio")  # a loop the user chose is kept, for the guard to build
    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delenv(USER_LOOP_ENV, raising=False)
    with guard_environment():
        assert os.environ[LOOP_ENV] == "flows.server_guard:guarded_loop"
        assert os.environ[PARENT_ENV] == str(os.getpid())
        assert os.environ[USER_LOOP_ENV] == "asyncio"
    assert os.environ[LOOP_ENV] == "asyncio"
    assert PARENT_ENV not in os.environ and USER_LOOP_ENV not in os.environ


def test_no_guard_where_the_server_could_not_import_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A user's own `flows.py` in the working directory comes first on the server's path: uvicorn would fail to
    import the guard, and the server would never start. The run goes on unguarded, with a warning."""
    (tmp_path / "flows.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(LOOP_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="flows.server_guard"), guard_environment():
        assert LOOP_ENV not in os.environ and PARENT_ENV not in os.environ
    assert "not guarded" in caplog.text


PARENT = """
import subprocess, sys, time
from flows.server_guard import guard_environment
with guard_environment():
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(600)
"""
CHILD = """
import json, os, sys
from flows.server_guard import LOOP_ENV, PARENT_ENV, USER_LOOP_ENV, guarded_loop
loop = guarded_loop()
left = {name: os.environ.get(name) for name in (LOOP_ENV, PARENT_ENV, USER_LOOP_ENV)}
with open(sys.argv[1], "w") as f:
    json.dump({"pid": os.getpid(), "env": left}, f)
loop.run_forever()
"""


def test_a_guarded_event_loop_ends_its_process_soon_after_the_parent_is_killed(tmp_path: Path) -> None:
    """The mechanism alone, without Prefect: a process running `guarded_loop`'s loop, as the temporary server does,
    started under `guard_environment` by a parent that then gets SIGKILL."""
    ready = tmp_path / "child.json"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(ready)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() or not ready.read_text():
            assert parent.poll() is None and time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
        started = json.loads(ready.read_text())
        child = psutil.Process(started["pid"])
        assert started["env"] == {LOOP_ENV: None, PARENT_ENV: None, USER_LOOP_ENV: None}  # not passed further on
        time.sleep(1.0)  # the watchdog has polled a parent that lives: the child is still running
        assert not gone(child)
        killed = time.monotonic()
        parent.kill()
        parent.wait(timeout=10)
        assert not wait_gone([child], 10), "the child outlived its parent by 10 s"
        assert time.monotonic() - killed < 5
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home for the module's commands, so the temporary server's database is migrated once."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A config whose backfill with the fake embedder runs for a while: many small shards, each a few Prefect
    task runs."""
    rows = [{"id": i, "body": f"review number {i}"} for i in range(4000)]
    write_parquet(tmp_path / "reviews.parquet", rows, row_group_size=16)
    return write_config(tmp_path, [{"name": "reviews", "path": "reviews.parquet", "id": "id", "shard_rows": 16,
                                    "fields": [{"column": "body", "modality": "text", "embedders": ["fake"]}]}])


@pytest.fixture
def backfill(project: Path, prefect_home: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`multiembed backfill` as a user starts it without a configured Prefect server, the fake embedders as a
    plugin; its stdout and stderr go to one file (returned), read while it runs. Started in a session of its own,
    so that whatever it leaves is killed after the test, pass or fail."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(prefect_home),
           "MULTIEMBED_PLUGINS": "fake_embedders", "PYTHONPATH": path}
    env.pop("PREFECT_API_URL", None)
    output = tmp_path / "output.txt"
    with output.open("w") as out:
        proc = subprocess.Popen([CLI, "backfill", str(project)], cwd=project.parent, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, output
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def running_with_server(proc: subprocess.Popen, output: Path) -> list[psutil.Process]:
    """Wait until the backfill is embedding (progress was logged) on its temporary server; its descendants, the
    server among them."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, "the backfill made no progress"
        descendants = psutil.Process(proc.pid).children(recursive=True)
        if "rows/s" in output.read_text() and any(SERVER in " ".join(p.cmdline()) for p in descendants):
            return descendants
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_stops_like_ctrl_c_and_stops_the_server(backfill: tuple[subprocess.Popen, Path],
                                                        sig: signal.Signals, code: int) -> None:
    proc, output = backfill
    descendants = running_with_server(proc, output)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    log = output.read_text()
    assert proc.returncode == code, log[-3000:]
    stopped = [line for line in log.splitlines() if "stopped by" in line]
    assert stopped == (["multiembed backfill: stopped by SIGTERM"] if sig == signal.SIGTERM else [])
    assert "Crash detected!" in log  # Prefect saw the run end early, as for Ctrl-C
    assert "Stopping temporary server" in log  # the exit hooks ran: the server was stopped, not left to its guard
    assert not wait_gone(descendants, 1)  # stopped before the command exited


@pytest.mark.slow
def test_after_sigkill_the_server_ends_within_seconds(backfill: tuple[subprocess.Popen, Path]) -> None:
    proc, output = backfill
    descendants = running_with_server(proc, output)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    left = wait_gone(descendants, 10)
    assert not left, [" ".join(p.cmdline()) for p in left]
