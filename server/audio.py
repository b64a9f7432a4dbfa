"""Audio codecs (pcm16, G.711 mu-law / A-law) and streaming resampling. Pure functions."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from server.errors import AudioFormatError

Float32 = npt.NDArray[np.float32]
# The server's own rate: what the VAD (silero), Whisper and the echo guard take, and what
# recordings are kept at. Audio is resampled to it on the way in, from it on the way out.
RATE = 16000
PCM_FORMATS = {"audio/pcm": "pcm16", "pcm16": "pcm16", "audio/pcmu": "g711_ulaw",
               "g711_ulaw": "g711_ulaw", "audio/pcma": "g711_alaw", "g711_alaw": "g711_alaw"}


def _ulaw_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.uint8)
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    sample = magnitude - 0x84
    return np.where(sign != 0, -sample, sample).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = a & 0x80
    exponent = ((a >> 4) & 0x07).astype(np.int32)
    mantissa = (a & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


_ULAW = _ulaw_table()
_ALAW = _alaw_table()


def _encode_g711(pcm: npt.NDArray[np.int16], table: npt.NDArray[np.int16]) -> bytes:
    # Nearest code by value: exact inverse of the decode table, monotone in each half.
    order = np.argsort(table, kind="stable")
    sorted_vals = table[order].astype(np.int32)
    idx = np.clip(np.searchsorted(sorted_vals, pcm.astype(np.int32)), 1, 255)
    lower, upper = sorted_vals[idx - 1], sorted_vals[idx]
    pick = np.where(pcm - lower <= upper - pcm, idx - 1, idx)
    return bytes(order[pick].astype(np.uint8).tobytes())


def decode(data: bytes, fmt: str) -> Float32:
    """Decode wire audio to float32 in [-1, 1]."""
    kind = PCM_FORMATS.get(fmt)
    if kind == "pcm16":
        if len(data) % 2:
            raise AudioFormatError(f"pcm16 audio must have an even byte count, got {len(data)}")
        return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)
    if kind == "g711_ulaw":
        return _ULAW[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0
    if kind == "g711_alaw":
        return _ALAW[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0
    raise AudioFormatError(f"unsupported audio format {fmt!r}")


def to_pcm16(samples: Float32) -> npt.NDArray[np.int16]:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


def encode(samples: Float32, fmt: str) -> bytes:
    """Encode float32 samples in [-1, 1] to wire audio."""
    kind = PCM_FORMATS.get(fmt)
    pcm = to_pcm16(samples)
    if kind == "pcm16":
        return pcm.tobytes()
    if kind == "g711_ulaw":
        return _encode_g711(pcm, _ULAW)
    if kind == "g711_alaw":
        return _encode_g711(pcm, _ALAW)
    raise AudioFormatError(f"unsupported audio format {fmt!r}")


def bytes_per_ms(fmt: str, rate: int) -> float:
    width = 2 if PCM_FORMATS.get(fmt) == "pcm16" else 1
    return width * rate / 1000.0


class StreamResampler:
    """Stateful resampler for a stream cut into arbitrary chunks (no clicks at the seams)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = (
            None if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def __call__(self, samples: Float32, *, last: bool = False) -> Float32:
        if self._stream is None:
            return samples.astype(np.float32, copy=False)
        out: Float32 = self._stream.resample_chunk(samples.astype(np.float32), last=last)
        return out


def resample(samples: Float32, in_rate: int, out_rate: int) -> Float32:
    """Resample a whole clip at once."""
    if in_rate == out_rate:
        return samples.astype(np.float32, copy=False)
    out: Float32 = soxr.resample(samples.astype(np.float32), in_rate, out_rate, quality="HQ")
    return out
