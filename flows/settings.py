"""Prefect settings for flows started from this process (the CLI, the demo, the benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

from flows.server_guard import guard_environment

# Flow runs without the heartbeat thread.
NO_HEARTBEATS = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


@contextmanager
def run_settings() -> Iterator[None]:
    """Without a configured Prefect API (`PREFECT_API_URL`), flows report to a temporary server that lives
    only as long as this process, so no one is left to notice a crashed run's missing heartbeats: the
    heartbeat thread is turned off. It is not free: Prefect 3.8.8 joins it when each flow run ends, and it
    sleeps in 1 s steps, so every flow run (a refresh, its quality subflow) waited up to a second for it
    (docs/benchmarks.md, section 4). The temporary server is guarded to end with this process, even one killed
    with SIGKILL (`flows.server_guard`). With a server configured, Prefect's own heartbeat setting stays."""
    if get_current_settings().api.url:
        yield
        return
    with temporary_settings(updates=NO_HEARTBEATS), guard_environment():
        yield
