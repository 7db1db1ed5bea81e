"""What image and audio have in common: values are encoded files, given as bytes or as paths.

A path is resolved against the folder of the Parquet file it came from, and must stay inside that folder
(absolute paths too): a row cannot make the pipeline read arbitrary files. Checks, storage types and path
resolution live here once, for every media modality.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from tasks.embedders.base import Modality
from tasks.sources import invalid_utf8, is_text_type


class MediaError(ValueError):
    """A value that cannot be read or decoded; its message is the reject reason."""


def is_binary_type(t: pa.DataType) -> bool:
    """Bytes of any Arrow layout, dictionary-encoded ones included."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def media_storage(t: pa.DataType) -> pa.DataType:
    """Bytes are read as large_binary, paths as large_string."""
    return pa.large_binary() if is_binary_type(t) else pa.large_string()


def media_reasons(noun: str, values: pa.Array) -> pa.Array:
    """Why a value cannot be embedded: null, no bytes / a blank path, or a path that is not valid UTF-8 (it
    names no file anyone can write down); null when it can."""
    values = values.cast(media_storage(values.type))
    invalid = invalid_utf8(values)
    if pa.types.is_large_string(values.type):
        if pc.any(invalid).as_py():
            values = pc.if_else(invalid, pa.scalar("x", values.type), values)  # neither empty nor null
        values = pc.utf8_trim_whitespace(values)
    empty = pc.equal(pc.binary_length(values), 0)
    reasons = pc.if_else(empty, pa.scalar(f"empty {noun}"), pa.scalar(None, pa.string()))
    reasons = pc.if_else(invalid, pa.scalar(f"invalid UTF-8 in the {noun} path"), reasons)
    return pc.if_else(pc.is_null(values), pa.scalar(f"null {noun}"), reasons)


def stamped_paths(values: pa.Array, base_dir: str) -> pa.Array:
    """Bytes as they are; each path with its file's size and modification time appended (`path`, NUL,
    `size:mtime_ns`; nothing after the NUL when there is no such file), so that a file replaced at the same
    path changes the row's content hash and a refresh embeds it again. One stat per row, no file read."""
    if not is_text_type(values.type):
        return values
    paths = values.to_pylist()
    fs = pafs.LocalFileSystem()
    infos = fs.get_file_info([str(Path(base_dir, p.strip())) if p and "://" not in p else "" for p in paths])
    stamps = [f"{i.size}:{i.mtime_ns}" if i.type == pafs.FileType.File else "" for i in infos]
    return pc.binary_join_element_wise(values.cast(pa.large_string()), pa.array(stamps, pa.large_string()),
                                       pa.scalar("\0", pa.large_string()))


def media_modality(name: str, default_embedder: str, stats: tuple[str, ...]) -> Modality:
    """A modality of encoded files (`name`: image, audio), embedded by `default_embedder` unless configured;
    `stats` name the input statistics its embedders measure while decoding (`Prepared.stats`)."""
    return Modality(
        name=name,
        expected=f"encoded {name} bytes (binary) or paths (string)",
        accepts=lambda t: is_binary_type(t) or is_text_type(t),
        storage=media_storage,
        reasons=lambda values: media_reasons(name, values),
        default_embedder=default_embedder,
        stat_names=lambda _: stats,
        payload=stamped_paths,
    )


def open_media(value: bytes | str, base_dir: str) -> io.BytesIO | Path:
    """Bytes as a file object, or the path resolved against `base_dir`.

    MediaError if the path leaves the data folder (`..`, an absolute path elsewhere, a link out) or
    names no file.
    """
    if isinstance(value, bytes):
        return io.BytesIO(value)
    if "://" in value:
        raise MediaError(f"remote paths are not supported yet: {value}")
    folder = Path(base_dir).resolve()
    path = Path(base_dir, value.strip())  # an absolute value replaces base_dir
    if not path.resolve().is_relative_to(folder):
        raise MediaError(f"path escapes the data folder {folder}: {value}")
    if not path.is_file():
        raise MediaError(f"no such file: {path}")
    return path
