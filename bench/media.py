"""Images per second and audio seconds per second end to end, against the bare model forward on
pre-decoded tensors, side by side in one process.

    python bench/media.py images --rows 256 --repeats 3
    python bench/media.py audio --rows 32 --repeats 2

End to end is the `backfill` flow over a Parquet source of encoded files (JPEG bytes; WAV bytes of
speech), through a temporary Prefect server: read, validate, decode, preprocess, embed, write, publish.
The baseline is the same model's forward pass alone, over inputs decoded and preprocessed beforehand by
the embedder itself (EfficientNet-Lite0 on uint8 batches; Whisper tiny's encoder on log-mel windows),
with the same batch size. Images are crops of scikit-learn's sample photos at several sizes; audio is
docstrings spoken by espeak-ng (a few seconds each).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import commands, in_worker, interleaved, machine, prefect_server, rates, show_ratio, texts, write_source


def jpegs(rows: int) -> list[bytes]:
    """Crops of the sample photos (from 160 to 640 pixels wide), JPEG-encoded."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    out = []
    for i in range(rows):
        photo = photos[i % len(photos)]
        width = int(rng.integers(160, min(640, photo.shape[1]) + 1))
        height = min(photo.shape[0], int(width * rng.uniform(0.6, 1.0)))
        top, left = int(rng.integers(0, photo.shape[0] - height + 1)), int(rng.integers(0, photo.shape[1] - width + 1))
        buffer = io.BytesIO()
        Image.fromarray(photo[top : top + height, left : left + width]).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def speech(rows: int) -> tuple[list[bytes], float]:
    """WAV files of docstrings spoken by espeak-ng (cut to ~200 characters), and their total seconds."""
    import soundfile as sf

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed for the audio benchmark (apt-get install espeak-ng)")
    clips, seconds = [], 0.0
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "clip.wav"
        for text in texts(rows):
            subprocess.run([espeak, "-w", str(wav), text[:200]], check=True, capture_output=True)
            info = sf.info(str(wav))
            seconds += info.frames / info.samplerate
            clips.append(wav.read_bytes())
    return clips, seconds


def images(rows: int, repeats: int, batch_size: int) -> None:
    import pyarrow as pa
    import torch

    from flows.backfill import backfill
    from tasks.embedders import registry

    values = jpegs(rows)
    embedder = registry.load_embedder("image", "efficientnet-lite0", batch_size)
    prepared = embedder.prepare(pa.array(values, pa.binary()))  # decoded and preprocessed, not timed

    def bare() -> None:
        with torch.inference_mode():
            for batch in prepared.batches:
                embedder.forward(batch)

    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        def config(name: str, n: int) -> str:
            return str(write_source(Path(tmp) / name, n, column="picture", modality="image", values=values[:n],
                                    embedders=["efficientnet-lite0"], batch_size=batch_size))

        backfill(config=config("warm", batch_size))
        configs = iter([config(f"run{r}", rows) for r in range(repeats)])
        seconds = interleaved({"bare": in_worker(bare), "backfill": lambda: backfill(config=next(configs))}, repeats)
    print(f"machine: {machine()}")
    print(f"images: {rows} JPEGs ({sum(map(len, values)) / rows / 1024:.0f} KiB mean), EfficientNet-Lite0, "
          f"batch size {batch_size}, repeats {repeats}")
    print(f"bare forward on preprocessed uint8 batches  images/s: {rates(rows, seconds['bare'])}")
    print(f"backfill flow end to end                    images/s: {rates(rows, seconds['backfill'])}")
    show_ratio("ratio backfill / bare forward (throughput)", seconds["bare"], seconds["backfill"])


def audio(rows: int, repeats: int, batch_size: int) -> None:
    import pyarrow as pa

    from flows.backfill import backfill
    from tasks.embedders import registry

    values, total = speech(rows)
    embedder = registry.load_embedder("audio", "whisper-tiny", batch_size)
    prepared = embedder.prepare(pa.array(values, pa.binary()))  # decoded, resampled, log-mel: not timed

    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        def config(name: str, n: int) -> str:
            return str(write_source(Path(tmp) / name, n, column="clip", modality="audio", values=values[:n],
                                    embedders=["whisper-tiny"], batch_size=batch_size))

        backfill(config=config("warm", 2))
        configs = iter([config(f"run{r}", rows) for r in range(repeats)])
        seconds = interleaved({"bare": in_worker(lambda: embedder.embed_windows(prepared)),
                               "backfill": lambda: backfill(config=next(configs))}, repeats)
    print(f"machine: {machine()}")
    print(f"audio: {rows} WAV clips of speech, {total:.0f} s in all ({total / rows:.1f} s mean), whisper-tiny "
          f"(CTranslate2), batch size {batch_size}, repeats {repeats}")
    print(f"bare encoder on log-mel windows   audio s/s: {rates(total, seconds['bare'])}")
    print(f"backfill flow end to end          audio s/s: {rates(total, seconds['backfill'])}")
    show_ratio("ratio backfill / bare encoder (throughput)", seconds["bare"], seconds["backfill"])


def main() -> None:
    args = commands(__doc__, {"images": {"--rows": 256, "--repeats": 3, "--batch-size": 16},
                              "audio": {"--rows": 32, "--repeats": 2, "--batch-size": 8}})
    (images if args.mode == "images" else audio)(args.rows, args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
