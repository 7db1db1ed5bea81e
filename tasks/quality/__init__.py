"""Statistics of the quality stages: plain numpy / scikit-learn / scipy functions over arrays of vectors.

Nothing here knows about Prefect, LanceDB or the config: the stages read a sample of a table, call
these functions and write the `Metric` records they return into `_metrics`.

- `metric`: the `Metric` record, default thresholds, how a value becomes a status, seeded sampling.
- `space`: what the statistics share: unit rows, exact cosine neighbours, a standardised logistic model.
- `health`: label-free checks (non-finite values, norms, duplicates, anisotropy, collapse, hubness).
- `labels`: with a class label (kNN accuracy, linear probe, clustering agreement).
- `retrieval`: with query/relevant pairs or scored pairs (recall@k, MRR, nDCG, Spearman, index recall).
- `bias` and `wordsets`: WEAT, SEAT, the gender direction, per-group bias.
- `drift`: between a reference and a current sample (MMD, domain classifier, per-component KS,
  scalar features' PSI and KS, kNN overlap between two models) and the overall drift flag.
"""
