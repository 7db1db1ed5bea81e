"""Incremental refresh and safe re-runs, on a real Prefect server and LanceDB folder, with the fake embedder."""

from __future__ import annotations

import threading
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest
from conftest import FakeEmbedder, write_config, write_parquet

from flows.backfill import backfill, refresh
from tasks.embedders import registry

pytestmark = pytest.mark.usefixtures("prefect_server")
TABLE = "items__body__fake"


def rows(ids, text=lambda i: f"item {i} text") -> list[dict]:
    return [{"item_id": i, "body": text(i), "label": f"l{i % 3}"} for i in ids]


def make_project(folder: Path, data: list[dict], deletes: str = "delete") -> Path:
    write_parquet(folder / "raw" / "items.parquet", data)
    return write_config(folder, [{
        "name": "items", "path": "raw/items.parquet", "id": "item_id", "shard_rows": 8, "keep": ["label"],
        "deletes": deletes, "fields": [{"column": "body", "modality": "text", "embedders": ["fake"]}],
    }])


def content(folder: Path) -> dict:
    """id -> (content_hash, vector, label) of the latest version."""
    table = lancedb.connect(folder / "lancedb").open_table(TABLE).to_arrow()
    return {r["id"]: (r["content_hash"], tuple(r["vector"]), r["label"]) for r in table.to_pylist()}


def versions(folder: Path) -> list[int]:
    return [v["version"] for v in lancedb.connect(folder / "lancedb").open_table(TABLE).list_versions()]


@pytest.fixture
def fake(monkeypatch) -> FakeEmbedder:
    """The fake embedder instance every shard of these tests uses (loaded once per process, as in production)."""
    return registry.load_embedder("text", "fake", 64)


@pytest.fixture
def embed_calls(fake: FakeEmbedder, monkeypatch) -> list[int]:
    """Rows per call of the embed stage (to prove what was and was not embedded)."""
    calls: list[int] = []
    real = fake.embed

    def counting(prepared):
        calls.append(prepared.rows)
        return real(prepared)

    monkeypatch.setattr(fake, "embed", counting)
    return calls


def test_refresh_with_no_change_embeds_nothing_and_publishes_nothing(tmp_path: Path, embed_calls) -> None:
    config = make_project(tmp_path, rows(range(40)))
    backfill(config=str(config))
    embed_calls.clear()
    before = content(tmp_path)
    summary = refresh(config=str(config))
    assert sum(embed_calls) == 0
    assert versions(tmp_path) == [1]
    (row,) = summary
    assert (row["published"], row["version"], row["rows_unchanged"], row["rows_embedded"]) == (False, 1, 40, 0)
    assert content(tmp_path) == before
    # and a repeated backfill is just as idle
    again = backfill(config=str(config))
    assert again[0]["rows_embedded"] == 0 and versions(tmp_path) == [1] and sum(embed_calls) == 0


def test_refresh_embeds_only_changes_and_equals_a_fresh_backfill(tmp_path: Path, embed_calls) -> None:
    config = make_project(tmp_path, rows(range(40)))
    backfill(config=str(config))
    table = lancedb.connect(tmp_path / "lancedb").open_table(TABLE)
    row_ids_before = {r["id"]: r["_rowid"] for r in table.search().with_row_id(True).select(["id"]).limit(None)
                      .to_list()}
    changed = rows(range(40), text=lambda i: "edited text" if i == 7 else f"item {i} text")
    changed = [r for r in changed if r["item_id"] != 12] + rows([100])  # 12 leaves, 100 arrives
    write_parquet(tmp_path / "raw" / "items.parquet", changed)
    embed_calls.clear()
    summary = refresh(config=str(config))
    assert sum(embed_calls) == 2  # 7 (changed) and 100 (new)
    (row,) = summary
    assert (row["rows_read"], row["rows_embedded"], row["rows_unchanged"], row["rows_deleted"]) == (40, 2, 38, 1)
    assert row["published"] and versions(tmp_path) == [1, 2]
    # unchanged rows are not rewritten: they keep their physical row ids
    table = lancedb.connect(tmp_path / "lancedb").open_table(TABLE)
    after = {r["id"]: r["_rowid"] for r in table.search().with_row_id(True).select(["id"]).limit(None).to_list()}
    unchanged = set(range(40)) - {7, 12}
    assert {i: after[i] for i in unchanged} == {i: row_ids_before[i] for i in unchanged}
    # the result equals an uninterrupted backfill of the new data
    fresh = tmp_path / "fresh"
    backfill(config=str(make_project(fresh, changed)))
    assert content(tmp_path) == content(fresh)
    assert "run-" + row["run_id"] in table.tags.list()


