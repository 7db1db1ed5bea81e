"""Deployments: one `refresh` and one `backfill` deployment per source on the config's schedules, served by
`multiembed serve` against a real Prefect server; and `prefect.yaml` for a work pool."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import lancedb
import pytest
import yaml
from conftest import write_config, write_parquet
from cronsim import CronSim
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.serve import build_deployments, describe_schedule, where_to_watch
from flows.backfill import backfill, refresh
from schemas.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLI = shutil.which("multiembed", path=str(BIN)) or "multiembed"
PREFECT = shutil.which("prefect", path=str(BIN)) or "prefect"
CRON, TZ = "15 2 * * *", "Europe/Berlin"
SENTENCES = [
    "The cat sat on the warm mat.", "Rain is expected tomorrow afternoon.", "Python is a programming language.",
    "The stock market fell sharply today.", "She baked fresh bread for the neighbours.",
    "The train to Paris leaves at noon.", "Tea is best with a little milk.", "The team won the final match.",
    "A new library opened downtown.", "He repaired the old bicycle himself.", "Snow covered the mountain pass.",
    "The museum closes early on Sundays.", "Birds sing loudly at dawn.", "The recipe needs two eggs.",
    "Our flight was delayed by an hour.", "The river flooded the low fields.", "She plays the violin beautifully.",
    "The meeting moved to Thursday.", "Solar panels cover the roof.", "The children built a sandcastle.",
]


def source(name: str, schedule: dict | None = None) -> dict:
    entry = {"name": name, "path": "raw/docs.parquet", "id": "doc_id",
             "fields": [{"column": "body", "modality": "text"}]}
    return entry | ({"schedule": schedule} if schedule else {})


def by_name(config: Path) -> dict:
    return {d.name: d for d in build_deployments(config)}


def test_a_refresh_and_a_backfill_deployment_per_source_with_the_config_path_and_source(tmp_path, monkeypatch):
    write_config(tmp_path, [source("docs"), source("notes")])
    monkeypatch.chdir(tmp_path)
    deployments = build_deployments("config.yaml")  # relative: the runs may start elsewhere
    assert [(d.flow_name, d.name) for d in deployments] == [
        ("refresh", "refresh-docs"), ("backfill", "backfill-docs"),
        ("refresh", "refresh-notes"), ("backfill", "backfill-notes"),
    ]
    for d in deployments:
        name = d.name.split("-", 1)[1]
        assert d.parameters == {"config": str(tmp_path / "config.yaml"), "source": name}
        assert d.tags == ["multiembed", f"source:{name}"]
        assert d.entrypoint == f"flows.backfill.{d.flow_name}"  # a module path: independent of the folder
        # A served run loads the flow object itself, which then honours the config's `runner:`
        # (`runners.configured_cluster` tells it from a `with_runner` copy by identity).
        assert load_flow_from_entrypoint(d.entrypoint) is {"refresh": refresh, "backfill": backfill}[d.flow_name]


def test_schedules_are_the_config_crons_in_its_time_zone_and_unscheduled_without_one(tmp_path):
    config = write_config(tmp_path, [
        source("docs", {"refresh": CRON, "backfill": "0 3 * * 0", "timezone": TZ}),
        source("notes", {"refresh": "*/30 * * * *"}),
        source("logs"),
    ])
    deployments = by_name(config)
    crons = {name: [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules]
             for name, d in deployments.items()}
    assert crons == {
        "refresh-docs": [(CRON, TZ, True)], "backfill-docs": [("0 3 * * 0", TZ, True)],
        "refresh-notes": [("*/30 * * * *", "UTC", True)], "backfill-notes": [],
        "refresh-logs": [], "backfill-logs": [],
    }
    assert not any(d.paused for d in deployments.values())  # unscheduled ones can still be triggered
    assert describe_schedule(deployments["refresh-docs"]) == f"cron '{CRON}' ({TZ})"
    assert describe_schedule(deployments["backfill-logs"]) == (
        "no schedule; trigger it with: prefect deployment run backfill/backfill-logs")


def test_a_bad_config_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="sources.0.schedule.timezone"):
        build_deployments(write_config(tmp_path, [source("docs", {"refresh": CRON, "timezone": "Mars/Base"})]))


def test_where_to_watch_is_the_ui_of_the_configured_server():
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4999/api"}):
        assert where_to_watch() == "Watch and trigger runs in the Prefect UI: http://127.0.0.1:4999/deployments"
    cloud = "https://api.prefect.cloud/api/accounts/a1/workspaces/w1"
    with temporary_settings(updates={PREFECT_API_URL: cloud}):
        assert where_to_watch().endswith(": https://app.prefect.cloud/account/a1/workspace/w1/deployments")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert "PREFECT_API_URL is not set" in where_to_watch()


@pytest.mark.parametrize(("schedule", "message"), [
    ({"refresh": "every day"}, "sources.0.schedule.refresh: Value error, 'every day' is not a cron expression"),
    ({"refresh": CRON, "timezone": "Mars/Base"}, "sources.0.schedule.timezone: Value error, 'Mars/Base' is not"),
])
def test_serve_with_a_bad_config_exits_2_before_serving(tmp_path, schedule, message):
    write_config(tmp_path, [source("docs", schedule)])
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing there: it must not be reached
    result = subprocess.run([CLI, "serve", "config.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Serving" not in result.stdout


def test_serve_with_a_missing_config_exits_2(tmp_path):
    result = subprocess.run([CLI, "serve", "missing.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "multiembed serve: config file not found: missing.yaml" in result.stderr


def test_prefect_yaml_deploys_the_real_flows_to_a_process_work_pool():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (pull,) = spec["pull"]
    assert list(pull) == ["prefect.deployments.steps.set_working_directory"]
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert sorted(deployments) == ["backfill-all", "refresh-all"]
    for name, expected in (("refresh-all", refresh), ("backfill-all", backfill)):
        d = deployments[name]
        path, function = d["entrypoint"].split(":")
        module = importlib.import_module(".".join(Path(path).with_suffix("").parts))
        assert getattr(module, function) is expected
        loaded = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))  # as `prefect deploy` loads it
        assert isinstance(loaded, Flow) and loaded.name == expected.name
        accepted = inspect.signature(expected.fn).parameters
        assert set(d["parameters"]) <= set(accepted)
        assert {p for p, v in accepted.items() if v.default is inspect.Parameter.empty} <= set(d["parameters"])
        assert d["work_pool"]["name"] == "multiembed"
        for schedule in d["schedules"]:
            CronSim(schedule["cron"], datetime.now(UTC))
    assert deployments["refresh-all"]["schedules"][0]["cron"] == "0 2 * * *"


# --- a real Prefect server and `multiembed serve` -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            state, _ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return members


def stop(process: subprocess.Popen, grace: float = 30.0) -> list[int]:
    """Stop a process and all it started (its own process group): SIGTERM, then SIGKILL after `grace` seconds.

    Returns what is still alive after that (nothing, unless a process survives SIGKILL).
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_members(process.pid):
            return []
    return group_members(process.pid)


