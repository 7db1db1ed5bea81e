"""`tfidf`: the sparse text baseline, made dense so it sits in a vector table beside the neural models.

As the background notes define it: term frequency log-scaled, tf = 1 + log10(count) (0 when absent);
smoothed inverse document frequency, idf = ln(N / (df + 1)); tf-idf rows L2-normalised; then a
truncated SVD (latent semantic analysis) to at most DIM dense dimensions, L2-normalised again for
cosine search. Vocabulary, idf and the SVD basis are fitted on a seeded sample of the source and
stored (see `tasks.fitted`), so every later run projects into the same space.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from tasks import fitted
from tasks.embedders.base import EmbedderInfo, FeatureRows
from tasks.sources import InputError

MAX_TERMS = 20_000  # most frequent terms kept: 20k x 256 float32 is a 20 MB basis
MIN_DF = 2  # a term must occur in at least this many sampled documents
DIM = 256  # dense dimensions (fewer when the vocabulary or the sample is smaller)


def vectorizer(terms: list[str] | None = None):  # noqa: ANN201 (sklearn type)
    """The tokeniser: scikit-learn's word pattern, lowercased; a fixed vocabulary once fitted."""
    from sklearn.feature_extraction.text import CountVectorizer

    if terms is None:
        return CountVectorizer(max_features=MAX_TERMS, dtype=np.float64)
    return CountVectorizer(vocabulary=terms, dtype=np.float64)


def tf_idf(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """Log-scaled tf times idf, rows L2-normalised (rows without a known term stay zero)."""
    weights = counts.tocsr(copy=True)
    weights.data = (1.0 + np.log10(weights.data)) * idf[weights.indices]
    norms = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ weights


def fit(sample: pa.Array) -> bytes:
    """Fit vocabulary, idf and the SVD basis on a sample of texts; the state as bytes."""
    from sklearn.decomposition import TruncatedSVD

    texts = sample.to_pylist()
    counter = vectorizer()
    counter.min_df = MIN_DF if len(texts) >= 10 * MIN_DF else 1
    try:
        counts = counter.fit_transform(texts)
    except ValueError as e:  # no document has a word
        raise InputError(f"tfidf cannot be fitted on this column: {e}") from None
    terms = counter.get_feature_names_out()
    df = np.bincount(counts.indices, minlength=len(terms))
    idf = np.log(len(texts) / (df + 1.0))
    dim = min(DIM, len(terms) - 1, len(texts) - 1)
    if dim < 1:
        raise InputError(f"tfidf needs at least 2 documents and 2 terms to fit; got {len(texts)} and {len(terms)}")
    svd = TruncatedSVD(dim, algorithm="randomized", n_iter=7, random_state=0).fit(tf_idf(counts, idf))
    meta = {"rows": len(texts), "terms": len(terms), "dim": dim, "tf": "1+log10", "idf": "ln(N/(df+1))"}
    return fitted.pack(meta, {"terms": terms.astype(str), "idf": idf.astype(np.float32),
                              "basis": svd.components_.astype(np.float32)})


class TfidfEmbedder:
    """Projects texts into the fitted tf-idf/SVD space."""

    def __init__(self, state: bytes, batch_size: int = 64) -> None:
        meta, arrays = fitted.unpack(state)
        self.counter = vectorizer(arrays["terms"].tolist())
        self.idf = arrays["idf"].astype(np.float64)
        self.basis = arrays["basis"]
        self.info = EmbedderInfo(
            name="tfidf", modality="text", model_id="multiembed/tfidf-svd",
            revision=fitted.REVISION_PREFIX + fitted.state_id(state), dim=int(meta["dim"]), pooling="none",
            normalize=True, max_tokens=0,
        )

    def prepare(self, values: pa.Array, base_dir: str = "") -> FeatureRows:
        """Count the fitted vocabulary's terms in each text (texts with none are flagged: they embed to zero)."""
        counts = self.counter.transform(values.to_pylist())
        unknown = int((counts.getnnz(axis=1) == 0).sum())
        return FeatureRows(counts, counts.shape[0], flags={"no known term": unknown} if unknown else {})

    def embed(self, prepared: FeatureRows) -> np.ndarray:
        """tf-idf, projected on the SVD basis and L2-normalised (a text with no known term stays zero)."""
        dense = np.asarray(tf_idf(prepared.features, self.idf) @ self.basis.T, dtype=np.float32)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        return dense / np.where(norms > 0, norms, 1.0)
