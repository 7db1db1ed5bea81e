"""Label-free health checks against brute-force loops, scipy, and constructed spaces with known shape."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy import linalg, stats
from test_quality_space import brute_neighbours, cosine

from tasks.quality.health import anisotropy, effective_rank, health_metrics, spectrum


def by_name(metrics):
    return {m.metric: m for m in metrics}


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)


def test_records_are_json_serialisable_with_the_documented_names(gaussian):
    metrics = health_metrics(gaussian)
    json.dumps([asdict(m) for m in metrics])
    assert [m.metric for m in metrics] == [
        "nonfinite_share", "norm_mean", "norm_std", "norm_min", "norm_max", "duplicate_share", "anisotropy",
        "effective_rank", "effective_rank_ratio", "top_k_variance_share", "hubness_skewness"]
    assert all(m.status == "ok" for m in metrics)  # an isotropic Gaussian is healthy


def test_nonfinite_rows_are_counted_and_left_out(gaussian):
    x = gaussian[:50].copy()
    x[3, 1], x[7, 0], x[7, 5], x[9, 2] = np.nan, np.inf, -np.inf, np.nan
    m = by_name(health_metrics(x, severity="fail"))
    assert m["nonfinite_share"].value == pytest.approx(3 / 50) and m["nonfinite_share"].status == "fail"
    assert m["nonfinite_share"].details["values_nonfinite"] == 4
    finite = [r for r in x.tolist() if all(math.isfinite(v) for v in r)]
    norms = [math.sqrt(sum(v * v for v in r)) for r in finite]
    assert m["norm_mean"].value == pytest.approx(sum(norms) / len(norms), rel=1e-6)
    assert m["norm_std"].value == pytest.approx(float(np.std(norms)), rel=1e-6)
    assert (m["norm_min"].value, m["norm_max"].value) == pytest.approx((min(norms), max(norms)), rel=1e-6)
    assert [r.metric for r in health_metrics(np.full((3, 4), np.nan))] == ["nonfinite_share"]


def test_zero_vectors_and_duplicates_are_flagged(gaussian):
    x = np.vstack([gaussian[:100], gaussian[[5, 5, 17, 40, 40, 40]], np.zeros((1, 32), np.float32)])
    m = by_name(health_metrics(x))
    distinct = len({tuple(r) for r in x.tolist()})
    assert m["duplicate_share"].value == pytest.approx((len(x) - distinct) / len(x))
    assert m["duplicate_share"].status == "warn" and m["norm_min"].status == "warn"


def test_anisotropy_estimates_the_mean_cosine_of_all_pairs(gaussian):
    x = gaussian[:80] + 1.5  # a common offset: a cone
    exact = np.mean([cosine(a, b) for a, b in itertools.combinations(x.tolist(), 2)])
    mean, error = anisotropy(x, seed=3)
    assert abs(mean - exact) < 4 * error and error < 0.01
    assert anisotropy(x, seed=3) == (mean, error)
    assert by_name(health_metrics(x))["anisotropy"].status == "warn"
    assert abs(anisotropy(gaussian)[0]) < 0.02


def test_effective_rank_and_variance_share_against_scipy(gaussian):
    x = gaussian * np.linspace(0.1, 3, 32, dtype=np.float32)
    m = by_name(health_metrics(x, top_k=4))
    s = linalg.svdvals(x - x.mean(axis=0))
    assert m["effective_rank"].value == pytest.approx(math.exp(stats.entropy(s / s.sum())), rel=1e-6)
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T.astype(np.float64))))[::-1]
    assert m["top_k_variance_share"].value == pytest.approx(eig[:4].sum() / eig.sum(), rel=1e-6)
    assert m["effective_rank_ratio"].value == pytest.approx(m["effective_rank"].value / 32)


def test_effective_rank_worked_examples():
    e = np.eye(5)[:3] * 2.0
    assert effective_rank(spectrum(np.vstack([e, -e]))) == pytest.approx(3.0)  # three equal directions
    line = np.outer(np.arange(10.0), np.ones(6))
    assert effective_rank(spectrum(line)) == pytest.approx(1.0)
    assert effective_rank(spectrum(np.ones((4, 3)))) == 0.0


def test_collapse_is_flagged(gaussian):
    rng = np.random.default_rng(1)
    collapsed = rng.standard_normal((300, 2)) @ rng.standard_normal((2, 64)) + 1e-4 * rng.standard_normal((300, 64))
    m = by_name(health_metrics(collapsed))
    assert m["effective_rank_ratio"].status == "warn" and m["top_k_variance_share"].status == "warn"


def test_hubness_matches_brute_force_k_occurrence(gaussian):
    x = gaussian[:70]
    counts = [0] * len(x)
    for near in brute_neighbours(x, 10):
        for j in near:
            counts[j] += 1
    m = by_name(health_metrics(x))["hubness_skewness"]
    assert m.value == pytest.approx(stats.skew(counts))
    assert m.details["max_occurrence"] == max(counts) and m.details["antihub_share"] == counts.count(0) / len(counts)


def test_hubness_grows_with_dimension():
    rng = np.random.default_rng(2)
    low = by_name(health_metrics(rng.random((1000, 3))))["hubness_skewness"]
    high = by_name(health_metrics(rng.random((1000, 200))))["hubness_skewness"]
    # Radovanović et al. 2010: iid uniform data, hubness grows with the dimension (their Fig. 1)
    assert low.value < 0.5 and low.status == "ok"
    assert high.value > 2 and high.status == "warn"
