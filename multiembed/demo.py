"""`multiembed demo`: small real datasets built offline from what ships with our packages, embedded end to end.

Two sources. `docs`: the first paragraph of the docstrings of public functions and classes in a few
standard library modules, labelled by module: real English prose that every machine has, embedded by
MiniLM and by the tf-idf baseline. A handful of deliberately bad rows (null, blank, repeated id, very
long) show the rejects table and truncation at work. `media` (see `demo_media`): all four modalities in
one source, with a text caption, a digit picture, a sound clip and a wine's measurements per row.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.parquet as pq

from multiembed.demo_media import build_media

MODULES = ["math", "statistics", "random", "string", "textwrap", "json", "csv", "datetime", "calendar",
           "itertools", "functools", "collections", "os.path", "shutil", "glob", "zipfile", "gzip",
           "hashlib", "base64", "socket", "urllib.parse", "email.utils", "threading", "subprocess"]

CONFIG = """\
# The demo pipeline: docstrings (text, embedded by MiniLM and the tf-idf baseline), and one source with
# all four modalities: a caption, a digit picture, a sound clip and a wine's measurements per row.
database: ./lancedb
sources:
  - name: docs
    path: raw/docs/*.parquet
    id: doc_id
    fields:
      - column: body
        modality: text
        embedders: [minilm, tfidf]
    keep: [module, name]
    quality:
      label: module
      after: [evaluate, bias, drift]
  - name: media
    path: raw/media/*.parquet
    id: item_id
    fields:
      - column: caption
        modality: text
      - column: picture
        modality: image
        label: digit
      - column: clip
        modality: audio
        label: sound
      - columns: [alcohol, malic_acid, ash, alcalinity_of_ash, magnesium, total_phenols, flavanoids,
                  nonflavanoid_phenols, proanthocyanins, color_intensity, hue, od280_od315, proline]
        modality: table
        name: wine
        label: cultivar
    keep: [digit, sound, cultivar]
    quality:
      after: [evaluate]
"""

QUERIES = ["compute the square root of a number", "split a file path into directory and name",
           "send data over a network connection"]


def docstring_rows() -> list[dict]:
    """(module, name, first paragraph) for the public functions and classes of MODULES."""
    rows = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", module_name) not in (module_name, module.__name__):
                continue  # re-exported from elsewhere
            doc = inspect.getdoc(obj)
            if doc:
                paragraph = " ".join(doc.split("\n\n")[0].split())
                if len(paragraph) >= 20:
                    rows.append({"module": module_name, "name": name, "body": paragraph})
    return rows


def build_dataset(folder: Path) -> int:
    """Write the demo's Parquet files (two files, several row groups) and its config; returns rows written."""
    rows = docstring_rows()
    for i, row in enumerate(rows):
        row["doc_id"] = i + 1
    long_text = " ".join(r["body"] for r in rows[:40])  # far beyond MiniLM's 256 tokens: truncated
    bad = [
        {"doc_id": 900001, "module": "demo", "name": "null_body", "body": None},
        {"doc_id": 900002, "module": "demo", "name": "blank_body", "body": "  \n\t "},
        {"doc_id": 1, "module": "demo", "name": "repeated_id", "body": "This row repeats the id of the first row."},
        {"doc_id": None, "module": "demo", "name": "null_id", "body": "This row has no id."},
        {"doc_id": 900003, "module": "demo", "name": "long_text", "body": long_text},
    ]
    schema = pa.schema([("doc_id", pa.int64()), ("module", pa.string()), ("name", pa.string()), ("body", pa.string())])
    half = len(rows) // 2
    raw = folder / "raw" / "docs"
    raw.mkdir(parents=True, exist_ok=True)
    for part, chunk in enumerate([rows[:half], rows[half:] + bad]):
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), raw / f"part-{part}.parquet", row_group_size=256)
    (folder / "config.yaml").write_text(CONFIG)
    return len(rows) + len(bad) + build_media(folder, [r["body"] for r in rows])


def show_results(folder: Path) -> None:
    """Print where the results are, and answer a few queries against the new table."""
    from schemas.config import load_config
    from tasks.embedders.registry import load_embedder

    config = load_config(folder / "config.yaml")
    table = lancedb.connect(config.database).open_table("docs__body__minilm")
    embedder = load_embedder("text", "minilm", config.batch_size)
    vectors = embedder.embed(embedder.prepare(pa.array(QUERIES, pa.large_string())))
    print(f"\nResults in {config.database} (an embedding table per field and embedder, _runs, _rejects, _metrics)")
    show_quality(lancedb.connect(config.database))
    print()
    for query, vector in zip(QUERIES, vectors, strict=True):
        hits = table.search(vector).metric("cosine").limit(3).select(["module", "name", "_distance"]).to_list()
        print(f"query: {query!r}")
        for hit in hits:
            print(f"  {1 - hit['_distance']:.3f}  {hit['module']}.{hit['name']}")
    print(f"""
Query it yourself:
  python -c "import lancedb; t = lancedb.connect('{config.database}').open_table('docs__body__minilm'); \\
print(t.to_polars().head(5).collect())"
  multiembed versions {folder / 'config.yaml'}
Rejected rows and why: lancedb.connect('{config.database}').open_table('_rejects').to_polars().collect()
  multiembed dashboard {folder / 'config.yaml'} --out {folder / 'dashboard'}   (then open index.html)""")


def show_quality(db: lancedb.DBConnection) -> None:
    """Each table's neighbour agreement with its label (from `_metrics`), against chance, and checks not ok."""
    metrics = db.open_table("_metrics").to_arrow().to_pylist()
    print("\nNearest neighbours sharing the label (kNN accuracy; chance in brackets):")
    for m in sorted((m for m in metrics if m["metric"] == "knn_accuracy"), key=lambda m: m["table"]):
        print(f"  {m['table']:40} {m['value']:.2f}  ({m['threshold']:.2f})")
    flagged = [m for m in metrics if m["status"] != "ok"]
    print(f"Quality checks: {len(metrics)} metrics, {len(flagged)} not ok"
          + "".join(f"\n  {m['status']}: {m['table']} {m['metric']} = {m['value']:.3g}" for m in flagged))


def run_demo(directory: str) -> None:
    """Build the dataset in `directory`, run the backfill flow on it, and show the results."""
    from flows.backfill import backfill

    folder = Path(directory).resolve()
    rows = build_dataset(folder)
    print(f"demo: wrote {rows} rows (docstrings; captions, digit pictures, clips and wines) to {folder / 'raw'}")
    backfill(config=str(folder / "config.yaml"))
    show_results(folder)
