"""Every echo canceller engine on real speech: the assistant's piper answer played through
the rooms of bench/echo.py (40 to 200 ms, reflections, a gain) into the microphone, fed in
20 ms chunks as a session feeds it; and the user (espeak-ng) talking over that echo."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from bench.echo import ANSWERS, ROOMS, Room, answer, cancelled, double_talk, erle_db, level_db
from bench.fixtures import speak_espeak, trim
from server.audio import RATE
from server.runtime.config import Settings
from server.runtime.engines import Engines
from server.stages import EchoCanceller, Float32, registry
from tests.conftest import words

ENGINES = registry.AEC.names


@functools.cache
def canceller(engine: str) -> EchoCanceller:
    return registry.AEC.loader(engine)(Settings())


@functools.cache
def far() -> Float32:
    return answer(ANSWERS[0])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("room", ROOMS, ids=lambda r: f"{r.delay_ms}ms")
def test_the_echo_is_cut_and_the_output_stays_in_time(engine: str, room: Room) -> None:
    echo = room.echo(far())
    out, cpu = cancelled(canceller(engine).new_stream(), far(), echo)
    assert len(out) == len(echo)
    assert erle_db(echo, out) > 25.0, erle_db(echo, out)
    half = len(echo) // 2  # converged: more still
    assert erle_db(echo[half:], out[half:]) > 35.0
    assert cpu / (len(echo) / RATE) < 0.1  # a tenth of a core at most (about 1 % measured)


@pytest.mark.parametrize("engine", ENGINES)
def test_no_far_end_leaves_the_microphone_alone(engine: str) -> None:
    user = trim(speak_espeak("Set a timer for fifteen minutes.", RATE), RATE)
    out, _ = cancelled(canceller(engine).new_stream(), np.zeros(len(user), np.float32), user)
    assert abs(level_db(out) - level_db(user)) < 1.0


@pytest.mark.parametrize("engine", ENGINES)
def test_the_user_talking_over_the_echo_is_still_heard(engine: str, engines: Engines) -> None:
    said = "Set a timer for fifteen minutes."
    _, mic = double_talk(far(), trim(speak_espeak(said, RATE), RATE), ROOMS[1])
    played = np.concatenate([far(), np.zeros(len(mic) - len(far()), np.float32)])
    out, _ = cancelled(canceller(engine).new_stream(), played, mic)
    heard = words(engines.asr.transcribe(out).text)
    assert {"timer", "minutes"} <= set(heard), heard
    assert "paris" not in heard and "capital" not in heard, heard
    # Without the canceller, Whisper hears the assistant instead.
    assert "paris" in words(engines.asr.transcribe(mic).text)
