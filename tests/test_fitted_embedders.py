"""The fitted embedders against independent computations, and on real labelled data that ships in packages."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_iris, load_wine
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from tasks import fitted
from tasks.embedders import registry, tabular, tfidf
from tasks.sources import InputError

CORPUS = ["the river bank was flooded", "the bank raised its loan rates", "fish swim in the river",
          "a loan from the bank", "river fish and river boats", "rates of interest on a loan"]


def brute_tf_idf(docs: list[str], terms: list[str]) -> np.ndarray:
    """The background notes' formulas, word by word: tf = 1 + log10(count), idf = ln(N / (df + 1)), L2 rows."""
    tokenize = CountVectorizer().build_analyzer()
    tokens = [tokenize(d) for d in docs]
    df = {t: sum(t in set(ts) for ts in tokens) for t in terms}
    out = np.zeros((len(docs), len(terms)))
    for i, ts in enumerate(tokens):
        counts = Counter(ts)
        for j, t in enumerate(terms):
            if counts[t]:
                out[i, j] = (1 + math.log10(counts[t])) * math.log(len(docs) / (df[t] + 1))
        norm = np.linalg.norm(out[i])
        out[i] /= norm if norm else 1
    return out


def texts(values: list[str]) -> pa.Array:
    return pa.array(values, pa.large_string())


def test_tfidf_weights_follow_the_notes_formulas() -> None:
    state = tfidf.fit(texts(CORPUS))
    _, arrays = fitted.unpack(state)
    terms = arrays["terms"].tolist()
    embedder = tfidf.TfidfEmbedder(state)
    counts = embedder.prepare(texts(CORPUS)).features
    np.testing.assert_allclose(tfidf.tf_idf(counts, embedder.idf).toarray(), brute_tf_idf(CORPUS, terms), atol=1e-12)


