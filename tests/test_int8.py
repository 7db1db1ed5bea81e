"""The optional int8 path (`minilm@int8`): naming, int8 layers, and vectors close to float32 on real text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import write_config, write_parquet

from multiembed.demo import docstring_rows
from schemas.tables import embedding_metadata, table_name
from tasks.embedders import quantize, registry
from tasks.embedders.base import EmbedderInfo, ModelLoadError
from tasks.quality.labels import knn_accuracy


def test_precision_suffixes_resolve_and_unknown_ones_are_clear_errors() -> None:
    assert quantize.split_precision("minilm") == ("minilm", "float32")
    assert quantize.split_precision("minilm@int8") == ("minilm", "int8-dynamic")
    assert quantize.split_precision("hf:org/model@bf16") == ("hf:org/model", "bfloat16")
    with pytest.raises(ModelLoadError, match=r"unknown precision suffix '@int4'; choose from \['@int8'"):
        quantize.split_precision("minilm@int4")
    registry.check_embedder("text", "minilm@int8")
    registry.check_embedder("text", "hf:some-org/some-model@int8")
    with pytest.raises(ModelLoadError, match="precision suffix is for text transformers only"):
        registry.check_embedder("text", "tfidf@int8")
    with pytest.raises(ModelLoadError, match="precision suffix is for text transformers only"):
        registry.check_embedder("image", "efficientnet-lite0@int8")
    with pytest.raises(ModelLoadError, match="unknown precision suffix"):
        registry.check_embedder("text", "minilm@fast")


def test_precision_is_part_of_the_metadata_fingerprint_and_table_name() -> None:
    fields = dict(name="minilm", modality="text", model_id="m", revision="r", dim=4, pooling="mean",
                  normalize=True, max_tokens=8)
    fp32, int8 = EmbedderInfo(**fields), EmbedderInfo(**fields | {"name": "minilm@int8"}, precision="int8-dynamic")
    assert int8.metadata()["precision"] == "int8-dynamic" and fp32.metadata()["precision"] == "float32"
    assert int8.fingerprint() != fp32.fingerprint()
    assert table_name("docs", "body", "minilm@int8") == "docs__body__minilm_int8"


def test_int8_linear_tracks_float32_and_per_token_scales_survive_an_outlier_token() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 256)
    x = torch.randn(32, 64)
    x[0] *= 50  # one token with large activations, as after an activation function
    exact = linear(x)
    errors = {}
    for per_token in (False, True):
        got = quantize.Int8Linear(linear, per_token=per_token)(x)
        assert got.shape == exact.shape and got.dtype == torch.float32
        errors[per_token] = ((got[1:] - exact[1:]).norm(dim=1) / exact[1:].norm(dim=1)).max().item()
    assert errors[True] < 0.02  # the other tokens keep their precision with a scale of their own
    assert errors[True] < errors[False] / 3  # with one scale for the tensor the outlier takes their levels


def test_quantize_int8_replaces_every_linear_layer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 64),
                                torch.nn.Sequential(torch.nn.Linear(64, 16)))
    x = torch.randn(8, 16)
    expected = model(x)
    quantised = quantize.quantize_int8(model)
    layers = [m for m in quantised.modules() if isinstance(m, quantize.Int8Linear)]
    assert not any(isinstance(m, torch.nn.Linear) for m in quantised.modules())
    assert len(layers) == 3 and all(m.per_token for m in layers)
    cos = torch.nn.functional.cosine_similarity(quantised(x), expected, dim=1)
    assert cos.min() > 0.99


@pytest.fixture(scope="module")
def docstrings() -> tuple[list[str], np.ndarray]:
    rows = docstring_rows()
    return [r["body"] for r in rows], np.array([r["module"] for r in rows])


@pytest.mark.slow
def test_int8_vectors_match_float32_on_real_text(docstrings: tuple[list[str], np.ndarray]) -> None:
    texts, labels = docstrings
    long = [" ".join(texts[i : i + 30]) for i in range(0, 90, 30)]  # past the token limit
    values = pa.array(texts + long + ["Short.", "ünïcödé façade — naïve café"], pa.large_string())
    fp32 = registry.load_embedder("text", "minilm", 32)
    int8 = registry.load_embedder("text", "minilm@int8", 32)
    assert int8.info.precision == "int8-dynamic" and int8.info.name == "minilm@int8"
    assert int8.info.fingerprint() != fp32.info.fingerprint()
    assert int8.device.type == "cpu"
    reference, quantised = fp32.embed(fp32.prepare(values)), int8.embed(int8.prepare(values))
    cos = (reference * quantised).sum(axis=1)
    assert cos.min() >= 0.99, f"worst row {int(cos.argmin())}: cosine {cos.min():.4f}"
    np.testing.assert_allclose(np.linalg.norm(quantised, axis=1), 1.0, rtol=1e-5)
    alone = int8.embed(int8.prepare(values[5:6]))  # per-token scales: a row's vector does not depend on its batch
    assert float(alone[0] @ quantised[5]) >= 0.9999
    n = len(texts)
    before = knn_accuracy(reference[:n], labels).value
    after = knn_accuracy(quantised[:n], labels).value
    assert before > 0.5  # the labels are learnable: the comparison means something
    assert abs(after - before) <= 0.01, (before, after)


@pytest.mark.slow
def test_a_backfill_with_int8_writes_its_own_table_that_says_so(tmp_path: Path, prefect_server,
                                                               docstrings: tuple[list[str], np.ndarray]) -> None:
    from flows.backfill import backfill

    texts, _ = docstrings
    write_parquet(tmp_path / "raw" / "docs.parquet", [{"id": i, "body": t} for i, t in enumerate(texts[:40])],
                  row_group_size=20)
    config = write_config(tmp_path, [{"name": "docs", "path": "raw/docs.parquet", "id": "id", "fields": [
        {"column": "body", "modality": "text", "embedders": ["minilm", "minilm@int8"]}]}])
    summary = backfill(config=str(config))
    assert {r["table"]: r["rows_embedded"] for r in summary} == {"docs__body__minilm": 40,
                                                                 "docs__body__minilm_int8": 40}
    import lancedb

    db = lancedb.connect(str(tmp_path / "lancedb"))
    metadata = {name: embedding_metadata(db.open_table(name).schema)
                for name in ("docs__body__minilm", "docs__body__minilm_int8")}
    assert metadata["docs__body__minilm_int8"]["precision"] == "int8-dynamic"
    assert metadata["docs__body__minilm"]["precision"] == "float32"
    vectors = {name: np.stack(db.open_table(name).to_arrow().sort_by("id")["vector"].to_numpy(zero_copy_only=False))
               for name in metadata}
    assert (vectors["docs__body__minilm"] * vectors["docs__body__minilm_int8"]).sum(axis=1).min() >= 0.99
