"""Task runners: where a run's shards execute, chosen per run without changing the flows.

`local` runs the stages in threads of the flow's process (the default). `ray` and `dask` submit every
stage as a task to a cluster, through prefect-ray and prefect-dask: a cluster the runner starts on
this machine for the run, or an existing one at `address` (KubeRay, a Dask scheduler). Whatever the
runner, shards stage their results under the database's `_staging` folder and the flow publishes once.

The flows ask this module for the few things that depend on the engine: how many shards to keep in
flight, how to hand the plan to the workers once rather than with every task, and what to submit the
embed stage under so that it, and only it, asks for a GPU.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from schemas.config import ConfigError, RunnerConfig, RunnerKind
from tasks.embedders.registry import PLUGIN_ENV

if TYPE_CHECKING:
    from prefect import Flow

T = TypeVar("T")

# local: enough to overlap one shard's preparation with another's inference, few enough that memory
# stays a few shards' worth whatever the size of the input.
LOCAL_IN_FLIGHT = 2
# cluster: shards in flight per task slot, so a worker that finishes a stage always finds the next one.
IN_FLIGHT_PER_SLOT = 2
# Ray: how long an idle worker above the CPU count lives (with its loaded models) before Ray ends it.
IDLE_WORKER_MS = 10 * 60 * 1000
# What workers must share with the flow's process to load the same models the same way: offline
# model loading, the Hugging Face cache, tokenizer threads, embedder plugins (only those set are sent).
WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", PLUGIN_ENV)


def local() -> ThreadPoolTaskRunner:
    """The default runner: threads of the flow's own process."""
    return ThreadPoolTaskRunner(max_workers=LOCAL_IN_FLIGHT)


def worker_env() -> dict[str, str]:
    """The variables of `WORKER_ENV` this process has, to be set on every worker."""
    return {name: os.environ[name] for name in WORKER_ENV if name in os.environ}


def ray_init_kwargs(spec: RunnerConfig) -> dict[str, Any]:
    """`ray.init` arguments: the workers' environment; for a cluster started here, its size and no dashboard.

    Ray hides from a task the GPUs it did not ask for only when told to (`RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`);
    otherwise a CPU stage on a GPU node would see every GPU and load its model there, holding GPU memory
    it never asked for. `address="local"` starts a new cluster even if another one runs on this machine
    (plain `ray.init()` would join the last one started here, which may be someone else's).

    GPU tasks run in worker processes of their own, so with the CPU workers there are more processes
    than CPUs, and Ray kills the ones above that count after a second idle (`idle_worker_killing_time_
    threshold_ms`): each replacement imports everything and loads its models again. Idle workers of a
    cluster started here live for `IDLE_WORKER_MS` instead (on a cluster you join, set
    `RAY_idle_worker_killing_time_threshold_ms` on its nodes: docs/scaling.md).
    """
    env = worker_env() | {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}}
    if spec.address is None:
        kwargs |= {"address": "local", "num_cpus": spec.workers, "include_dashboard": False,
                   "_system_config": {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_MS}}
    return kwargs


def dask_cluster_kwargs(spec: RunnerConfig) -> dict[str, Any]:
    """`distributed.LocalCluster` arguments: one single-threaded worker process per slot, no dashboard.

    Worker processes are spawned from this one, so they inherit its environment (`WORKER_ENV` included).
    """
    return {"n_workers": spec.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def _engine(kind: RunnerKind, module: str) -> ModuleType:
    """The module of a runner's engine, imported only when asked for: ray and dask are optional extras."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"runner {kind!r} needs the {kind} extra: pip install 'multiembed[{kind}]' ({e})") from None


def task_runner(spec: RunnerConfig) -> TaskRunner:
    """The Prefect task runner for `spec`."""
    if spec.kind == "ray":
        return _engine("ray", "flows.ray_runner").RayTaskRunner(address=spec.address,
                                                                 init_kwargs=ray_init_kwargs(spec))
    if spec.kind == "dask":
        if spec.address is not None:
            return _engine("dask", "prefect_dask").DaskTaskRunner(address=spec.address)
        return _engine("dask", "prefect_dask").DaskTaskRunner(cluster_kwargs=dask_cluster_kwargs(spec))
    return local()


def with_runner(flow: Flow, spec: RunnerConfig) -> Flow:
    """`flow` with its stages run where `spec` says."""
    return flow.with_options(task_runner=task_runner(spec))


def configured_cluster(flow: Flow, spec: RunnerConfig) -> RunnerConfig | None:
    """`spec`, the config's runner, when the running flow must hand its work to it; None to stay.

    It must when `spec` names a cluster and the running flow is `flow` as defined, on the local runner: a
    deployment's scheduled run, or a plain call from Python. A copy given its runner by `with_runner` (what
    the command line runs, `--runner` applied) stays where it was put.
    """
    context = FlowRunContext.get()
    if spec.kind == "local" or context is None or context.flow is not flow:
        return None
    return spec


def current_kind() -> RunnerKind:
    """The engine of the running flow's task runner (by the package its class, or a base class, comes from)."""
    packages = {cls.__module__.partition(".")[0] for cls in type(FlowRunContext.get().task_runner).__mro__}
    return "ray" if "prefect_ray" in packages else "dask" if "prefect_dask" in packages else "local"


