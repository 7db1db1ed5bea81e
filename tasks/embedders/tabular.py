"""Tables (`modality: table`): a row of several columns, embedded by `tabular` (fitted) or `row-text`.

`tabular` follows the background notes on structured data: numeric columns standardised (non-finite
and missing values imputed with the mean, plus a missing indicator), categorical columns one-hot over
a fitted vocabulary of their frequent values (rare and unseen values share an unknown slot, nulls a
missing slot), all concatenated and reduced by PCA to at most DIM dimensions, keeping only components
whose variance is not negligible (a table has as many live dimensions as it has independent features:
a constant missing indicator or a column that is a sum of others adds none, and a dead component is
float rounding that breaks any statistic that standardises it). PCA over the one-hot
blocks is what learns dense codes for large vocabularies: values that co-occur with similar rows land
near each other. The fitted state (means, scales, vocabularies, projection) is stored with the table
(see `tasks.fitted`), so vectors from different runs stay comparable.

`row-text` serialises each row as `column: value; ...` and embeds the text with the bundled MiniLM.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from tasks import fitted
from tasks.embedders.base import Embedder, EmbedderInfo, FeatureRows, Modality
from tasks.embedders.text import TokenBatches
from tasks.sources import InputError, invalid_utf8, is_text_type

DIM = 32  # dense dimensions at most (fewer when the table has fewer independent features)
# A component whose variance is below this share of the first one's is rounding, not structure: its
# standard deviation is under float32 resolution (~1e-7) relative to the first component's.
DEAD_VARIANCE = 1e-12
MAX_VOCAB = 1_000  # most frequent values kept per categorical column
MIN_COUNT = 2  # a value seen fewer times in the fitting sample maps to the unknown slot


def accepts(t: pa.DataType) -> bool:
    """Numbers, booleans and strings (dictionary-encoded included) make table features."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or is_text_type(t)


def storage(t: pa.DataType) -> pa.DataType:
    """Strings are read as large_string (categoricals decoded), numbers and booleans as they are."""
    return pa.large_string() if is_text_type(t) else t


def table_reasons(values: pa.Array) -> pa.Array:
    """A row with every listed column null has nothing to embed, and one with a string that is not valid
    UTF-8 cannot be featurised (nor named in a vocabulary); other rows can be embedded."""
    if values.type.num_fields == 0:
        return pa.nulls(len(values), pa.string())
    all_null = pc.is_null(values.field(0))
    for i in range(1, values.type.num_fields):
        all_null = pc.and_(all_null, pc.is_null(values.field(i)))
    reasons = pc.if_else(all_null, pa.scalar("every column of the row is null"), pa.scalar(None, pa.string()))
    for child in values.type:
        if is_text_type(child.type):
            bad = pa.scalar(f"invalid UTF-8 in column {child.name!r}")
            column = pc.if_else(invalid_utf8(values.field(child.name)), bad, pa.scalar(None, pa.string()))
            reasons = pc.coalesce(reasons, column)
    return pc.if_else(pc.is_null(values), pa.scalar("null row"), reasons)


def numeric_columns(value_type: pa.DataType) -> tuple[str, ...]:
    """The row's number and boolean columns: the input statistics of a table field are their values."""
    return tuple(f.name for f in value_type if not is_text_type(f.type))


def table_stats(values: pa.StructArray) -> dict[str, np.ndarray]:
    """The numeric columns' values (NaN where missing), for per-column input drift."""
    return {name: _numbers(values.field(name)) for name in numeric_columns(values.type)}


TABLE = Modality(
    name="table",
    expected="numbers, booleans or strings in every listed column",
    accepts=accepts,
    storage=storage,
    reasons=table_reasons,
    default_embedder="tabular",
    stat_names=numeric_columns,
    describe=table_stats,
)


def _numbers(column: pa.Array) -> np.ndarray:
    """float64 values with nulls and non-finite values as NaN."""
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.where(np.isfinite(values), values, np.nan)


def featurize(values: pa.StructArray, meta: dict, arrays: dict[str, np.ndarray]) -> FeatureRows:
    """Standardised numbers with missing indicators, then one-hot categories, in the fitted column order."""
    n, blocks, imputed, unknown = len(values), [], 0, 0
    for column in meta["numeric"]:
        x = _numbers(values.field(column))
        missing = np.isnan(x)
        imputed += int(missing.sum())
        z = (np.where(missing, arrays[f"mean:{column}"], x) - arrays[f"mean:{column}"]) / arrays[f"scale:{column}"]
        blocks.append(sp.csr_matrix(np.column_stack([z, missing.astype(np.float64)])))
    for column in meta["categorical"]:
        vocab = arrays[f"vocab:{column}"]
        raw = values.field(column)
        index = pc.index_in(raw, value_set=pa.array(vocab.tolist(), pa.large_string()))
        null = pc.is_null(raw).to_numpy(zero_copy_only=False)
        slot = np.where(null, len(vocab) + 1, pc.fill_null(index, len(vocab)).to_numpy(zero_copy_only=False))
        unknown += int((~null & pc.is_null(index).to_numpy(zero_copy_only=False)).sum())
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), slot.astype(np.int64))), shape=(n, len(vocab) + 2)))
    flags = {k: v for k, v in (("imputed value", imputed), ("unknown category", unknown)) if v}
    return FeatureRows(sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((n, 0)), n, flags=flags)


