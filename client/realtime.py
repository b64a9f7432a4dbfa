"""Streaming helpers for Realtime clients (benchmarks, tests, the microphone client).

They drive a connection from the official ``openai`` SDK (GA or beta) and depend only
on the protocol, never on the server package.
"""

from __future__ import annotations

import asyncio
import base64
import time
import wave
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soxr

Float32 = npt.NDArray[np.float32]


class _Connection(Protocol):
    @property
    def input_audio_buffer(self) -> Any: ...


def pcm16(samples: Float32) -> bytes:
    return bytes((np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


def from_pcm16(data: bytes) -> Float32:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def resample(samples: Float32, in_rate: int, out_rate: int) -> Float32:
    if in_rate == out_rate:
        return samples.astype(np.float32, copy=False)
    out: Float32 = soxr.resample(samples.astype(np.float32), in_rate, out_rate)
    return out


def read_wav(path: Path, rate: int) -> Float32:
    """A mono or stereo 16-bit WAV file as float32 at ``rate``."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        data = from_pcm16(w.readframes(w.getnframes()))
        channels, source_rate = w.getnchannels(), w.getframerate()
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.float32)
    return resample(data, source_rate, rate)


def write_wav(path: Path, samples: Float32, rate: int) -> Path:
    """``samples`` as a pcm16 mono WAV file at ``rate``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16(samples))
    return path


def silence(ms: int, rate: int) -> Float32:
    return np.zeros(rate * ms // 1000, dtype=np.float32)


async def send_audio(conn: _Connection, samples: Float32, rate: int, *, chunk_ms: int = 40,
                     realtime: bool = True) -> float:
    """Append ``samples`` as pcm16 chunks, paced like a microphone when ``realtime``.

    Returns the monotonic time at which the last chunk was handed to the socket.
    """
    step = rate * chunk_ms // 1000
    start = time.monotonic()
    for n, i in enumerate(range(0, len(samples), step)):
        chunk = base64.b64encode(pcm16(samples[i:i + step])).decode()
        await conn.input_audio_buffer.append(audio=chunk)
        if realtime:
            delay = start + (n + 1) * chunk_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    return time.monotonic()
