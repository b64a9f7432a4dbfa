"""Audio for the benchmarks: speech from two voices, and synthetic non-speech sounds.

Speech comes from piper (deterministic: no sampling noise) and from espeak-ng, a second,
very different voice. The non-speech signals (room noise, chords, a cough) are made from
a seeded random generator, so every run streams the same samples.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.realtime import Float32, read_wav, resample, silence
from realtime import DEFAULT_RATE

RATE = DEFAULT_RATE  # what the benchmark clients send and hear
Floats = npt.NDArray[np.floating[Any]]
Weights = Callable[[Floats], Floats]


# ---------------------------------------------------------------------- speech


@functools.cache
def _piper() -> Any:
    from models import locate
    from server.stages.tts import PiperSynthesizer

    return PiperSynthesizer(locate("joe", "tts"), warm=False).voice


def speak_piper(text: str, rate: int = RATE) -> Float32:
    """`text` spoken by the embedded piper voice, with no sampling noise."""
    from piper.config import SynthesisConfig

    voice = _piper()
    exact = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    speech = np.concatenate([c.audio_float_array for c in voice.synthesize(text, exact)])
    return resample(speech, voice.config.sample_rate, rate)


def speak_espeak(text: str, rate: int = RATE, voice: str = "en-us+m3") -> Float32:
    """`text` spoken by espeak-ng (`voice`: a language and a variant, 160 words a minute)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(wav), text],
                       check=True)
        return read_wav(wav, rate)


VOICES: dict[str, Callable[[str, int], Float32]] = {"piper": speak_piper,
                                                     "espeak": speak_espeak}


def _loud_frames(samples: Float32, rate: int, floor_db: float) -> npt.NDArray[np.intp]:
    frame = rate // 100
    n = len(samples) // frame
    energy = np.sqrt((samples[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12)
    return np.nonzero(20 * np.log10(energy / energy.max()) > floor_db)[0]


def speech_end(samples: Float32, rate: int, floor_db: float = -40.0) -> float:
    """The end of the last 10 ms frame louder than `floor_db` below the peak, in seconds."""
    return float((_loud_frames(samples, rate, floor_db)[-1] + 1) * (rate // 100) / rate)


def trim(samples: Float32, rate: int, floor_db: float = -40.0) -> Float32:
    """`samples` without the quiet before the first and after the last loud 10 ms frame."""
    loud, frame = _loud_frames(samples, rate, floor_db), rate // 100
    return samples[loud[0] * frame:(loud[-1] + 1) * frame]


def joined(clips: list[Float32], gaps_ms: list[int], rate: int = RATE) -> Float32:
    """Trimmed clips with exactly `gaps_ms` of silence between them."""
    parts = [trim(clips[0], rate)]
    for clip, gap in zip(clips[1:], gaps_ms, strict=True):
        parts += [silence(gap, rate), trim(clip, rate)]
    return np.concatenate(parts)


# ---------------------------------------------------------------------- non-speech


def dbfs(samples: Float32) -> float:
    """RMS level in dB relative to a full-scale square wave."""
    return float(20 * np.log10(np.sqrt(np.mean(np.square(samples, dtype=np.float64))) + 1e-12))


def peak_dbfs(samples: Float32) -> float:
    return float(20 * np.log10(np.abs(samples).max() + 1e-12))


def shaped_noise(seconds: float, weights: Weights, seed: int, rate: int = RATE) -> Float32:
    """Gaussian noise whose amplitude spectrum is `weights(frequency)`, at unit RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    spectrum = np.fft.rfft(rng.standard_normal(n)) * weights(np.fft.rfftfreq(n, 1 / rate))
    out = np.fft.irfft(spectrum, n)
    noise: Float32 = (out / np.sqrt(np.mean(out ** 2))).astype(np.float32)
    return noise


def room_noise(seconds: float, level_dbfs: float = -45.0, seed: int = 1,
               rate: int = RATE) -> Float32:
    """Brownish noise (power falling 6 dB an octave above 40 Hz) at `level_dbfs` RMS."""
    noise = shaped_noise(seconds, lambda f: 1.0 / np.maximum(f, 40.0), seed, rate)
    return (noise * 10 ** (level_dbfs / 20)).astype(np.float32)


def chords(seconds_each: float = 1.0, peak: float = -12.0, rate: int = RATE) -> Float32:
    """Four piano-like chords (C, F, G, C major): harmonics, fast attack, exponential decay."""
    roots = [261.63, 349.23, 392.00, 261.63]
    t = np.arange(int(seconds_each * rate)) / rate
    envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t / 0.35)
    out = []
    for root in roots:
        tone = np.zeros_like(t)
        for ratio in (1.0, 1.25, 1.5):  # a major triad
            for harmonic, gain in ((1, 1.0), (2, 0.4), (3, 0.2)):
                tone += gain * np.sin(2 * np.pi * root * ratio * harmonic * t)
        out.append(tone * envelope)
    music = np.concatenate(out)
    scaled: Float32 = (music / np.abs(music).max() * 10 ** (peak / 20)).astype(np.float32)
    return scaled


def cough(peak: float = -10.0, seed: int = 2, rate: int = RATE) -> Float32:
    """Two coughs: 300 ms bursts of noise band-passed to 200-2500 Hz, 10 ms attack, fast decay."""
    def band(f: Floats) -> Floats:
        return ((f > 200) & (f < 2500)).astype(np.float64)

    t = np.arange(int(0.3 * rate)) / rate
    envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t / 0.06)
    bursts = [shaped_noise(0.3, band, seed + i, rate) * envelope for i in range(2)]
    out = np.concatenate([bursts[0], silence(250, rate), bursts[1]])
    scaled: Float32 = (out / np.abs(out).max() * 10 ** (peak / 20)).astype(np.float32)
    return scaled
