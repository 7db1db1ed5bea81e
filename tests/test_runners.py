"""Runs on a Ray or Dask cluster equal local runs, and a worker killed mid-shard costs only that shard.

The clusters are real ones started on this machine (2 worker processes each); their workers load the
fake embedders as a plugin (`MULTIEMBED_PLUGINS`), as workers of a real cluster would load any plugin.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from pathlib import Path

import dask
import lancedb
import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import POISON, UNDECODABLE, write_config, write_parquet
from fake_embedders import KILL_ONCE, SLOW, TRACE_ENV, FakeEmbedder
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_ray.context import RemoteOptionsContext

from flows import runners
from flows.backfill import backfill, refresh
from multiembed.cli import main
from schemas.config import ConfigError, RunnerConfig, load_config, parse_config
from tasks.embedders import registry
from tasks.embedders.base import ModelLoadError

TESTS = Path(__file__).parent
CLI = str(Path(sys.executable).parent / "multiembed")
TABLES = ["reviews__body__fake", "reviews__body__fake2"]
CLUSTER_TAG = "MULTIEMBED_TEST_CLUSTER"  # set in the environment of the processes a test's cluster starts
FIGURES = ["table", "version", "rows_read", "rows_embedded", "rows_unchanged", "rows_rejected", "rows_truncated",
           "rows_deleted", "published"]


# ---- the runner's config, command line and construction (no cluster) ----

def test_runner_key_is_validated_with_the_rest_of_the_config() -> None:
    base = {"database": "db", "sources": [{"name": "s", "path": "p", "id": "i",
                                           "fields": [{"column": "c", "modality": "text"}]}]}
    assert parse_config(base, Path(".")).runner == RunnerConfig(kind="local")
    runner = {"kind": "ray", "address": "ray://head:10001", "gpus_per_embed_task": 1}
    assert parse_config({**base, "runner": runner}, Path(".")).runner.gpus_per_embed_task == 1
    with pytest.raises(ConfigError) as bad:
        parse_config({**base, "runner": {"kind": "spark", "gpus": 1}}, Path("."))
    assert "runner.kind: Input should be 'local', 'ray' or 'dask'" in str(bad.value)
    assert "runner.gpus: unknown key" in str(bad.value)
    with pytest.raises(ConfigError, match="address, workers and gpus_per_embed_task are for kind ray or dask"):
        parse_config({**base, "runner": {"address": "auto"}}, Path("."))


def test_command_line_overrides_the_config_runner() -> None:
    config = RunnerConfig(kind="ray", address="ray://head:10001", workers=4, gpus_per_embed_task=1)
    assert config.overridden(None, None) == config
    assert config.overridden("ray", "auto") == config.model_copy(update={"address": "auto"})
    # Another engine keeps the sizes but not the address, which belonged to the config's engine.
    assert config.overridden("dask", None) == RunnerConfig(kind="dask", workers=4, gpus_per_embed_task=1)
    assert config.overridden("local", None) == RunnerConfig()
    with pytest.raises(ConfigError, match="--runner/--address"):
        RunnerConfig().overridden(None, "tcp://scheduler:8786")


def test_cli_refuses_an_address_for_the_local_runner_before_starting_anything(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, [{"name": "s", "path": "a.parquet", "id": "id",
                                      "fields": [{"column": "body", "modality": "text"}]}])
    assert main(["backfill", str(config), "--runner", "local", "--address", "auto"]) == 2
    assert "are for kind ray or dask" in capsys.readouterr().err
    assert not (tmp_path / "lancedb").exists()


def test_each_kind_gets_its_engine_with_the_workers_environment(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(registry.PLUGIN_ENV, "my_plugins")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    assert isinstance(runners.task_runner(RunnerConfig()), ThreadPoolTaskRunner)

    started = runners.task_runner(RunnerConfig(kind="ray", workers=3))
    assert started.address is None
    assert started.init_kwargs["address"] == "local"  # a new cluster, never someone else's on this machine
    assert (started.init_kwargs["num_cpus"], started.init_kwargs["include_dashboard"]) == (3, False)
    assert started.init_kwargs["_system_config"] == {"idle_worker_killing_time_threshold_ms": runners.IDLE_WORKER_MS}
    env = started.init_kwargs["runtime_env"]["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1" and env[registry.PLUGIN_ENV] == "my_plugins"
    assert env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1" and "UNRELATED_SECRET" not in env
    joined = runners.task_runner(RunnerConfig(kind="ray", address="ray://head:10001"))
    assert joined.address == "ray://head:10001" and not {"num_cpus", "_system_config"} & joined.init_kwargs.keys()
    assert joined.init_kwargs["runtime_env"]["env_vars"] == env

    local_dask = runners.task_runner(RunnerConfig(kind="dask", workers=2))
    assert local_dask.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                         "dashboard_address": None}
    assert runners.task_runner(RunnerConfig(kind="dask", address="tcp://s:8786")).address == "tcp://s:8786"


def test_only_the_embed_stage_asks_a_cluster_for_gpus(monkeypatch) -> None:
    for kind in ("ray", "dask", "local"):
        monkeypatch.setattr(runners, "current_kind", lambda kind=kind: kind)
        with runners.embed_resources(1):
            remote, annotations = RemoteOptionsContext.get().current_remote_options, dask.get_annotations()
        with runners.embed_resources(0):
            assert RemoteOptionsContext.get().current_remote_options == {} and dask.get_annotations() == {}
        assert remote == ({"num_gpus": 1, "max_calls": 0} if kind == "ray" else {})
        assert annotations == ({"resources": {"GPU": 1}} if kind == "dask" else {})
    assert RemoteOptionsContext.get().current_remote_options == {} and dask.get_annotations() == {}


def test_shards_in_flight_and_the_gpu_warning_follow_the_cluster(monkeypatch) -> None:
    monkeypatch.setattr(runners, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 0.0})
    monkeypatch.setattr(runners, "current_kind", lambda: "local")
    assert runners.shards_in_flight(RunnerConfig()) == runners.LOCAL_IN_FLIGHT
    assert runners.gpu_shortfall(1) is None  # the local runner uses whatever GPU the machine has
    monkeypatch.setattr(runners, "current_kind", lambda: "ray")
    assert runners.shards_in_flight(RunnerConfig(kind="ray")) == 16  # two per task slot
    assert runners.shards_in_flight(RunnerConfig(kind="ray", address="auto", workers=50)) == 100  # to grow to
    assert "the ray cluster has 0 now" in runners.gpu_shortfall(1)
    assert runners.gpu_shortfall(0) is None
    monkeypatch.setattr(runners, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    assert runners.gpu_shortfall(1) is None


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch) -> str:
    """A plugin module on the path that registers text embedder `plugged`; plugins load afresh for the test."""
    (tmp_path / "my_plugin.py").write_text(
        "from fake_embedders import FakeEmbedder\nfrom tasks.embedders.registry import register_embedder\n\n"
        "def register():\n    register_embedder('text', 'plugged', lambda batch_size: FakeEmbedder('plugged'))\n\n"
        "register()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(registry.FACTORIES, ("text", "plugged"), raising=False)
    registry.load_plugins.cache_clear()
    yield "my_plugin"
    registry.FACTORIES.pop(("text", "plugged"), None)
    sys.modules.pop("my_plugin", None)
    registry.load_plugins.cache_clear()


def test_plugins_are_loaded_on_first_lookup_from_the_environment(plugin_module: str, monkeypatch) -> None:
    with pytest.raises(ModelLoadError, match="unknown text embedder 'plugged'"):
        registry.check_embedder("text", "plugged")
    monkeypatch.setenv(registry.PLUGIN_ENV, f" {plugin_module} ,")
    registry.load_plugins.cache_clear()
    assert registry.load_embedder("text", "plugged", 8).info.model_id == "fake/plugged"
    monkeypatch.setenv(registry.PLUGIN_ENV, "no_such_plugin")
    registry.load_plugins.cache_clear()
    with pytest.raises(ModelLoadError, match=r"plugin 'no_such_plugin' \(from MULTIEMBED_PLUGINS\) cannot be imported"):
        registry.check_embedder("text", "plugged")


def test_plugins_are_loaded_from_entry_points(plugin_module: str, monkeypatch) -> None:
    point = importlib.metadata.EntryPoint("mine", f"{plugin_module}:register", registry.PLUGIN_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == registry.PLUGIN_GROUP else [])
    registry.check_embedder("text", "plugged")
    assert ("text", "plugged") in registry.FACTORIES


# ---- real clusters on this machine ----

def reviews(ids: range, edition: str) -> list[dict]:
    return [{"review_id": i, "body": f"review {i} ({edition}) " + "long " * (i % 12), "label": f"l{i % 3}"}
            for i in ids]


BAD = [
    {"review_id": 900, "body": None, "label": "x"},
    {"review_id": 901, "body": f"the model breaks on {POISON}", "label": "x"},
    {"review_id": 902, "body": f"{UNDECODABLE} payload", "label": "x"},
    {"review_id": 5, "body": "repeats id 5", "label": "x"},
]
EDITIONS = {  # the input of the backfill, then of the refresh: rows changed, gone and new
    "backfill": {"a.parquet": reviews(range(1, 25), "one"), "b.parquet": reviews(range(25, 41), "one") + BAD},
    "refresh": {"a.parquet": reviews(range(1, 21), "one") + reviews(range(21, 25), "two"),
                "b.parquet": reviews(range(31, 49), "one") + BAD},
}


def write_project(folder: Path, files: dict[str, list[dict]], runner: dict | None = None) -> Path:
    """The reviews source (two files, shards of 4 rows, two embedders, no quality stages after a run) and a
    config with `runner` if given."""
    for name, rows in files.items():
        write_parquet(folder / "raw" / name, rows)
    config = write_config(folder, [{"name": "reviews", "path": "raw/*.parquet", "id": "review_id", "shard_rows": 4,
                                    "keep": ["label"], "quality": {"after": []},
                                    "fields": [{"column": "body", "modality": "text",
                                                "embedders": ["fake", "fake2"]}]}])
    if runner is not None:
        config.write_text(config.read_text() + yaml.safe_dump({"runner": runner}))
    return config


def run(flow, config: Path) -> list[dict]:
    """Run `flow` on the runner the config names, as the command line does."""
    return runners.with_runner(flow, load_config(config).runner)(config=str(config))


def snapshot(folder: Path) -> dict:
    """Every embedding table's rows and versions, and the last run's `_runs` figures and `_rejects`."""
    db = lancedb.connect(folder / "lancedb")
    runs = db.open_table("_runs").to_arrow()
    last = max(runs["run_id"].to_pylist())
    rejects = [{k: str(r[k]).replace(str(folder), "<project>") for k in ("table", "file", "id", "column", "stage",
                                                                         "reason")}
               for r in db.open_table("_rejects").to_arrow().to_pylist() if r["run_id"] == last]
    return {
        "tables": {t: db.open_table(t).to_arrow().sort_by("id") for t in TABLES},
        "versions": {t: [v["version"] for v in db.open_table(t).list_versions()] for t in TABLES},
        "runs": sorted(({k: r[k] for k in FIGURES} for r in runs.to_pylist() if r["run_id"] == last),
                       key=lambda r: r["table"]),
        "rejects": sorted(rejects, key=lambda r: json.dumps(r, sort_keys=True)),
    }


def vectors(table: pa.Table) -> np.ndarray:
    return np.stack(table["vector"].to_numpy(zero_copy_only=False))


def assert_same_run(got: dict, expected: dict) -> None:
    assert got["runs"] == expected["runs"] and got["rejects"] == expected["rejects"]
    assert got["versions"] == expected["versions"]
    for name in TABLES:
        mine, theirs = got["tables"][name], expected["tables"][name]
        for column in ("id", "content_hash", "label"):
            assert mine[column].to_pylist() == theirs[column].to_pylist(), (name, column)
        assert np.min(np.sum(vectors(mine) * vectors(theirs), axis=1)) >= 0.9999


def read_trace(path: Path) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What cluster workers started from now on inherit: the fake embedders as a plugin on their path, and a
    trace file of what each process loaded, prepared and embedded (returned; emptied by each test)."""
    trace = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        env.setenv(registry.PLUGIN_ENV, "fake_embedders")
        env.setenv(TRACE_ENV, str(trace))
        yield trace


