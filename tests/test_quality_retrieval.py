"""Retrieval metrics against a brute-force ranking loop, scikit-learn's nDCG and scipy's Spearman."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import ndcg_score
from test_quality_space import brute_neighbours, cosine

from tasks.quality import space
from tasks.quality.retrieval import index_recall, retrieval_metrics, score_correlation


@pytest.fixture(scope="module")
def table():
    """200 rows with string ids in shuffled order; 30 queries with 1-4 relevant rows placed near them."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    ids = np.array([f"r{i}" for i in rng.permutation(200)])
    queries, relevant = [], []
    for q in range(30):
        for r in rng.choice(np.arange(30, 200), size=rng.integers(1, 5), replace=False):
            x[r] = x[q] + rng.normal(0, 1.2) * rng.standard_normal(16)
            queries.append(ids[q])
            relevant.append(ids[r])
    return x, ids, np.array(queries), np.array(relevant)


def brute_force(x, ids, queries, relevant, ks=(1, 5, 10)):
    where = {v: i for i, v in enumerate(ids.tolist())}
    rankings = brute_neighbours(x, len(x) - 1)
    wanted: dict[int, set[int]] = {}
    for q, r in zip(queries.tolist(), relevant.tolist(), strict=True):
        wanted.setdefault(where[q], set()).add(where[r])
    out = {f"recall_at_{k}": [] for k in ks} | {"mrr": [], "ndcg_at_10": []}
    for q, rel in wanted.items():
        ranking = rankings[q]
        for k in ks:
            out[f"recall_at_{k}"].append(len(rel & set(ranking[:k])) / len(rel))
        out["mrr"].append(1 / (1 + min(ranking.index(j) for j in rel)))
        dcg = sum(1 / math.log2(i + 2) for i, j in enumerate(ranking[:10]) if j in rel)
        out["ndcg_at_10"].append(dcg / sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10))))
    return {name: sum(v) / len(v) for name, v in out.items()}, wanted


def test_matches_a_brute_force_ranking(table, monkeypatch):
    x, ids, queries, relevant = table
    monkeypatch.setattr(space, "BLOCK_CELLS", 7 * 200)  # several query blocks
    extra_q, extra_r = np.array([ids[0], "missing", ids[3]]), np.array(["missing", ids[1], ids[3]])  # 2 missing, 1 self
    metrics = retrieval_metrics(x, ids, np.concatenate([queries, extra_q]), np.concatenate([relevant, extra_r]))
    json.dumps([asdict(m) for m in metrics])
    expected, wanted = brute_force(x, ids, queries, relevant)
    assert {m.metric: m.value for m in metrics} == pytest.approx(expected, rel=1e-6)
    assert metrics[0].details == {"queries": 30, "pairs": len(queries), "pairs_missing": 2, "corpus": 200}
    assert 0.2 < expected["recall_at_10"] < 0.95  # neither trivial nor hopeless

    truth = np.zeros((len(wanted), len(x)))
    scores = np.full((len(wanted), len(x)), -2.0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i, (q, rel) in enumerate(wanted.items()):
        truth[i, list(rel)] = 1
        others = np.arange(len(x)) != q
        scores[i, others] = unit[others] @ unit[q]
    assert expected["ndcg_at_10"] == pytest.approx(ndcg_score(truth, scores, k=10))


def test_no_usable_pairs_gives_no_values(table):
    x, ids, _, _ = table
    metrics = retrieval_metrics(x, ids, np.array(["nope"]), np.array([ids[1]]))
    assert [m.value for m in metrics] == [None] * 5 and all(m.status == "ok" for m in metrics)
    with pytest.raises(ValueError, match="unique"):
        retrieval_metrics(x, np.array(["a"] * 200), np.array(["a"]), np.array(["a"]))


def test_spearman_against_scipy(table):
    x, ids, _, _ = table
    rng = np.random.default_rng(1)
    a = rng.integers(0, 200, 300)
    b = (a + rng.integers(1, 200, 300)) % 200
    cos = [cosine(x[i].tolist(), x[j].tolist()) for i, j in zip(a, b, strict=True)]
    scores = np.array(cos) + rng.normal(0, 0.2, 300)
    m = score_correlation(x, ids, np.append(ids[a], "gone"), np.append(ids[b], ids[0]), np.append(scores, 1.0))
    expected = stats.spearmanr(cos, scores)
    assert m.value == pytest.approx(expected.statistic) and m.details["p_value"] == pytest.approx(expected.pvalue)
    assert m.details == {"pairs": 300, "pairs_missing": 1, "p_value": m.details["p_value"]} and m.value > 0.7


def test_index_recall_against_sets():
    rng = np.random.default_rng(2)
    exact = np.array([rng.permutation(1000)[:10] for _ in range(50)])
    approx = exact.copy()
    approx[:, 7:] = rng.integers(1000, 2000, (50, 3))  # the index misses the last three of each
    approx[::2] = approx[::2, ::-1]  # order within the top 10 does not matter
    m = index_recall(exact, approx, severity="fail")
    assert m.value == pytest.approx(np.mean([len(set(e) & set(a)) / 10 for e, a in zip(exact, approx, strict=True)]))
    assert (m.metric, m.threshold, m.status) == ("index_recall_at_10", 0.9, "fail")
    assert index_recall(exact, exact).status == "ok"
