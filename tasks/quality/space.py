"""What the statistics share: unit rows, exact cosine neighbours in blocks, cross-validated logistic regression.

Exact search is a matrix product per block of queries, so memory stays bounded (about 64 MB of
similarities at a time) whatever the number of rows, and the inner loop runs in BLAS.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

BLOCK_CELLS = 1 << 24  # similarities held at once (float32: 64 MB)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm, zero rows left at zero: cosine similarity becomes a dot product."""
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def similarity_blocks(
    queries: np.ndarray, base: np.ndarray, exclude: np.ndarray | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows of `queries`, their similarities to every row of `base`) a block at a time; unit rows in.

    `exclude[i]` is a row of `base` that query i may not find (itself, when queries come from base):
    its similarity is set to -inf.
    """
    block = max(1, BLOCK_CELLS // max(1, len(base)))
    for start in range(0, len(queries), block):
        rows = slice(start, min(start + block, len(queries)))
        sims = queries[rows] @ base.T
        if exclude is not None:
            sims[np.arange(sims.shape[0]), exclude[rows]] = -np.inf
        yield rows, sims


def top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's `k` largest values, largest first."""
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def cosine_neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """(n, k) indices of each row's k most cosine-similar other rows, most similar first (k <= n - 1)."""
    unit = unit_rows(vectors)
    k = min(k, len(unit) - 1)
    out = np.empty((len(unit), k), dtype=np.int64)
    for rows, sims in similarity_blocks(unit, unit, exclude=np.arange(len(unit))):
        out[rows] = top_k(sims, k)
    return out


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row, the share of the first k ids of `a` that are among the first k ids of `b`."""
    a, b = np.asarray(a)[:, :k], np.asarray(b)[:, :k]
    return (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1) / k


def cross_validated(x: np.ndarray, y: np.ndarray, folds: int, seed: int, proba: bool = False) -> np.ndarray:
    """Out-of-fold predictions (or class probabilities) of a standardised logistic regression.

    Stratified, shuffled folds (seeded). The model's matrix products are small: on one BLAS thread,
    since OpenBLAS threads spinning on them cost far more than they give on a busy machine.
    """
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return cross_val_predict(model, x, y, cv=cv, method="predict_proba" if proba else "predict")