def _dask_client() -> Any:
    return FlowRunContext.get().task_runner.client


def cluster_resources() -> dict[str, float]:
    """Task slots (`CPU`) and `GPU`s of the running flow's cluster, as it is now (an autoscaler may add more)."""
    kind = current_kind()
    if kind == "ray":
        import ray

        return {"CPU": ray.cluster_resources().get("CPU", 0), "GPU": ray.cluster_resources().get("GPU", 0)}
    if kind == "dask":
        client = _dask_client()
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        return {"CPU": sum(client.nthreads().values()), "GPU": sum(w["resources"].get("GPU", 0) for w in workers)}
    return {"CPU": float(os.cpu_count() or 1), "GPU": 0.0}


def shards_in_flight(spec: RunnerConfig) -> int:
    """How many shards the flow keeps submitted at once: a fixed few locally, two per slot of a cluster.

    The slots are `spec.workers` when given (for an autoscaling cluster, the size to grow to: it only
    scales up for work that is waiting), else the cluster's task slots when the run starts.
    """
    if current_kind() == "local":
        return LOCAL_IN_FLIGHT
    slots = spec.workers or int(cluster_resources()["CPU"])
    return max(LOCAL_IN_FLIGHT, IN_FLIGHT_PER_SLOT * slots)


def gpu_shortfall(gpus_per_task: float) -> str | None:
    """Why embed tasks asking for `gpus_per_task` GPUs may wait, if the cluster has no GPU to give them yet."""
    if not gpus_per_task or current_kind() == "local":
        return None
    have = cluster_resources()["GPU"]
    if have >= gpus_per_task:
        return None
    return (f"each embed task asks for {gpus_per_task:g} GPU but the {current_kind()} cluster has {have:g} now: "
            "embed tasks wait until GPU workers join (set runner.gpus_per_embed_task: 0 to embed on CPU)")


def share(value: T) -> T:
    """`value` as tasks should receive it: put in the cluster's object store once (Ray, Dask), so that
    submitting many tasks does not serialise it again for each; the workers resolve the reference
    before the task runs. Locally the value itself.

    On Dask the value goes to every worker (`broadcast`): scattered data has no lineage to recompute it from, so
    with one copy a worker killed from outside would take the plan with it, and every task that needs it would be
    forgotten by the scheduler (`FutureCancelledError: ... already forgotten`), failing the run. Ray's `put` from
    the flow's process lives in the head node's object store, which outlives any worker."""
    kind = current_kind()
    if kind == "ray":
        import ray

        return ray.put(value)
    if kind == "dask":
        return _dask_client().scatter(value, hash=False, broadcast=True)
    return value


@contextmanager
def embed_resources(gpus_per_task: float) -> Iterator[None]:
    """Submit the embed stage under this: on a cluster it asks for `gpus_per_task` GPUs (CPU stages ask for
    none, so they never hold one). Locally, or with no GPU asked for, nothing changes."""
    kind = current_kind()
    if not gpus_per_task or kind == "local":
        context = nullcontext()
    elif kind == "ray":
        from prefect_ray.context import remote_options

        # Ray retires a worker after one GPU task unless told otherwise (max_calls=1 for GPU tasks, against
        # leaks): it would load the model again for every shard. 0 keeps the worker and its loaded model.
        context = remote_options(num_gpus=gpus_per_task, max_calls=0)
    else:
        import dask

        context = dask.annotate(resources={"GPU": gpus_per_task})
    with context:
        yield
