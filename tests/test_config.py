"""The config contract: load_config / parse_config and the errors a user sees for a bad file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from schemas.config import ConfigError, PipelineConfig, load_config, parse_config

VALID = {
    "database": "db",
    "batch_size": 16,
    "sources": [
        {
            "name": "docs",
            "path": "data/docs.parquet",
            "id": "doc_id",
            "fields": [{"column": "body", "modality": "text", "embedders": ["minilm"]}],
            "keep": ["title"],
            "shard_rows": 100,
        },
        {
            "name": "notes_2",
            "path": "s3://bucket/notes/*.parquet",
            "id": "id",
            "fields": [{"column": "text", "modality": "text"}],
        },
    ],
}


def valid() -> dict:
    return copy.deepcopy(VALID)


def write_config(folder: Path, data: object, name: str = "pipeline.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def config_error(data: object, base: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base)
    return str(info.value)


def test_valid_config_parses(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, valid()))
    assert isinstance(config, PipelineConfig)
    assert config.batch_size == 16
    assert [s.name for s in config.sources] == ["docs", "notes_2"]
    docs = config.sources[0]
    assert docs.id == "doc_id"
    assert docs.keep == ["title"]
    assert docs.shard_rows == 100
    assert docs.fields[0].column == "body"
    assert docs.fields[0].modality == "text"
    assert docs.fields[0].embedders == ["minilm"]


def test_defaults_apply(tmp_path: Path) -> None:
    data = valid()
    del data["batch_size"]
    config = parse_config(data, tmp_path)
    assert config.batch_size == 64
    notes = config.sources[1]
    assert notes.keep == []
    assert notes.shard_rows == 4096
    assert notes.fields[0].embedders is None


def test_relative_paths_resolve_against_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs" / "here"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    config = load_config(write_config(folder, valid()))
    assert config.database == str((folder / "db").resolve())
    assert config.sources[0].path == str((folder / "data" / "docs.parquet").resolve())


def test_relative_path_with_dotdot_resolves(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    data = valid()
    data["database"] = "../lance"
    config = load_config(write_config(folder, data))
    assert config.database == str(tmp_path.resolve() / "lance")


def test_uris_and_absolute_paths_stay_unchanged(tmp_path: Path) -> None:
    data = valid()
    data["database"] = "s3://bucket/lance"
    data["sources"][0]["path"] = "/abs/data/docs.parquet"
    config = parse_config(data, tmp_path)
    assert config.database == "s3://bucket/lance"
    assert config.sources[0].path == "/abs/data/docs.parquet"
    assert config.sources[1].path == "s3://bucket/notes/*.parquet"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    data = valid()
    data["databse"] = "x"
    message = config_error(data, tmp_path)
    assert "databse: unknown key" in message


def test_unknown_key_in_source(tmp_path: Path) -> None:
    data = valid()
    data["sources"][1]["shards"] = 3
    message = config_error(data, tmp_path)
    assert "sources.1.shards: unknown key" in message


def test_unknown_key_in_field(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["fields"][0]["model"] = "minilm"
    message = config_error(data, tmp_path)
    assert "sources.0.fields.0.model: unknown key" in message


def test_unknown_key_via_load_config_names_the_file(tmp_path: Path) -> None:
    data = valid()
    data["extra"] = 1
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "extra: unknown key" in str(info.value)


@pytest.mark.parametrize(
    ("remove", "where"),
    [
        (lambda d: d.pop("database"), "database"),
        (lambda d: d.pop("sources"), "sources"),
        (lambda d: d["sources"][0].pop("id"), "sources.0.id"),
        (lambda d: d["sources"][1].pop("path"), "sources.1.path"),
        (lambda d: d["sources"][0]["fields"][0].pop("modality"), "sources.0.fields.0.modality"),
    ],
)
def test_missing_required_key(tmp_path: Path, remove, where: str) -> None:
    data = valid()
    remove(data)
    message = config_error(data, tmp_path)
    assert f"{where}: required key is missing" in message


def test_bad_modality_lists_allowed_values(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["fields"][0]["modality"] = "video"
    message = config_error(data, tmp_path)
    assert "sources.0.fields.0.modality" in message
    for allowed in ("text", "image", "audio", "table"):
        assert f"'{allowed}'" in message


@pytest.mark.parametrize("name", ["Docs", "my-docs", "1docs", "_docs", ""])
def test_bad_source_name(tmp_path: Path, name: str) -> None:
    data = valid()
    data["sources"][0]["name"] = name
    message = config_error(data, tmp_path)
    assert "sources.0.name" in message


def test_duplicate_source_names(tmp_path: Path) -> None:
    data = valid()
    data["sources"][1]["name"] = "docs"
    message = config_error(data, tmp_path)
    assert "unique" in message
    assert "docs" in message


def test_keep_containing_id_column(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["keep"] = ["title", "doc_id"]
    message = config_error(data, tmp_path)
    assert "keep" in message
    assert "'doc_id'" in message
    assert "id column" in message


@pytest.mark.parametrize("reserved", ["content_hash", "vector"])
def test_keep_reserved_name(tmp_path: Path, reserved: str) -> None:
    data = valid()
    data["sources"][0]["keep"] = [reserved]
    message = config_error(data, tmp_path)
    assert reserved in message


def test_keep_listed_twice(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["keep"] = ["title", "title"]
    assert "listed twice" in config_error(data, tmp_path)


def test_field_column_listed_twice(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["fields"].append({"column": "body", "modality": "text"})
    assert "listed twice" in config_error(data, tmp_path)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(batch_size=0), "batch_size"),
        (lambda d: d["sources"][0].update(shard_rows=0), "sources.0.shard_rows"),
        (lambda d: d.update(sources=[]), "sources"),
        (lambda d: d["sources"][0].update(fields=[]), "sources.0.fields"),
        (lambda d: d["sources"][0]["fields"][0].update(embedders=[]), "sources.0.fields.0.embedders"),
    ],
)
def test_out_of_range_values(tmp_path: Path, change, where: str) -> None:
    data = valid()
    change(data)
    assert f"{where}:" in config_error(data, tmp_path)


@pytest.mark.parametrize("document", [None, [1, 2], "just a string"])
def test_config_that_is_not_a_mapping(tmp_path: Path, document: object) -> None:
    assert "mapping" in config_error(document, tmp_path)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not found" in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("database: [unclosed\nsources: {\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_source_lookup(tmp_path: Path) -> None:
    config = parse_config(valid(), tmp_path)
    assert config.source("notes_2").id == "id"
    with pytest.raises(ConfigError) as info:
        config.source("missing")
    message = str(info.value)
    assert "'missing'" in message
    assert "docs" in message
    assert "notes_2" in message


def test_config_is_frozen(tmp_path: Path) -> None:
    config = parse_config(valid(), tmp_path)
    with pytest.raises(ValueError):
        config.batch_size = 3  # type: ignore[misc]


def test_table_field_takes_columns_and_a_name(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["fields"].append({"columns": ["price", "city"], "modality": "table", "name": "listing"})
    data["sources"][1]["fields"].append({"columns": ["price"], "modality": "table", "embedders": ["row-text"]})
    config = parse_config(data, tmp_path)
    listing, row = config.sources[0].fields[1], config.sources[1].fields[1]
    assert (listing.key, listing.inputs) == ("listing", ["price", "city"])
    assert (row.key, row.inputs) == ("row", ["price"])
    assert config.sources[0].fields[0].key == "body"


@pytest.mark.parametrize(("field", "message"), [
    ({"column": "price", "modality": "table"}, "a table field lists its input columns under 'columns:'"),
    ({"columns": ["a", "a"], "modality": "table"}, "columns: a column is listed twice"),
    ({"columns": ["a"], "modality": "table", "name": "Bad-Name"}, "name: 'Bad-Name' is not allowed"),
    ({"columns": ["a"], "modality": "text"}, "a text field names its input with 'column:'"),
    ({"column": "a", "modality": "image", "name": "x"}, "a image field names its input with 'column:'"),
])
def test_table_field_mistakes(tmp_path: Path, field: dict, message: str) -> None:
    data = valid()
    data["sources"][0]["fields"] = [field]
    assert message in config_error(data, tmp_path)


def test_two_table_fields_need_distinct_names(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["fields"] = [{"columns": ["a"], "modality": "table"}, {"columns": ["b"], "modality": "table"}]
    assert "listed twice" in config_error(data, tmp_path)
    data["sources"][0]["fields"] = [{"columns": ["a"], "modality": "table", "name": "title"}]
    assert "clash with the id or keep columns" in config_error(data, tmp_path)


def test_quality_columns_must_be_kept(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["quality"] = {"label": "title", "pairs": "pairs.parquet"}
    quality = parse_config(data, tmp_path).sources[0].quality
    assert (quality.label, quality.pairs) == ("title", str(tmp_path / "pairs.parquet"))
    data["sources"][0]["quality"] = {"sensitive": "group"}
    assert "quality.sensitive: 'group' must be one of the keep columns" in config_error(data, tmp_path)


def test_audio_fields_have_a_max_seconds(tmp_path: Path) -> None:
    data = valid()
    data["sources"][0]["fields"] += [{"column": "clip", "modality": "audio"},
                                     {"column": "talk", "modality": "audio", "max_seconds": 3600}]
    fields = parse_config(data, tmp_path).sources[0].fields
    assert [f.max_seconds for f in fields] == [None, 600, 3600]  # text: none; audio: the default, or the config's


@pytest.mark.parametrize("modality", ["text", "image"])
def test_max_seconds_is_for_audio_fields_only(tmp_path: Path, modality: str) -> None:
    data = valid()
    data["sources"][0]["fields"] = [{"column": "body", "modality": modality, "max_seconds": 60}]
    assert f"sources.0.fields.0: Value error, max_seconds: limits the length of audio clips; a {modality} field" \
        in config_error(data, tmp_path)
    data["sources"][0]["fields"] = [{"columns": ["a"], "modality": "table", "max_seconds": 60}]
    assert "max_seconds: limits the length of audio clips; a table field" in config_error(data, tmp_path)


@pytest.mark.parametrize("bad", [0, -5, float("inf"), float("nan"), "long"])
def test_max_seconds_must_be_a_positive_finite_number(tmp_path: Path, bad: object) -> None:
    data = valid()
    data["sources"][0]["fields"] = [{"column": "clip", "modality": "audio", "max_seconds": bad}]
    assert "sources.0.fields.0.max_seconds:" in config_error(data, tmp_path)
