"""What the statistics share: unit rows, exact cosine neighbours in blocks, cross-validated logistic regression.

Exact search is a matrix product per block of queries, so memory stays bounded (about 64 MB of
similarities at a time) whatever the number of rows, and the inner loop runs in BLAS.
Norms and scales are computed in float64 on rows scaled by their largest entry, so huge vectors
(float32 near its maximum, float64 far beyond it) neither overflow nor lose their direction.
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
# A feature whose spread is below this share of the largest feature's is float32 rounding, not signal:
# standardising it would blow rounding noise up to unit variance (or divide by a scale that is 0 in float32).
NEGLIGIBLE_SPREAD = 1e-6


def peak_scaled(x: np.ndarray) -> np.ndarray:
    """float64 `x` divided by its largest absolute entry (unchanged when that is 0): for scale-free statistics."""
    x = np.asarray(x, dtype=np.float64)
    peak = np.abs(x).max(initial=0.0)
    return x / peak if peak > 0 else x


def scaled_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 rows divided by their largest absolute entry, that entry per row; 0 rows stay 0)."""
    x = np.asarray(vectors, dtype=np.float64)
    peak = np.abs(x).max(axis=1, keepdims=True) if x.size else np.zeros((len(x), 1))
    return np.divide(x, peak, out=np.zeros_like(x), where=peak > 0), peak[:, 0]


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """float64 L2 norm of each row, without overflow (inf only where the norm itself exceeds float64)."""
    scaled, peak = scaled_rows(vectors)
    with np.errstate(over="ignore"):
        return peak * np.linalg.norm(scaled, axis=1)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm, zero rows left at zero: cosine similarity becomes a dot product."""
    scaled, _ = scaled_rows(vectors)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    return np.divide(scaled, norms, out=np.zeros_like(scaled), where=norms > 0).astype(np.float32)


def informative_columns(x: np.ndarray) -> np.ndarray:
    """float64 columns of `x` whose spread is not negligible next to the widest one's (at least one column),
    scaled by the largest absolute entry (what follows standardises them, so the scale is free)."""
    x = peak_scaled(x)
    spread = x.std(axis=0) if len(x) else np.zeros(x.shape[1])
    keep = spread > NEGLIGIBLE_SPREAD * spread.max(initial=0.0)
    return x[:, keep] if keep.any() else np.zeros((len(x), 1))


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

    Stratified, shuffled folds (seeded), in float64 on the informative columns only (constant and
    near-constant ones carry no signal and break the scaling). The model's matrix products are small:
    on one BLAS thread, since OpenBLAS threads spinning on them cost far more than they give on a busy machine.
    """
    x = informative_columns(x)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return cross_val_predict(model, x, y, cv=cv, method="predict_proba" if proba else "predict")
