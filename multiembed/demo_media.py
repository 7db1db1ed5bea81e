"""The demo's `media` source: one Parquet source with text, an image, an audio clip and a table row per item.

All real data that ships with the packages we depend on, built offline:
- picture: scikit-learn's handwritten digits (8x8 scans of 0-9, upscaled to PNG), labelled `digit`;
- clip: a WAV file per row, labelled `sound`: the digit's name spoken by espeak-ng (when the machine has
  it) or synthesised sounds (tones, noise, chirps), so speech and non-speech can be told apart;
- wine: scikit-learn's wine measurements (13 chemical columns), labelled `cultivar`;
- caption: a Python standard library docstring.
A few deliberately bad rows (a corrupt picture, a missing clip, a silent clip) show rejects and counts.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from PIL import Image

RATE = 16_000
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WINE_COLUMNS = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
                "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280_od315", "proline"]


def digit_png(pixels: np.ndarray) -> bytes:
    """An 8x8 digit scan (values 0-16) as a 64x64 grey PNG, dark ink on white like a scan."""
    grey = (255 - pixels * 255 / 16).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(grey, mode="L").resize((64, 64), Image.Resampling.NEAREST).save(out, format="PNG")
    return out.getvalue()


def spoken(word: str, espeak: str) -> np.ndarray:
    """`word` spoken by espeak-ng, as mono float32 samples at 22.05 kHz."""
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "word.wav"
        subprocess.run([espeak, "-w", str(wav), word], check=True, capture_output=True)
        samples, _ = sf.read(wav, dtype="float32")
    return samples


def synthesised(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One second of a non-speech sound: a tone with harmonics, a noise burst or a chirp, at 16 kHz."""
    t = np.arange(RATE) / RATE
    if kind == "tone":
        f = rng.uniform(200, 900)
        wave = sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3))
    elif kind == "noise":
        wave = rng.standard_normal(RATE) * np.exp(-3 * t)
    else:
        f0, f1 = rng.uniform(200, 500), rng.uniform(1500, 3000)
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / 2))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def write_clips(folder: Path, digits: np.ndarray, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """One WAV per row in `folder`: the digit's name spoken (every other row, when espeak-ng is there), else a
    synthesised sound. Returns the clips' paths relative to the Parquet folder and their `sound` labels."""
    espeak = shutil.which("espeak-ng")
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i, digit in enumerate(digits):
        kind = "speech" if espeak and i % 2 == 0 else ["tone", "noise", "chirp"][i % 3]
        samples = spoken(WORDS[digit], espeak) if kind == "speech" else synthesised(kind, rng)
        name = f"clip-{i:03d}.wav"
        sf.write(folder / name, samples, 22_050 if kind == "speech" else RATE)
        paths.append(f"{folder.name}/{name}")
        labels.append(kind)
    return paths, labels


def build_media(folder: Path, captions: list[str], rows: int = 60) -> int:
    """Write `raw/media/part-0.parquet` and its clips under `folder`; returns the rows written."""
    from sklearn.datasets import load_digits, load_wine

    rng = np.random.default_rng(0)
    digits, wine = load_digits(), load_wine()
    pick = rng.permutation(len(digits.target))[:rows]
    wines = rng.permutation(len(wine.target))[:rows]
    raw = folder / "raw" / "media"
    clips, sounds = write_clips(raw / "clips", digits.target[pick], rng)
    table = {
        "item_id": list(range(1, rows + 1)),
        "caption": [captions[(i * 7) % len(captions)] for i in range(rows)],
        "picture": [digit_png(digits.images[i]) for i in pick],
        "clip": clips,
        **{c: wine.data[wines, j].tolist() for j, c in enumerate(WINE_COLUMNS)},
        "digit": digits.target[pick].tolist(),
        "sound": sounds,
        "cultivar": [f"cultivar_{c}" for c in wine.target[wines]],
    }
    bad = {"item_id": [rows + 1, rows + 2, rows + 3], "caption": ["A corrupt picture.", "A missing clip.",
                                                                  "A silent clip."],
           "picture": [b"\x89PNG\r\n\x1a\n-truncated", table["picture"][0], table["picture"][1]],
           "clip": ["clips/no-such-clip.wav", table["clip"][0], "clips/silence.wav"],
           **{c: table[c][:3] for c in WINE_COLUMNS},
           "digit": table["digit"][:3], "sound": ["bad", "bad", "silence"], "cultivar": table["cultivar"][:3]}
    sf.write(raw / "clips" / "silence.wav", np.zeros(RATE, np.float32), RATE)
    pq.write_table(pa.table({k: table[k] + bad[k] for k in table}), raw / "part-0.parquet", row_group_size=32)
    return rows + len(bad["item_id"])
