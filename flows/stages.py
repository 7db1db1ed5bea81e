"""The stages of `tasks.stages` as Prefect tasks: retries for transient errors, never for bad data.

Results stay in memory (no persistence, no input hashing): a task carries one shard, and what
survives a failure is the shard's staged files, not Prefect's result store.
"""

from __future__ import annotations

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from tasks import publish as publishing
from tasks import stages

TRANSIENT = (OSError, TimeoutError, ConnectionError)


def is_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry I/O and network failures; bad input fails the same way every time, so never retry it."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


def _stage(fn, name: str, retries: int = 2):
    return task(fn, name=name, retries=retries, retry_delay_seconds=[1, 5], retry_condition_fn=is_transient,
                cache_policy=NO_CACHE, persist_result=False)


plan = _stage(stages.plan_source, "plan")
fit = _stage(stages.fit, "fit", retries=0)
diff = _stage(stages.diff, "diff")
read = _stage(stages.read, "read")
validate = _stage(stages.validate, "validate", retries=0)
prepare = _stage(stages.prepare, "prepare", retries=0)
embed = _stage(stages.embed, "embed")
stage = _stage(stages.stage, "write")
publish = _stage(publishing.publish, "publish")
complete_interrupted = _stage(publishing.complete_interrupted, "complete-interrupted-publish")