def test_refresh_reads_only_shards_with_work_and_still_accounts_for_every_row(tmp_path: Path, monkeypatch) -> None:
    """Shards of 8 rows: 0-7 hold a blank text (rejected again every run), 16-23 an id repeated with the same
    content (the diff cannot tell the repeat from the first), 32-39 the one edit; 8-15 and 24-31 are all
    unchanged and are not read at all. The figures are those of reading everything."""
    from tasks import sources

    def data(edited: bool) -> list[dict]:
        text = lambda i: "   " if i == 3 else "edited" if edited and i == 35 else f"item {i} text"  # noqa: E731
        out = rows(range(40), text)
        return out[:17] + [dict(out[16])] + out[18:]  # the row at file position 17 repeats id 16
    config = make_project(tmp_path, data(edited=False))
    first = backfill(config=str(config))[0]
    assert (first["rows_read"], first["rows_embedded"], first["rows_rejected"]) == (40, 38, 2)
    write_parquet(tmp_path / "raw" / "items.parquet", data(edited=True))
    read_shards: list[int] = []
    real = sources.read_shard
    monkeypatch.setattr(sources, "read_shard", lambda shard, layout: read_shards.append(shard.first_row)
                        or real(shard, layout))
    (row,) = refresh(config=str(config))
    assert sorted(read_shards) == [0, 16, 32]
    assert (row["rows_read"], row["rows_embedded"], row["rows_unchanged"], row["rows_rejected"]) == (40, 1, 37, 2)
    assert row["published"]
    fresh = tmp_path / "fresh"
    backfill(config=str(make_project(fresh, data(edited=True))))
    assert content(tmp_path) == content(fresh)


def test_changes_spread_over_every_shard_are_embedded_in_few_merged_shards(tmp_path: Path, embed_calls,
                                                                           monkeypatch) -> None:
    """One edit in each of five 8-row shards: neighbouring shards merge while a task reads at most four
    shards' rows (`MERGED_SHARDS`), so two tasks read and embed them, with the figures of five."""
    from tasks import sources, stages

    assert stages.MERGED_SHARDS == 4
    config = make_project(tmp_path, rows(range(40)))
    backfill(config=str(config))
    edited = rows(range(40), text=lambda i: f"edited {i}" if i % 8 == 1 else f"item {i} text")
    write_parquet(tmp_path / "raw" / "items.parquet", edited)
    read_shards: list[tuple[int, int]] = []
    real = sources.read_shard
    monkeypatch.setattr(sources, "read_shard", lambda shard, layout: read_shards.append(
        (shard.first_row, shard.num_rows)) or real(shard, layout))
    embed_calls.clear()
    (row,) = refresh(config=str(config))
    assert sorted(read_shards) == [(0, 32), (32, 8)] and sorted(embed_calls) == [1, 4]
    assert (row["rows_read"], row["rows_embedded"], row["rows_unchanged"], row["rows_deleted"]) == (40, 5, 35, 0)
    fresh = tmp_path / "fresh"
    backfill(config=str(make_project(fresh, edited)))
    assert content(tmp_path) == content(fresh)
    # Every row edited: two shards' rows to embed would not fit one shard, so nothing merges.
    write_parquet(tmp_path / "raw" / "items.parquet", rows(range(40), text=lambda i: f"again {i}"))
    read_shards.clear()
    assert refresh(config=str(config))[0]["rows_embedded"] == 40
    assert sorted(read_shards) == [(i, 8) for i in range(0, 40, 8)]


