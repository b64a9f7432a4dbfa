"""Smart Turn v3.2: whether a turn sounds finished, from its audio alone (onnxruntime).

The model (int8 ONNX, about 8.7 MB) reads Whisper-style log-mel features of the last 8 s
of the turn and gives the probability that the speaker has finished. The features are
computed here with numpy, as the model was trained on them: the waveform normalised to
zero mean and unit variance, a centred STFT (n_fft 400, hop 160, periodic Hann window),
80 Slaney mel bands from 0 to 8 kHz, log10, clamped at the maximum minus 8, scaled as
(x + 4) / 4, and the last frame dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from server.audio import RATE
from server.stages import Float32, resolve

if TYPE_CHECKING:
    from server.runtime.config import Settings

WINDOW_S = 8  # the model sees the last 8 s of the turn, zero-padded at the start
SAMPLES = WINDOW_S * RATE
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = SAMPLES // HOP  # 800: the centred STFT's 801 frames, less the last
_EPS = 1e-7  # the variance's floor when normalising (a silent input stays finite)
_FLOOR = 1e-10  # mel power floor before the log

F64 = npt.NDArray[np.float64]


def _hz_to_mel(hz: F64) -> F64:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mel = 3.0 * hz / 200.0
    log_part = hz >= 1000.0
    logs = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(log_part, logs, mel)


def _mel_to_hz(mel: F64) -> F64:
    hz = 200.0 * mel / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0), hz)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = RATE) -> Float32:
    """Triangular Slaney-normalised filters, ``[n_mels, n_fft // 2 + 1]``."""
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(rate / 2.0))), n_mels + 2))
    bins = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    rising = (bins[np.newaxis, :] - edges[:-2, np.newaxis]) / np.diff(edges)[:-1, np.newaxis]
    falling = (edges[2:, np.newaxis] - bins[np.newaxis, :]) / np.diff(edges)[1:, np.newaxis]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, np.newaxis]
    return weights.astype(np.float32)


_MELS = mel_filters()
_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def last_window(audio: Float32) -> Float32:
    """The last 8 s of ``audio`` (16 kHz), zero-padded at the start to exactly 8 s."""
    audio = np.asarray(audio, dtype=np.float32)[-SAMPLES:]
    if len(audio) == SAMPLES:
        return audio
    return np.concatenate([np.zeros(SAMPLES - len(audio), np.float32), audio])


def log_mel(audio: Float32) -> Float32:
    """The model's input features for 8 s of 16 kHz audio: ``[80, 800]`` float32."""
    x = np.asarray(audio, dtype=np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + _EPS)
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:-1]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2
    mel = np.log10(np.maximum(_MELS @ power.T, _FLOOR))
    mel = np.maximum(mel, mel.max() - 8.0)
    features: Float32 = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


class SmartTurn:
    """The shared model: one call at a time, from the turn lane."""

    name = "smart-turn"

    def __init__(self, path: Path, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.complete(np.zeros(RATE, np.float32))  # the first run sets up its buffers

    def complete(self, audio: Float32) -> float:
        features = log_mel(last_window(audio))[np.newaxis]
        out = self.session.run(None, {"input_features": features})
        return float(np.asarray(out[0]).reshape(-1)[0])


def load(settings: Settings) -> SmartTurn:
    return SmartTurn(resolve("smart-turn-v3.2", "turn"), threads=settings.turn_threads)
