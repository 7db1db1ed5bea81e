"""Retrieval quality from configured pairs, and a vector index's recall against exact search.

- (query id, relevant id) pairs: each query row searches every other row of the table by exact
  cosine similarity; recall@k (k = 1, 5, 10: share of its relevant rows in the top k), MRR (1 / rank
  of the first relevant row, over the full ranking) and nDCG@10 with binary relevance, averaged
  over queries;
- (id a, id b, score) pairs: Spearman correlation of the pair's cosine similarity with the score
  (the STS protocol);
- `index_recall`: the share of exact search's top 10 that an approximate index also returns.
Pairs whose ids are not in the table are left out and counted in `details`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from tasks.quality.metric import Metric, Severity, check, unknown
from tasks.quality.space import neighbour_overlap, similarity_blocks, top_k, unit_rows


def positions(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each wanted id in `ids`, whether it is there at all); ids must be unique."""
    ids, wanted = np.asarray(ids), np.asarray(wanted)
    if not len(ids):
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    order = np.argsort(ids, kind="stable")
    if np.any(ids[order][1:] == ids[order][:-1]):
        raise ValueError("ids are not unique")
    rows = order[np.minimum(np.searchsorted(ids, wanted, sorter=order), len(ids) - 1)]
    return rows, ids[rows] == wanted


def retrieval_metrics(
    vectors: np.ndarray, ids: np.ndarray, query_ids: np.ndarray, relevant_ids: np.ndarray, *,
    ks: Sequence[int] = (1, 5, 10), ndcg_k: int = 10,
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> list[Metric]:
    """recall_at_<k> for each k, mrr and ndcg_at_<ndcg_k> of the (query, relevant) pairs, by exact search."""
    q, q_found = positions(ids, query_ids)
    r, r_found = positions(ids, relevant_ids)
    usable = q_found & r_found & (q != r)  # a query is not searched for itself
    queries, group = np.unique(q[usable], return_inverse=True)
    order = np.argsort(group, kind="stable")
    group, relevant = group[order], r[usable][order]
    bounds = np.searchsorted(group, np.arange(len(queries) + 1))
    unit = unit_rows(vectors)
    depth = min(max([*ks, ndcg_k]), len(unit) - 1)
    discount = 1 / np.log2(np.arange(2, ndcg_k + 2))
    hits, counts, ranks = [], [], []
    for rows, sims in similarity_blocks(unit[queries], unit, exclude=queries):
        mask = np.zeros(sims.shape, dtype=bool)
        span = slice(bounds[rows.start], bounds[rows.stop])
        mask[group[span] - rows.start, relevant[span]] = True
        hits.append(np.take_along_axis(mask, top_k(sims, depth), axis=1))
        counts.append(mask.sum(axis=1))
        best = np.where(mask, sims, -np.inf).max(axis=1)
        ranks.append((sims > best[:, None]).sum(axis=1) + 1)
    details = {"queries": len(queries), "pairs": int(usable.sum()), "pairs_missing": int((~(q_found & r_found)).sum()),
               "corpus": len(unit)}
    if not len(queries):
        names = [f"recall_at_{k}" for k in ks] + ["mrr", f"ndcg_at_{ndcg_k}"]
        return [unknown(name, "no pair with both ids in the table", **details) for name in names]
    hit, count, rank = np.vstack(hits), np.concatenate(counts), np.concatenate(ranks)
    ideal = np.cumsum(discount)[np.minimum(count, ndcg_k) - 1]
    values = {f"recall_at_{k}": (hit[:, :k].sum(axis=1) / count).mean() for k in ks}
    values["mrr"] = (1 / rank).mean()
    values[f"ndcg_at_{ndcg_k}"] = ((hit[:, :ndcg_k] * discount[: hit.shape[1]]).sum(axis=1) / ideal).mean()
    return [check(name, value, "lower", thresholds=thresholds, severity=severity, details=details)
            for name, value in values.items()]


def score_correlation(
    vectors: np.ndarray, ids: np.ndarray, id_a: np.ndarray, id_b: np.ndarray, scores: np.ndarray, *,
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> Metric:
    """Spearman correlation between the cosine similarity of each (a, b) pair and its score."""
    a, a_found = positions(ids, id_a)
    b, b_found = positions(ids, id_b)
    found = a_found & b_found
    unit = unit_rows(vectors)
    cos = np.einsum("ij,ij->i", unit[a[found]], unit[b[found]])
    details = {"pairs": int(found.sum()), "pairs_missing": int((~found).sum())}
    if found.sum() < 3:
        return unknown("spearman", "fewer than 3 pairs in the table", **details)
    if np.ptp(cos) == 0 or np.ptp(np.asarray(scores, dtype=np.float64)[found]) == 0:
        return unknown("spearman", "the similarities or the scores are all equal: no ranking", **details)
    result = stats.spearmanr(cos, np.asarray(scores)[found])
    details["p_value"] = float(result.pvalue)
    return check("spearman", result.statistic, "lower", thresholds=thresholds, severity=severity, details=details)


def index_recall(
    exact_ids: np.ndarray, approx_ids: np.ndarray, k: int = 10, *,
    thresholds: Mapping[str, float] | None = None, severity: Severity = "warn",
) -> Metric:
    """Mean share of each query's exact top k (rows of `exact_ids`) found in the index's top k."""
    recall = neighbour_overlap(exact_ids, approx_ids, k)
    return check(f"index_recall_at_{k}", recall.mean() if len(recall) else None, "lower", thresholds=thresholds,
                 severity=severity, details={"queries": len(recall), "k": k})
