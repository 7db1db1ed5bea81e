"""The contract every embedder meets, so a new modality is a new preparer and embedder, not a new pipeline.

An embedder is loaded once per worker process (see `registry.load_embedder`) and then does two
things per shard: `prepare` (CPU work: tokenise, decode, extract features) and `embed` (batched
inference, on the GPU when there is one). They are separate stages so preparation of one shard can
overlap inference on another.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import torch

from multiembed import PIPELINE_VERSION
from tasks.embedders.batching import halving, prefetch


class ModelLoadError(ValueError):
    """An embedder name or model reference that cannot be resolved to a model (a usage error)."""


@dataclass(frozen=True)
class Modality:
    """What a modality accepts, checked before any work (`accepts`) and per row (`reasons`)."""

    name: str
    expected: str  # what a column must hold, in words, for error messages
    accepts: Callable[[pa.DataType], bool]
    storage: Callable[[pa.DataType], pa.DataType]  # the type an accepted column is cast to when read
    # Per row: null if the value can be embedded, else why not (these rows go to `_rejects`).
    reasons: Callable[[pa.Array], pa.Array]
    default_embedder: str
    # Input statistics kept per row (`input_stats`) for input drift: their names for a column of this type;
    # `describe` computes those read off the values themselves (the rest come from `Prepared.stats`).
    stat_names: Callable[[pa.DataType], tuple[str, ...]] = lambda _: ()
    describe: Callable[[pa.Array], dict[str, np.ndarray]] | None = None
    # What a row's content hash covers, given its values and the folder of their Parquet file, when the
    # values alone do not say what is embedded (a path names a file that can change); None: the values.
    payload: Callable[[pa.Array, str], pa.Array] | None = None


@dataclass(frozen=True)
class EmbedderInfo:
    """Everything that shapes the vectors; written into the table metadata and the content hash."""

    name: str
    modality: str
    model_id: str
    revision: str  # a commit hash, or a hash of the weights when there is no commit
    dim: int
    pooling: str
    normalize: bool
    max_tokens: int
    precision: str = "float32"

    def metadata(self) -> dict[str, str]:
        """String metadata for the Arrow schema of the embedding table."""
        values: dict[str, Any] = {**asdict(self), "pipeline_version": PIPELINE_VERSION}
        return {("embedder" if k == "name" else k): str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in values.items()}

    def fingerprint(self) -> str:
        """A short hash of the metadata: part of every row's content hash."""
        blob = json.dumps(self.metadata(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class Prepared(Protocol):
    """A shard's inputs after CPU preparation, ready for the model."""

    rows: int
    truncated: int  # rows cut to the model's maximum input length
    failures: dict[int, str]  # input position -> why preparing it failed (an undecodable image, ...)
    flags: dict[str, int]  # rows embedded but worth counting, by condition ("silent clip", "imputed value")
    # Optional `stats`: input statistics measured while preparing (an image's size), per input position.


@dataclass
class FeatureRows:
    """A shard's rows as a feature matrix (scipy sparse, one row per input): what fitted embedders prepare."""

    features: Any
    rows: int
    truncated: int = 0
    failures: dict[int, str] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)


class Embedder(Protocol):
    """A loaded model with its preprocessing; `embed(prepare(values))` gives one vector per value."""

    info: EmbedderInfo

    def prepare(self, values: pa.Array, base_dir: str) -> Prepared:
        """CPU work on values that passed the modality's checks (no nulls).

        `base_dir` is the folder of the Parquet file the values come from (relative paths in the data
        resolve against it). A value that cannot be prepared is listed in `failures`, not raised.
        """
        ...

    def embed(self, prepared: Prepared) -> np.ndarray:
        """float32 array of shape (rows, dim), in the order of the values given to `prepare`.

        Rows listed in `prepared.failures` may hold anything; they are rejected, not written.
        """
        ...


B = TypeVar("B")
# One forward pass at a time per process. Each already uses every core (torch's intra-op threads) or the
# GPU; two shards embedding at once from two task threads would run twice the threads on the same cores
# (oversubscribed: slower on a quiet machine). Shards take turns batch by batch, while other stages
# (reading, tokenising, decoding, writing) go on in their threads.
INFERENCE_LOCK = threading.Lock()


def run_batches(batches: Iterable[B], positions: np.ndarray, rows: int, dim: int,
                forward: Callable[[B], torch.Tensor], prefetch_depth: int = 2) -> np.ndarray:
    """The encode loop every embedder shares: `forward` each batch under `inference_mode` and write its
    vectors to their input positions (`positions[i]` is where the i-th batched item goes; rows that were
    not batched stay zero).

    Batches are produced `prefetch_depth` ahead in a background thread (a generator of batches builds
    the next ones while the model runs), a batch that runs out of accelerator memory is halved and
    retried (`batching.halving`), and forward passes of concurrent calls take turns (`INFERENCE_LOCK`).
    """
    out = np.zeros((rows, dim), dtype=np.float32)
    start, step = 0, halving(forward)
    with torch.inference_mode(), closing(prefetch(batches, prefetch_depth)) as ready:
        for batch in ready:
            with INFERENCE_LOCK:
                vectors = step(batch).float().cpu().numpy()
            out[positions[start : start + len(vectors)]] = vectors
            start += len(vectors)
    return out
