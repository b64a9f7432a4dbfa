"""Every noise suppressor engine on real noisy speech: espeak-ng speaking over the fan-like
noise of bench/noise.py at 0 dB SNR, streamed in 20 ms chunks as a session feeds it."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest

from bench.noise import NOISE_MAKERS, at_unit_rms, denoised, noisy_speech, snr_db, turns_in
from server.audio import RATE
from server.runtime.config import Settings
from server.runtime.engines import Engines
from server.stages import Float32, NoiseSuppressor, registry

ENGINES = registry.DENOISE.names
TEXT = "Set a timer for fifteen minutes."


@functools.cache
def suppressor(engine: str) -> NoiseSuppressor:
    return registry.DENOISE.loader(engine)(Settings())


@functools.cache
def clip() -> tuple[Float32, Float32]:
    return noisy_speech(TEXT, "espeak", "fan", 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_noisy_speech_comes_out_cleaner_and_in_time(engine: str) -> None:
    clean, noisy = clip()
    out, _ = denoised(suppressor(engine).new_stream(Settings().denoise_far_db), noisy)
    assert len(out) == len(noisy)
    gain = snr_db(clean, out) - snr_db(clean, noisy)
    assert gain > 5.0, gain
    # Sample for sample with the input: the engine's delay is taken out.
    lags = np.correlate(out[RATE // 2:RATE * 2], clean[RATE // 2:RATE * 2], "full")
    assert int(np.argmax(lags)) - (RATE * 3 // 2 - 1) == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_silence_stays_silence(engine: str) -> None:
    out, _ = denoised(suppressor(engine).new_stream(Settings().denoise_far_db),
                      np.zeros(RATE, np.float32))
    assert len(out) == RATE and not out.any()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stream_holds_back_at_most_its_delay_and_flush_gives_it_all(engine: str) -> None:
    _, noisy = clip()
    stream = suppressor(engine).new_stream(Settings().denoise_near_db)
    taken = given = 0
    most = 0
    for at in range(0, len(noisy), 320):
        chunk = noisy[at:at + 320]
        taken += len(chunk)
        given += len(stream.process(chunk))
        most = max(most, taken - given)
    assert 0 < most <= stream.delay_ms * RATE / 1000
    given += len(stream.flush())
    assert given == taken
    # The stream goes on after a flush, still in time.
    assert len(stream.process(noisy[:3200])) + len(stream.flush()) == 3200


@pytest.mark.parametrize("engine", ENGINES)
def test_each_session_has_its_own_state(engine: str) -> None:
    _, noisy = clip()
    limit = Settings().denoise_far_db
    alone, _ = denoised(suppressor(engine).new_stream(limit), noisy)
    a, b = suppressor(engine).new_stream(limit), suppressor(engine).new_stream(limit)
    parts = []
    for at in range(0, len(noisy), 320):
        parts.append(a.process(noisy[at:at + 320]))
        b.process(np.flip(noisy[at:at + 320]).copy())  # another session's audio in between
    parts.append(a.flush())
    np.testing.assert_allclose(np.concatenate(parts), alone, atol=1e-6)


def test_the_hallucination_check_finds_turns_only_where_there_is_speech(
        engines: Engines, speak: Callable[..., Float32]) -> None:
    # Its turn finder is the server's VAD and turn detector: a sentence in silence is one
    # turn, where it is; the fan alone, none.
    sentence = speak("Set a timer for fifteen minutes.")
    audio = np.concatenate([np.zeros(16000, np.float32), sentence, np.zeros(8000, np.float32)])
    found = turns_in(audio, engines.vad)
    assert len(found) == 1, found
    start, end = found[0]
    assert 1000 - 400 <= start <= 1000, found
    assert end == pytest.approx(1000 + len(sentence) / 16, abs=300), found
    fan = (0.05 * at_unit_rms(NOISE_MAKERS["fan"](5.0))).astype(np.float32)
    assert turns_in(fan, engines.vad) == []
