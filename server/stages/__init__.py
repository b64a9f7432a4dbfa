"""Pipeline stages, each a small interface with swappable engines.

The session talks to these Protocols only; it never knows which vendor is behind them.
All methods are blocking and CPU-bound: callers run them in a worker lane.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Float32 = npt.NDArray[np.float32]


class VadStream(Protocol):
    """Per-session VAD state: 16 kHz samples in, one speech probability per window out."""

    window_ms: int

    def probabilities(self, samples: Float32) -> list[float]: ...


class VoiceActivityModel(Protocol):
    def new_stream(self) -> VadStream: ...


@dataclass(frozen=True)
class Transcript:
    text: str
    path: str  # "short" or "padded": which Whisper path produced it
    no_speech_prob: float = 0.0


class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: Float32, *, partial: bool = False) -> Transcript: ...


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


class LanguageModel(Protocol):
    name: str

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        stop: threading.Event,
    ) -> Iterator[str]: ...


class Synthesizer(Protocol):
    name: str
    sample_rate: int

    def synthesize(self, text: str, stop: threading.Event) -> Iterator[Float32]: ...
