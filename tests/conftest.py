"""Shared fixtures: offline settings, a fast fake embedder for plumbing tests, a Prefect test server."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

# The fake embedders are a plugin module (so cluster workers can load them too); importing it registers them.
from fake_embedders import FAKE_DIM, POISON, UNDECODABLE, FakeEmbedder, FakePrepared  # noqa: E402, F401


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for every flow test of the session; flows run as the CLI runs
    them without a configured server: without heartbeats (`flows.settings.run_settings`)."""
    from prefect.settings import temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.settings import NO_HEARTBEATS

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates=NO_HEARTBEATS):
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
