"""Metric records: thresholds by name and family, statuses on both sides, the large level, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.quality.metric import DEFAULT_THRESHOLDS, check, status_for, subsample, threshold_for


@pytest.mark.parametrize(
    ("value", "threshold", "worse", "expected"),
    [(0.6, 0.5, "higher", "warn"), (0.5, 0.5, "higher", "ok"), (0.4, 0.5, "higher", "ok"),
     (0.4, 0.5, "lower", "warn"), (0.6, 0.5, "lower", "ok"), (None, 0.5, "higher", "ok"), (9.0, None, "higher", "ok")],
)
def test_status_for_sides(value, threshold, worse, expected):
    assert status_for(value, threshold, worse) == expected
    assert status_for(value, threshold, worse, "fail") == expected.replace("warn", "fail")


def test_threshold_lookup_order():
    name = "weat_effect_size:career_family"
    assert threshold_for(name) == DEFAULT_THRESHOLDS["weat_effect_size"]
    assert threshold_for(name, {"weat_effect_size": 0.3}) == 0.3
    assert threshold_for(name, {"weat_effect_size": 0.3, name: 0.7}) == 0.7
    assert threshold_for(name, suffix="_large") == DEFAULT_THRESHOLDS["weat_effect_size_large"]
    assert threshold_for("no_such_metric") is None
    assert threshold_for("no_such_metric", default=0.25) == 0.25
    assert threshold_for("no_such_metric", {"no_such_metric": 1}, default=0.25) == 1.0


def test_check_two_levels_and_severity():
    assert check("psi:age", 0.05, "higher").status == "ok"
    assert check("psi:age", 0.15, "higher", severity="fail").status == "warn"  # moderate: always warn
    assert check("psi:age", 0.30, "higher", severity="fail").status == "fail"  # large: the caller's severity
    assert check("psi:age", 0.30, "higher").status == "warn"
    metric = check("anisotropy", np.float32(0.7), "higher", severity="fail", details={"pairs": 3})
    assert (metric.metric, metric.threshold, metric.status, metric.details) == ("anisotropy", 0.5, "fail", {"pairs": 3})
    assert type(metric.value) is float


def test_subsample_is_seeded_and_without_replacement():
    a = subsample(1000, 100, seed=1)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert np.array_equal(a, subsample(1000, 100, seed=1))
    assert not np.array_equal(a, subsample(1000, 100, seed=2))
    assert np.array_equal(subsample(50, 100), np.arange(50))
