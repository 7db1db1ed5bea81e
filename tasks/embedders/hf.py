"""Resolve `hf:<id-or-path>[@revision]` to a local model folder and a revision that pins its weights.

Loading never runs code from the model repository: a folder whose configs ask for their own code
(`auto_map`) is refused before anything is loaded, `trust_remote_code` stays off, safetensors are
preferred, and a pickle that holds more than tensors is refused with our message (a usage error, exit 2),
never with advice to load it unsafely. A hub id is looked up through huggingface_hub's cache, so with
HF_HUB_OFFLINE=1 it works only for models already downloaded, and fails with a clear message otherwise.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tasks.embedders.base import ModelLoadError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# The configs transformers reads from a model folder; `auto_map` in any of them names code in the folder.
CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                "feature_extractor_config.json")


@dataclass(frozen=True)
class ModelRef:
    """A model folder on disk, the id users know it by, and the revision of its weights."""

    folder: Path
    model_id: str
    revision: str

    @property
    def has_safetensors(self) -> bool:
        return any(self.folder.glob("*.safetensors"))


@cache
def weights_hash(folder: Path) -> str:
    """sha256 over the folder's weight files (names and bytes): the revision of a local model."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelLoadError(f"{folder}: no model weights (*.safetensors or *.bin) in this folder")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def refuse_custom_code(folder: Path, model_id: str) -> None:
    """ModelLoadError for a model folder whose configs ask for code shipped with the model (`auto_map`)."""
    for name in CONFIG_FILES:
        path = folder / name
        try:
            config = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"hf:{model_id}: {name} is not readable JSON ({type(e).__name__})") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise ModelLoadError(
                f"hf:{model_id}: refused: {name} names code shipped with the model (auto_map: "
                f"{', '.join(sorted(config['auto_map']))}), and multiembed never runs a model's own code. "
                "Use a model of an architecture transformers itself provides (a config without auto_map).")


def resolve_local(folder: Path, model_id: str | None = None) -> ModelRef:
    """A model folder on disk; its revision is the hash of its weights."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a Hugging Face model folder (no config.json)")
    refuse_custom_code(folder, model_id or str(folder))
    return ModelRef(folder, model_id or str(folder), weights_hash(folder))


def load_pretrained(loader: Any, ref: ModelRef, **options: Any) -> Any:
    """`loader.from_pretrained` (AutoModel, ...) on the model folder without running any of its code; a pickle
    that holds more than tensors is refused with a ModelLoadError saying the safe way."""
    try:
        return loader.from_pretrained(ref.folder, trust_remote_code=False, use_safetensors=ref.has_safetensors,
                                      **options)
    except pickle.UnpicklingError:
        pickles = sorted(p.name for p in ref.folder.iterdir() if p.suffix in WEIGHT_SUFFIXES[1:])
        raise ModelLoadError(
            f"hf:{ref.model_id}: refused {', '.join(pickles) or 'the weights'}: the pickle holds objects other "
            "than tensors, which could run code when loaded, so it is not loaded. Use the model's safetensors "
            "weights (model.safetensors), or convert the weights to safetensors where the file is trusted."
        ) from None


def resolve(reference: str) -> ModelRef:
    """`path/to/folder` or `org/name[@revision]` to a ModelRef (downloading only if the hub is reachable)."""
    path = Path(reference).expanduser()
    if path.exists():
        return resolve_local(path.resolve())
    repo_id, _, revision = reference.partition("@")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision or None))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise ModelLoadError(
            f"hf:{reference}: neither a local folder nor a model in the Hugging Face cache, and the hub "
            f"cannot be reached ({type(e).__name__}). Download it once (huggingface-cli download "
            f"{repo_id}) or give the path of a model folder."
        ) from None
    refuse_custom_code(folder, repo_id)
    return ModelRef(folder, repo_id, folder.name)  # snapshot folders are named by commit hash
