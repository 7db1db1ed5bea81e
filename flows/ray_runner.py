"""prefect-ray's task runner, submitting every task through one Ray remote function per set of remote options.

prefect-ray 0.6.0 wraps its task entry point in a new `ray.remote(...)` for every task it submits
(PrefectHQ/prefect#5653). Ray gives each remote function its own id, hence its own scheduling class,
so a worker lease is never reused for the next task: each task's function is exported to the cluster
again, and the raylet starts worker processes for the backlog only to kill them after a second idle.
Every new worker pays the imports and loads the models again. On this project's 2-core machine two
44-row backfills took 47 s and 18 s in 7 worker processes that way, and 23 s and 12 s in 2 with one
remote function (`docs/scaling.md`). Everything else is prefect-ray's own code path.

Worker loss. A worker process killed mid-task (the OOM killer, a preempted node) is Ray's to recover: every
task is submitted with `max_retries` for system failures (Ray reruns it on another worker, and rebuilds lost
task outputs from their lineage) and `retry_exceptions=False` (errors raised by a stage are Prefect's to
retry). Losing the node itself is not recoverable: on the cluster started here the raylet, which fate-shares
with its agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`), is the whole cluster, and once it is gone
Ray's core worker ends the flow's process (exit 1, "The connection to the plasma store is failed. Terminate
the process") at its next use of the object store. `ClusterWatch` sees the raylet or GCS of a cluster this
process started end, shuts Ray down first (the process then lives), and the futures raise `ClusterLost`: the
run fails with that message, and the next run resumes from the shards staged so far.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import ray
from prefect.client.schemas.objects import RunInput
from prefect.context import serialize_context
from prefect.futures import PrefectFuture
from prefect.logging import get_logger
from prefect.tasks import Task
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_ray import task_runners
from prefect_ray.context import RemoteOptionsContext
from ray.remote_function import RemoteFunction

# Ray's default, stated: how often Ray reruns a task whose worker died, or rebuilds an output that was lost.
SYSTEM_RETRIES = 3
# Seconds between looks at a pending future, and at the cluster's processes: how soon a loss is noticed.
POLL_S = 0.5
# Ray errors that mean a worker, a node or the objects they held were lost (not an error of the task's own code).
LOST_ERRORS = (ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError,
               ray.exceptions.LocalRayletDiedError, ray.exceptions.RaySystemError)
logger = get_logger("multiembed.ray")


class ClusterLost(RuntimeError):
    """The Ray cluster, or a task's every retry, was lost: the run stops, its staged shards are kept."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the ray runner lost its cluster or a task's workers ({cause}): the run stops; the shards "
                         "staged so far are kept, and the next run of the same work resumes from them")


