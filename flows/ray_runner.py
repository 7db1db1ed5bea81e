"""prefect-ray's task runner, submitting every task through one Ray remote function per set of remote options.

prefect-ray 0.6.0 wraps its task entry point in a new `ray.remote(...)` for every task it submits
(PrefectHQ/prefect#5653). Ray gives each remote function its own id, hence its own scheduling class,
so a worker lease is never reused for the next task: each task's function is exported to the cluster
again, and the raylet starts worker processes for the backlog only to kill them after a second idle.
Every new worker pays the imports and loads the models again. On this project's 2-core machine two
44-row backfills took 47 s and 18 s in 7 worker processes that way, and 23 s and 12 s in 2 with one
remote function (`docs/scaling.md`). Everything else is prefect-ray's own code path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import ray
from prefect.client.schemas.objects import RunInput
from prefect.context import serialize_context
from prefect.futures import PrefectFuture
from prefect.tasks import Task
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_ray import task_runners
from prefect_ray.context import RemoteOptionsContext
from ray.remote_function import RemoteFunction


class RayTaskRunner(task_runners.RayTaskRunner):
    """`prefect_ray.RayTaskRunner` with its remote functions cached by their options."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(address=address, init_kwargs=init_kwargs)
        self._remote_functions: dict[str, RemoteFunction] = {}

    def _remote_function(self, options: dict[str, Any]) -> RemoteFunction:
        """The one remote function for tasks submitted with these remote options."""
        key = repr(sorted(options.items()))
        if key not in self._remote_functions:
            wrap = ray.remote(**options) if options else ray.remote
            self._remote_functions[key] = wrap(self._run_prefect_task)
        return self._remote_functions[key]

    def submit(self, task: Task, parameters: dict[str, Any], wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[RunInput]] | None = None) -> task_runners.PrefectRayFuture:
        """As `prefect_ray.RayTaskRunner.submit`, through the cached remote function."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        task_run_id = uuid4()
        task_inputs = {k: collect_task_run_inputs_sync(v, future_cls=task_runners.PrefectRayFuture)
                       for k, v in parameters.items()}
        context = serialize_context(asset_ctx_kwargs={
            "task": task, "task_run_id": task_run_id, "task_inputs": task_inputs, "copy_to_child_ctx": True,
        })
        parameters, upstream_refs = self._exchange_prefect_for_ray_futures(parameters)
        remote = self._remote_function(RemoteOptionsContext.get().current_remote_options)
        object_ref = remote.options(name=task.name).remote(
            *upstream_refs, task=task, task_run_id=task_run_id, parameters=parameters, wait_for=wait_for,
            dependencies=dependencies, context=context,
        )
        return task_runners.PrefectRayFuture(task_run_id=task_run_id, wrapped_future=object_ref)
