import numpy as np
import pytest

from server import audio
from server.errors import AudioFormatError


def test_pcm16_roundtrip_is_exact_to_one_step() -> None:
    x = (np.sin(np.arange(2400) / 7) * 0.8).astype(np.float32)
    y = audio.decode(audio.encode(x, "audio/pcm"), "audio/pcm")
    assert np.abs(x - y).max() < 1 / 16000


def test_g711_known_codes() -> None:
    # ITU-T G.711: mu-law 0xFF and A-law 0xD5 are the smallest positive steps; 0x80 and
    # 0xAA the loudest positive values.
    assert audio.decode(bytes([0xFF]), "audio/pcmu")[0] == 0.0
    assert audio.decode(bytes([0x80]), "audio/pcmu")[0] * 32768 == 32124
    assert audio.decode(bytes([0xAA]), "audio/pcma")[0] * 32768 == 32256
    assert audio.decode(bytes([0xD5]), "audio/pcma")[0] * 32768 == 8


@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
def test_g711_roundtrip_error_is_small(fmt: str) -> None:
    x = (np.sin(np.arange(800) / 5) * 0.5).astype(np.float32)
    y = audio.decode(audio.encode(x, fmt), fmt)
    assert len(y) == len(x)
    assert np.abs(x - y).max() < 0.02


def test_odd_byte_count_and_unknown_format_are_errors() -> None:
    with pytest.raises(AudioFormatError, match="even byte count"):
        audio.decode(b"\x00\x01\x02", "audio/pcm")
    with pytest.raises(AudioFormatError, match="unsupported"):
        audio.decode(b"\x00\x00", "audio/opus")


def test_stream_resampler_keeps_length_and_pitch_across_chunks() -> None:
    rate_in, rate_out = 24000, 16000
    t = np.arange(rate_in) / rate_in
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    r = audio.StreamResampler(rate_in, rate_out)
    parts = [r(x[i:i + 480]) for i in range(0, len(x), 480)] + [r(x[:0], last=True)]
    y = np.concatenate(parts)
    assert abs(len(y) - rate_out) <= 2
    spectrum = np.abs(np.fft.rfft(y[:rate_out]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1
