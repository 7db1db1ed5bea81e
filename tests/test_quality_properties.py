"""Property-based tests: every quality statistic is finite or None (with a reason), and in its documented
range, on matrices with the pathologies real tables have.

Generated matrices: zero rows or a handful, zero vectors (tf-idf rows without a known term), constant and
near-constant dimensions (a spread far below float32 resolution, as a fitted projection's dead
components have), exact duplicate rows, every row identical, huge norms (float32 near its maximum,
float64 far beyond), a single class or classes with fewer members than folds, float32 and float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.quality import bias, drift, health, labels, retrieval
from tasks.quality.metric import Metric, guarded

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def matrices(draw: st.DrawFn, min_rows: int = 0, max_rows: int = 40) -> np.ndarray:
    """A matrix with some of the pathologies above, chosen by hypothesis, filled by a seeded generator."""
    rows = draw(st.integers(min_rows, max_rows))
    dim = draw(st.integers(1, 10))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e18] + ([1e36] if dtype == np.float32 else [1e150, 1e300])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((rows, dim)) * scale
    if rows and draw(st.booleans()):  # constant dimensions
        x[:, rng.integers(0, dim, draw(st.integers(1, dim)))] = draw(st.sampled_from([0.0, 1.0, scale]))
    if rows and draw(st.booleans()):  # near-constant dimensions: a spread of 1e-30 to 1e-46 of the value
        column = rng.integers(0, dim)
        x[:, column] = scale * (1 + rng.standard_normal(rows) * draw(st.sampled_from([1e-30, 1e-46])))
    if rows > 1 and draw(st.booleans()):  # exact duplicates
        x[rng.integers(0, rows, rows // 2)] = x[0]
    if rows and draw(st.booleans()):  # zero vectors
        x[rng.integers(0, rows, draw(st.integers(1, rows)))] = 0.0
    if draw(st.booleans()):  # every row the same
        x[:] = x[:1] if rows else x
    with np.errstate(over="ignore"):
        return x.astype(dtype)


@st.composite
def labelled(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A matrix and class labels: one class, balanced classes, or classes with a single member."""
    x = draw(matrices())
    classes = draw(st.integers(1, 4))
    codes = np.random.default_rng(draw(st.integers(0, 1000))).integers(0, classes, len(x))
    return x, np.array([f"class-{c}" for c in codes])


def assert_finite_or_none(metrics: list[Metric]) -> dict[str, Metric]:
    """Every value finite or None, None always with a reason; the metrics by name."""
    for m in metrics:
        assert m.status in ("ok", "warn", "fail"), m
        assert m.value is None or math.isfinite(m.value), m
        if m.value is None:
            assert m.details.get("reason"), m
    return {m.metric: m for m in metrics}


def in_range(metric: Metric | None, low: float, high: float, tolerance: float = 1e-6) -> None:
    if metric is not None and metric.value is not None:
        assert low - tolerance <= metric.value <= high + tolerance, metric


@PROPERTY
@given(matrices())
def test_health_is_finite_and_in_range(x):
    m = assert_finite_or_none(health.health_metrics(x, sample=30))
    in_range(m["nonfinite_share"], 0, 1)
    if len(x) < 2:
        assert list(m) == ["nonfinite_share"]
        return
    for name in ("norm_mean", "norm_std", "norm_min", "norm_max"):
        in_range(m.get(name), 0, math.inf)
    in_range(m["duplicate_share"], 0, 1)
    in_range(m["anisotropy"], -1, 1, 1e-5)
    in_range(m["effective_rank"], 0, min(len(x) - 1, x.shape[1]))
    in_range(m["effective_rank_ratio"], 0, 1)
    in_range(m["top_k_variance_share"], 0, 1)


@PROPERTY
@given(labelled())
def test_label_statistics_are_finite_and_in_range(data):
    x, y = data
    m = assert_finite_or_none(labels.label_metrics(x, y))
    for name in ("knn_accuracy", "linear_probe_accuracy", "v_measure"):
        in_range(m[name], 0, 1)


@PROPERTY
@given(matrices(), matrices())
def test_vector_drift_is_finite_and_in_range(reference, current):
    if reference.shape[1] != current.shape[1]:
        current = np.resize(current, (len(current), reference.shape[1]))
    m = assert_finite_or_none(drift.drift_metrics(reference, current, permutations=20))
    in_range(m["mmd_p_value"], 0, 1)
    in_range(m["domain_classifier_auc"], 0, 1)
    in_range(m["drifted_components_share"], 0, 1)
    in_range(m["centroid_cosine_distance"], 0, 2)
    assert m["drift"].value in (None, 0.0, 1.0)


