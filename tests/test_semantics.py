"""The bundled image and audio models on real labelled data: neighbours agree with labels far above chance."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from multiembed.demo_media import WORDS, digit_png, spoken, synthesised
from tasks.embedders import registry

pytestmark = pytest.mark.slow


def test_efficientnet_neighbours_of_handwritten_digits_share_their_digit() -> None:
    digits = load_digits()  # real 8x8 scans of handwritten digits (chance: 10%)
    pick = np.random.default_rng(0).permutation(len(digits.target))[:300]
    values = pa.array([digit_png(digits.images[i]) for i in pick], pa.large_binary())
    embedder = registry.load_embedder("image", "efficientnet-lite0", 32)
    vectors = embedder.embed(embedder.prepare(values, ""))
    accuracy = cross_val_score(KNeighborsClassifier(5, metric="cosine"), vectors, digits.target[pick], cv=5).mean()
    assert accuracy > 0.45  # measured 0.58 on this sample: almost six times chance


def test_whisper_puts_speech_nearer_speech_than_non_speech_sounds() -> None:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech to test with")
    import io

    import soundfile as sf

    def wav(samples: np.ndarray, rate: int) -> bytes:
        out = io.BytesIO()
        sf.write(out, samples, rate, format="WAV")
        return out.getvalue()

    rng = np.random.default_rng(0)
    speech = [wav(spoken(word, espeak), 22_050) for word in WORDS]
    sounds = [wav(synthesised(kind, rng), 16_000) for kind in ["tone", "noise", "chirp"] * 4]
    embedder = registry.load_embedder("audio", "whisper-tiny", 8)
    vectors = embedder.embed(embedder.prepare(pa.array(speech + sounds, pa.large_binary()), ""))
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    is_speech = np.arange(len(vectors)) < len(speech)
    nearest = sims.argmax(axis=1)
    assert is_speech[nearest[is_speech]].all()  # every spoken word's nearest clip is speech
    within = sims[np.ix_(is_speech, is_speech)][np.isfinite(sims[np.ix_(is_speech, is_speech)])].mean()
    across = sims[np.ix_(is_speech, ~is_speech)].mean()
    assert within > across + 0.1
