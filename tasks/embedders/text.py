"""Text: checks, tokenisation (prepare) and transformer inference with the model's own pooling (embed).

The encode loop follows sentence-transformers' recipe (sort by length, batch, `inference_mode`, pool,
normalise, restore order), so its vectors match `SentenceTransformer.encode(..., normalize_embeddings=True)`
for the same model, and improves on it where that is free:
- rows are sorted by their token count (not their character count), and batches are cut by a token
  budget (`batching.budget_batches`), not a fixed row count: short texts go in many-row batches and long
  ones in few-row batches, with almost no padding (on the demo's docstrings sentence-transformers' batches
  are ~38% padding, these ~6%);
- `prepare` tokenises a shard once, into flat token ids (memory in proportion to the real tokens); `embed`
  pads each batch in a background thread (`batching.prefetch`) while the model runs the previous one;
- the BERT-style pooler layer, which no pooling here uses, is dropped;
- on a GPU, batches are pinned and copied without blocking, and a batch that runs out of memory is halved
  and retried (`batching.halving`); `@int8`, `@fp16` and `@bf16` select a precision (`quantize`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tasks.embedders import quantize
from tasks.embedders.base import EmbedderInfo, Modality, ModelLoadError, run_batches
from tasks.embedders.batching import budget_batches, limit_threads
from tasks.embedders.hf import ModelRef, load_pretrained
from tasks.sources import invalid_utf8, is_text_type

POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}


# Text with nothing to embed: only whitespace (what `utf8_trim_whitespace` trims: Unicode's separators and the
# ASCII and C1 spacing controls) and invisible format characters (category Cf: zero-width space and joiners,
# word joiner, byte-order mark, soft hyphen, direction marks), which a tokenizer drops or maps to nothing.
BLANK = r"\A[\p{Z}\p{Cf}\t\n\x0B\f\r\x{1C}-\x{1F}\x{85}]*\z"


def text_reasons(values: pa.Array) -> pa.Array:
    """Why a text cannot be embedded: null, bytes that are not valid UTF-8, or nothing but whitespace and
    invisible format characters (`BLANK`); null when it can."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.large_string())
    invalid = invalid_utf8(values)
    readable = pc.if_else(invalid, pa.scalar(None, values.type), values) if pc.any(invalid).as_py() else values
    blank = pc.match_substring_regex(readable, BLANK)
    reasons = pc.if_else(blank, pa.scalar("empty text"), pa.scalar(None, pa.string()))
    reasons = pc.if_else(invalid, pa.scalar("invalid UTF-8 in the text"), reasons)
    return pc.if_else(pc.is_null(values), pa.scalar("null text"), reasons)


TEXT_STATS = ("characters", "tokens", "unknown_token_rate")


def text_stats(values: pa.Array) -> dict[str, np.ndarray]:
    """Per text, what is read off the value itself: characters. Tokens (after truncation) and the
    unknown-token share come from the embedder's `prepare` (`TokenBatches.stats`), which tokenises anyway."""
    return {"characters": pc.utf8_length(values).to_numpy(zero_copy_only=False).astype(np.float64)}


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


# A batch holds at most batch_size x BUDGET_TOKENS_PER_ROW padded tokens, and at most
# batch_size x MAX_ROWS_FACTOR rows (see `TextEmbedder.embed`).
BUDGET_TOKENS_PER_ROW = 64
MAX_ROWS_FACTOR = 4


