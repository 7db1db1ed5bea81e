"""Bias statistics against brute-force loops (WEAT, DirectBias, per-group figures) and planted biases."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import statistics
from dataclasses import asdict

import numpy as np
import pytest
from sklearn.decomposition import PCA
from test_quality_space import brute_neighbours, cosine

from tasks.quality import bias
from tasks.quality.bias import gender_bias, gender_direction, group_bias, seat_tests, weat, weat_tests
from tasks.quality.wordsets import DEFINITIONAL_PAIRS, OCCUPATIONS, SEAT_TEMPLATES, WEAT_TESTS


def brute_weat(x, y, a, b) -> tuple[float, float, float]:
    """(d, two-sided p, one-sided p) by Caliskan et al.'s definitions, enumerating every partition."""
    def s(w):
        return statistics.mean(cosine(w, v) for v in a) - statistics.mean(cosine(w, v) for v in b)

    assoc = {i: s(w) for i, w in enumerate(x + y)}
    sx, sy = [assoc[i] for i in range(len(x))], [assoc[i] for i in range(len(x), len(assoc))]
    d = (statistics.mean(sx) - statistics.mean(sy)) / statistics.stdev(assoc.values())

    def stat(xi):
        return sum(assoc[i] for i in xi) - sum(assoc[i] for i in assoc if i not in xi)

    observed = stat(set(range(len(x))))
    all_stats = [stat(set(xi)) for xi in itertools.combinations(assoc, len(x))]
    two = sum(abs(t) >= abs(observed) - 1e-9 for t in all_stats) / len(all_stats)
    one = sum(t >= observed - 1e-9 for t in all_stats) / len(all_stats)
    return d, two, one


def planted(rng, n: int, d: int, direction: np.ndarray, strength: float) -> np.ndarray:
    return rng.standard_normal((n, d)) + strength * direction


def hashed_embed(calls: list[list[str]], plant: dict[str, float] | None = None, dim: int = 24):
    """Deterministic random vectors per text; a text containing a planted word moves along axis 0."""
    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        out = []
        for t in texts:
            v = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(dim)
            v[0] += sum(shift for word, shift in (plant or {}).items() if word in t.replace(".", " ").split())
            out.append(v)
        return np.array(out, dtype=np.float32)

    return embed


def test_weat_matches_brute_force_exact_and_sampled(monkeypatch):
    rng = np.random.default_rng(0)
    direction = np.eye(10)[0]
    x, y = planted(rng, 6, 10, direction, 0.5), planted(rng, 6, 10, direction, -0.5)
    a, b = planted(rng, 5, 10, direction, 1.0), planted(rng, 7, 10, direction, -1.0)
    d, p, details = weat(x, y, a, b)
    expected = brute_weat(x.tolist(), y.tolist(), a.tolist(), b.tolist())
    assert (d, p, details["p_value_one_sided"]) == pytest.approx(expected)
    assert details["exact"] and details["partitions"] == math.comb(12, 6) and details["sizes"] == [6, 6, 5, 7]
    monkeypatch.setattr(bias, "EXACT_PARTITIONS", 0)
    d_sampled, p_sampled, details = weat(x, y, a, b, permutations=20_000, seed=3)
    assert d_sampled == pytest.approx(expected[0]) and not details["exact"]
    assert p_sampled == pytest.approx(expected[1], abs=0.01) and p_sampled > 0
    assert weat(x, y, a, b, permutations=20_000, seed=3)[1] == p_sampled  # seeded


def test_weat_finds_a_planted_bias_and_not_a_random_one():
    rng = np.random.default_rng(1)
    direction = np.eye(32)[0] * 2
    d, p, _ = weat(planted(rng, 8, 32, direction, 1), planted(rng, 8, 32, direction, -1),
                   planted(rng, 8, 32, direction, 1), planted(rng, 8, 32, direction, -1))
    assert d > 1.2 and p < 0.01
    p_random = [weat(*(rng.standard_normal((8, 32)) for _ in range(4)))[1] for _ in range(30)]
    assert sum(p < 0.05 for p in p_random) <= 4 and statistics.mean(p_random) > 0.3


