"""Bias of a space: association tests on words and sentences, the gender direction, and per-group gaps.

- WEAT (Caliskan et al. 2017): s(w, A, B) = mean cos(w, a) - mean cos(w, b); the effect size is
  Cohen's d, (mean of s over X - mean over Y) / std of s over X u Y (sample std). The permutation
  test of sum_X s - sum_Y s runs over the partitions of X u Y into sets of the sizes of X and Y:
  exact when there are at most `EXACT_PARTITIONS`, else seeded random partitions. Caliskan et al.'s
  one-sided p (X towards A) is in details; the two-sided p, which bias in either direction needs to
  hold its level, is the one judged. A test is flagged when |d| > 0.5 (medium) and p < 0.05; |d| >
  0.8 (large) gives the caller's severity.
- SEAT (May et al. 2019): the same test on sentences, each word in each bleached template.
- Gender direction (Bolukbasi et al. 2016): the first principal component of the definitional pairs,
  each centred on its own mean; DirectBias_c = mean |cos(occupation, direction)|^c.
- Per group of a sensitive attribute: the gap between groups' kNN accuracy, the distance between
  group centroids, and how far each group's share among nearest neighbours is from its share of rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from tasks.quality.labels import knn_predict
from tasks.quality.metric import SAMPLE_SIZES, Metric, Severity, check, subsample, threshold_for, unknown
from tasks.quality.space import NEGLIGIBLE_SPREAD, cosine_neighbours, unit_rows
from tasks.quality.wordsets import DEFINITIONAL_PAIRS, OCCUPATIONS, SEAT_TEMPLATES, WEAT_TESTS, AssociationTest

Embed = Callable[[list[str]], np.ndarray]
EXACT_PARTITIONS = 100_000  # enumerate every partition up to this many (8 + 8 words: 12,870)


def weat(
    x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, *, permutations: int = 10_000, seed: int = 0
) -> tuple[float | None, float, dict]:
    """(effect size d, two-sided permutation p-value, details) of targets x, y against attributes a, b.

    d is None when every target word is equally associated (no spread to scale the difference by)."""
    w, a, b = (unit_rows(v).astype(np.float64) for v in (np.vstack([x, y]), a, b))
    s = (w @ a.T).mean(axis=1) - (w @ b.T).mean(axis=1)
    n, nx = len(s), len(x)
    spread = s.std(ddof=1)
    d = float((s[:nx].mean() - s[nx:].mean()) / spread) if spread > NEGLIGIBLE_SPREAD else None
    partitions = math.comb(n, nx)
    exact = partitions <= EXACT_PARTITIONS
    if exact:
        members = np.array(list(itertools.combinations(range(n), nx)))
    else:
        members = np.random.default_rng(seed).random((permutations, n)).argsort(axis=1)[:, :nx]
    observed = s[:nx].sum() - s[nx:].sum()
    statistics = 2 * s[members].sum(axis=1) - s.sum()
    tolerance = 1e-9  # the observed partition, summed in another order, must count as at least as extreme
    extreme = {"p_value": np.abs(statistics) >= abs(observed) - tolerance,
               "p_value_one_sided": statistics >= observed - tolerance}
    p = {name: float(hits.sum() / partitions if exact else (hits.sum() + 1) / (permutations + 1))
         for name, hits in extreme.items()}
    return d, p["p_value"], p | {"exact": exact, "partitions": len(members), "sizes": [nx, n - nx, len(a), len(b)],
                                 "seed": seed}


def _judged(name: str, d: float | None, details: dict, thresholds: Mapping[str, float] | None,
            severity: Severity) -> Metric:
    """Judge |d| against the medium/large levels; a test that is not significant is "ok"."""
    if d is None:
        return unknown(name, "every target is equally associated with both attribute sets", **details)
    metric = replace(check(name, abs(d), "higher", thresholds=thresholds, severity=severity, details=details), value=d)
    significant = details["p_value"] < threshold_for("bias_p_value", thresholds)
    return metric if significant else replace(metric, status="ok")


def _association_tests(
    embed: Embed, tests: Sequence[AssociationTest], family: str, expand: Callable[[str], list[str]],
    permutations: int, seed: int, thresholds: Mapping[str, float] | None, severity: Severity,
) -> list[Metric]:
    """Embed every text of every test in one call, then run WEAT on each test's four sets of texts."""
    texts = sorted({t for test in tests for w in test.x + test.y + test.a + test.b for t in expand(w)})
    vectors = np.asarray(embed(texts))
    row = {t: i for i, t in enumerate(texts)}

    def rows(words: tuple[str, ...]) -> np.ndarray:
        return vectors[[row[t] for w in words for t in expand(w)]]

    out = []
    for test in tests:
        d, _, details = weat(rows(test.x), rows(test.y), rows(test.a), rows(test.b), permutations=permutations,
                             seed=seed)
        out.append(_judged(f"{family}:{test.name}", d, details, thresholds, severity))
    return out