def tagged_processes(tag: str) -> list[str]:
    """Command lines of this machine's processes whose environment holds `CLUSTER_TAG=tag`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            tagged = f"{CLUSTER_TAG}={tag}".encode() in (proc / "environ").read_bytes().split(b"\0")
            if tagged and int(proc.name) != os.getpid():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue
    return found


@contextmanager
def leaves_no_process() -> Iterator[dict[str, str]]:
    """Yields an environment tag for the processes of a cluster (they inherit it from the process that starts
    them); on leaving, waits up to 30 s for every tagged process to be gone, and fails if one is left."""
    tag = uuid.uuid4().hex
    yield {CLUSTER_TAG: tag}
    deadline = time.monotonic() + 30
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


@pytest.fixture(scope="module")
def ray_cluster(worker_env: Path) -> Iterator[dict]:
    """A 2-worker Ray cluster with the runner's own settings, plus one GPU resource (there is no real GPU: the
    resource lets the test see that only embed tasks are given one). Shut down, every process gone, after."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live below it
    with leaves_no_process() as tag, pytest.MonkeyPatch.context() as env:
        env.setenv(CLUSTER_TAG, tag[CLUSTER_TAG])
        ray.init(**runners.ray_init_kwargs(RunnerConfig(kind="ray", workers=2)), num_gpus=1,
                 object_store_memory=200 * 2**20, _temp_dir=temp)
        env.undo()
        assert tagged_processes(tag[CLUSTER_TAG])  # the tag does reach the cluster's processes
        try:
            yield {"kind": "ray", "workers": 2, "gpus_per_embed_task": 1}
        finally:
            ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def dask_cluster(worker_env: Path) -> Iterator[dict]:
    """A 2-worker Dask cluster with the runner's own settings; the runs join it by its address."""
    from distributed import LocalCluster

    resource_tracker.ensure_running()  # this process's own helper for spawning, which lives as long as it does
    with leaves_no_process() as tag, pytest.MonkeyPatch.context() as env:
        env.setenv(CLUSTER_TAG, tag[CLUSTER_TAG])
        with LocalCluster(**runners.dask_cluster_kwargs(RunnerConfig(kind="dask", workers=2))) as cluster:
            env.undo()
            assert tagged_processes(tag[CLUSTER_TAG])
            yield {"kind": "dask", "address": cluster.scheduler_address}


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> dict[str, dict]:
    """The reference: a backfill and then a refresh with the local runner, a snapshot after each."""
    folder = tmp_path_factory.mktemp("local")
    config = write_project(folder, EDITIONS["backfill"])
    run(backfill, config)
    done = {"backfill": snapshot(folder)}
    write_project(folder, EDITIONS["refresh"])
    run(refresh, config)
    return done | {"refresh": snapshot(folder)}


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["ray_cluster", "dask_cluster"])
def test_a_cluster_backfill_and_refresh_equal_local_ones(cluster: str, request, local_runs: dict, worker_env: Path,
                                                         tmp_path: Path) -> None:
    runner = request.getfixturevalue(cluster)
    worker_env.write_text("")
    config = write_project(tmp_path, EDITIONS["backfill"], runner)
    run(backfill, config)
    assert_same_run(snapshot(tmp_path), local_runs["backfill"])
    assert snapshot(tmp_path)["versions"] == {t: [1] for t in TABLES}
    write_project(tmp_path, EDITIONS["refresh"], runner)
    run(refresh, config)
    assert_same_run(snapshot(tmp_path), local_runs["refresh"])
    assert snapshot(tmp_path)["versions"] == {t: [1, 2] for t in TABLES}

    trace = read_trace(worker_env)
    embedded = [e for e in trace if e["event"] == "embed"]
    assert embedded and os.getpid() not in {e["pid"] for e in embedded}  # the shards ran on the workers
    # The same few worker processes ran every shard of both runs (2, plus Ray's GPU worker), each loading
    # each model once: no worker was replaced, no model loaded again.
    assert len({e["pid"] for e in trace}) <= (3 if runner["kind"] == "ray" else 2)
    loads = [(e["pid"], e["name"]) for e in trace if e["event"] == "load"]
    assert len(loads) == len(set(loads))
    if runner["kind"] == "ray":  # only embed tasks were given the GPU, in a worker of their own
        assert {e["gpus"] for e in embedded} == {"0"} and len({e["pid"] for e in embedded}) == 1
        assert {e["gpus"] for e in trace if e["event"] == "prepare"} == {""}


