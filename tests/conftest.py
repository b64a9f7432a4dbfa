"""Shared fixtures: real models loaded once, spoken audio made here, a real server on loopback."""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

import numpy as np
import pytest
import pytest_asyncio
from piper.config import SynthesisConfig

from client.realtime import Float32, read_wav, resample, silence
from server.edge.app import App
from server.runtime.config import Settings
from server.runtime.engines import Engines
from server.stages.tts import PiperSynthesizer
from tests.support import wire_check

# How a spoken answer ends normally: `incomplete` is one the token cap (max_output_tokens) ended.
ANSWERED = ("completed", "incomplete")
TEST_SETTINGS = Settings(port=0, log_level="DEBUG", store="none")
EXACT = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    loaded = Engines.load(TEST_SETTINGS)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def speak(engines: Engines, tmp_path_factory: pytest.TempPathFactory
          ) -> Callable[..., Float32]:
    """speak(text, voice="piper"|"espeak", rate=16000) -> float32 speech, no padding."""
    folder = tmp_path_factory.mktemp("speech")
    cache: dict[tuple[str, str, int], Float32] = {}

    def make(text: str, voice: str = "piper", rate: int = 16000) -> Float32:
        key = (text, voice, rate)
        if key not in cache:
            if voice == "piper":
                # No sampling noise: the same text gives the same audio on every run.
                voice_model = cast(PiperSynthesizer, engines.tts).voice
                chunks = [c.audio_float_array for c in voice_model.synthesize(text, EXACT)]
                cache[key] = resample(np.concatenate(chunks), engines.tts.sample_rate, rate)
            else:
                if shutil.which("espeak-ng") is None:
                    pytest.fail("espeak-ng is missing: `make sysdeps` installs it")
                wav = folder / f"{len(cache)}.wav"
                subprocess.run(["espeak-ng", "-v", "en-us+m3", "-s", "160", "-w", str(wav), text],
                               check=True)
                cache[key] = read_wav(wav, rate)
        return cache[key]

    return make


def padded(speech: Float32, rate: int, before_ms: int = 500, after_ms: int = 1500) -> Float32:
    return np.concatenate([silence(before_ms, rate), speech, silence(after_ms, rate)])


def words(text: str) -> list[str]:
    """Normalised words: lower case, no punctuation, digits spelled as Whisper may write them."""
    numbers = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
               "7": "seven", "8": "eight", "9": "nine", "10": "ten"}
    out = re.findall(r"[a-z0-9']+", text.lower())
    return [numbers.get(w, w) for w in out]


@pytest_asyncio.fixture(scope="session")
async def server_url(engines: Engines) -> AsyncIterator[str]:
    app = App(TEST_SETTINGS, engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"


@pytest_asyncio.fixture(scope="session")
async def story_server_url(engines: Engines) -> AsyncIterator[str]:
    """A server whose answers may run to 1024 tokens, for tests that interrupt a long story
    while it is still being made: with the default 160, a fast machine has made all of it
    (then only its playback is left to stop) before the interruption comes."""
    app = App(dataclasses.replace(TEST_SETTINGS, max_output_tokens=1024), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"


class _Collections:
    """When the cyclic garbage collector ran. A full collection stops the whole process
    (in this test process, with the SDKs and test clients loaded, about 140 ms), whatever
    code happens to be running: that pause is the test process's, not the server code's."""

    def __init__(self) -> None:
        self.pauses: deque[tuple[float, float]] = deque(maxlen=64)
        self._began = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.monotonic()
        else:
            self.pauses.append((self._began, time.monotonic()))

    def within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.pauses)


SLOW_CALLBACK_S = 0.1  # asyncio's debug mode reports a callback that ran longer
# Test bodies, fixtures (set up by pytest-asyncio) and benchmark clients may block their
# own steps (making fixtures, sending megabytes); the server may not.
TEST_CODE = ("/tests/", "/bench/", "/pytest_asyncio/")
COLLECTIONS = _Collections()
gc.callbacks.append(COLLECTIONS)
_TOOK = re.compile(r"took (\d+\.\d+) seconds")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported so far lives as long as the tests: out of the collector's sight
    (as the server does after loading its models), so that full collections stay short."""
    gc.collect()
    gc.freeze()


class _SlowCallbacks(logging.Handler):
    """Collects asyncio debug-mode reports of a callback that blocked the loop, less the
    garbage collector's pauses within it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        took = _TOOK.search(message)
        if took is None or any(path in message for path in TEST_CODE):
            return
        end = time.monotonic()
        blocked = float(took.group(1)) - COLLECTIONS.within(end - float(took.group(1)), end)
        if blocked >= SLOW_CALLBACK_S:
            self.reports.append(message)


@pytest.fixture(autouse=True)
def event_loop_never_blocks() -> Iterator[None]:
    """With PYTHONASYNCIODEBUG=1, fail any test during which server code blocked the loop."""
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.reports, "event loop blocked:\n" + "\n".join(handler.reports)


@pytest.fixture(autouse=True)
def server_events_validate(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test whose clients received a server event that the `openai` SDK's own
    models reject (an unknown type, a wrong literal, a missing field): strict Realtime
    clients report each such event as an error. A test talking to another server opts out
    with ``@pytest.mark.foreign_events``."""
    if request.node.get_closest_marker("foreign_events") is not None:
        yield
        return
    with wire_check.watching() as found:
        yield
    assert not found, "server events a strict client rejects:\n" + "\n".join(
        dict.fromkeys(found))
