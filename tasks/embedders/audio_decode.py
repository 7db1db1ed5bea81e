"""Audio decoding: an encoded file (bytes or a path) read block by block, downmixed to mono, resampled to
the model's rate and cut into windows, so memory stays a few windows' worth whatever the file's length.

Decoding uses libsndfile through `soundfile` (WAV, FLAC, OGG/Vorbis, MP3 and more): torchaudio 2.11's
`torchaudio.load` needs the separate `torchcodec` package and FFmpeg, which the pipeline does not ship,
while soundfile's wheel bundles libsndfile. Resampling is `torchaudio.functional.resample`, block by block
with enough context that the result equals resampling the whole signal.

A `Limit` bounds what one file may cost: a file whose header says it is longer than the limit is refused
before any sample is decoded (a few KB of FLAC can hold hours of silence: minutes of CPU), and a file whose
header gives no length is decoded up to the limit only, and marked as cut.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.embedders.media import MediaError, open_media

READ_BLOCK_FRAMES = 1 << 17  # source frames decoded at a time (~3 s at 44.1 kHz)
RESAMPLE_STEP = 1 << 18  # source samples resampled at a time (a multiple of the rate ratio is used)
LOWPASS_FILTER_WIDTH = 6  # torchaudio.functional.resample's defaults, which the block resampler relies on
ROLLOFF = 0.99
UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's SF_COUNT_MAX: the frame count of a header that does not give one


@dataclass
class Limit:
    """At most `seconds` of one file are decoded; `cut` is set when the file went on past them (never read)."""

    seconds: float
    cut: bool = False

    def frames(self, samplerate: int) -> int:
        """Source frames within the limit: every frame of a file whose header length passed `check_length`."""
        return math.ceil(self.seconds * samplerate)


def open_audio(value: bytes | str, base_dir: str) -> Any:
    """An open `soundfile.SoundFile` over the bytes, or over the path resolved against `base_dir`."""
    import soundfile as sf

    source = open_media(value, base_dir)
    source = str(source) if isinstance(source, Path) else source
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise MediaError(f"cannot decode audio: {_sf_message(e)}") from None


def _sf_message(error: Exception) -> str:
    """libsndfile's own words ('Format not recognised.'), without the file object's repr."""
    return str(getattr(error, "error_string", "") or error).strip()


def header_seconds(audio: Any) -> float | None:
    """The file's length in seconds as its header gives it (nothing decoded), or None when it gives none."""
    frames, samplerate = int(audio.frames), int(audio.samplerate)
    if frames >= UNKNOWN_FRAMES or frames < 0 or samplerate <= 0:
        return None
    return frames / samplerate


def check_length(audio: Any, limit: Limit) -> None:
    """MediaError if the header says the file is longer than the limit: refused before decoding anything."""
    seconds = header_seconds(audio)
    if seconds is not None and seconds > limit.seconds:
        raise MediaError(f"audio is {seconds:.1f} s long, over max_seconds {limit.seconds:g}")


def mono_blocks(audio: Any, frames: int = READ_BLOCK_FRAMES, limit: Limit | None = None) -> Iterator[np.ndarray]:
    """The file's samples as float32 mono blocks (channels averaged), up to `limit` if one is given.

    At the limit one more frame is read to tell whether the file goes on (then `limit.cut` is set); the
    rest of the file is never decoded, whatever its header says.
    """
    import soundfile as sf

    left = limit.frames(int(audio.samplerate)) if limit is not None else None
    try:
        while left is None or left > 0:
            block = audio.read(frames if left is None else min(frames, left), dtype="float32", always_2d=True)
            if not len(block):
                return
            if left is not None:
                left -= len(block)
            yield block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if limit is not None and len(audio.read(1, dtype="float32", always_2d=True)):
            limit.cut = True
    except (sf.LibsndfileError, RuntimeError) as e:
        raise MediaError(f"cannot decode audio: {_sf_message(e)}") from None


def resample_blocks(blocks: Iterable[np.ndarray], orig: int, new: int) -> Iterator[np.ndarray]:
    """Resample a stream of blocks so that the concatenation equals `resample(whole signal)`.

    torchaudio's sinc resampler reduces the rates by their gcd (o -> n) and computes each group of n
    output samples from o input samples plus `width` on each side, zeros beyond the signal's ends. So
    steps that are a multiple of o, each resampled with `context` (>= width + o) real or zero samples on
    both sides and trimmed, give exactly the whole-signal result while holding only one step.
    """
    if orig == new:
        yield from blocks
        return
    from torchaudio.functional import resample

    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    width = math.ceil(LOWPASS_FILTER_WIDTH * o / (min(o, n) * ROLLOFF))
    context = math.ceil((width + o) / o) * o
    step = max(o, RESAMPLE_STEP // o * o)
    skip = context // o * n
    pending = np.zeros(context, np.float32)  # left context: zeros, as torchaudio pads the start

    def run(chunk: np.ndarray) -> np.ndarray:
        return resample(torch.from_numpy(chunk), orig, new, LOWPASS_FILTER_WIDTH, ROLLOFF).numpy()

    for block in blocks:
        pending = np.concatenate([pending, block])
        while len(pending) >= 2 * context + step:
            yield run(pending[: 2 * context + step])[skip : skip + step // o * n]
            pending = pending[step:]
    left = len(pending) - context
    if left > 0:
        yield run(pending)[skip : skip + math.ceil(left * n / o)]


def cut_windows(blocks: Iterable[np.ndarray], window: int) -> Iterator[np.ndarray]:
    """Consecutive windows of `window` samples covering the stream; the last one holds the rest.

    Blocks are collected as views and copied once, into their window.
    """
    parts: list[np.ndarray] = []
    held = 0
    for block in blocks:
        while len(block):
            take = min(window - held, len(block))
            parts.append(block[:take])
            held += take
            block = block[take:]
            if held == window:
                yield np.concatenate(parts)
                parts, held = [], 0
    if held:
        yield np.concatenate(parts)


def decode_windows(value: bytes | str, base_dir: str, rate: int, window: int,
                   limit: Limit | None = None) -> Iterator[np.ndarray]:
    """Mono float32 windows at `rate` Hz of an audio file (bytes or path); MediaError if it is not one, or if
    its header says it is longer than `limit` (checked before decoding). Without a header length, only the
    first `limit.seconds` are decoded and `limit.cut` says whether the file held more."""
    with open_audio(value, base_dir) as audio:
        if limit is not None:
            check_length(audio, limit)
        blocks = resample_blocks(mono_blocks(audio, limit=limit), int(audio.samplerate), rate)
        for samples in cut_windows(blocks, window):
            if not np.isfinite(samples).all():
                raise MediaError("audio holds non-finite samples (NaN or infinity)")
            yield samples


def load_audio(value: bytes | str, rate: int, base_dir: str = "") -> np.ndarray:
    """A whole file as mono float32 at `rate` Hz (for tests and tools; the pipeline uses windows)."""
    parts = list(decode_windows(value, base_dir, rate, window=1 << 62))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
