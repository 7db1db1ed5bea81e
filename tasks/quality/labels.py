"""Label-based quality: does the space separate the classes of a label column?

Three views of the same question, from local to global:
- kNN accuracy: leave-one-out majority vote of the k = 10 cosine neighbours; what a search user sees;
- linear-probe accuracy: a logistic regression, stratified 5-fold cross-validated; whether the
  classes are linearly separable, the usual probe of a representation;
- clustering agreement: k-means with as many clusters as classes, scored by the v-measure; whether the
  classes are the dominant structure of the space, with no supervision at all.
Accuracies are judged against chance (the majority class's share) unless the caller sets a threshold.
Rows with a missing label should be left out by the caller; labels are any sortable array. Rows with a
non-finite value are left out here. A statistic without enough rows or classes is None, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import v_measure_score

from tasks.quality.metric import SAMPLE_SIZES, Metric, Severity, check, subsample, unknown
from tasks.quality.space import cosine_neighbours, cross_validated, unit_rows


def knn_predict(neighbours: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Majority class code among each row's neighbours; ties go to the smallest code (as scikit-learn)."""
    n, k = neighbours.shape
    classes = int(codes.max()) + 1
    cells = (np.arange(n)[:, None] * classes + codes[neighbours]).ravel()
    return np.bincount(cells, minlength=n * classes).reshape(n, classes).argmax(axis=1)


def _sampled(vectors: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded sample of the finite rows, with labels as class codes 0..C-1."""
    vectors, labels = np.asarray(vectors), np.asarray(labels)
    finite = np.flatnonzero(np.isfinite(vectors).all(axis=1))
    rows = finite[subsample(len(finite), sample, seed)]
    return vectors[rows], np.unique(labels[rows], return_inverse=True)[1].ravel()


def _chance(codes: np.ndarray) -> float:
    """Accuracy of always answering the most frequent class."""
    return float(np.bincount(codes).max() / len(codes))


def knn_accuracy(
    vectors: np.ndarray, labels: np.ndarray, *, k: int = 10, seed: int = 0, sample: int = SAMPLE_SIZES["neighbours"],
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> Metric:
    """Leave-one-out accuracy of the majority label of each row's k nearest (cosine) neighbours."""
    x, codes = _sampled(vectors, labels, sample, seed)
    if len(x) < 2:
        return unknown("knn_accuracy", f"{len(x)} finite rows: no neighbours to vote", k=k, rows=len(x))
    correct = knn_predict(cosine_neighbours(x, k), codes) == codes
    return check("knn_accuracy", correct.mean(), "lower", thresholds=thresholds, severity=severity,
                 default=_chance(codes), details={"k": k, "rows": len(x), "chance": _chance(codes), "seed": seed})


def linear_probe_accuracy(
    vectors: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0, sample: int = SAMPLE_SIZES["probe"],
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> Metric:
    """Cross-validated accuracy of a logistic regression on the unit rows (stratified folds, seeded).

    Classes with fewer members than folds cannot appear in every fold: they are left out (and counted
    in `details`); with fewer than two classes left the value is None.
    """
    x, codes = _sampled(vectors, labels, sample, seed)
    sizes = np.bincount(codes)
    kept = sizes[codes] >= folds
    x, codes = x[kept], codes[kept]
    details = {"folds": folds, "rows": int(kept.sum()), "dropped_classes": int((sizes < folds).sum()),
               "dropped_rows": int((~kept).sum()), "seed": seed}
    if len(np.unique(codes)) < 2:
        return unknown("linear_probe_accuracy", f"fewer than 2 classes with {folds} rows or more", **details)
    predicted = cross_validated(unit_rows(x), codes, folds, seed)
    details["chance"] = _chance(codes)
    return check("linear_probe_accuracy", (predicted == codes).mean(), "lower", thresholds=thresholds,
                 severity=severity, default=details["chance"], details=details)


def cluster_agreement(
    vectors: np.ndarray, labels: np.ndarray, *, seed: int = 0, sample: int = SAMPLE_SIZES["clusters"],
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> Metric:
    """V-measure between the labels and k-means clusters (as many as classes) of the unit rows."""
    x, codes = _sampled(vectors, labels, sample, seed)
    classes = len(np.unique(codes))
    details = {"clusters": classes, "rows": len(x), "seed": seed}
    if classes < 2:
        return unknown("v_measure", f"{classes} classes: nothing to agree on", **details)
    clusters = KMeans(n_clusters=classes, n_init=3, random_state=seed).fit_predict(unit_rows(x))
    return check("v_measure", v_measure_score(codes, clusters), "lower", thresholds=thresholds,
                 severity=severity, details=details)


# The label statistics by the metric each returns.
LABEL_METRICS = {"knn_accuracy": knn_accuracy, "linear_probe_accuracy": linear_probe_accuracy,
                 "v_measure": cluster_agreement}


def label_metrics(
    vectors: np.ndarray, labels: np.ndarray, *, seed: int = 0,
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> list[Metric]:
    """kNN accuracy, linear-probe accuracy and clustering agreement of `vectors` against `labels`."""
    return [f(vectors, labels, seed=seed, thresholds=thresholds, severity=severity) for f in LABEL_METRICS.values()]
