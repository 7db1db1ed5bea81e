"""Drift between a reference sample (the previous table version) and a current one.

Vectors:
- MMD² (unbiased, RBF kernel, bandwidth = median pairwise distance of the pooled sample) with a
  permutation p-value: does anything at all differ between the two distributions?
- domain classifier: ROC AUC of a logistic regression telling current from reference rows,
  cross-validated (0.5: indistinguishable; drift above 0.55, as in Evidently): how much differs;
- drifted components: share of dimensions whose two-sample KS test rejects after a Benjamini-Hochberg
  (or Bonferroni) correction (drift above 0.2, as in Evidently);
- cosine distance between the centroids: where the mass moved, reported without a threshold.
The overall flag, metric `drift`, is: domain classifier AUC > 0.55 AND MMD p < 0.05. The classifier
says the shift is material, the permutation test that it is not noise. Calibrated on random splits of
scikit-learn's digits: it fired in 0 of 200 splits at 898 rows a side and 1 of 100 at 300 a side
(the MMD test alone: 11 of 200, as a 5% test should), and it flags digits 0-4 against 5-9
(tests/test_quality_drift.py checks both).
The components warn on their own; only the flag carries the caller's severity.

Scalar features (PSI with quantile bins of the reference, KS per column) and the neighbourhood
overlap of two models on the same rows (`knn_overlap`) are here too. Non-finite rows are left out; a
statistic either side has too few rows for is None, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from tasks.quality.metric import SAMPLE_SIZES, Metric, Severity, check, subsample, threshold_for, unknown
from tasks.quality.space import cosine_neighbours, cross_validated, neighbour_overlap, peak_scaled

Correction = Literal["bh", "bonferroni"]
FOLDS = 5  # the domain classifier's cross-validation: each side needs a row per fold


def mmd_test(
    reference: np.ndarray, current: np.ndarray, *, permutations: int = 200, seed: int = 0
) -> tuple[float, float, float]:
    """(unbiased MMD², permutation p-value, RBF bandwidth) of the two samples (at least 2 rows each).

    The pooled sample is divided by its largest entry first: with the median bandwidth the statistic does
    not depend on the scale, and squared distances of huge vectors cannot overflow.
    """
    pooled = np.vstack([reference, current]).astype(np.float64)
    peak = np.abs(pooled).max(initial=0.0) or 1.0
    x = pooled / peak
    m, n = len(reference), len(current)
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    bandwidth = float(np.sqrt(np.median(d2[np.triu_indices(len(x), 1)]))) or 1.0
    kernel = np.exp(-d2 / (2 * bandwidth**2))
    np.fill_diagonal(kernel, 0)  # the unbiased estimate leaves out k(x, x)
    order = np.random.default_rng(seed).random((permutations, m + n)).argsort(axis=1)[:, :m]
    z = np.zeros((permutations + 1, m + n))
    z[0, :m] = 1  # the observed split first, then the permuted ones
    np.put_along_axis(z[1:], order, 1, axis=1)
    row_sums = kernel.sum(axis=1)
    xx = ((kernel @ z.T).T * z).sum(axis=1)
    xy = z @ row_sums - xx
    yy = row_sums.sum() - 2 * (z @ row_sums) + xx
    mmd2 = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)
    p = (1 + (mmd2[1:] >= mmd2[0]).sum()) / (1 + permutations)
    return float(mmd2[0]), float(p), bandwidth * float(peak)


def domain_classifier_auc(reference: np.ndarray, current: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling current rows (1) from reference rows (0).

    Each side needs at least `folds` rows (one per fold)."""
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    proba = cross_validated(np.vstack([reference, current]), y, folds, seed, proba=True)[:, 1]
    return float(roc_auc_score(y, proba))


def drifted_share(
    reference: np.ndarray, current: np.ndarray, *, alpha: float = 0.05, correction: Correction = "bh"
) -> tuple[float, np.ndarray]:
    """(share of dimensions whose corrected KS p-value is below alpha, the raw p-values)."""
    p = np.atleast_1d(stats.ks_2samp(reference, current, axis=0, method="asymp").pvalue)
    adjusted = stats.false_discovery_control(p) if correction == "bh" else np.minimum(p * len(p), 1)
    return float((adjusted < alpha).mean()), p


def centroid_distance(reference: np.ndarray, current: np.ndarray) -> float | None:
    """Cosine distance between the mean vectors, in [0, 2]; None when a mean is the zero vector (no direction)."""
    pooled = peak_scaled(np.vstack([reference, current]))  # one scale for both sides
    a, b = pooled[: len(reference)].mean(axis=0), pooled[len(reference) :].mean(axis=0)
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return None
    return float(np.clip(1 - (a / norm_a) @ (b / norm_b), 0.0, 2.0))


