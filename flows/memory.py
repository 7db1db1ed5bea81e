"""Keep a long run's memory from growing with the number of rows it has embedded and published.

Two allocators kept what the run had freed:
- glibc's malloc serves a request above its mmap threshold with a mapping of its own, returned to the
  system when freed, and smaller ones from the heap. By default the threshold rises to the size of every
  mapped block freed (up to 32 MiB), so after the first shards the tokens, activations and vectors of each
  shard, tens of MiB in sizes that change from shard to shard, come from the heap, whose freed space
  fragments and is not returned. Fixing the threshold turns the rising off.
- pyarrow's default pool (mimalloc) keeps the pages of the staged batches that publishing streams into
  LanceDB: writing 200,000 staged 384-d rows raised RSS by 593 MiB, against 144 MiB with Arrow on the
  system allocator and the threshold fixed (80 MiB at 20,000 rows).
Measured end to end in docs/benchmarks.md (`bench/backfill_vs_st.py growth`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept instead of rising
ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc reads this when a process starts: how workers and servers get it
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"  # pyarrow reads this when it is first imported


def steady_heap() -> bool:
    """Fix the mmap threshold and put Arrow on the system allocator, in this process and in every process it
    starts (the environment); a value the user set in the environment is kept.

    Returns whether glibc took the threshold: False where the C library is not glibc, which leaves its
    default (Arrow's pool is set either way)."""
    import pyarrow as pa

    os.environ.setdefault(ARROW_POOL_ENV, "system")
    if os.environ[ARROW_POOL_ENV] == "system":
        pa.set_memory_pool(pa.system_memory_pool())
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
