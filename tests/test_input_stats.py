"""Text input statistics: what a tokenizer-based model saw (tokens after truncation, unknown-token share)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tasks.embedders import registry
from tasks.embedders.text import text_stats


def texts(values: list[str]) -> pa.Array:
    return pa.array(values, pa.large_string())


def test_without_a_tokenizer_only_characters_are_measured() -> None:
    stats = text_stats(texts(["héllo", ""]))
    assert list(stats) == ["characters"] and stats["characters"].tolist() == [5, 0]


@pytest.mark.slow
def test_tokens_are_counted_after_truncation_with_the_unknown_share() -> None:
    embedder = registry.load_embedder("text", "minilm", 8)
    values = ["hello world", "\U0001f99c \U0001f99c ok", "x " * 400]
    stats = embedder.prepare(texts(values)).stats
    expected_tokens = [len(embedder.tokenizer(v, truncation=True, max_length=256)["input_ids"]) for v in values]
    assert stats["tokens"].tolist() == expected_tokens == [4, 5, 256]  # [CLS] ... [SEP]; the long one cut at 256
    np.testing.assert_allclose(stats["unknown_token_rate"], [0, 2 / 5, 0])  # the parrots are [UNK]