def test_weat_and_seat_tests_embed_once_and_judge_the_planted_test():
    calls: list[list[str]] = []
    career = WEAT_TESTS[2]
    plant = {w: 2.0 for w in career.x + career.a} | {w: -2.0 for w in career.y + career.b}
    metrics = weat_tests(hashed_embed(calls, plant), severity="fail")
    json.dumps([asdict(m) for m in metrics])
    assert len(calls) == 1 and [m.metric for m in metrics] == [f"weat_effect_size:{t.name}" for t in WEAT_TESTS]
    by_name = {m.metric: m for m in metrics}
    flagged = by_name["weat_effect_size:career_family"]
    assert flagged.value > 0.8 and flagged.status == "fail" and flagged.threshold == 0.5
    assert by_name["weat_effect_size:flowers_insects"].status == "ok"

    calls.clear()
    seat = seat_tests(hashed_embed(calls, plant), [career])
    texts = calls[0]
    assert "John is here." in texts and "This is John." in texts and "Career is there." in texts
    assert len(texts) == len({w for w in career.x + career.y + career.a + career.b}) * len(SEAT_TEMPLATES)
    vec = dict(zip(texts, hashed_embed([], plant)(texts), strict=True))

    def sentences(words):
        return [vec[t.format(w)[0].upper() + t.format(w)[1:]].tolist() for w in words for t in SEAT_TEMPLATES]

    d, _, _ = brute_weat(*(sentences(s)[:6] for s in (career.x, career.y, career.a, career.b)))
    d_small, _, _ = weat(*(np.array(sentences(s)[:6]) for s in (career.x, career.y, career.a, career.b)))
    assert d_small == pytest.approx(d)
    assert seat[0].metric == "seat_effect_size:career_family" and seat[0].value > 0.8 and seat[0].status == "warn"
    assert seat[0].details["sizes"] == [48, 48, 48, 48] and not seat[0].details["exact"]


def test_gender_direction_recovers_the_planted_axis_like_pca():
    rng = np.random.default_rng(2)
    g = rng.standard_normal(40)
    g /= np.linalg.norm(g)
    base = rng.standard_normal((10, 40)) * 3
    female = base + 1.5 * g + 0.1 * rng.standard_normal((10, 40))
    male = base - 1.5 * g + 0.1 * rng.standard_normal((10, 40))
    direction, explained = gender_direction(female, male)
    assert direction @ g > 0.95 and explained > 0.8
    f = female / np.linalg.norm(female, axis=1, keepdims=True)
    m = male / np.linalg.norm(male, axis=1, keepdims=True)
    centred = np.vstack([f - (f + m) / 2, m - (f + m) / 2])
    pca = PCA(n_components=3).fit(centred)
    assert abs(pca.components_[0] @ direction) == pytest.approx(1.0, abs=1e-9)
    assert explained == pytest.approx(pca.explained_variance_[0] / np.var(centred, axis=0, ddof=1).sum())


def test_direct_bias_matches_brute_force():
    calls: list[list[str]] = []
    plant = {"she": 3.0, "he": -3.0, "woman": 3.0, "man": -3.0, "nurse": 6.0, "engineer": -6.0}
    pairs = DEFINITIONAL_PAIRS[:3]
    m = gender_bias(hashed_embed(calls, plant), OCCUPATIONS[:20] + ("nurse", "engineer"), pairs)
    vectors = dict(zip(calls[0], hashed_embed([], plant)(calls[0]).tolist(), strict=True))
    direction, _ = gender_direction(np.array([vectors[f] for f, _ in pairs]), np.array([vectors[w] for _, w in pairs]))
    words = OCCUPATIONS[:20] + ("nurse", "engineer")
    projections = [cosine(vectors[w], direction.tolist()) for w in words]
    assert m.value == pytest.approx(statistics.mean(abs(p) for p in projections))
    assert m.details["projections"]["nurse"] > 0.3 and m.details["projections"]["engineer"] < -0.3
    assert calls[0][:6] == [w for pair in pairs for w in pair]


def test_group_bias_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 8))
    groups = np.array(["f"] * 25 + ["m"] * 20 + ["x"] * 15)
    x[groups == "f"] += 0.8  # group f sits apart
    labels = rng.integers(0, 3, 60)
    rows = x.tolist()
    near = brute_neighbours(x, 5)
    metrics = {m.metric: m for m in group_bias(x, groups, labels, k=5)}
    json.dumps([asdict(m) for m in metrics.values()])

    gap = max(abs(sum(groups[j] == g for nb in near for j in nb) / 300 / ((groups == g).sum() / 60) - 1)
              for g in "fmx")
    assert metrics["neighbour_share_gap"].value == pytest.approx(gap)

    def centroid(g):
        return np.mean([np.array(r) / np.linalg.norm(r) for r, h in zip(rows, groups, strict=True) if h == g], axis=0)

    distances = {f"{g}|{h}": 1 - cosine(centroid(g).tolist(), centroid(h).tolist())
                 for g, h in itertools.combinations("fmx", 2)}
    assert metrics["group_centroid_distance"].details["pairs"] == pytest.approx(distances, abs=1e-6)
    assert metrics["group_centroid_distance"].value == pytest.approx(max(distances.values()), abs=1e-6)

    def predicted(i):
        votes = [labels[j] for j in near[i]]
        return min(v for v in set(votes) if votes.count(v) == max(map(votes.count, votes)))

    accuracy = {g: statistics.mean(float(predicted(i) == labels[i]) for i in range(60) if groups[i] == g)
                for g in "fmx"}
    assert metrics["knn_accuracy_gap"].details["accuracy"] == pytest.approx(accuracy)
    assert metrics["knn_accuracy_gap"].value == pytest.approx(max(accuracy.values()) - min(accuracy.values()))
    assert "knn_accuracy_gap" not in {m.metric for m in group_bias(x, groups, k=5)}