@pytest.mark.slow
def test_a_flow_run_as_defined_uses_the_configs_runner_and_with_runner_overrides_it(
        dask_cluster: dict, local_runs: dict, worker_env: Path, tmp_path: Path) -> None:
    """A deployment's scheduled run calls the flow as defined: the config's `runner:` must hold there too.
    The command line's `--runner local` (`with_runner`) keeps the shards in this process."""
    worker_env.write_text("")
    config = write_project(tmp_path, EDITIONS["backfill"], dask_cluster)
    backfill(config=str(config))
    assert_same_run(snapshot(tmp_path), local_runs["backfill"])
    embedded = {e["pid"] for e in read_trace(worker_env) if e["event"] == "embed"}
    assert embedded and os.getpid() not in embedded
    worker_env.write_text("")
    write_project(tmp_path, EDITIONS["refresh"], dask_cluster)
    runners.with_runner(refresh, RunnerConfig())(config=str(config))
    assert_same_run(snapshot(tmp_path), local_runs["refresh"])
    assert {e["pid"] for e in read_trace(worker_env) if e["event"] == "embed"} == {os.getpid()}


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["ray_cluster", "dask_cluster"])
def test_a_worker_killed_mid_shard_costs_only_that_shard(cluster: str, request, prefect_server,
                                                         tmp_path: Path) -> None:
    runner = request.getfixturevalue(cluster)
    data = reviews(range(1, 41), "one")
    data[22]["body"] = f"{KILL_ONCE}{tmp_path / 'killed'}"  # the embed task of its shard SIGKILLs its worker
    config = write_project(tmp_path, {"a.parquet": data}, runner)
    (summary,) = [r for r in run(backfill, config) if r["table"] == "reviews__body__fake"]
    assert (tmp_path / "killed").exists()  # a worker did die mid-shard
    table = lancedb.connect(tmp_path / "lancedb").open_table("reviews__body__fake")
    assert [v["version"] for v in table.list_versions()] == [1]
    rows = table.to_arrow().sort_by("id")
    assert rows["id"].to_pylist() == list(range(1, 41))  # every row exactly once
    fake = FakeEmbedder("fake")
    expected = fake.embed(fake.prepare(pa.array([r["body"] for r in data]), ""))
    np.testing.assert_allclose(vectors(rows), expected, atol=1e-6)
    assert (summary["rows_read"], summary["rows_embedded"], summary["rows_rejected"]) == (40, 40, 0)


