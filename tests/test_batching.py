"""The encode loop's batching: token-budget cuts, background prefetch, out-of-memory halving, thread limits."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from tasks.embedders import batching
from tasks.embedders.base import run_batches
from tasks.embedders.batching import budget_batches, halving, prefetch, split_batch
from tasks.embedders.text import TextEmbedder, TokenBatches


def test_budget_batches_cover_every_row_once_within_the_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(1, 300, size=1000))[::-1]
    cuts = budget_batches(lengths, budget=2048, max_rows=128)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False))
    for start, stop in cuts:
        rows = stop - start
        assert rows <= 128
        assert rows * lengths[start] <= 2048 or rows == 1
    # Short rows share big batches, long rows small ones: not a fixed row count.
    sizes = [stop - start for start, stop in cuts]
    assert sizes[0] < sizes[-1]


def test_budget_batches_put_an_over_budget_row_alone_and_reject_unsorted_input() -> None:
    assert budget_batches(np.array([500, 10, 10]), budget=100) == [(0, 1), (1, 3)]
    assert budget_batches(np.array([], dtype=np.int64), budget=100) == []
    with pytest.raises(ValueError, match="longest first"):
        budget_batches(np.array([1, 5]), budget=100)


def test_prefetch_keeps_order_and_runs_the_producer_ahead_in_another_thread() -> None:
    produced_in: set[str] = set()
    produced = []

    def items():
        for i in range(10):
            produced_in.add(threading.current_thread().name)
            produced.append(i)
            yield i

    out = []
    for item in prefetch(items(), depth=2):
        # While the consumer holds item i (the model's forward pass), the producer gets ahead to i + 2.
        # A plain, synchronous iteration would be stuck at i + 1 and time out here.
        deadline = time.monotonic() + 30
        while len(produced) < min(10, item + 3) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(produced) >= min(10, item + 3)
        out.append(item)
    assert out == list(range(10))
    assert produced_in == {"prefetch"}


def test_prefetch_raises_the_producers_error_where_it_happened() -> None:
    def items():
        yield 1
        raise KeyError("bad batch")

    got = []
    with pytest.raises(KeyError, match="bad batch"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1]


def test_prefetch_stops_the_producer_when_the_consumer_stops() -> None:
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert len(produced) <= 4
    assert not any(t.name == "prefetch" for t in threading.enumerate())


class FakeOOM:
    """A forward pass that runs out of memory on batches of more than `fits` rows, and records every call."""

    def __init__(self, fits: int) -> None:
        self.fits, self.calls = fits, []

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = batch["x"].shape[0]
        self.calls.append(rows)
        if rows > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch["x"] * 2


def test_halving_retries_halves_until_they_fit_and_keeps_row_order() -> None:
    forward = FakeOOM(fits=3)
    x = torch.arange(10.0)[:, None]
    out = halving(forward)({"x": x})
    torch.testing.assert_close(out, x * 2)
    assert forward.calls == [10, 5, 2, 3, 5, 2, 3]


def test_halving_gives_up_on_a_single_row_and_never_hides_other_errors() -> None:
    with pytest.raises(torch.OutOfMemoryError):
        halving(FakeOOM(fits=0))({"x": torch.ones(4, 1)})

    def broken(batch):
        raise RuntimeError("shape mismatch")

    calls = []
    with pytest.raises(RuntimeError, match="shape mismatch"):
        halving(lambda b: calls.append(1) or broken(b))({"x": torch.ones(4, 1)})
    assert calls == [1]


def test_split_batch_handles_tensors_arrays_and_dicts() -> None:
    a, b = split_batch(np.arange(5))
    assert a.tolist() == [0, 1] and b.tolist() == [2, 3, 4]
    first, second = split_batch({"ids": torch.arange(4), "mask": torch.ones(4)})
    assert first["ids"].tolist() == [0, 1] and second["mask"].shape == (2,)


def test_run_batches_survives_a_simulated_oom_with_the_same_vectors() -> None:
    rng = np.random.default_rng(1)
    data = torch.from_numpy(rng.normal(size=(20, 3)).astype(np.float32))
    positions = rng.permutation(20)
    batches = [{"x": data[i : i + 8]} for i in range(0, 20, 8)]
    expected = run_batches(batches, positions, 20, 3, lambda b: b["x"] * 2)
    forward = FakeOOM(fits=2)
    got = run_batches(iter(batches), positions, 20, 3, forward)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got[positions], data.numpy() * 2)
    assert max(forward.calls) == 8 and forward.calls.count(8) == 2


def test_limit_threads_sizes_the_pools_to_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANCE_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads(), pa.cpu_count()
    try:
        assert batching.limit_threads(1) == 1
        assert torch.get_num_threads() == 1 and pa.cpu_count() == 1
        import os

        assert os.environ["LANCE_CPU_THREADS"] == "1" and os.environ["TOKENIZERS_PARALLELISM"]
    finally:
        torch.set_num_threads(before[0])
        pa.set_cpu_count(before[1])
    assert 1 <= batching.usable_cores() <= (__import__("os").cpu_count() or 1)


def bare_text_embedder(batch_size: int = 4) -> TextEmbedder:
    """A TextEmbedder's batching and padding without a model (what `embed` builds before the forward pass)."""
    embedder = object.__new__(TextEmbedder)
    embedder.token_budget, embedder.max_rows = batch_size * 8, batch_size * 4
    embedder.pad_id, embedder.token_types, embedder.device = 0, True, torch.device("cpu")
    return embedder


def test_text_batches_are_length_sorted_padded_per_batch_and_restore_input_order() -> None:
    rng = np.random.default_rng(2)
    lengths = rng.integers(2, 30, size=50)
    ids = rng.integers(1000, 2000, size=int(lengths.sum())).astype(np.int32)
    prepared = TokenBatches(ids, lengths.astype(np.int64), 50, 0)
    embedder = bare_text_embedder()
    order, cuts = embedder.batches(prepared)
    assert sorted(order.tolist()) == list(range(50))
    assert (np.diff(lengths[order]) <= 0).all()
    offsets = prepared.offsets
    seen = []
    for start, stop in cuts:
        rows = order[start:stop]
        batch = embedder.collate(prepared, offsets, rows)
        width = batch["input_ids"].shape[1]
        assert width == lengths[rows].max() and width * len(rows) <= embedder.token_budget or len(rows) == 1
        assert batch["attention_mask"].sum(dim=1).tolist() == lengths[rows].tolist()
        assert not batch["token_type_ids"].any()
        for j, row in enumerate(rows):
            real = batch["input_ids"][j, : lengths[row]].numpy()
            np.testing.assert_array_equal(real, ids[offsets[row] : offsets[row] + lengths[row]])
            assert not batch["input_ids"][j, lengths[row] :].any()  # padded with pad_id 0
        seen += rows.tolist()
    assert seen == order.tolist()
    # Less padding than fixed batches of the same row count over the same sorted order.
    padded = sum((stop - start) * lengths[order[start]] for start, stop in cuts)
    assert padded <= 1.25 * lengths.sum()


def test_forward_passes_of_concurrent_calls_take_turns() -> None:
    active, most = [0], [0]
    guard = threading.Lock()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.005)  # a forward pass, long enough for another thread to try to start one
        with guard:
            active[0] -= 1
        return batch

    data = [torch.ones(2, 3) for _ in range(10)]
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_batches(data, np.arange(20), 20, 3, forward)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all((r == 1).all() for r in results)
    assert most[0] == 1
