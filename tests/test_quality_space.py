"""Exact cosine neighbours and overlaps against brute-force loops (also the reference the other quality tests use)."""

from __future__ import annotations

import math

import numpy as np

from tasks.quality import space
from tasks.quality.space import cosine_neighbours, neighbour_overlap, unit_rows


def cosine(a, b) -> float:
    """Cosine similarity of two sequences of numbers, in plain Python."""
    return sum(p * q for p, q in zip(a, b, strict=True)) / math.sqrt(sum(p * p for p in a) * sum(q * q for q in b))


def brute_neighbours(x: np.ndarray, k: int) -> list[list[int]]:
    """Each row's k most cosine-similar other rows, most similar first, by sorting every row in Python."""
    rows = np.asarray(x).tolist()
    return [sorted((j for j in range(len(rows)) if j != i), key=lambda j: -cosine(rows[i], rows[j]))[:k]
            for i in range(len(rows))]


def test_neighbours_match_brute_force_across_blocks(monkeypatch):
    x = np.random.default_rng(0).standard_normal((60, 7)).astype(np.float32)
    monkeypatch.setattr(space, "BLOCK_CELLS", 7 * 60)  # 7 queries per block: several blocks, a ragged last one
    assert cosine_neighbours(x, 5).tolist() == brute_neighbours(x, 5)
    assert cosine_neighbours(x[:4], 10).shape == (4, 3)  # at most n - 1 neighbours


def test_neighbour_overlap_matches_sets():
    rng = np.random.default_rng(1)
    a = np.array([rng.permutation(30)[:10] for _ in range(20)])
    b = np.array([rng.permutation(30)[:10] for _ in range(20)])
    expected = [len(set(p[:4]) & set(q[:4])) / 4 for p, q in zip(a.tolist(), b.tolist(), strict=True)]
    assert np.allclose(neighbour_overlap(a, b, 4), expected)


def test_unit_rows_leaves_zero_rows():
    u = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(u, [[0.6, 0.8], [0.0, 0.0]]) and u.dtype == np.float32