@dataclass
class TokenBatches:
    """A shard's texts as token ids, in input order: row i is `ids[offsets[i] : offsets[i] + lengths[i]]`.

    Batches are cut and padded only when embedding, so what travels between stages (and, on a cluster,
    between workers) is the real tokens, not padding.
    """

    ids: np.ndarray  # int32, every row's tokens (special tokens included, after truncation), concatenated
    lengths: np.ndarray  # int64, tokens per row
    rows: int
    truncated: int
    failures: dict[int, str] = field(default_factory=dict)  # tokenising text does not fail per row
    flags: dict[str, int] = field(default_factory=dict)
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # tokens and unknown-token share per row

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


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
    """A Hugging Face transformer encoder with its fast tokenizer and pooling, at a chosen precision."""

    def __init__(self, name: str, ref: ModelRef, batch_size: int = 64, precision: str = quantize.DEFAULT) -> None:
        from transformers import AutoModel, AutoTokenizer

        limit_threads()
        self.tokenizer = AutoTokenizer.from_pretrained(ref.folder)
        if not self.tokenizer.is_fast:
            raise ModelLoadError(f"{ref.model_id}: no fast tokenizer (tokenizer.json) in the model folder")
        cuda = torch.cuda.is_available() and not quantize.runs_on_cpu_only(precision)
        self.device = torch.device("cuda" if cuda else "cpu")
        model = load_pretrained(AutoModel, ref, dtype=quantize.DTYPES[precision])
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT-style dense layer over the first token: no pooling here uses it
        if precision == quantize.INT8:
            model = quantize.quantize_int8(model)
        self.model = model.to(self.device).eval()
        config = self.model.config
        pooling = read_pooling(ref.folder)
        max_tokens = read_max_tokens(
            ref.folder, self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)
        )
        self.batch_size = batch_size
        self.token_budget = batch_size * BUDGET_TOKENS_PER_ROW
        self.max_rows = batch_size * MAX_ROWS_FACTOR
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.info = EmbedderInfo(
            name=name, modality="text", model_id=ref.model_id, revision=ref.revision,
            dim=int(config.hidden_size), pooling=pooling, normalize=True, max_tokens=max_tokens,
            precision=precision,
        )

    def prepare(self, values: pa.Array, base_dir: str = "") -> TokenBatches:
        """Tokenise every text once (truncated to the model's limit) into flat ids; count what was cut."""
        if not len(values):
            return TokenBatches(np.zeros(0, np.int32), np.zeros(0, np.int64), 0, 0)
        limit = self.info.max_tokens
        encoded = self.tokenizer(values.to_pylist(), truncation=True, max_length=limit, padding=True,
                                 return_tensors="np", return_token_type_ids=False)
        mask = encoded["attention_mask"].astype(bool)
        ids = encoded["input_ids"]
        lengths = mask.sum(axis=1).astype(np.int64)
        unknown = ((ids == self.tokenizer.unk_token_id) & mask).sum(axis=1)
        stats = {"tokens": lengths.astype(np.float64), "unknown_token_rate": unknown / np.maximum(lengths, 1)}
        return TokenBatches(ids[mask].astype(np.int32), lengths, len(values), self._truncated(values, lengths),
                            stats=stats)

    def _truncated(self, values: pa.Array, lengths: np.ndarray) -> int:
        """Rows whose full token count is over the limit: only rows at the limit can be, and only those
        are tokenised again, untruncated."""
        at_limit = np.flatnonzero(lengths >= self.info.max_tokens)
        if not len(at_limit):
            return 0
        full = self.tokenizer(values.take(pa.array(at_limit)).to_pylist(), truncation=False, verbose=False,
                              return_length=True, return_attention_mask=False, return_token_type_ids=False)
        return int((np.asarray(full["length"]) > self.info.max_tokens).sum())

    def batches(self, prepared: TokenBatches) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Input positions sorted longest first, and the (start, stop) of each batch over them."""
        order = np.argsort(-prepared.lengths, kind="stable")
        return order, budget_batches(prepared.lengths[order], self.token_budget, self.max_rows)

    def collate(self, prepared: TokenBatches, offsets: np.ndarray, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The model inputs of the given rows, right-padded to the longest of them (pinned for a GPU)."""
        lengths = prepared.lengths[rows]
        columns = np.arange(int(lengths.max()))
        mask = columns[None, :] < lengths[:, None]
        index = np.minimum(offsets[rows][:, None] + columns[None, :], len(prepared.ids) - 1)
        batch = {"input_ids": torch.from_numpy(np.where(mask, prepared.ids[index], self.pad_id).astype(np.int64)),
                 "attention_mask": torch.from_numpy(mask.astype(np.int64))}
        if self.token_types:  # one sentence per row: every token is of type 0
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        if self.device.type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch

    def embed(self, prepared: TokenBatches) -> np.ndarray:
        """Run the model over token-budget batches of length-sorted rows (each padded in a background
        thread while the previous one runs), pool and normalise, and put rows back in input order."""
        order, cuts = self.batches(prepared)
        offsets = prepared.offsets
        batches = (self.collate(prepared, offsets, order[start:stop]) for start, stop in cuts)
        return run_batches(batches, order, prepared.rows, self.info.dim, self._forward)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        hidden = self.model(**inputs).last_hidden_state.float()
        vectors = pool(hidden, inputs["attention_mask"], self.info.pooling)
        return torch.nn.functional.normalize(vectors, p=2, dim=1) if self.info.normalize else vectors
