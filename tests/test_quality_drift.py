"""Drift statistics against scipy/brute-force computations, and the overall flag's calibration on real data."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from tasks.quality.drift import (
    centroid_distance,
    domain_classifier_auc,
    drift_metrics,
    drifted_share,
    feature_drift,
    knn_overlap,
    mmd_test,
    psi,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target


def brute_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    def k(a, b):
        return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) / (2 * bandwidth**2))

    x, y = x.tolist(), y.tolist()
    xx = sum(k(a, b) for a, b in itertools.permutations(x, 2)) / (len(x) * (len(x) - 1))
    yy = sum(k(a, b) for a, b in itertools.permutations(y, 2)) / (len(y) * (len(y) - 1))
    xy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return xx + yy - 2 * xy


def test_mmd_matches_the_unbiased_estimate_and_a_permutation_loop():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((25, 3)) + 0.4
    mmd2, p, bandwidth = mmd_test(x, y, permutations=2000, seed=1)
    assert bandwidth == pytest.approx(statistics.median(distance.pdist(np.vstack([x, y]))))
    assert mmd2 == pytest.approx(brute_mmd2(x, y, bandwidth))
    pooled, other = np.vstack([x, y]), np.random.default_rng(7)
    kernel = np.exp(-distance.squareform(distance.pdist(pooled, "sqeuclidean")) / (2 * bandwidth**2))
    np.fill_diagonal(kernel, 0)

    def estimate(idx_x, idx_y):
        return (kernel[np.ix_(idx_x, idx_x)].sum() / (20 * 19) + kernel[np.ix_(idx_y, idx_y)].sum() / (25 * 24)
                - 2 * kernel[np.ix_(idx_x, idx_y)].sum() / (20 * 25))

    assert estimate(np.arange(20), np.arange(20, 45)) == pytest.approx(mmd2)
    perms = [other.permutation(45) for _ in range(2000)]
    p_loop = (1 + sum(estimate(q[:20], q[20:]) >= mmd2 for q in perms)) / 2001
    assert abs(p - p_loop) < 0.03 and 0.001 < p_loop < 0.5  # Monte Carlo error of two independent draws
    assert mmd_test(x, y, permutations=200, seed=1) == mmd_test(x, y, permutations=200, seed=1)
    assert mmd_test(x, x[::-1] + 3, permutations=200)[1] == pytest.approx(1 / 201)


def test_domain_classifier_auc_matches_a_fold_loop_and_pair_counting(digits):
    x = digits[0]
    ref, cur = x[:300], x[300:560] + np.float32(0.3) * (digits[1][300:560, None] % 2)
    auc = domain_classifier_auc(ref, cur, seed=5)
    data, y = np.vstack([ref, cur]), np.r_[np.zeros(300), np.ones(260)]
    proba = np.empty(len(y))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=5).split(data, y):
        scaler = StandardScaler().fit(data[train])
        model = LogisticRegression(max_iter=1000, random_state=5).fit(scaler.transform(data[train]), y[train])
        proba[test] = model.predict_proba(scaler.transform(data[test]))[:, 1]
    pos, neg = proba[y == 1].tolist(), proba[y == 0].tolist()
    pairs = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert auc == pytest.approx(pairs)
    rows = np.random.default_rng(0).permutation(len(x))  # the file is ordered by writer: split at random
    assert 0.4 < domain_classifier_auc(x[rows[:400]], x[rows[400:800]]) < 0.6
    assert domain_classifier_auc(x[rows[:400]], x[rows[400:800]] + 2) > 0.99


def test_drifted_share_matches_ks_loops_with_both_corrections():
    rng = np.random.default_rng(2)
    ref, cur = rng.standard_normal((400, 30)), rng.standard_normal((300, 30))
    cur[:, :6] += np.linspace(0.1, 0.6, 6)
    share, p = drifted_share(ref, cur)
    loop = [stats.ks_2samp(ref[:, j], cur[:, j], method="asymp").pvalue for j in range(30)]
    assert p == pytest.approx(loop)
    ranked = sorted(loop)  # Benjamini-Hochberg: reject the i smallest for the largest i with p_(i) <= i/m alpha
    rejected = max((i for i in range(1, 31) if ranked[i - 1] <= i / 30 * 0.05), default=0)
    assert share == pytest.approx(rejected / 30) and 3 <= rejected <= 6
    bonferroni, _ = drifted_share(ref, cur, correction="bonferroni")
    assert bonferroni == pytest.approx(sum(q * 30 < 0.05 for q in loop) / 30) and bonferroni <= share


def test_centroid_distance_against_scipy():
    rng = np.random.default_rng(3)
    ref, cur = rng.random((50, 8)), rng.random((40, 8)) + np.arange(8) / 8
    assert centroid_distance(ref, cur) == pytest.approx(distance.cosine(ref.mean(axis=0), cur.mean(axis=0)))


def test_psi_worked_example_and_brute_force():
    reference = np.arange(100.0)  # two quantile bins, split at 49.5: shares 0.5 / 0.5
    current = np.r_[np.zeros(75), np.full(25, 99.0)]  # shares 0.75 / 0.25
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert psi(reference, current, bins=2) == pytest.approx(expected)
    empty_bin = 0.5 * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)  # shares 1 / 0: epsilon for 0
    assert psi(reference, np.zeros(10), bins=2) == pytest.approx(empty_bin)
    rng = np.random.default_rng(4)
    ref, cur = rng.normal(0, 1, 500), rng.normal(0.3, 1.2, 400)
    cuts = statistics.quantiles(ref.tolist(), n=10, method="inclusive")

    def shares(values):
        counts = [0] * 10
        for v in values:
            counts[sum(v >= c for c in cuts)] += 1
        return [max(c / len(values), 1e-4) for c in counts]

    r, c = shares(ref.tolist()), shares(cur.tolist())
    assert psi(ref, cur) == pytest.approx(sum((b - a) * math.log(b / a) for a, b in zip(r, c, strict=True)))
    assert psi(ref, rng.normal(0, 1, 400)) < 0.1


def test_feature_drift_per_column():
    rng = np.random.default_rng(5)
    ref = np.c_[rng.normal(0, 1, 2000), rng.exponential(1, 2000)]
    cur = np.c_[rng.normal(0, 1, 1500), rng.exponential(1, 1500) * 2]
    cur[::50, 0] = np.nan  # missing values are left out
    metrics = {m.metric: m for m in feature_drift(ref, cur, ["age", "income"], severity="fail")}
    json.dumps([asdict(m) for m in metrics.values()])
    assert list(metrics) == ["psi:age", "ks_p_value:age", "psi:income", "ks_p_value:income"]
    assert metrics["psi:age"].status == "ok" and metrics["ks_p_value:age"].status == "ok"
    assert metrics["psi:income"].value > 0.25 and metrics["psi:income"].status == "fail"
    expected = stats.ks_2samp(ref[:, 1], cur[:, 1], method="asymp")
    assert metrics["ks_p_value:income"].value == pytest.approx(expected.pvalue, abs=1e-300)
    assert metrics["ks_p_value:income"].details["statistic"] == pytest.approx(expected.statistic)
    assert metrics["ks_p_value:age"].value == pytest.approx(stats.ks_2samp(ref[:, 0], cur[~np.isnan(cur[:, 0]), 0],
                                                                            method="asymp").pvalue)


def test_knn_overlap_against_argsort_and_sets():
    rng = np.random.default_rng(6)
    old = rng.standard_normal((80, 12))
    new = old + 0.5 * rng.standard_normal((80, 12))

    def neighbours(v):
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        sims = u @ u.T
        np.fill_diagonal(sims, -2)
        return [set(np.argsort(-row)[:10].tolist()) for row in sims]

    expected = statistics.mean(len(a & b) / 10 for a, b in zip(neighbours(old), neighbours(new), strict=True))
    m = knn_overlap(old, new)
    assert m.value == pytest.approx(expected) and 0.2 < m.value < 0.9
    rotation = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    assert knn_overlap(old, old @ rotation).value == pytest.approx(1.0)  # cosine neighbours survive a rotation


def test_a_change_of_topic_is_flagged_and_the_flag_needs_both_tests(digits):
    x, y = digits
    metrics = {m.metric: m for m in drift_metrics(x[y < 5], x[y >= 5], severity="fail")}
    json.dumps([asdict(m) for m in metrics.values()])
    assert metrics["drift"].value == 1.0 and metrics["drift"].status == "fail"
    assert metrics["domain_classifier_auc"].status == "warn" and metrics["mmd_p_value"].status == "warn"
    assert metrics["drifted_components_share"].value > 0.2
    relaxed = {m.metric: m for m in drift_metrics(x[y < 5], x[y >= 5], thresholds={"domain_classifier_auc": 0.999})}
    assert relaxed["drift"].value == 0.0 and relaxed["drift"].status == "ok"


def false_positives(x: np.ndarray, trials: int, per_side: int) -> int:
    """How often the flag fires between two disjoint random samples of the same data."""
    fired = 0
    for trial in range(trials):
        rows = np.random.default_rng(1000 + trial).permutation(len(x))
        metrics = drift_metrics(x[rows[:per_side]], x[rows[per_side : 2 * per_side]], seed=trial)
        fired += metrics[-1].value == 1.0
    return fired


@pytest.mark.slow
def test_calibration_random_splits_rarely_flag(digits):
    x, y = digits
    assert false_positives(x, trials=40, per_side=300) <= 2  # at most 5% of 40
    shifted = x[y < 5][:300], x[y >= 5][:300]
    assert drift_metrics(*shifted)[-1].value == 1.0  # the same sample size sees a real shift


@pytest.mark.slow
def test_calibration_random_halves_60_trials(digits):
    assert false_positives(digits[0], trials=60, per_side=898) <= 3  # at most 5%
