"""The allocator setting that keeps a long run's heap flat (`flows.memory`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows import memory


def test_the_threshold_is_fixed_here_and_handed_to_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory.ENV, raising=False)
    assert memory.steady_heap() is True  # glibc (every Linux machine this runs on) took it
    child = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{memory.ENV}'])"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(memory.MMAP_THRESHOLD)


def test_a_users_threshold_is_kept_and_an_unreadable_one_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memory.ENV, "65536")
    assert memory.steady_heap() is True
    assert memory.os.environ[memory.ENV] == "65536"
    monkeypatch.setenv(memory.ENV, "lots")
    assert memory.steady_heap() is False


def test_arrow_allocates_from_the_system_allocator_here_and_in_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    monkeypatch.delenv(memory.ARROW_POOL_ENV, raising=False)
    before = pa.default_memory_pool()
    try:
        memory.steady_heap()
        assert pa.default_memory_pool().backend_name == "system"
        code = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "system"
    finally:
        pa.set_memory_pool(before)
