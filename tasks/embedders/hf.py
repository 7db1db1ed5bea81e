"""Resolve `hf:<id-or-path>[@revision]` to a local model folder and a revision that pins its weights.

Loading never runs code from the model repository (`trust_remote_code` stays off) and prefers
safetensors. A hub id is looked up through huggingface_hub's cache, so with HF_HUB_OFFLINE=1 it works
only for models already downloaded, and fails with a clear message otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tasks.embedders.base import ModelLoadError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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


def resolve_local(folder: Path, model_id: str | None = None) -> ModelRef:
    """A model folder on disk; its revision is the hash of its weights."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a Hugging Face model folder (no config.json)")
    return ModelRef(folder, model_id or str(folder), weights_hash(folder))


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
    return ModelRef(folder, repo_id, folder.name)  # snapshot folders are named by commit hash
