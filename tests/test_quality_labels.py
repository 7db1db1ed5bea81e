"""Label-based quality against brute-force loops, a hand-written v-measure and separable/random labels."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from test_quality_space import brute_neighbours

from tasks.quality.labels import cluster_agreement, knn_accuracy, label_metrics, linear_probe_accuracy


def blobs(n_per_class: int, classes: int, d: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    return (centres[labels] + spread * rng.standard_normal((len(labels), d))).astype(np.float32), labels


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target


def test_knn_accuracy_matches_a_leave_one_out_loop_with_ties():
    x, _ = blobs(20, 3, 6, spread=4.0, seed=0)  # overlapping classes: votes disagree, some tie
    labels = np.random.default_rng(1).permutation(np.repeat(["a", "b", "c"], 20))
    correct = 0
    for i, nearest in enumerate(brute_neighbours(x, 4)):
        votes = Counter(labels[j] for j in nearest)
        top = max(votes.values())
        correct += min(c for c, v in votes.items() if v == top) == labels[i]  # ties: smallest label
    m = knn_accuracy(x, labels, k=4)
    assert m.value == pytest.approx(correct / len(x))
    assert m.threshold == pytest.approx(1 / 3) and m.details["chance"] == pytest.approx(1 / 3)


def test_separable_and_random_labels(digits):
    x, y = digits
    metrics = {m.metric: m for m in label_metrics(x, y)}
    json.dumps([asdict(m) for m in metrics.values()])
    assert metrics["knn_accuracy"].value > 0.95 and metrics["linear_probe_accuracy"].value > 0.9
    assert metrics["v_measure"].value > 0.6 and all(m.status == "ok" for m in metrics.values())
    shuffled = np.random.default_rng(0).permutation(y)
    m = knn_accuracy(x, shuffled, thresholds={"knn_accuracy": 0.5}, severity="fail")
    assert abs(m.value - 0.1) < 0.04 and m.status == "fail"
    assert cluster_agreement(x, shuffled).value < 0.05


def test_linear_probe_matches_a_fold_loop_and_drops_small_classes(digits):
    x, y = digits[0][:400], digits[1][:400].copy()
    y[:3] = 10  # a class with three members: fewer than the five folds
    m = linear_probe_accuracy(x, y, seed=4)
    keep = y != 10
    xk, yk = x[keep] / np.linalg.norm(x[keep], axis=1, keepdims=True), y[keep]
    correct = 0
    for train, test in StratifiedKFold(5, shuffle=True, random_state=4).split(xk, yk):
        scaler = StandardScaler().fit(xk[train])
        model = LogisticRegression(max_iter=1000, random_state=4).fit(scaler.transform(xk[train]), yk[train])
        correct += (model.predict(scaler.transform(xk[test])) == yk[test]).sum()
    assert m.value == pytest.approx(correct / keep.sum())
    assert (m.details["dropped_classes"], m.details["dropped_rows"], m.details["rows"]) == (1, 3, 397)
    assert linear_probe_accuracy(x[:10], np.arange(10)).value is None


def test_v_measure_matches_the_definition(digits):
    x, y = digits[0][:500], digits[1][:500]
    m = cluster_agreement(x, y, seed=2)
    clusters = KMeans(n_clusters=10, n_init=3, random_state=2).fit_predict(x / np.linalg.norm(x, axis=1)[:, None])
    n = len(y)
    joint = Counter(zip(y.tolist(), clusters.tolist(), strict=True))
    cls, clu = Counter(y.tolist()), Counter(clusters.tolist())
    h_c = -sum(v / n * math.log(v / n) for v in cls.values())
    h_k = -sum(v / n * math.log(v / n) for v in clu.values())
    h_c_k = -sum(v / n * math.log(v / clu[k]) for (_, k), v in joint.items())
    h_k_c = -sum(v / n * math.log(v / cls[c]) for (c, _), v in joint.items())
    homogeneity, completeness = 1 - h_c_k / h_c, 1 - h_k_c / h_k
    assert m.value == pytest.approx(2 * homogeneity * completeness / (homogeneity + completeness))