def kill_a_busy_embedder(trace: Path, killed: list[int], timeout: float = 300) -> None:
    """SIGKILL, from outside, the first worker process the trace shows embedding (half a second into its call, which
    `SLOW` makes last 2 s), as the OOM killer would; its pid goes to `killed`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        embeds = [e["pid"] for e in read_trace(trace) if e["event"] == "embed" and e["pid"] != os.getpid()]
        if embeds:
            time.sleep(0.5)
            os.kill(embeds[0], signal.SIGKILL)
            killed.append(embeds[0])
            return
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["ray_cluster", "dask_cluster"])
def test_a_busy_worker_killed_from_outside_costs_only_its_shards(cluster: str, request, worker_env: Path,
                                                                 prefect_server, tmp_path: Path) -> None:
    runner = request.getfixturevalue(cluster)
    worker_env.write_text("")
    data = reviews(range(1, 25), "one")
    for row in data[::4]:  # one slow row per 4-row shard: every embed call is busy for 2 s
        row["body"] += SLOW
    config = write_project(tmp_path, {"a.parquet": data}, runner)
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_busy_embedder, args=(worker_env, killed), daemon=True)
    killer.start()
    (summary,) = [r for r in run(backfill, config) if r["table"] == "reviews__body__fake"]
    killer.join()
    assert killed  # a busy worker did die mid-embed
    rows = lancedb.connect(tmp_path / "lancedb").open_table("reviews__body__fake").to_arrow().sort_by("id")
    assert rows["id"].to_pylist() == list(range(1, 25))  # every row exactly once
    fake = FakeEmbedder("fake")
    np.testing.assert_allclose(vectors(rows), fake.embed(fake.prepare(pa.array([r["body"] for r in data]), "")),
                               atol=1e-6)
    assert (summary["rows_read"], summary["rows_embedded"], summary["rows_rejected"]) == (24, 24, 0)
    embeds = [e for e in read_trace(worker_env) if e["event"] == "embed"]
    # 6 shards x 2 tables, plus what the dead worker was running or held: at most the shards in flight again.
    assert 12 < len(embeds) <= 12 + 2 * runners.IN_FLIGHT_PER_SLOT * 2


def fully_staged(database: Path) -> set[str]:
    """The shard keys staged (done) for every table of the tests' source."""
    done = [{p.stem for p in database.glob(f"_staging/*/done/{table}/*.json")} for table in TABLES]
    return set.intersection(*done)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="a race: Ray's core worker may end the flow's process (exit 1, no message) "
                   "before flows.ray_runner.ClusterWatch shuts Ray down; the resume half holds either way")
