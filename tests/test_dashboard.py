"""`multiembed dashboard`: the page's content, its sampling, `--serve`, and the page in a real headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import lancedb
import polars as pl
import pytest
from conftest import write_config
from PIL import Image, ImageStat
from plotly.offline import get_plotlyjs
from sample_db import TABLES, SampleDb, sample_db

from multiembed.cli import main
from multiembed.dashboard import data
from multiembed.dashboard.serve import make_server
from schemas.config import load_config

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a browser downloaded by `playwright install`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
LOCAL_URL = re.compile(r"^(file:|data:|blob:|about:|https?://(127\.0\.0\.1|localhost)[:/])")


@pytest.fixture(scope="module")
def db(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> SampleDb:
    return sample_db(tmp_path_factory.getbasetemp() / "sample-db")


@pytest.fixture(scope="module")
def page(db: SampleDb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dashboard")
    assert main(["dashboard", str(db.config), "--out", str(out)]) == 0
    return out / "index.html"


@pytest.fixture
def empty_page(tmp_path: Path) -> Path:
    config = write_config(tmp_path, [{"name": "s", "path": "x.parquet", "id": "id",
                                      "fields": [{"column": "body", "modality": "text"}]}])
    assert main(["dashboard", str(config), "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "lancedb").exists()  # reading the dashboard created no database
    return tmp_path / "out" / "index.html"


def expected_charts(db: SampleDb) -> int:
    """A run timeline and an embedding map per table, one rejects chart, one quality chart per field and stage."""
    quality = {(*m["table"].split("__")[:2], m["stage"]) for m in db.metrics}
    return 2 * len(TABLES) + 1 + len(quality)


def test_page_shows_every_table_and_chart_with_plotly_inlined_once(db: SampleDb, page: Path) -> None:
    html = page.read_text()
    charts = expected_charts(db)
    assert f'data-charts="{charts}"' in html
    assert html.count('<div class="chart">') == html.count("Plotly.newPlot(") == charts
    assert html.count(get_plotlyjs()) == 1
    ours = html.replace(get_plotlyjs(), "")
    assert not re.search(r'(src|href)="(?!#)', ours)  # nothing loaded from elsewhere; links stay on the page
    for table in TABLES:
        assert f'<section id="table-{table}"><h2>{table}</h2>' in html
    for title in ("reviews.body: evaluate", "reviews.body: drift", "reviews.body: bias"):
        assert title in html
    assert "multiembed/tfidf-svd" in html and "fake/fake" in html  # the model behind each version
    status = re.search(r"<td class=\"\">reviews__body__fake</td><td class=\"status-(\w+)\">", html)
    assert status and status[1] == "fail"


def test_map_sample_is_seeded_bounded_and_labelled(db: SampleDb, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(db.config)
    monkeypatch.setattr(data, "MAP_ROWS", 7)
    first, again = data.load(config), data.load(config)
    for one, two in zip(first.tables, again.tables, strict=True):
        assert one.points.equals(two.points)  # the same rows every time
        for (version,), points in one.points.group_by("version"):
            assert 2 <= points.height <= 7 and points["id"].n_unique() == points.height
            assert set(points["id"]) <= version_ids(db, one.name, version)
        assert sorted(one.points["version"].unique()) == [1, 2]  # both versions were made by the same model
    labels = {t.name: t.label for t in first.tables}
    assert labels == {"notes__text__fake": None, "reviews__body__fake": "label", "reviews__body__tfidf": "label"}
    reviews = next(t for t in first.tables if t.name == "reviews__body__fake")
    assert set(reviews.points["label"]) <= {"pos", "neg", "mixed"}
    runs = lancedb.connect(db.database).open_table("_runs").to_polars().collect()
    assert reviews.runs["rows_embedded"].to_list() == runs.filter(pl.col("table") == reviews.name).sort(
        "finished_at")["rows_embedded"].to_list()
    assert reviews.versions.filter(pl.col("version") == 2)["model_id"].to_list() == ["fake/fake"]


def version_ids(db: SampleDb, table: str, version: int) -> set[str]:
    handle = lancedb.connect(db.database).open_table(table)
    handle.checkout(version)
    return {str(i) for i in handle.to_arrow()["id"].to_pylist()}


def test_a_table_with_one_version_gets_its_map(prefect_server: None, tmp_path: Path) -> None:
    from conftest import write_parquet

    from flows.backfill import backfill

    write_parquet(tmp_path / "raw" / "a.parquet", [{"id": i, "body": f"text {i}"} for i in range(20)])
    config = write_config(tmp_path, [{"name": "s", "path": "raw", "id": "id",
                                      "fields": [{"column": "body", "modality": "text", "embedders": ["fake"]}]}])
    backfill(config=str(config))
    assert main(["dashboard", str(config), "--out", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "index.html").read_text()
    assert "s__body__fake" in html and "v1" in html


def test_empty_database_page_says_nothing_yet(empty_page: Path) -> None:
    html = empty_page.read_text()
    assert "Nothing yet" in html and "multiembed backfill CONFIG" in html
    assert "Plotly" not in html


def test_serve_on_a_port_in_use_exits_2_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = {"name": "docs", "path": "unused.parquet", "id": "id", "fields": [{"column": "body", "modality": "text"}]}
    config = write_config(tmp_path, [source], database=str(tmp_path / "db"))
    page = tmp_path / "page.html"
    page.write_text("<p>taken</p>")
    with make_server(page, 0) as busy:
        port = busy.server_address[1]
        assert main(["dashboard", str(config), "--out", str(tmp_path / "out"), "--serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port 0" in err


def test_serve_serves_only_the_page_on_loopback(page: Path) -> None:
    server = make_server(page, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.read() == page.read_bytes()
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/../config.yaml", timeout=30)
    finally:
        server.shutdown()
        server.server_close()


def test_bad_port_exits_2(empty_page: Path, capsys: pytest.CaptureFixture) -> None:
    config = empty_page.parents[1] / "config.yaml"
    assert main(["dashboard", str(config), "--out", str(empty_page.parent), "--serve", "--port", "70000"]) == 2
    assert "--port must be 0" in capsys.readouterr().err


# The page in a real browser


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, installed with apt where it is missing and this runs as root (as CI does)."""
    if not CHROMIUM.exists() and os.geteuid() == 0:
        done = subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, capture_output=True,
                              text=True, timeout=900)
        if not CHROMIUM.exists():
            pytest.fail(f"Chromium is missing and `apt-get install -y chromium` failed:\n{done.stderr[-2000:]}")
    if not CHROMIUM.exists():
        pytest.skip("Chromium is missing and installing it needs root: apt-get install chromium")
    return CHROMIUM


