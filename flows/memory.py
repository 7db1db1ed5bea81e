"""Keep a long run's heap from growing with the number of shards it has embedded.

glibc's malloc serves a request above its mmap threshold with a mapping of its own, returned to the system
when freed, and smaller ones from the heap. By default the threshold rises to the size of every mapped
block freed (up to 32 MiB), so after the first shards the tokens, activations and vectors of each shard,
tens of MiB in sizes that change from shard to shard, come from the heap, whose freed space fragments and
is not returned. Measured on a 20,000-row MiniLM backfill: peak RSS 1,759 MiB with the default, 1,482 MiB
with the threshold fixed (docs/benchmarks.md). Fixing the threshold turns the rising off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept instead of rising
ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc reads this when a process starts: how workers and servers get it


def steady_heap() -> bool:
    """Fix the mmap threshold in this process (mallopt) and in every process it starts (the environment).

    Returns whether this process's allocator took it: False where the C library is not glibc, which
    leaves the default and changes nothing else. A threshold the user set in the environment is kept."""
    os.environ.setdefault(ENV, str(MMAP_THRESHOLD))
    try:
        threshold = int(os.environ[ENV])
    except ValueError:  # glibc ignores a value it cannot read; so do we
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, threshold) == 1)
