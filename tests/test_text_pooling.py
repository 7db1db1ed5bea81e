"""Text pooling and the model-folder settings it is read from (hand-made tensors and JSON, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.embedders.base import ModelLoadError
from tasks.embedders.text import pool, read_max_tokens, read_pooling

# 4 sequences, 3 positions, 2 dims; padding positions hold values that would change every result.
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],  # length 2
        [[-1.0, -5.0], [-3.0, -2.0], [0.0, 0.0]],  # length 2, all real values negative
        [[0.0, 9.0], [6.0, 3.0], [3.0, 0.0]],  # length 3, no padding
        [[7.0, 8.0], [50.0, 50.0], [-50.0, -50.0]],  # length 1
    ]
)
MASK = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.int64)


def test_mean_ignores_padding() -> None:
    expected = torch.tensor([[2.0, 3.0], [-2.0, -3.5], [3.0, 4.0], [7.0, 8.0]])
    out = pool(HIDDEN, MASK, "mean")
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected)


def test_cls_takes_first_position() -> None:
    expected = torch.tensor([[1.0, 2.0], [-1.0, -5.0], [0.0, 9.0], [7.0, 8.0]])
    assert torch.equal(pool(HIDDEN, MASK, "cls"), expected)


def test_max_ignores_padding() -> None:
    expected = torch.tensor([[3.0, 4.0], [-1.0, -2.0], [6.0, 9.0], [7.0, 8.0]])
    assert torch.equal(pool(HIDDEN, MASK, "max"), expected)


def test_lasttoken_takes_last_real_position() -> None:
    expected = torch.tensor([[3.0, 4.0], [-3.0, -2.0], [3.0, 0.0], [7.0, 8.0]])
    assert torch.equal(pool(HIDDEN, MASK, "lasttoken"), expected)


def test_pool_does_not_modify_input() -> None:
    hidden = HIDDEN.clone()
    for mode in ("mean", "cls", "max", "lasttoken"):
        pool(hidden, MASK, mode)
    assert torch.equal(hidden, HIDDEN)


def test_mean_in_half_precision() -> None:
    out = pool(HIDDEN.to(torch.bfloat16), MASK, "mean")
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), torch.tensor([[2.0, 3.0], [-2.0, -3.5], [3.0, 4.0], [7.0, 8.0]]))


# read_pooling


def write_pooling(folder: Path, settings: dict) -> None:
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(settings))


ALL_OFF = {
    "word_embedding_dimension": 384,
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": False,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
    "pooling_mode_weightedmean_tokens": False,
    "pooling_mode_lasttoken": False,
    "include_prompt": True,
}


def test_read_pooling_default_is_mean(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) == "mean"


@pytest.mark.parametrize(
    ("key", "mode"),
    [
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_lasttoken", "lasttoken"),
    ],
)
def test_read_pooling_modes(tmp_path: Path, key: str, mode: str) -> None:
    write_pooling(tmp_path, {**ALL_OFF, key: True})
    assert read_pooling(tmp_path) == mode


def test_read_pooling_only_the_true_key_counts(tmp_path: Path) -> None:
    write_pooling(tmp_path, {"pooling_mode_cls_token": True})
    assert read_pooling(tmp_path) == "cls"


@pytest.mark.parametrize(
    "settings",
    [
        {**ALL_OFF, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},  # two modes
        ALL_OFF,  # none
        {**ALL_OFF, "pooling_mode_weightedmean_tokens": True},  # unsupported only
        {**ALL_OFF, "pooling_mode_mean_tokens": True, "pooling_mode_mean_sqrt_len_tokens": True},  # plus unsupported
    ],
    ids=["two", "none", "unsupported", "supported-plus-unsupported"],
)
def test_read_pooling_rejects(tmp_path: Path, settings: dict) -> None:
    write_pooling(tmp_path, settings)
    with pytest.raises(ModelLoadError) as info:
        read_pooling(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "1_Pooling" / "config.json") in message
    for mode in ("cls", "lasttoken", "max", "mean"):
        assert mode in message


# read_max_tokens


def test_read_max_tokens_prefers_sentence_transformers_setting(tmp_path: Path) -> None:
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    assert read_max_tokens(tmp_path, tokenizer_max=512, positions=512) == 256
    assert read_max_tokens(tmp_path, tokenizer_max=10**30, positions=None) == 256


def test_read_max_tokens_falls_back_to_smaller_limit(tmp_path: Path) -> None:
    assert read_max_tokens(tmp_path, tokenizer_max=512, positions=514) == 512
    assert read_max_tokens(tmp_path, tokenizer_max=1024, positions=512) == 512


def test_read_max_tokens_ignores_unset_tokenizer_limit(tmp_path: Path) -> None:
    # transformers' "no limit" is int(1e30)
    assert read_max_tokens(tmp_path, tokenizer_max=int(1e30), positions=8192) == 8192


@pytest.mark.parametrize("st_settings", [{"max_seq_length": None}, {"do_lower_case": True}])
def test_read_max_tokens_st_config_without_limit(tmp_path: Path, st_settings: dict) -> None:
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps(st_settings))
    assert read_max_tokens(tmp_path, tokenizer_max=128, positions=512) == 128


def test_read_max_tokens_no_limit_anywhere(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        read_max_tokens(tmp_path, tokenizer_max=int(1e30), positions=None)
    assert str(tmp_path) in str(info.value)
    assert "maximum input length" in str(info.value)