class ClusterWatch:
    """Watches the raylet and GCS processes of a Ray cluster this process started; when one ends, records why and
    shuts Ray down at once, before Ray's core worker would end this process at its next use of the object store."""

    def __init__(self) -> None:
        self.lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching, if this process started the cluster (it has the raylet's process); else do nothing."""
        node = getattr(ray._private.worker, "_global_node", None)
        names = ("raylet", "gcs_server")
        watched = {n: p.process for n in names for p in (getattr(node, "all_processes", None) or {}).get(n, [])}
        if "raylet" in watched:
            self._thread = threading.Thread(target=self._watch, args=(watched,), name="ray-cluster-watch",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the cluster's own shutdown, which ends the processes on purpose)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self, processes: dict[str, subprocess.Popen]) -> None:
        while not self._stop.wait(POLL_S):
            ended = {name: p.poll() for name, p in processes.items() if p.poll() is not None}
            if ended:
                self.lose(", ".join(f"its {name} process ended with exit code {code}" for name, code in ended.items()))
                return

    def lose(self, cause: str) -> None:
        """Record the cluster as lost for `cause`, say so in the log, and shut Ray down (once)."""
        with self._lock:
            if self.lost is not None:
                return
            self.lost = cause
            logger.error("%s", ClusterLost(cause))
            ray.shutdown()


# The watch of the running flow's cluster, which the futures consult (a module global, not a field of the
# futures, which are pickled into the tasks that wait for them).
WATCH = ClusterWatch()


class RayFuture(task_runners.PrefectRayFuture):
    """`PrefectRayFuture` that waits in short steps, and raises `ClusterLost` when the cluster or every retry of
    a task's worker is lost, rather than Ray's own errors (or this process's end)."""

    def _check(self) -> None:
        if WATCH.lost is not None:
            raise ClusterLost(WATCH.lost)

    def _await(self, timeout: float | None) -> None:
        """Return when the task is done or `timeout` has passed (None: no limit), looking at the cluster between
        steps; `fetch_local=False` keeps the result where it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check()
            step = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            try:
                ready, _ = ray.wait([self.wrapped_future], timeout=step, fetch_local=False)
            except (Exception, SystemExit):  # Ray shut down under the wait: SystemExit from its core worker
                self._check()
                raise
            if ready or (deadline is not None and time.monotonic() >= deadline):
                return

    def wait(self, timeout: float | None = None) -> None:
        """As `PrefectRayFuture.wait`, raising `ClusterLost` if the cluster is lost."""
        if not self._final_state:
            self._await(timeout)
            self._check()
        super().wait(0 if timeout is not None else None)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        """As `PrefectRayFuture.result`, raising `ClusterLost` for a lost cluster or a task whose workers Ray lost
        more often than it retries."""
        if not self._final_state:
            self._await(timeout)
        try:
            return super().result(timeout=0 if timeout is not None else None, raise_on_failure=raise_on_failure)
        except LOST_ERRORS as e:
            if isinstance(e, ray.exceptions.LocalRayletDiedError) and WATCH.lost is None:
                WATCH.lose("its raylet died")  # before the watch sees it: shut down now, or Ray ends this process
            raise ClusterLost(WATCH.lost or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        except (Exception, SystemExit):
            self._check()
            raise


class RayTaskRunner(task_runners.RayTaskRunner):
    """`prefect_ray.RayTaskRunner` with its remote functions cached by their options, tasks retried by Ray when
    their worker is lost, and a lost cluster reported as `ClusterLost`."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(address=address, init_kwargs=init_kwargs)
        self._remote_functions: dict[str, RemoteFunction] = {}

    def _remote_function(self, options: dict[str, Any]) -> RemoteFunction:
        """The one remote function for tasks submitted with these remote options."""
        options = {"max_retries": SYSTEM_RETRIES, "retry_exceptions": False} | options
        key = repr(sorted(options.items()))
        if key not in self._remote_functions:
            self._remote_functions[key] = ray.remote(**options)(self._run_prefect_task)
        return self._remote_functions[key]

    def submit(self, task: Task, parameters: dict[str, Any], wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[RunInput]] | None = None) -> RayFuture:
        """As `prefect_ray.RayTaskRunner.submit`, through the cached remote function; `ClusterLost` once the cluster
        is lost."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        if WATCH.lost is not None:
            raise ClusterLost(WATCH.lost)
        task_run_id = uuid4()
        task_inputs = {k: collect_task_run_inputs_sync(v, future_cls=task_runners.PrefectRayFuture)
                       for k, v in parameters.items()}
        context = serialize_context(asset_ctx_kwargs={
            "task": task, "task_run_id": task_run_id, "task_inputs": task_inputs, "copy_to_child_ctx": True,
        })
        parameters, upstream_refs = self._exchange_prefect_for_ray_futures(parameters)
        remote = self._remote_function(RemoteOptionsContext.get().current_remote_options)
        try:
            object_ref = remote.options(name=task.name).remote(
                *upstream_refs, task=task, task_run_id=task_run_id, parameters=parameters, wait_for=wait_for,
                dependencies=dependencies, context=context,
            )
        except (Exception, SystemExit):
            if WATCH.lost is not None:
                raise ClusterLost(WATCH.lost) from None
            raise
        return RayFuture(task_run_id=task_run_id, wrapped_future=object_ref)

    def __enter__(self) -> RayTaskRunner:
        """Join or start the cluster (prefect-ray), and watch it if this process started it."""
        super().__enter__()
        global WATCH
        WATCH = ClusterWatch()
        WATCH.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Stop watching, then shut the cluster down if this runner started it (prefect-ray)."""
        WATCH.stop()
        if WATCH.lost is None:
            super().__exit__(*exc_info)
        else:  # Ray is already shut down
            super(task_runners.RayTaskRunner, self).__exit__(*exc_info)
