"""How the encode loop cuts, feeds and runs batches, whatever the modality.

- `budget_batches`: rows sorted longest first are cut into batches of at most a token budget of padded
  tokens (rows x the batch's longest row), so short inputs travel in many-row batches and long ones in
  few-row batches: the work, and the memory, of every forward pass is about the same.
- `prefetch`: a background thread builds the next batches (padding, stacking, pinning) while the model
  runs the current one.
- `halving`: on a CUDA out-of-memory error a batch is split in two and each half retried (down to one
  row), rather than the run failing.
- `limit_threads`: thread pools sized to the cores this process may use, so torch, the tokenizer, Arrow
  and LanceDB do not oversubscribe a small machine.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")
log = logging.getLogger(__name__)


def budget_batches(sorted_lengths: np.ndarray, budget: int, max_rows: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of consecutive batches over rows sorted longest first: each holds at most `budget`
    padded tokens (its row count times its first, longest row's length) and at most `max_rows` rows; a
    row longer than the budget is a batch on its own. One step per batch, not per row."""
    lengths = np.maximum(np.asarray(sorted_lengths, dtype=np.int64), 1)
    if len(lengths) > 1 and (np.diff(lengths) > 0).any():
        raise ValueError("rows must be sorted longest first")
    cuts, start, limit = [], 0, max_rows or len(lengths)
    while start < len(lengths):
        stop = min(len(lengths), start + max(1, min(limit, budget // int(lengths[start]))))
        cuts.append((start, stop))
        start = stop
    return cuts


class _Failed:
    """An exception raised by the producer thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` with up to `depth` of them produced ahead in a background thread.

    The producer's exceptions are raised in the consumer, at the point in the sequence where they
    happened. If the consumer stops early (an error in the model, say), the producer stops too.
    """
    if depth < 1:
        yield from items
        return
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            put(_Failed(e))
            return
        put(_DONE)

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an accelerator running out of memory (what halving the batch can cure)."""
    return isinstance(error, torch.OutOfMemoryError)


def batch_rows(batch: Any) -> int:
    """Rows in a batch: a tensor or array (first axis), or a dict of them."""
    if isinstance(batch, dict):
        return batch_rows(next(iter(batch.values())))
    return int(batch.shape[0])


def split_batch(batch: Any) -> tuple[Any, Any]:
    """The first and second half of a batch's rows (tensors, arrays, or dicts of them)."""
    half = batch_rows(batch) // 2
    if isinstance(batch, dict):
        return {k: v[:half] for k, v in batch.items()}, {k: v[half:] for k, v in batch.items()}
    return batch[:half], batch[half:]


def halving(forward: Callable[[Any], torch.Tensor],
            split: Callable[[Any], tuple[Any, Any]] = split_batch) -> Callable[[Any], torch.Tensor]:
    """`forward`, retried on halves of the batch when it runs out of accelerator memory.

    Each half that still does not fit is halved again; a single row that does not fit raises the error.
    The rows come back in the batch's order.
    """
    def run(batch: Any) -> torch.Tensor:
        try:
            return forward(batch)
        except Exception as e:
            rows = batch_rows(batch)
            if not is_out_of_memory(e) or rows < 2:
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("out of memory on a batch of %d rows: retrying it in two halves", rows)
        first, second = split(batch)
        return torch.cat([run(first), run(second)])

    return run


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def limit_threads(cores: int | None = None) -> int:
    """Size the compute thread pools to `cores` (default: the usable cores); returns the count used.

    torch's intra-op pool runs the model; the Rust tokenizer is told not to start its own pool
    (TOKENIZERS_PARALLELISM=false: batches are tokenised while the model runs, not in parallel with
    themselves); Arrow's CPU pool and LanceDB's (LANCE_CPU_THREADS, read when LanceDB starts) get the
    same count. Variables a user set are left alone.
    """
    import pyarrow as pa

    cores = cores or usable_cores()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LANCE_CPU_THREADS", str(cores))
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    if pa.cpu_count() > cores:
        pa.set_cpu_count(cores)
    return cores
