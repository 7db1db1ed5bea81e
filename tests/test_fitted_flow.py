"""Fitted embedders (tfidf, tabular) and table fields through the real backfill and refresh flows.

The fitted state is fit once, stored in `_fitted`, named by each table version's metadata and reused by
later runs, so vectors of unchanged rows stay bit-identical; `refit` makes a new table generation.
"""

from __future__ import annotations

import json
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from conftest import write_config, write_parquet

from flows.backfill import backfill, refresh
from schemas.tables import embedding_metadata
from tasks.fitted import FITTED_TABLE
from tasks.sources import InputError

pytestmark = pytest.mark.usefixtures("prefect_server")

WORDS = ["river", "bank", "money", "loan", "water", "fish", "boat", "credit", "stream", "account"]
SCHEMA = pa.schema([("id", pa.int64()), ("body", pa.string()), ("price", pa.float64()), ("rooms", pa.int32()),
                    ("city", pa.string())])


def rows(n: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        words = rng.choice(WORDS[:5] if i % 2 else WORDS[5:], size=6)
        out.append({"id": i, "body": " ".join(words), "price": float(100 + 10 * i), "rooms": int(1 + i % 4),
                    "city": ["oslo", "rome", "lima"][i % 3]})
    return out


def config(tmp_path: Path, data: list[dict]) -> Path:
    write_parquet(tmp_path / "raw" / "part-0.parquet", data, SCHEMA, row_group_size=16)
    fields = [{"column": "body", "modality": "text", "embedders": ["tfidf"]},
              {"columns": ["price", "rooms", "city"], "modality": "table"}]
    return write_config(tmp_path, [{"name": "docs", "path": "raw", "id": "id", "fields": fields}])


def DB(tmp_path: Path) -> str:  # noqa: N802
    return str(tmp_path / "lancedb")


def table(tmp_path: Path, name: str) -> lancedb.table.Table:
    return lancedb.connect(DB(tmp_path)).open_table(name)


def vectors(t: lancedb.table.Table) -> dict[int, np.ndarray]:
    data = t.to_arrow()
    return dict(zip(data["id"].to_pylist(), np.stack(data["vector"].to_pylist()), strict=True))


def revision(t: lancedb.table.Table) -> str:
    return embedding_metadata(t.schema)["revision"]


def test_fit_once_reuse_on_refresh_refit_makes_a_new_generation(tmp_path: Path) -> None:
    data = rows()
    cfg = config(tmp_path, data)
    first = {r["table"]: r for r in backfill(config=str(cfg))}
    assert set(first) == {"docs__body__tfidf", "docs__row__tabular"}
    assert all(r["rows_embedded"] == len(data) for r in first.values())
    tfidf, tab = table(tmp_path, "docs__body__tfidf"), table(tmp_path, "docs__row__tabular")
    fits = lancedb.connect(DB(tmp_path)).open_table(FITTED_TABLE).to_arrow()
    assert sorted(fits["table"].to_pylist()) == ["docs__body__tfidf", "docs__row__tabular"]
    assert {revision(tfidf), revision(tab)} == {"fit-" + f for f in fits["fit_id"].to_pylist()}
    before = {name: vectors(table(tmp_path, name)) for name in first}

    # One row's text and one row's city change (to a city never seen at fit time): a refresh embeds those only,
    # with the same fitted state, and unchanged rows keep their exact vectors.
    data[3] = {**data[3], "body": "boat boat river", "city": "kyiv"}
    config(tmp_path, data)
    second = {r["table"]: r for r in refresh(config=str(cfg))}
    assert second["docs__body__tfidf"]["rows_embedded"] == 1
    assert second["docs__row__tabular"]["rows_embedded"] == 1
    assert json.loads(second["docs__row__tabular"]["flags"]) == {"unknown category": 1}
    for name in first:
        t = table(tmp_path, name)
        assert revision(t) == revision({"docs__body__tfidf": tfidf, "docs__row__tabular": tab}[name])
        after = vectors(t)
        assert all(np.array_equal(after[i], before[name][i]) for i in after if i != 3)
        assert not np.array_equal(after[3], before[name][3])
    assert lancedb.connect(DB(tmp_path)).open_table(FITTED_TABLE).count_rows() == 2

    # Refit on data that changed a lot: a new state, and every row re-embedded into one new version.
    data = [{**r, "price": r["price"] * 100} for r in data]
    config(tmp_path, data)
    third = {r["table"]: r for r in backfill(config=str(cfg), refit=True)}
    t = table(tmp_path, "docs__row__tabular")
    assert revision(t) != revision(tab)
    assert third["docs__row__tabular"]["rows_embedded"] == len(data)
    assert revision(table(tmp_path, "docs__body__tfidf")) != revision(tfidf)  # row 3's new text is in the sample
    assert third["docs__body__tfidf"]["rows_embedded"] == len(data)

    # Fitting is deterministic: refitting the same data gives the same states, so nothing is re-embedded.
    again = {r["table"]: r for r in backfill(config=str(cfg), refit=True)}
    assert all(r["rows_embedded"] == 0 and not r["published"] for r in again.values())
    assert lancedb.connect(DB(tmp_path)).open_table(FITTED_TABLE).count_rows() == 4


def test_imputed_values_counted_and_all_null_rows_rejected(tmp_path: Path) -> None:
    data = rows(30)
    data[1] = {**data[1], "price": float("nan")}
    data[2] = {**data[2], "rooms": None}
    data[4] = {**data[4], "price": None, "rooms": None, "city": None}
    cfg = config(tmp_path, data)
    summary = {r["table"]: r for r in backfill(config=str(cfg))}
    tab = summary["docs__row__tabular"]
    assert (tab["rows_embedded"], tab["rows_rejected"]) == (29, 1)
    assert json.loads(tab["flags"]) == {"imputed value": 2}
    rejects = lancedb.connect(DB(tmp_path)).open_table("_rejects").to_arrow().to_pylist()
    assert [(r["id"], r["column"], r["reason"]) for r in rejects if r["table"] == "docs__row__tabular"] == [
        ("4", "row", "every column of the row is null")]
    assert np.isfinite(np.stack(table(tmp_path, "docs__row__tabular").to_arrow()["vector"].to_pylist())).all()


def test_a_table_column_of_the_wrong_type_is_an_input_error_before_any_work(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("body", pa.string()), ("price", pa.binary()), ("rooms", pa.int32()),
                        ("city", pa.string())])
    data = [{**r, "price": b"\x00"} for r in rows(8)]
    write_parquet(tmp_path / "raw" / "part-0.parquet", data, schema)
    cfg = write_config(tmp_path, [{"name": "docs", "path": "raw", "id": "id",
                                   "fields": [{"columns": ["price", "rooms", "city"], "modality": "table"}]}])
    with pytest.raises(InputError, match=r"column 'price' is binary; modality 'table' expects numbers"):
        backfill(config=str(cfg))
    assert not (tmp_path / "lancedb").exists() or FITTED_TABLE not in lancedb.connect(DB(tmp_path)).table_names()