def test_a_lost_ray_cluster_fails_the_run_clearly_and_the_next_run_resumes(worker_env: Path, tmp_path: Path) -> None:
    """The raylet fate-shares with its agents: killing `ray::DashboardAgent` loses the node, the whole local
    cluster. The run must fail with a message saying so (not be ended by Ray's core worker), and the next run
    must skip the shards it staged."""
    data = reviews(range(1, 41), "one")
    for row in data[::4]:
        row["body"] += SLOW
    config = write_project(tmp_path, {"a.parquet": data}, {"kind": "ray", "workers": 2})
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / "prefect"), "RAY_TMPDIR": temp}
    env.pop("PREFECT_API_URL", None)
    with leaves_no_process() as tag:
        cli = subprocess.Popen([CLI, "backfill", str(config)], env={**env, **tag}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not fully_staged(tmp_path / "lancedb") and time.monotonic() < deadline:
            time.sleep(0.2)
        import psutil

        agents = [p for p in psutil.Process(cli.pid).children(recursive=True) if p.name() == "ray::DashboardAgent"]
        assert agents
        agents[0].kill()
        out, _ = cli.communicate(timeout=300)
    assert cli.returncode == 1, out[-3000:]
    assert "failed: ClusterLost: the ray runner lost its cluster" in out, out[-3000:]
    assert "the next run of the same work resumes from them" in out
    with leaves_no_process() as tag:
        done = subprocess.run([CLI, "backfill", str(config)], env={**env, **tag}, capture_output=True, text=True,
                              timeout=600)
    shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed" in done.stdout + done.stderr, done.stdout[-3000:]
    table = lancedb.connect(tmp_path / "lancedb").open_table("reviews__body__fake")
    assert sorted(table.to_arrow()["id"].to_pylist()) == list(range(1, 41))


@pytest.mark.slow
def test_cli_ray_runner_starts_its_own_cluster_and_leaves_nothing_behind(worker_env: Path, tmp_path: Path) -> None:
    # --runner ray replaces the config's kind and keeps its size: a local cluster of 2 workers for the run.
    config = write_project(tmp_path, {"a.parquet": reviews(range(1, 13), "one")}, {"kind": "dask", "workers": 2})
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    with leaves_no_process() as tag:  # the CLI's Ray cluster and its temporary Prefect server
        env = {**os.environ, **tag, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / "prefect"),
               "RAY_TMPDIR": temp}
        env.pop("PREFECT_API_URL", None)
        done = subprocess.run([CLI, "backfill", str(config), "--runner", "ray"], env=env, capture_output=True,
                              text=True, timeout=600)
    shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Creating a local Ray instance" in done.stdout + done.stderr
    assert lancedb.connect(tmp_path / "lancedb").open_table("reviews__body__fake").count_rows() == 12
