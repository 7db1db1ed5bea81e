"""The tests' fake embedders, as an embedder plugin: importing this module registers `fake` and `fake2`.

A plugin module rather than part of conftest, so that the worker processes of a Ray or Dask cluster,
which never import conftest, load it the way they load any plugin (`MULTIEMBED_PLUGINS=fake_embedders`
with this folder on their path), and results they pickle name a module every process can import.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tasks.embedders.base import EmbedderInfo
from tasks.embedders.registry import register_embedder

FAKE_DIM = 8
POISON = "poison"  # texts containing this make the fake embedder return NaN, like a broken model would
UNDECODABLE = "undecodable"  # texts containing this fail the fake embedder's prepare stage, like a bad image
# A text `<KILL_ONCE><path>` makes the first embed call that creates the file at `path` SIGKILL its own process,
# like a worker lost mid-shard (out of memory, a preempted node); the retried shard then embeds normally.
KILL_ONCE = "kill-this-worker-once:"
# When set, a file every load, prepare and embed appends a JSON line to: which process did it, seeing which GPUs.
TRACE_ENV = "FAKE_EMBEDDER_TRACE"
# An embed call whose texts include one containing SLOW sleeps SLOW_S first: a busy worker a test can kill from outside.
SLOW = "slow-to-embed"
SLOW_S = 2.0


@dataclass
class FakePrepared:
    texts: list[str]
    rows: int
    truncated: int
    failures: dict[int, str]
    flags: dict[str, int] = field(default_factory=dict)


def trace(event: str, name: str) -> None:
    """Append one line to the trace file, if tracing is on."""
    if path := os.environ.get(TRACE_ENV):
        line = {"event": event, "name": name, "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def kill_once(text: str) -> None:
    """SIGKILL this process if `text` asks for it and no process has been killed for it yet."""
    if not text.startswith(KILL_ONCE):
        return
    try:
        os.close(os.open(text[len(KILL_ONCE):], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class FakeEmbedder:
    """Deterministic vectors from a hash of the text: fast, and different texts get different vectors."""

    def __init__(self, name: str, max_chars: int = 50) -> None:
        self.max_chars = max_chars
        self.info = EmbedderInfo(name=name, modality="text", model_id=f"fake/{name}", revision="1", dim=FAKE_DIM,
                                 pooling="none", normalize=True, max_tokens=max_chars)
        trace("load", name)

    def prepare(self, values: pa.Array, base_dir: str) -> FakePrepared:
        trace("prepare", self.info.name)
        texts = values.to_pylist()
        failures = {i: f"cannot decode ({base_dir})" for i, t in enumerate(texts) if UNDECODABLE in t}
        return FakePrepared(texts, len(texts), sum(len(t) > self.max_chars for t in texts), failures)

    def embed(self, prepared: FakePrepared) -> np.ndarray:
        trace("embed", self.info.name)
        if any(SLOW in text for text in prepared.texts):
            time.sleep(SLOW_S)
        out = np.zeros((prepared.rows, FAKE_DIM), dtype=np.float32)
        for i, text in enumerate(prepared.texts):
            kill_once(text)
            seed = int.from_bytes(hashlib.sha256((self.info.name + text).encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(FAKE_DIM).astype(np.float32)
            out[i] = np.nan if POISON in text else v / np.linalg.norm(v)
        return out


for _name in ("fake", "fake2"):
    register_embedder("text", _name, lambda batch_size, n=_name: FakeEmbedder(n))