@PROPERTY
@given(matrices(), matrices())
def test_feature_drift_is_finite_and_in_range(reference, current):
    columns = [f"c{i}" for i in range(min(reference.shape[1], current.shape[1]))]
    reference, current = reference[:, : len(columns)], current[:, : len(columns)]
    m = assert_finite_or_none(drift.feature_drift(reference, current, columns))
    for column in columns:
        in_range(m[f"psi:{column}"], 0, math.inf)
        in_range(m[f"ks_p_value:{column}"], 0, 1)


@PROPERTY
@given(matrices(), st.integers(0, 1000))
def test_knn_overlap_is_finite_and_in_range(x, seed):
    other = x + np.random.default_rng(seed).standard_normal(x.shape).astype(x.dtype)
    in_range(assert_finite_or_none([drift.knn_overlap(x, other)])["knn_overlap"], 0, 1)


@PROPERTY
@given(matrices(), st.integers(0, 1000))
def test_retrieval_is_finite_and_in_range(x, seed):
    rng = np.random.default_rng(seed)
    ids = np.arange(len(x)) * 7  # ids that are not row numbers
    pairs = rng.integers(0, max(len(x), 1) + 2, (12, 2)) * 7  # some ids missing from the table
    m = assert_finite_or_none(retrieval.retrieval_metrics(x, ids, pairs[:, 0], pairs[:, 1]))
    for name in ("recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10"):
        in_range(m[name], 0, 1)
    scores = rng.choice([0.0, 1.0, 2.5], len(pairs))
    in_range(assert_finite_or_none([retrieval.score_correlation(x, ids, pairs[:, 0], pairs[:, 1], scores)])
             ["spearman"], -1, 1)


@PROPERTY
@given(labelled(), st.integers(1, 3))
def test_group_bias_is_finite_and_in_range(data, groups):
    x, y = data
    group = np.array([f"g{i % groups}" for i in range(len(x))])
    m = assert_finite_or_none(bias.group_bias(x, group, y))
    in_range(m["neighbour_share_gap"], 0, math.inf)
    in_range(m["group_centroid_distance"], 0, 2)
    in_range(m["knn_accuracy_gap"], 0, 1)


@PROPERTY
@given(matrices(min_rows=4, max_rows=12), st.integers(1, 3))
def test_association_tests_are_finite(x, attributes):
    """WEAT on generated word vectors: constant or identical vectors have no spread, so d is None."""
    d, p, details = bias.weat(x[:2], x[2:4], x[:attributes], x[-attributes:], permutations=50)
    assert d is None or math.isfinite(d)
    assert 0 <= p <= 1 and 0 <= details["p_value_one_sided"] <= 1
    assert_finite_or_none([bias._judged("weat_effect_size:generated", d, details, None, "warn")])


def test_identical_word_vectors_have_no_effect_size():
    same = np.ones((4, 3))
    d, _, details = bias.weat(same[:2], same[2:], same[:2], same[2:])
    metric = bias._judged("weat_effect_size:same", d, details, None, "fail")
    assert metric.value is None and metric.status == "ok" and "equally associated" in metric.details["reason"]


def test_dead_dimensions_do_not_break_the_linear_probe():
    """The case that took down the demo: a float32 column with a spread of ~1e-46 beside real ones."""
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b"], 50)
    means = np.where((y == "a")[:, None], [3.0, 0.0], [0.0, 3.0])
    x = np.column_stack([means + rng.standard_normal((100, 2)) * 0.5, 2.7e-46 * rng.standard_normal(100)])
    probe = labels.linear_probe_accuracy(x.astype(np.float32), y)
    assert probe.value is not None and probe.value > 0.9  # the live column separates the classes


def test_huge_norms_keep_their_direction():
    """A vector near float32's maximum is still a direction: the norm is finite and the cosine exact."""
    x = np.array([[3e38, 3e38, 0], [3e38, 3e38, 1e30], [0, 0, 3e38]], dtype=np.float32)
    m = {r.metric: r for r in health.health_metrics(x)}
    assert m["norm_max"].value == pytest.approx(math.hypot(3e38, 3e38), rel=1e-6)
    assert drift.centroid_distance(x[:2], x[:2]) == pytest.approx(0, abs=1e-9)


def test_a_statistic_that_raises_becomes_an_error_metric():
    def broken() -> Metric:
        raise ValueError("Input X contains NaN")

    def fine() -> list[Metric]:
        return [Metric("a", 1.0, None, "ok"), Metric("b", 2.0, None, "ok")]

    (error,) = guarded("linear_probe_accuracy", broken)
    assert (error.metric, error.value, error.status) == ("linear_probe_accuracy", None, "error")
    assert error.details["error"] == "ValueError: Input X contains NaN"
    assert [m.metric for m in guarded("pair", fine)] == ["a", "b"]