def drift_metrics(
    reference: np.ndarray, current: np.ndarray, *, seed: int = 0, permutations: int = 200,
    correction: Correction = "bh", thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> list[Metric]:
    """The four vector drift statistics and the overall `drift` flag (see the module's docstring)."""
    def sample(x: np.ndarray, size: str, offset: int) -> np.ndarray:
        return x[subsample(len(x), SAMPLE_SIZES[size], seed + offset)]

    def judged(name: str, value: float, worse: Literal["higher", "lower"], **details: object) -> Metric:
        return check(name, value, worse, thresholds=thresholds, details=details)

    reference, current = (finite_rows(x) for x in (reference, current))
    sizes = {"reference_rows": len(reference), "current_rows": len(current)}
    names = ["mmd_p_value", "domain_classifier_auc", "drifted_components_share", "centroid_cosine_distance", "drift"]
    if min(len(reference), len(current)) < FOLDS:
        return [unknown(name, f"fewer than {FOLDS} finite rows on a side", **sizes) for name in names]
    mmd2, p, bandwidth = mmd_test(sample(reference, "mmd", 0), sample(current, "mmd", 1), permutations=permutations,
                                  seed=seed)
    auc = domain_classifier_auc(sample(reference, "classifier", 2), sample(current, "classifier", 3), seed=seed)
    alpha = threshold_for("component_p_value", thresholds)
    share, _ = drifted_share(reference, current, alpha=alpha, correction=correction)
    centroid = centroid_distance(reference, current)
    no_direction = {} if centroid is not None else {"reason": "a mean vector is zero: it has no direction"}
    out = [judged("mmd_p_value", p, "lower", mmd2=mmd2, bandwidth=bandwidth, permutations=permutations, seed=seed),
           judged("domain_classifier_auc", auc, "higher", seed=seed),
           judged("drifted_components_share", share, "higher", correction=correction, alpha=alpha),
           judged("centroid_cosine_distance", centroid, "higher", **no_direction)]
    flagged = out[1].status != "ok" and out[0].status != "ok"
    out.append(Metric("drift", float(flagged), None, severity if flagged else "ok", {
        "rule": "domain_classifier_auc > threshold and mmd_p_value < threshold", "domain_classifier_auc": auc,
        "mmd_p_value": p, **sizes}))
    return out


def finite_rows(x: np.ndarray) -> np.ndarray:
    """The rows of `x` without a NaN or infinite value."""
    x = np.asarray(x)
    return x[np.isfinite(x).all(axis=1)]


def psi(reference: np.ndarray, current: np.ndarray, *, bins: int = 10, eps: float = 1e-4) -> float | None:
    """Population stability index over the reference's quantile bins; empty bins count as `eps`.

    None when either side has no finite value."""
    reference, current = (v[np.isfinite(v)] for v in (np.asarray(reference, float), np.asarray(current, float)))
    if not (len(reference) and len(current)):
        return None
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])
    r, c = (np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1) / len(v)
            for v in (reference, current))
    r, c = np.where(r == 0, eps, r), np.where(c == 0, eps, c)
    return float(((c - r) * np.log(c / r)).sum())


def feature_drift(
    reference: np.ndarray, current: np.ndarray, columns: Sequence[str], *, bins: int = 10,
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> list[Metric]:
    """`psi:<column>` (0.1 warns, 0.25 gives `severity`) and `ks_p_value:<column>` for each scalar column."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    out = []
    for i, column in enumerate(columns):
        ref, cur = reference[:, i], current[:, i]
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        if not (len(ref) and len(cur)):
            reason = "no finite value on a side"
            out += [unknown(f"psi:{column}", reason, bins=bins), unknown(f"ks_p_value:{column}", reason)]
            continue
        ks = stats.ks_2samp(ref, cur, method="asymp")
        out += [check(f"psi:{column}", psi(ref, cur, bins=bins), "higher", thresholds=thresholds, severity=severity,
                      details={"bins": bins}),
                check(f"ks_p_value:{column}", ks.pvalue, "lower", thresholds=thresholds, severity=severity,
                      details={"statistic": float(ks.statistic)})]
    return out


def knn_overlap(
    old_vectors: np.ndarray, new_vectors: np.ndarray, *, k: int = 10, seed: int = 0,
    sample: int = SAMPLE_SIZES["neighbours"], thresholds: Mapping[str, float] | None = None,
    severity: Severity = "warn",
) -> Metric:
    """Mean share of each row's k nearest neighbours under the old model kept under the new (rows aligned,
    rows with a non-finite value in either left out)."""
    old_vectors, new_vectors = np.asarray(old_vectors), np.asarray(new_vectors)
    finite = np.flatnonzero(np.isfinite(old_vectors).all(axis=1) & np.isfinite(new_vectors).all(axis=1))
    if len(finite) < 2:
        return unknown("knn_overlap", f"{len(finite)} finite rows: no neighbours", k=k)
    old_vectors, new_vectors = old_vectors[finite], new_vectors[finite]
    rows = subsample(len(old_vectors), sample, seed)
    old, new = (cosine_neighbours(np.asarray(v)[rows], k) for v in (old_vectors, new_vectors))
    return check("knn_overlap", neighbour_overlap(old, new, old.shape[1]).mean(), "lower", thresholds=thresholds,
                 severity=severity, details={"k": old.shape[1], "rows": len(rows), "seed": seed})
