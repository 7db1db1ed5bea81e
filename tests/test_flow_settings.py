"""Prefect settings for flows started from this process: heartbeats only where a server outlives it."""

from __future__ import annotations

import threading

from prefect import flow
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows.settings import run_settings


def test_heartbeats_are_off_without_a_configured_server_and_kept_with_one() -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY}):
        default = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
        assert default is not None  # Prefect's default: a heartbeat every few minutes
        with run_settings():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == default
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}), run_settings():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == default


def heartbeat_threads() -> int:
    """Threads running Prefect's flow-run heartbeat loop (`flow_engine._send_heartbeats`)."""
    return sum(getattr(next(iter(getattr(t, "_args", ())), None), "__name__", "") == "heartbeat_loop"
               for t in threading.enumerate())


def test_a_flow_run_under_them_starts_no_heartbeat_thread(prefect_server: None) -> None:
    """The heartbeat thread is what each flow run waited on, up to a second, when it ended."""
    seen: list[int] = []

    @flow
    def probe() -> None:
        seen.append(heartbeat_threads())

    probe()  # the test server's settings: those of a CLI run without a configured server
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        probe()
    assert seen == [0, 1]