def tail(log: Path, chars: int = 6000) -> str:
    return f"--- {log.name} ---\n{log.read_text(errors='replace')[-chars:]}"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, Path]]]:
    """Start commands in their own process groups, output to a log; all are stopped (last first) at the end."""
    started: list[tuple[str, subprocess.Popen]] = []

    def spawn(name: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        started.append((name, process))
        return process, log

    try:
        yield spawn
    finally:
        left = {name: stop(process) for name, process in reversed(started)}
        assert not any(left.values()), f"processes left behind: {left}"


def wait_for(what: str, check: Callable[[], object], timeout: float, alive: subprocess.Popen, log: Path) -> object:
    """Poll `check` until it returns something truthy; fail (with the log) on timeout or if `alive` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if result := check():
                return result
        if alive.poll() is not None:
            pytest.fail(f"exited with {alive.returncode} while waiting for {what}\n{tail(log)}")
        time.sleep(1)
    pytest.fail(f"no {what} after {timeout:.0f} s\n{tail(log)}")


def found(response: httpx.Response) -> dict | None:
    return response.json() if response.status_code == 200 else None


@pytest.mark.slow
def test_serve_runs_a_triggered_refresh_on_a_real_prefect_server(tmp_path: Path, spawn) -> None:
    write_parquet(tmp_path / "raw" / "docs.parquet", [{"doc_id": i, "body": s} for i, s in enumerate(SENTENCES)])
    config = write_config(tmp_path, [source("docs", {"refresh": CRON, "timezone": TZ})])
    # A served run honours the config's runner: its shards run on a Dask cluster it starts.
    config.write_text(config.read_text() + yaml.safe_dump({"runner": {"kind": "dask", "workers": 1}}))
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    started = time.monotonic()
    server, server_log = spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env, tmp_path)
    api = httpx.Client(base_url=base, timeout=30)
    wait_for("healthy server", lambda: api.get("/health").status_code == 200, 240, server, server_log)
    healthy = time.monotonic()

    serve, serve_log = spawn("serve", [CLI, "serve", "config.yaml"], env | {"PREFECT_API_URL": base}, tmp_path)
    deployment, unscheduled = (  # serve registers them one after the other
        wait_for(f"{name} deployment", lambda name=name: found(api.get(f"/deployments/name/{name}")), 240, serve,
                 serve_log)
        for name in ("refresh/refresh-docs", "backfill/backfill-docs")
    )
    served = time.monotonic()
    assert deployment["parameters"] == {"config": str(config), "source": "docs"}
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in deployment["schedules"]] == [
        (CRON, TZ, True)]
    assert not deployment["paused"]
    assert (unscheduled["schedules"], unscheduled["paused"]) == ([], False)
    printed = serve_log.read_text()
    assert f"refresh/refresh-docs    cron '{CRON}' ({TZ})" in printed
    assert "backfill/backfill-docs  no schedule; trigger it with: prefect deployment run backfill/backfill-docs" \
        in printed
    assert f"Prefect UI: http://127.0.0.1:{port}/deployments" in printed

    response = api.post(f"/deployments/{deployment['id']}/create_flow_run", json={})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]

    def finished() -> dict | None:
        run = api.get(f"/flow_runs/{run_id}").json()
        return run if run["state"] and run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} \
            else None

    run = wait_for("finished flow run", finished, 240, serve, serve_log)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{tail(serve_log)}"
    ran = time.monotonic()
    print(f"server healthy {healthy - started:.0f} s, deployments served {served - healthy:.0f} s, "
          f"triggered refresh completed {ran - served:.0f} s")
    assert run["deployment_id"] == deployment["id"]
    assert run["parameters"] == {"config": str(config), "source": "docs"}

    db = lancedb.connect(tmp_path / "lancedb")
    table = db.open_table("docs__body__minilm")
    assert (table.version, table.count_rows()) == (1, 20)
    (recorded,) = db.open_table("_runs").to_arrow().to_pylist()
    assert (recorded["table"], recorded["rows_embedded"]) == ("docs__body__minilm", 20)
    # The work ran in a subflow on the Dask runner, whose id `_runs` records; its parent is the served run.
    child = api.get(f"/flow_runs/{recorded['flow_run_id']}").json()
    assert api.get(f"/task_runs/{child['parent_task_run_id']}").json()["flow_run_id"] == run_id
    assert "prefect.task_runner.dask" in serve_log.read_text()