def test_a_file_in_one_big_row_group_is_embedded_in_shard_sized_slices(tmp_path: Path, embed_calls) -> None:
    """40 rows in a single row group, shards of 8: five slices, each embedded on its own; a refresh reads
    the slices with edits (merged) and ends equal to a fresh backfill."""
    config = make_project(tmp_path, [])
    write_parquet(tmp_path / "raw" / "items.parquet", rows(range(40)), row_group_size=40)
    embed_calls.clear()
    assert backfill(config=str(config))[0]["rows_embedded"] == 40
    assert sorted(embed_calls) == [8] * 5
    edited = rows(range(40), text=lambda i: "edited" if i in (3, 12) else f"item {i} text")
    write_parquet(tmp_path / "raw" / "items.parquet", edited, row_group_size=40)
    (row,) = refresh(config=str(config))
    assert (row["rows_read"], row["rows_embedded"], row["rows_unchanged"]) == (40, 2, 38)
    fresh = tmp_path / "fresh"
    backfill(config=str(make_project(fresh, edited)))
    assert content(tmp_path) == content(fresh)


def test_refresh_can_keep_rows_whose_ids_left(tmp_path: Path) -> None:
    config = make_project(tmp_path, rows(range(20)), deletes="keep")
    backfill(config=str(config))
    write_parquet(tmp_path / "raw" / "items.parquet", rows(range(5, 20)))
    summary = refresh(config=str(config))
    assert summary[0]["rows_deleted"] == 0 and not summary[0]["published"]
    assert sorted(content(tmp_path)) == list(range(20))
    backfill(config=str(config))  # a backfill always makes the table match the input
    assert sorted(content(tmp_path)) == list(range(5, 20))


def test_row_that_became_invalid_is_rejected_and_its_old_vector_removed(tmp_path: Path) -> None:
    config = make_project(tmp_path, rows(range(10)))
    backfill(config=str(config))
    blank_3 = rows(range(10), text=lambda i: "   " if i == 3 else f"item {i} text")
    write_parquet(tmp_path / "raw" / "items.parquet", blank_3)
    (row,) = refresh(config=str(config))
    assert (row["rows_rejected"], row["rows_deleted"], row["rows_unchanged"]) == (1, 1, 9)
    assert 3 not in content(tmp_path)


def test_model_change_rebuilds_the_whole_table_in_one_new_version(tmp_path: Path, monkeypatch) -> None:
    config = make_project(tmp_path, rows(range(30)))
    backfill(config=str(config))
    old = content(tmp_path)

    class Retrained(FakeEmbedder):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.info = self.info.__class__(**{**vars(self.info), "revision": "2"})

    monkeypatch.setitem(registry.FACTORIES, ("text", "fake"), lambda batch_size: Retrained("fake"))
    monkeypatch.setattr(registry, "_loaded", {})
    (row,) = refresh(config=str(config))
    assert (row["rows_embedded"], row["rows_unchanged"], row["version"]) == (30, 0, 2)
    table = lancedb.connect(tmp_path / "lancedb").open_table(TABLE)
    assert table.schema.metadata[b"multiembed.revision"] == b"2"
    new = content(tmp_path)
    assert all(new[i][0] != old[i][0] for i in old)  # every content hash is of the new model
    table.checkout(1)
    assert table.schema.metadata[b"multiembed.revision"] == b"1"  # the old version still says which model


