"""Text, images and audio of one source through the same backfill and refresh flows, with real models."""

from __future__ import annotations

import io
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
import soundfile as sf
from conftest import write_config, write_parquet
from PIL import Image
from sklearn.datasets import load_sample_images

from flows.backfill import backfill, refresh

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG")
    return out.getvalue()


def tone(folder: Path, name: str, hz: float, seconds: float = 1.5) -> str:
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(folder / name, 0.3 * np.sin(2 * np.pi * hz * t).astype(np.float32), 16000)
    return name  # relative: resolved against the Parquet file's folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    china, flower = load_sample_images().images
    raw = tmp_path / "raw"
    raw.mkdir()
    crops = [china[:300, :300], china[100:400, 200:500], flower[:300, :300], flower[100:400, 300:600]]
    rows = [{"id": i, "caption": f"photo number {i}", "photo": jpeg(c), "clip": tone(raw, f"{i}.wav", 220 * (i + 1))}
            for i, c in enumerate(crops)]
    rows.append({"id": 10, "caption": "broken photo", "photo": b"not an image", "clip": "missing.wav"})
    write_parquet(raw / "media.parquet", rows)
    return write_config(tmp_path, [{"name": "media", "path": "raw/media.parquet", "id": "id", "fields": [
        {"column": "caption", "modality": "text"},
        {"column": "photo", "modality": "image"},
        {"column": "clip", "modality": "audio", "embedders": ["logmel"]},
    ]}])


def test_one_source_three_modalities_backfill_then_refresh(project: Path) -> None:
    summary = {r["table"]: r for r in backfill(config=str(project))}
    assert set(summary) == {"media__caption__minilm", "media__photo__efficientnet-lite0", "media__clip__logmel"}
    assert summary["media__caption__minilm"]["rows_embedded"] == 5
    for name in ("media__photo__efficientnet-lite0", "media__clip__logmel"):
        assert (summary[name]["rows_embedded"], summary[name]["rows_rejected"]) == (4, 1)
    db = lancedb.connect(project.parent / "lancedb")
    photos = db.open_table("media__photo__efficientnet-lite0")
    assert photos.schema.metadata[b"multiembed.dim"] == b"1280"
    vectors = np.stack(photos.to_arrow().sort_by("id")["vector"].to_numpy(zero_copy_only=False))
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[2, 3] > similarity[2, 1]  # same photo, other crop
    rejects = db.open_table("_rejects").to_arrow()
    prepare = rejects.filter(pc.equal(rejects["stage"], "prepare")).to_pylist()
    reasons = {r["column"]: r["reason"] for r in prepare}
    assert reasons["photo"].startswith("cannot identify an image")
    assert reasons["clip"] == f"no such file: {project.parent / 'raw' / 'missing.wav'}"

    # a new photo for row 3 only: the image table re-embeds one row; the others publish nothing
    table = pa.parquet.read_table(project.parent / "raw" / "media.parquet")
    photos_col = table["photo"].to_pylist()
    photos_col[3] = jpeg(load_sample_images().images[0][:200, :200])
    table = table.set_column(table.schema.get_field_index("photo"), "photo", pa.array(photos_col, pa.binary()))
    pa.parquet.write_table(table, project.parent / "raw" / "media.parquet")
    after = {r["table"]: r for r in refresh(config=str(project))}
    assert after["media__photo__efficientnet-lite0"]["rows_embedded"] == 1
    assert after["media__photo__efficientnet-lite0"]["published"]
    assert not after["media__caption__minilm"]["published"] and not after["media__clip__logmel"]["published"]