def weat_tests(
    embed: Embed, tests: Sequence[AssociationTest] = WEAT_TESTS, *, permutations: int = 10_000, seed: int = 0,
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> list[Metric]:
    """`weat_effect_size:<test>` for each test, on the words themselves."""
    return _association_tests(embed, tests, "weat_effect_size", lambda w: [w], permutations, seed, thresholds,
                              severity)


def seat_tests(
    embed: Embed, tests: Sequence[AssociationTest] = WEAT_TESTS, templates: Sequence[str] = SEAT_TEMPLATES, *,
    permutations: int = 10_000, seed: int = 0, thresholds: Mapping[str, float] | None = None,
    severity: Severity = "warn",
) -> list[Metric]:
    """`seat_effect_size:<test>` for each test, each word put in every template (first letter capitalised)."""
    def sentences(word: str) -> list[str]:
        return [text[0].upper() + text[1:] for text in (t.format(word) for t in templates)]

    return _association_tests(embed, tests, "seat_effect_size", sentences, permutations, seed, thresholds, severity)


def gender_direction(female: np.ndarray, male: np.ndarray) -> tuple[np.ndarray, float]:
    """(unit direction pointing to the female side, share of the pairs' variance it explains)."""
    f, m = unit_rows(female).astype(np.float64), unit_rows(male).astype(np.float64)
    half = (f - m) / 2  # each pair centred on its mean: +half and -half, so the set has mean zero
    _, s, vt = np.linalg.svd(np.vstack([half, -half]), full_matrices=False)
    direction = vt[0] if (half @ vt[0]).sum() >= 0 else -vt[0]
    total = (s**2).sum()
    return direction, float(s[0] ** 2 / total) if total > 0 else 0.0


def gender_bias(
    embed: Embed, occupations: Sequence[str] = OCCUPATIONS, pairs: Sequence[tuple[str, str]] = DEFINITIONAL_PAIRS,
    *, c: float = 1.0, thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> Metric:
    """`direct_bias`: DirectBias_c of the occupations; each one's projection (+ female, - male) in details."""
    vectors = np.asarray(embed([w for pair in pairs for w in pair] + list(occupations)))
    direction, explained = gender_direction(vectors[0 : 2 * len(pairs) : 2], vectors[1 : 2 * len(pairs) : 2])
    projections = unit_rows(vectors[2 * len(pairs) :]).astype(np.float64) @ direction
    details = {"c": c, "explained_variance": explained,
               "projections": {w: float(p) for w, p in zip(occupations, projections, strict=True)}}
    return check("direct_bias", (np.abs(projections) ** c).mean(), "higher", thresholds=thresholds,
                 severity=severity, details=details)


def group_bias(
    vectors: np.ndarray, groups: np.ndarray, labels: np.ndarray | None = None, *, k: int = 10, seed: int = 0,
    sample: int = SAMPLE_SIZES["neighbours"], thresholds: Mapping[str, float] | None = None,
    severity: Severity = "warn",
) -> list[Metric]:
    """Per-group bias for any modality: neighbour share gap, centroid distance, kNN accuracy gap (with labels).

    Rows with a non-finite value are left out; with fewer than 2 rows the values are None."""
    vectors, groups = np.asarray(vectors), np.asarray(groups)
    finite = np.isfinite(vectors).all(axis=1)
    vectors, groups = vectors[finite], groups[finite]
    labels = None if labels is None else np.asarray(labels)[finite]
    if len(vectors) < 2:
        names = ["neighbour_share_gap", "group_centroid_distance"]
        names += [] if labels is None else ["knn_accuracy_gap"]
        return [unknown(name, f"{len(vectors)} finite rows: no neighbours") for name in names]
    rows = subsample(len(vectors), sample, seed)
    unit = unit_rows(np.asarray(vectors)[rows])
    names, codes = np.unique(np.asarray(groups)[rows], return_inverse=True)
    names, codes = [str(g) for g in names], codes.ravel()
    neighbours = cosine_neighbours(unit, k)

    def per_group(values: np.ndarray) -> dict[str, float]:
        return dict(zip(names, values.tolist(), strict=True))

    def judged(name: str, value: float, **details: object) -> Metric:
        return check(name, value, "higher", thresholds=thresholds, severity=severity,
                     details={"rows": len(rows), "k": neighbours.shape[1], "seed": seed} | details)

    share = np.bincount(codes, minlength=len(names)) / len(codes)
    among = np.bincount(codes[neighbours].ravel(), minlength=len(names)) / neighbours.size
    out = [judged("neighbour_share_gap", np.abs(among / share - 1).max(), share=per_group(share),
                  neighbour_share=per_group(among))]
    centroids = np.zeros((len(names), unit.shape[1]))
    np.add.at(centroids, codes, unit)
    centroids = unit_rows(centroids).astype(np.float64)
    distance = 1 - centroids @ centroids.T
    pairs = {f"{names[i]}|{names[j]}": float(distance[i, j]) for i, j in itertools.combinations(range(len(names)), 2)}
    out.append(judged("group_centroid_distance", max(pairs.values(), default=0.0), pairs=pairs))
    if labels is not None:
        label_codes = np.unique(np.asarray(labels)[rows], return_inverse=True)[1].ravel()
        correct = knn_predict(neighbours, label_codes) == label_codes
        accuracy = np.bincount(codes, weights=correct) / np.bincount(codes)
        out.append(judged("knn_accuracy_gap", accuracy.max() - accuracy.min(), accuracy=per_group(accuracy)))
    return out