@dataclass
class Visit:
    """What happened when the browser opened a page."""

    errors: list[str]  # console errors and uncaught exceptions
    requests: list[str]  # every URL the page asked for
    charts: list[dict]  # per `div.chart`: whether Plotly drew its SVG, and how many traces it drew
    text: str  # the page's visible text


def visit(chromium: Path, url: str, profile: Path, screenshot: Path | None = None) -> Visit:
    """Open `url` in headless Chromium (fresh profile; anything not local is refused) and wait for every chart."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900})
        try:
            context.route("**/*", lambda route: route.continue_() if LOCAL_URL.match(route.request.url)
                          else route.abort())
            context.on("request", lambda request: requests.append(request.url))
            page = context.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url, wait_until="load")
            page.wait_for_function("[...document.querySelectorAll('div.chart')].every("
                                   "c => c.querySelector('.main-svg .trace'))", timeout=60_000)
            charts = page.evaluate("[...document.querySelectorAll('div.chart')].map(c => ({"
                                   "svg: c.querySelectorAll('.main-svg').length, "
                                   "traces: c.querySelectorAll('.main-svg .trace').length}))")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            return Visit(errors, requests, charts, page.inner_text("body"))
        finally:
            context.close()


def assert_not_blank(png: Path) -> None:
    image = Image.open(png).convert("RGB")
    assert image.height > 900  # the whole page, not one screen
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 20
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 100  # charts, not only text on white


@pytest.mark.slow
def test_page_draws_every_chart_in_chromium_offline(chromium: Path, db: SampleDb, page: Path, tmp_path: Path) -> None:
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    seen = visit(chromium, page.as_uri(), tmp_path / "profile", shot)
    assert seen.errors == []
    assert seen.requests and all(LOCAL_URL.match(url) for url in seen.requests), seen.requests
    assert len(seen.charts) == expected_charts(db)
    assert all(chart["svg"] >= 1 and chart["traces"] >= 1 for chart in seen.charts), seen.charts
    for table in TABLES:
        assert table in seen.text
    assert_not_blank(shot)


@pytest.mark.slow
def test_empty_page_in_chromium_says_nothing_yet(chromium: Path, empty_page: Path, tmp_path: Path) -> None:
    seen = visit(chromium, empty_page.as_uri(), tmp_path / "profile")
    assert seen.errors == [] and seen.charts == []
    assert "Nothing yet" in seen.text
