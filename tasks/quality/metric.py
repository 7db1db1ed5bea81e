"""The `Metric` record every quality statistic returns, its default thresholds, and seeded sampling.

A metric is one row of `_metrics`: a value, the threshold it was judged against and a status. A check
that does not pass is "warn" unless the caller asks for `severity="fail"` (the source's
`quality.on_fail`); a metric with no threshold, or whose value could not be computed (None, with the
reason in `details`), is "ok". Every value is finite or None: `check` turns a non-finite value into None.
A statistic that raises is recorded by `guarded` as one metric with status "error" and the exception's
message, so one statistic never takes down the others, the stage or the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Status = Literal["ok", "warn", "fail", "error"]  # error: the statistic raised (message in details)
Severity = Literal["warn", "fail"]
Worse = Literal["higher", "lower"]  # which side of the threshold is the bad one

# Defaults a caller overrides by metric name (`quality.thresholds`). The full name is looked up first
# ("weat_effect_size:career_family"), then its family, the part before ':' ("weat_effect_size").
# A "<family>_large" entry is a second, higher level: crossing it gives the caller's severity,
# crossing only the first gives "warn". Metrics absent here have no default threshold (they are
# reported, not judged) except the label accuracies, judged against chance (the majority class).
DEFAULT_THRESHOLDS: dict[str, float] = {
    # health (higher is worse unless said)
    "nonfinite_share": 0.0,  # any row with NaN/inf is a broken model or input
    "norm_min": 1e-6,  # lower is worse: a zero vector has no direction, cosine is undefined
    "duplicate_share": 0.05,  # share of rows repeating an earlier row's vector exactly
    "anisotropy": 0.5,  # mean cosine of random pairs: vectors crowd into a narrow cone (Ethayarajh 2019)
    "effective_rank_ratio": 0.05,  # lower is worse: effective rank under 5% of the dimensions is collapse
    "top_k_variance_share": 0.9,  # 90% of the variance in the top tenth of the components is collapse
    "hubness_skewness": 1.2,  # rule of thumb for strong hubness of the 10-occurrence distribution
    # bias: effect sizes are |Cohen's d| (0.5 medium, 0.8 large); flagged only when p < bias_p_value
    "weat_effect_size": 0.5,
    "weat_effect_size_large": 0.8,
    "seat_effect_size": 0.5,
    "seat_effect_size_large": 0.8,
    "bias_p_value": 0.05,
    "direct_bias": 0.1,  # mean |cos(occupation, gender direction)| (Bolukbasi et al. report 0.08 for word2vec)
    "knn_accuracy_gap": 0.1,  # best minus worst group's kNN accuracy
    "neighbour_share_gap": 0.25,  # max over groups of |share among neighbours / share in the data - 1|
    # retrieval
    "index_recall_at_10": 0.9,  # lower is worse: a vector index's recall@10 against exact search
    # drift (see drift.py for the overall flag built from these)
    "mmd_p_value": 0.05,  # lower is worse
    "domain_classifier_auc": 0.55,  # as in Evidently
    "drifted_components_share": 0.2,  # as in Evidently
    "component_p_value": 0.05,  # per-dimension KS, after the multiple-testing correction
    "psi": 0.1,  # population stability index: 0.1 moderate shift,
    "psi_large": 0.25,  # 0.25 significant shift
    "ks_p_value": 0.05,  # lower is worse: per scalar feature
}

# Rows (or pairs) the statistics use at most, so that a stage on a million rows finishes in minutes
# on 2 cores; the functions sample with `subsample` themselves and record the size in `details`.
# Measured with 384-dimensional vectors and 20 classes on 2 cores (idle / shared with other jobs):
# every statistic of health, labels, bias per group and drift together took about 2 minutes busy.
SAMPLE_SIZES: dict[str, int] = {
    "neighbours": 20_000,  # exact kNN (hubness, kNN accuracy, group bias, kNN overlap): 6 / 17 s each
    "probe": 10_000,  # linear probe, 5 folds of logistic regression: ~1 s
    "clusters": 20_000,  # k-means (3 starts) for the clustering agreement: ~25 s busy
    "pairs": 20_000,  # random pairs for the anisotropy (standard error ~0.001)
    "mmd": 1_000,  # per side: the (2n)^2 kernel matrix and its 200 permutations; with the classifier
    "classifier": 5_000,  # per side: the domain classifier; all drift statistics ~2 s
}


@dataclass(frozen=True)
class Metric:
    """One quality statistic of a table version: what `_metrics` stores (stage, table, version aside)."""

    metric: str  # stable snake_case name, with ":<test>" for one of a family ("weat_effect_size:career_family")
    value: float | None
    threshold: float | None
    status: Status
    details: dict = field(default_factory=dict)  # JSON-serialisable extras (p-values, groups, sample size, seed)


def threshold_for(
    name: str, overrides: Mapping[str, float] | None = None, default: float | None = None, suffix: str = ""
) -> float | None:
    """The threshold of `name` (+ `suffix`): the caller's, else DEFAULT_THRESHOLDS', by full name then family."""
    family = name.split(":", 1)[0]
    for table in (overrides or {}, DEFAULT_THRESHOLDS):
        for key in (name + suffix, family + suffix):
            if key in table:
                return float(table[key])
    return default


def status_for(value: float | None, threshold: float | None, worse: Worse, severity: Severity = "warn") -> Status:
    """`severity` when `value` lies strictly beyond `threshold` on the `worse` side, else "ok"."""
    if value is None or threshold is None:
        return "ok"
    failed = value > threshold if worse == "higher" else value < threshold
    return severity if failed else "ok"


def check(
    name: str,
    value: float | None,
    worse: Worse,
    *,
    thresholds: Mapping[str, float] | None = None,
    severity: Severity = "warn",
    details: dict | None = None,
    default: float | None = None,
) -> Metric:
    """A metric judged against its threshold; a "<family>_large" threshold, if any, is the severe level.

    With a large level, crossing only the first threshold warns and crossing the large one gives
    `severity`; without one, crossing the threshold gives `severity`.
    """
    value = None if value is None else float(value)
    if value is not None and not math.isfinite(value):
        details = {**(details or {}), "reason": f"not finite ({value})"}
        value = None
    threshold = threshold_for(name, thresholds, default)
    large = threshold_for(name, thresholds, suffix="_large")
    if large is None:
        status = status_for(value, threshold, worse, severity)
    else:
        status = status_for(value, large, worse, severity)
        status = status if status != "ok" else status_for(value, threshold, worse, "warn")
    return Metric(name, value, threshold, status, details or {})


def unknown(name: str, reason: str, **details: object) -> Metric:
    """A statistic that has no value on this input (too few rows, one class, no spread), and why."""
    return Metric(name, None, None, "ok", {"reason": reason, **details})


def guarded(name: str, compute: Callable[[], Metric | list[Metric]]) -> list[Metric]:
    """The metrics `compute` returns; if it raises, one metric `name` with status "error" and the message."""
    try:
        out = compute()
    except Exception as e:  # noqa: BLE001 (any statistic's failure is a result, never a crash)
        logging.getLogger(__name__).warning("quality statistic %s failed: %s: %s", name, type(e).__name__, e)
        return [Metric(name, None, None, "error", {"error": f"{type(e).__name__}: {e}"})]
    return out if isinstance(out, list) else [out]


def subsample(n_rows: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `size` rows out of `n_rows`, drawn without replacement (all rows if fewer)."""
    if size >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))