def test_failed_backfill_resumes_without_reembedding_finished_shards(tmp_path: Path, fake, monkeypatch) -> None:
    config = make_project(tmp_path, rows(range(48)))  # 6 shards of 8 rows
    calls: list[int] = []
    real = fake.embed

    def dies_on_fourth(prepared):
        if len(calls) == 3:
            raise RuntimeError("worker died")
        calls.append(prepared.rows)
        return real(prepared)

    monkeypatch.setattr(fake, "embed", dies_on_fourth)
    with pytest.raises(RuntimeError, match="worker died"):
        backfill(config=str(config))
    assert not (tmp_path / "lancedb" / f"{TABLE}.lance").exists()  # nothing published
    finished = len(calls)
    assert finished == 3

    def counting(prepared):
        calls.append(prepared.rows)
        return real(prepared)

    monkeypatch.setattr(fake, "embed", counting)
    (row,) = backfill(config=str(config))
    assert len(calls) == 6 and sum(calls) == 48  # the 3 shards finished before the failure were not redone
    assert (row["rows_read"], row["rows_embedded"], row["version"]) == (48, 48, 1)
    fresh = tmp_path / "fresh"
    backfill(config=str(make_project(fresh, rows(range(48)))))
    assert content(tmp_path) == content(fresh)
    assert not any((tmp_path / "lancedb" / "_staging").iterdir())


def test_concurrent_refreshes_are_serialised_and_the_second_sees_the_first(tmp_path: Path) -> None:
    config = make_project(tmp_path, rows(range(40)))
    backfill(config=str(config))
    write_parquet(tmp_path / "raw" / "items.parquet", rows(range(40), text=lambda i: f"new text {i}"))
    results: list[list[dict]] = []
    threads = [threading.Thread(target=lambda: results.append(refresh(config=str(config)))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    embedded = sorted(r[0]["rows_embedded"] for r in results)
    assert embedded == [0, 40]  # the second run found everything up to date
    assert versions(tmp_path) == [1, 2]
    table = lancedb.connect(tmp_path / "lancedb").open_table(TABLE).to_arrow()
    assert table.num_rows == 40 and len(set(table["id"].to_pylist())) == 40
    assert pa.compute.all(pa.compute.starts_with(table["label"], "l")).as_py()


def test_a_media_file_replaced_at_the_same_path_is_embedded_again(tmp_path: Path) -> None:
    """Clips given as paths: the content hash covers each file's size and modification time, so a refresh
    finds a file replaced in place (and one that is gone), and an untouched folder embeds nothing."""
    import os

    import numpy as np
    import soundfile as sf

    def clip(i: int, hz: float) -> None:
        t = np.arange(8000) / 16000
        sf.write(tmp_path / "raw" / "clips" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32),
                 16000, subtype="FLOAT")

    (tmp_path / "raw" / "clips").mkdir(parents=True)
    for i in range(6):
        clip(i, 200 + 150 * i)
    write_parquet(tmp_path / "raw" / "sounds.parquet", [{"sound_id": i, "clip": f"clips/{i}.wav"} for i in range(6)])
    config = write_config(tmp_path, [{"name": "sounds", "path": "raw/sounds.parquet", "id": "sound_id",
                                      "shard_rows": 4, "quality": {"after": []},
                                      "fields": [{"column": "clip", "modality": "audio", "embedders": ["logmel"]}]}])
    assert backfill(config=str(config))[0]["rows_embedded"] == 6
    db = lancedb.connect(tmp_path / "lancedb")
    vectors = lambda: {r["id"]: r["vector"] for r in db.open_table("sounds__clip__logmel").to_arrow().to_pylist()}  # noqa: E731
    before = vectors()
    (idle,) = refresh(config=str(config))
    assert (idle["rows_embedded"], idle["rows_unchanged"], idle["published"]) == (0, 6, False)

    clip(2, 3000)  # same path, other sound
    later = (tmp_path / "raw" / "clips" / "2.wav").stat().st_mtime + 5
    os.utime(tmp_path / "raw" / "clips" / "2.wav", (later, later))
    (tmp_path / "raw" / "clips" / "4.wav").unlink()
    (row,) = refresh(config=str(config))
    assert (row["rows_embedded"], row["rows_unchanged"], row["rows_rejected"], row["rows_deleted"]) == (1, 4, 1, 1)
    after = vectors()
    assert sorted(after) == [0, 1, 2, 3, 5]
    assert after[2] != before[2] and all(after[i] == before[i] for i in (0, 1, 3, 5))
