"""Label-free health of a sample of vectors: is the space broken, degenerate or badly shaped?

- non-finite values: a model or input that produced NaN/inf;
- norm statistics: zero vectors (no direction) and outlying norms;
- duplicate vectors: different inputs collapsing to one point (or repeated inputs);
- anisotropy: the mean cosine of random pairs; near 1 when all vectors crowd into a narrow cone,
  which makes cosine similarity uninformative (Ethayarajh 2019);
- collapse: effective rank, exp of the entropy of the normalised singular values of the centred
  sample (Roy & Vetterli 2007), and the share of variance in the top components;
- hubness: skewness of the k-occurrence distribution (how often each row is among the k nearest
  neighbours of the others; Radovanović et al. 2010): hubs crowd search results.
Statistics other than the non-finite counts use the finite rows only, in float64; scale-free ones (rank,
variance shares) are computed on the sample divided by its largest entry, so huge norms cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

from tasks.quality.metric import SAMPLE_SIZES, Metric, Severity, Worse, check, subsample
from tasks.quality.space import cosine_neighbours, peak_scaled, row_norms, unit_rows


def anisotropy(vectors: np.ndarray, pairs: int = SAMPLE_SIZES["pairs"], seed: int = 0) -> tuple[float, float]:
    """(mean, standard error) of the cosine similarity of `pairs` random pairs of distinct rows."""
    unit = unit_rows(vectors)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(unit), pairs)
    j = (i + rng.integers(1, len(unit), pairs)) % len(unit)  # uniform over rows other than i
    cos = np.einsum("ij,ij->i", unit[i], unit[j])
    return float(cos.mean()), float(cos.std(ddof=1) / math.sqrt(pairs))


def spectrum(vectors: np.ndarray) -> np.ndarray:
    """Singular values of the centred rows divided by the largest absolute entry, largest first."""
    x = peak_scaled(vectors)
    return np.linalg.svd(x - x.mean(axis=0), compute_uv=False)


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(entropy) of the singular values normalised to sum 1: between 1 (one direction) and their count."""
    total = singular_values.sum()
    if total == 0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def k_occurrence(neighbours: np.ndarray) -> np.ndarray:
    """How many times each row appears in the others' neighbour lists."""
    return np.bincount(neighbours.ravel(), minlength=len(neighbours))


def health_metrics(
    vectors: np.ndarray,
    *,
    k: int = 10,
    top_k: int | None = None,
    seed: int = 0,
    sample: int = SAMPLE_SIZES["neighbours"],
    thresholds: Mapping[str, float] | None = None,
    severity: Severity = "warn",
) -> list[Metric]:
    """All label-free checks of `vectors` (n, d); `top_k` defaults to the top tenth of min(n - 1, d).

    Returns only `nonfinite_share` when fewer than two rows are finite.
    """
    def judged(name: str, value: float | None, worse: Worse = "higher", **details: object) -> Metric:
        return check(name, value, worse, thresholds=thresholds, severity=severity, details=details)

    vectors = np.asarray(vectors)
    n, d = vectors.shape
    finite_rows = np.isfinite(vectors).all(axis=1)
    out = [judged("nonfinite_share", 1 - finite_rows.mean() if n else 0.0, rows=n,
                  rows_nonfinite=int(n - finite_rows.sum()), values_nonfinite=int((~np.isfinite(vectors)).sum()))]
    x = vectors[finite_rows].astype(np.float64)
    n = len(x)
    if n < 2:
        return out

    norms = row_norms(x)
    out += [judged("norm_mean", norms.mean()), judged("norm_std", norms.std()),
            judged("norm_min", norms.min(), "lower"), judged("norm_max", norms.max())]
    unique = len(np.unique(x, axis=0))
    out.append(judged("duplicate_share", (n - unique) / n, rows=n, duplicates=n - unique))

    mean, error = anisotropy(x, seed=seed)
    out.append(judged("anisotropy", mean, pairs=SAMPLE_SIZES["pairs"], standard_error=error, seed=seed))

    s = spectrum(x)
    rank = effective_rank(s)
    most = min(n - 1, d)  # the most dimensions the sample can span
    # A tenth of what the sample can span: with fewer rows than dimensions, a tenth of the dimensions would
    # hold all the variance of any space.
    top_k = top_k or math.ceil(most / 10)
    variance = s**2
    out += [judged("effective_rank", rank, dimensions=d, most=most),
            judged("effective_rank_ratio", rank / most, "lower", effective_rank=rank, most=most),
            judged("top_k_variance_share", variance[:top_k].sum() / variance.sum() if variance.sum() else 1.0,
                   k=top_k, dimensions=d)]

    rows = subsample(n, sample, seed)
    counts = k_occurrence(cosine_neighbours(x[rows], k))
    skewness = float(stats.skew(counts.astype(np.float64))) if counts.min() < counts.max() else 0.0
    out.append(judged("hubness_skewness", skewness, k=min(k, len(rows) - 1), rows=len(rows), seed=seed,
                      max_occurrence=int(counts.max()), antihub_share=float((counts == 0).mean())))
    return out