def fit(sample: pa.Array) -> bytes:
    """Fit scales, vocabularies and the PCA projection on a sample of rows; the state as bytes."""
    from sklearn.decomposition import PCA

    meta: dict = {"numeric": [], "categorical": [], "rows": len(sample)}
    arrays: dict[str, np.ndarray] = {}
    for child in sample.type:
        values = sample.field(child.name)
        if is_text_type(child.type):
            counts = pc.value_counts(pc.drop_null(values))
            keep = pc.greater_equal(counts.field("counts"), min(MIN_COUNT, len(sample)))
            frequent = counts.filter(keep)
            top = pc.take(frequent.field("values"), pc.array_sort_indices(frequent.field("counts"), order="descending"))
            arrays[f"vocab:{child.name}"] = np.array(top.slice(0, MAX_VOCAB).to_pylist(), dtype=str)
            meta["categorical"].append(child.name)
        else:
            x = _numbers(values)
            mean = float(np.nanmean(x)) if np.isfinite(x).any() else 0.0
            scale = float(np.nanstd(x)) if np.isfinite(x).sum() > 1 else 0.0
            arrays[f"mean:{child.name}"], arrays[f"scale:{child.name}"] = np.array(mean), np.array(scale or 1.0)
            meta["numeric"].append(child.name)
    features = featurize(sample, meta, arrays).features
    dim = min(DIM, features.shape[1] - 1, features.shape[0] - 1)
    if dim < 1:
        raise InputError(f"tabular needs at least 2 rows and 2 features to fit; got {features.shape}")
    pca = PCA(dim, svd_solver="covariance_eigh").fit(features)  # exact and repeatable (no random start)
    variance = pca.explained_variance_
    live = variance > DEAD_VARIANCE * variance.max(initial=0.0)
    if not live.any():
        raise InputError("tabular: no column varies in the fitting sample, so rows have nothing to tell them apart")
    meta["dim"] = int(live.sum())
    arrays.update(center=pca.mean_.astype(np.float64), basis=pca.components_[live].astype(np.float64))
    return fitted.pack(meta, arrays)


class TabularEmbedder:
    """Rows into the fitted feature space, projected on its principal components."""

    def __init__(self, state: bytes, batch_size: int = 64) -> None:
        self.meta, self.arrays = fitted.unpack(state)
        self.info = EmbedderInfo(
            name="tabular", modality="table", model_id="multiembed/tabular-pca",
            revision=fitted.REVISION_PREFIX + fitted.state_id(state), dim=int(self.meta["dim"]), pooling="none",
            normalize=False, max_tokens=0,
        )

    def prepare(self, values: pa.Array, base_dir: str = "") -> FeatureRows:
        return featurize(values, self.meta, self.arrays)

    def embed(self, prepared: FeatureRows) -> np.ndarray:
        """(features - center) @ basis.T, without densifying the one-hot blocks."""
        basis = self.arrays["basis"]
        projected = prepared.features @ basis.T - self.arrays["center"] @ basis.T
        return np.asarray(projected, dtype=np.float32)


def row_texts(values: pa.StructArray) -> pa.Array:
    """Each row as `column: value; ...`, null values left out."""
    def text(s: str) -> pa.Scalar:
        return pa.scalar(s, pa.large_string())

    parts = [pc.binary_join_element_wise(text(f"{child.name}: "), values.field(i).cast(pa.large_string()), text(""))
             for i, child in enumerate(values.type)]
    return pc.binary_join_element_wise(*parts, text("; "), null_handling="skip")


class RowText:
    """`row-text`: a text embedder over rows serialised as `column: value; ...`."""

    def __init__(self, text: Embedder) -> None:
        self.text = text
        self.info = replace(text.info, name="row-text", modality="table")

    def prepare(self, values: pa.Array, base_dir: str = "") -> TokenBatches:
        return self.text.prepare(row_texts(values), base_dir)

    def embed(self, prepared: TokenBatches) -> np.ndarray:
        return self.text.embed(prepared)
