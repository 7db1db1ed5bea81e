"""Text: checks, tokenisation (prepare) and transformer inference with the model's own pooling (embed).

The encode loop follows sentence-transformers' recipe (sort by length, slice batches, tokenise with
the fast tokenizer, `inference_mode`, pool, normalise, restore order), so its vectors match
`SentenceTransformer.encode(..., normalize_embeddings=True)` for the same model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tasks.embedders.base import EmbedderInfo, Modality, ModelLoadError, run_batches
from tasks.embedders.hf import ModelRef
from tasks.sources import is_text_type

POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}


def text_reasons(values: pa.Array) -> pa.Array:
    """Why a text cannot be embedded: null, or nothing but whitespace; null when it can."""
    blank = pc.equal(pc.utf8_trim_whitespace(values), "")
    reasons = pc.if_else(blank, pa.scalar("empty text"), pa.scalar(None, pa.string()))
    return pc.if_else(pc.is_null(values), pa.scalar("null text"), reasons)


TEXT_STATS = ("characters", "tokens", "unknown_token_rate")
STATS_BATCH = 1024  # texts tokenised at once for the statistics (bounds the padded arrays)


def text_stats(values: pa.Array, embedder: object) -> dict[str, np.ndarray]:
    """Per text: characters, and for an embedder with a tokenizer the tokens it sees (after truncation) and
    the share of them that are the unknown token."""
    stats = {"characters": pc.utf8_length(values).to_numpy(zero_copy_only=False).astype(np.float64)}
    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is None or not len(values):
        return stats
    limit = getattr(getattr(embedder, "info", None), "max_tokens", None) or None
    tokens, unknown = [], []
    for start in range(0, len(values), STATS_BATCH):
        encoded = tokenizer(values.slice(start, STATS_BATCH).to_pylist(), truncation=limit is not None,
                            max_length=limit, padding=True, return_tensors="np")
        mask = encoded["attention_mask"].astype(bool)
        tokens.append(mask.sum(axis=1))
        unknown.append(((encoded["input_ids"] == tokenizer.unk_token_id) & mask).sum(axis=1))
    count = np.concatenate(tokens).astype(np.float64)
    return stats | {"tokens": count, "unknown_token_rate": np.concatenate(unknown) / np.maximum(count, 1)}


TEXT = Modality(
    name="text",
    expected="a string column",
    accepts=is_text_type,
    storage=lambda _: pa.large_string(),
    reasons=text_reasons,
    default_embedder="minilm",
    stat_names=lambda _: TEXT_STATS,
    describe=text_stats,
)


@dataclass
class TokenBatches:
    """Tokenised, length-sorted batches; `order[i]` is the input position of sorted row i."""

    batches: list[dict[str, torch.Tensor]]
    order: np.ndarray
    rows: int
    truncated: int
    failures: dict[int, str] = field(default_factory=dict)  # tokenising text does not fail per row
    flags: dict[str, int] = field(default_factory=dict)


def read_pooling(folder: Path) -> str:
    """The pooling the model's sentence-transformers config names; mean when it names none."""
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    settings = json.loads(config.read_text())
    modes = [mode for key, mode in POOLING_KEYS.items() if settings.get(key)]
    unsupported = [k for k, v in settings.items() if k.startswith("pooling_mode") and v and k not in POOLING_KEYS]
    if len(modes) != 1 or unsupported:
        raise ModelLoadError(f"{config}: supported poolings are one of {sorted(POOLING_KEYS.values())}")
    return modes[0]


def read_max_tokens(folder: Path, tokenizer_max: int, positions: int | None) -> int:
    """The model's input limit: sentence-transformers' max_seq_length, else the tokenizer's and positions'."""
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        limit = json.loads(st_config.read_text()).get("max_seq_length")
        if limit:
            return int(limit)
    limits = [n for n in (tokenizer_max, positions) if n and n < 1_000_000]
    if not limits:
        raise ModelLoadError(f"{folder}: the model states no maximum input length")
    return min(limits)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per sequence from token states, ignoring padding."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class TextEmbedder:
    """A Hugging Face transformer encoder with its fast tokenizer and pooling."""

    def __init__(self, name: str, ref: ModelRef, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(ref.folder)
        if not self.tokenizer.is_fast:
            raise ModelLoadError(f"{ref.model_id}: no fast tokenizer (tokenizer.json) in the model folder")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModel.from_pretrained(
            ref.folder, trust_remote_code=False, use_safetensors=ref.has_safetensors
        ).to(self.device).eval()
        config = self.model.config
        pooling = read_pooling(ref.folder)
        max_tokens = read_max_tokens(
            ref.folder, self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)
        )
        self.batch_size = batch_size
        self.info = EmbedderInfo(
            name=name, modality="text", model_id=ref.model_id, revision=ref.revision,
            dim=int(config.hidden_size), pooling=pooling, normalize=True, max_tokens=max_tokens,
        )

    def prepare(self, values: pa.Array, base_dir: str = "") -> TokenBatches:
        """Sort by length (long first, as sentence-transformers does) and tokenise batch by batch."""
        order = np.argsort(-pc.utf8_length(values).to_numpy(zero_copy_only=False), kind="stable")
        texts = values.take(pa.array(order)).to_pylist()
        batches, truncated = [], 0
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size], padding=True, truncation=True,
                max_length=self.info.max_tokens, return_tensors="pt",
            )
            truncated += sum(1 for e in encoded.encodings if e.overflowing)
            batches.append(dict(encoded))
        return TokenBatches(batches, order, len(texts), truncated)

    def embed(self, prepared: TokenBatches) -> np.ndarray:
        """Run the model over the batches, pool and normalise, and put rows back in input order."""
        return run_batches(prepared.batches, prepared.order, prepared.rows, self.info.dim, self._forward)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        vectors = pool(self.model(**inputs).last_hidden_state, inputs["attention_mask"], self.info.pooling)
        return torch.nn.functional.normalize(vectors, p=2, dim=1) if self.info.normalize else vectors