def test_tfidf_vectors_are_the_unit_projection_on_the_fitted_basis() -> None:
    state = tfidf.fit(texts(CORPUS))
    embedder = tfidf.TfidfEmbedder(state)
    _, arrays = fitted.unpack(state)
    vectors = embedder.embed(embedder.prepare(texts(CORPUS)))
    expected = brute_tf_idf(CORPUS, arrays["terms"].tolist()) @ arrays["basis"].T.astype(np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert embedder.info.dim == vectors.shape[1] == len(CORPUS) - 1  # fewer documents than DIM
    assert embedder.info.revision == "fit-" + fitted.state_id(state)
    # the two river/fish texts are nearer each other than to the loan texts
    assert vectors[2] @ vectors[4] > max(vectors[2] @ vectors[1], vectors[2] @ vectors[3])


def test_tfidf_flags_texts_with_no_known_term_and_embeds_them_as_zero() -> None:
    embedder = tfidf.TfidfEmbedder(tfidf.fit(texts(CORPUS)))
    prepared = embedder.prepare(texts(["zebra quokka", "river bank"]))
    assert prepared.flags == {"no known term": 1}
    vectors = embedder.embed(prepared)
    assert not vectors[0].any() and np.isclose(np.linalg.norm(vectors[1]), 1)


def test_tfidf_without_words_cannot_be_fitted() -> None:
    with pytest.raises(InputError, match="tfidf cannot be fitted"):
        tfidf.fit(texts(["!!", "??"]))


def table(columns: dict[str, list], types: dict[str, pa.DataType] | None = None) -> pa.StructArray:
    types = types or {}
    return pa.StructArray.from_arrays([pa.array(v, types.get(k)) for k, v in columns.items()], names=list(columns))


def test_tabular_features_standardise_impute_and_bucket_categories() -> None:
    sample = table({"price": [1.0, 2.0, 3.0, None, 6.0], "city": ["oslo", "oslo", "rome", "rome", "lima"]},
                   {"city": pa.large_string()})
    meta, arrays = fitted.unpack(tabular.fit(sample))
    assert arrays["vocab:city"].tolist() == ["oslo", "rome"]  # lima is seen once: below MIN_COUNT
    batch = table({"price": [2.0, float("nan"), 4.0, 3.0], "city": ["rome", "lima", None, "kyiv"]},
                  {"city": pa.large_string()})
    prepared = tabular.featurize(batch, meta, arrays)
    mean, std = np.mean([1, 2, 3, 6]), np.std([1, 2, 3, 6])
    expected = np.array([
        [(2 - mean) / std, 0, 0, 1, 0, 0],  # z, missing, oslo, rome, unknown, null
        [0, 1, 0, 0, 1, 0],  # NaN imputed with the mean; lima is rare at fit time: unknown
        [(4 - mean) / std, 0, 0, 0, 0, 1],
        [(3 - mean) / std, 0, 0, 0, 1, 0],  # kyiv never seen: unknown
    ])
    np.testing.assert_allclose(prepared.features.toarray(), expected)
    assert prepared.flags == {"imputed value": 1, "unknown category": 2}


def test_tabular_vectors_are_the_pca_projection_of_the_features() -> None:
    from sklearn.decomposition import PCA

    wine = load_wine()
    sample = table({n: wine.data[:, i].tolist() for i, n in enumerate(wine.feature_names)})
    embedder = tabular.TabularEmbedder(tabular.fit(sample))
    features = embedder.prepare(sample).features.toarray()
    reference = PCA(embedder.info.dim).fit(features)
    vectors = embedder.embed(embedder.prepare(sample))
    # the same subspace and coordinates up to each component's sign
    signs = np.sign(np.sum(vectors * reference.transform(features), axis=0))
    np.testing.assert_allclose(vectors * signs, reference.transform(features), atol=1e-6)


def test_fitting_is_repeatable_to_the_byte() -> None:
    wine = load_wine()
    sample = table({n: wine.data[:, i].tolist() for i, n in enumerate(wine.feature_names)})
    assert tabular.fit(sample) == tabular.fit(sample)
    assert tfidf.fit(texts(CORPUS)) == tfidf.fit(texts(CORPUS))


def test_tabular_keeps_only_live_dimensions() -> None:
    """Wine's 13 measurements plus a constant column and a column that is the sum of two others: 13 independent
    features (the missing indicators are constant too), so 13 dimensions, each with real spread."""
    wine = load_wine()
    columns = {n: wine.data[:, i].tolist() for i, n in enumerate(wine.feature_names)}
    columns["constant"] = [7.5] * len(wine.data)
    columns["acid_sum"] = (wine.data[:, 1] + wine.data[:, 2]).tolist()
    rows = table(columns)
    embedder = tabular.TabularEmbedder(tabular.fit(rows))
    vectors = embedder.embed(embedder.prepare(rows))
    assert embedder.info.dim == np.linalg.matrix_rank(wine.data - wine.data.mean(axis=0)) == 13
    assert embedder.info.metadata()["dim"] == "13" and vectors.shape == (len(wine.data), 13)
    assert vectors.std(axis=0).min() > 1e-3 * vectors.std(axis=0).max()


def test_tabular_with_no_varying_column_cannot_be_fitted() -> None:
    with pytest.raises(InputError, match="no column varies"):
        tabular.fit(table({"a": [1.0] * 5, "b": [2.0] * 5}))


def knn_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    return float(cross_val_score(KNeighborsClassifier(5), vectors, labels, cv=5).mean())


def test_tabular_neighbours_of_wine_rows_share_their_cultivar() -> None:
    wine = load_wine()  # 178 real wines, 13 chemical measurements, 3 cultivars (chance: 40%)
    rows = table({n: wine.data[:, i].tolist() for i, n in enumerate(wine.feature_names)})
    embedder = tabular.TabularEmbedder(tabular.fit(rows))
    assert knn_accuracy(embedder.embed(embedder.prepare(rows)), wine.target) > 0.9


@pytest.mark.slow
def test_row_text_neighbours_of_iris_rows_share_their_species() -> None:
    iris = load_iris()  # 150 real flowers, 3 species (chance: 33%)
    rows = table({n.replace(" (cm)", ""): iris.data[:, i].tolist() for i, n in enumerate(iris.feature_names)})
    embedder = registry.load_embedder("table", "row-text", 32)
    assert embedder.prepare(rows.slice(0, 1)).rows == 1
    assert tabular.row_texts(rows.slice(0, 1)).to_pylist() == [
        "sepal length: 5.1; sepal width: 3.5; petal length: 1.4; petal width: 0.2"]
    assert knn_accuracy(embedder.embed(embedder.prepare(rows)), iris.target) > 0.6
