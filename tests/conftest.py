"""Shared fixtures: offline settings, a fast fake embedder for plumbing tests, a Prefect test server."""

from __future__ import annotations

import hashlib
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from tasks.embedders.base import EmbedderInfo  # noqa: E402
from tasks.embedders.registry import register_embedder  # noqa: E402

FAKE_DIM = 8
POISON = "poison"  # texts containing this make the fake embedder return NaN, like a broken model would
UNDECODABLE = "undecodable"  # texts containing this fail the fake embedder's prepare stage, like a bad image


@dataclass
class FakePrepared:
    texts: list[str]
    rows: int
    truncated: int
    failures: dict[int, str]


class FakeEmbedder:
    """Deterministic vectors from a hash of the text: fast, and different texts get different vectors."""

    def __init__(self, name: str, max_chars: int = 50) -> None:
        self.max_chars = max_chars
        self.info = EmbedderInfo(name=name, modality="text", model_id=f"fake/{name}", revision="1", dim=FAKE_DIM,
                                 pooling="none", normalize=True, max_tokens=max_chars)

    def prepare(self, values: pa.Array, base_dir: str) -> FakePrepared:
        texts = values.to_pylist()
        failures = {i: f"cannot decode ({base_dir})" for i, t in enumerate(texts) if UNDECODABLE in t}
        return FakePrepared(texts, len(texts), sum(len(t) > self.max_chars for t in texts), failures)

    def embed(self, prepared: FakePrepared) -> np.ndarray:
        out = np.zeros((prepared.rows, FAKE_DIM), dtype=np.float32)
        for i, text in enumerate(prepared.texts):
            seed = int.from_bytes(hashlib.sha256((self.info.name + text).encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(FAKE_DIM).astype(np.float32)
            out[i] = np.nan if POISON in text else v / np.linalg.norm(v)
        return out


for _name in ("fake", "fake2"):
    register_embedder("text", _name, lambda batch_size, n=_name: FakeEmbedder(n))


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None, row_group_size: int = 4) -> Path:
    """Write rows to a Parquet file (small row groups, so a few rows make several shards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def write_config(folder: Path, sources: list[dict], database: str = "./lancedb") -> Path:
    """A config file in `folder` (relative paths in it resolve against that folder)."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"database": database, "sources": sources}))
    return path
