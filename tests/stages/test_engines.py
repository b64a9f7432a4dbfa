"""The engine registries and the contract every registered engine keeps.

Each TTS engine in the registry is loaded for real (its default voice) and put through the
same checks: a spoken sentence round trip through Whisper, stop mid-stream, two callers
from two threads, its own lane. A real server then lets a client pick a voice of another
engine, for the session and for one response.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from client.realtime import Float32, resample
from server.edge.app import App
from server.errors import ConfigError, WorkCancelled
from server.runtime import config
from server.runtime.config import Settings
from server.runtime.engines import Engines, Speaker, load_voices, voice_plan
from server.stages import registry
from tests.conftest import ANSWERED, TEST_SETTINGS, padded, words
from tests.e2e.test_e2e import audio_of, events_until, ga

SENTENCE = "Paris is the capital of France."
THREE = "The first sentence is short. Here comes the second one. And this is the third."
RATE = 24000


@pytest.fixture(scope="module")
def voiced(engines: Engines) -> Iterator[Engines]:
    """The test engines with every registered TTS engine loaded besides the default one,
    each with its default voice, through the loading path the server takes."""
    loaded = {s.engine.name for s in engines.speakers}
    extra: list[Speaker] = []
    for name in registry.TTS.names:
        if name not in loaded:
            extra += load_voices(TEST_SETTINGS.replace(tts_engine=name, tts_voice=""))
    yield dataclasses.replace(engines, more_tts=(*engines.more_tts, *extra))
    for speaker in extra:
        speaker.lane.close()


def speaker_of(engines: Engines, name: str) -> Speaker:
    return next(s for s in engines.speakers if s.engine.name == name)


def to_16k(audio: Float32, rate: int) -> Float32:
    return resample(audio, rate, 16000)


def heard(engines: Engines, audio: Float32, rate: int) -> list[str]:
    return words(engines.asr.transcribe(padded(to_16k(audio, rate), 16000, 200, 500)).text)


def pitch_hz(audio: Float32, rate: int) -> float:
    """The median fundamental frequency of the voiced 40 ms frames (autocorrelation)."""
    x = to_16k(audio, rate)
    n, lo, hi = 640, 16000 // 400, 16000 // 60
    found: list[float] = []
    loud = 0.3 * float(np.sqrt(np.mean(x ** 2)))
    for i in range(0, len(x) - n, n // 2):
        frame = x[i:i + n] - np.mean(x[i:i + n])
        if float(np.sqrt(np.mean(frame ** 2))) < loud:
            continue
        corr = np.correlate(frame, frame, "full")[n - 1:]
        lag = lo + int(np.argmax(corr[lo:hi]))
        if corr[lag] > 0.4 * corr[0]:
            found.append(16000 / lag)
    return float(np.median(found)) if found else 0.0


# ---------------------------------------------------------------------- the registry


def test_every_stage_names_its_engines_and_their_defaults() -> None:
    assert {"silero"} <= set(registry.VAD.names)
    assert {"whisper"} <= set(registry.ASR.names)
    assert {"piper", "hibari"} <= set(registry.TTS.names)
    assert {"local", "openai", "anthropic", "openai-compatible"} <= set(registry.LLM.names)
    settings = Settings(store="none")
    assert (settings.tts_voice, settings.asr_model, settings.llm_model) == (
        "joe", "tiny.en", "smollm2-135m")
    assert Settings(tts_engine="hibari").tts_voice == "heart"
    assert Settings(llm_backend="openai").llm_model == "gpt-4o-mini"
    with pytest.raises(ConfigError, match="tts_engine must be one of"):
        Settings(tts_engine="nope")
    with pytest.raises(ConfigError, match="llm_backend must be one of"):
        Settings(llm_backend="nope")
    with pytest.raises(ConfigError, match="no tts engine 'nope'"):
        registry.TTS.get("nope")


def test_engine_flags_and_variables() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(["--tts-engine", "hibari", "--voices", "joe", "--asr-engine",
                              "whisper", "--llm-backend", "local"])
    settings = config.from_sources(args, env={})
    assert (settings.tts_engine, settings.tts_voice, settings.voices) == ("hibari", "heart", "joe")
    with pytest.raises(SystemExit):
        parser.parse_args(["--tts-engine", "nope"])
    from_env = config.from_sources(None, env={"VOXWIRE_TTS_ENGINE": "hibari",
                                              "VOXWIRE_LLM_BACKEND": "anthropic",
                                              "ANTHROPIC_API_KEY": "k"})
    assert (from_env.tts_engine, from_env.llm_api_key, from_env.can_see) == ("hibari", "k", True)


def test_the_voices_to_load() -> None:
    base = TEST_SETTINGS
    assert voice_plan(base) == {"piper": ["joe"]}
    assert voice_plan(base.replace(voices="heart")) == {"piper": ["joe"], "hibari": ["heart"]}
    assert voice_plan(base.replace(voices="hibari:heart, joe")) == {
        "piper": ["joe"], "hibari": ["heart"]}
    assert voice_plan(base.replace(voices="all")) == {"piper": ["joe"], "hibari": ["heart"]}
    assert voice_plan(base.replace(tts_engine="hibari", tts_voice="", voices="all")) == {
        "hibari": ["heart"], "piper": ["joe"]}
    with pytest.raises(ConfigError, match="'alloy' is no embedded voice"):
        voice_plan(base.replace(voices="alloy"))
    with pytest.raises(ConfigError, match="no embedded hibari voice 'joe'"):
        registry.TTS.loader("hibari")(base, ["joe"])


def test_each_engine_runs_in_a_lane_of_its_own(voiced: Engines) -> None:
    lanes = voiced.lanes
    assert len({id(lane) for lane in lanes}) == len(lanes)
    assert len({lane.name for lane in lanes}) == len(lanes)
    assert {s.engine.name for s in voiced.speakers} == set(registry.TTS.names)
    assert set(voiced.voices) >= {"joe", "heart"}
    piper, hibari = speaker_of(voiced, "piper"), speaker_of(voiced, "hibari")
    assert voiced.speaker("heart") == (hibari, "heart")
    assert voiced.speaker("joe") == (piper, "joe")
    assert voiced.speaker("alloy") == (piper, "joe")  # a voice the server lacks: the default


# ---------------------------------------------------------------------- the TTS contract


@pytest.mark.parametrize("name", registry.TTS.names)
def test_tts_round_trip(voiced: Engines, name: str) -> None:
    engine = speaker_of(voiced, name).engine
    audio = np.concatenate(list(engine.synthesize(SENTENCE, engine.voices[0],
                                                  threading.Event())))
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / engine.sample_rate
    assert 1.0 < seconds < 4.0, seconds
    assert 0.05 < float(np.abs(audio).max()) <= 1.0
    got = heard(voiced, audio, engine.sample_rate)
    assert len(set(got) & set(words(SENTENCE))) >= 4 and {"capital", "france"} <= set(got), got


@pytest.mark.parametrize("name", registry.TTS.names)
def test_tts_stops_mid_stream(voiced: Engines, name: str) -> None:
    engine = speaker_of(voiced, name).engine
    voice = engine.voices[0]
    assert len(list(engine.synthesize(THREE, voice, threading.Event()))) >= 3
    stop = threading.Event()
    pieces = []
    for piece in engine.synthesize(THREE, voice, stop):
        pieces.append(piece)
        stop.set()
    assert len(pieces) == 1
    assert list(engine.synthesize(THREE, voice, stop)) == []


@pytest.mark.parametrize("name", registry.TTS.names)
def test_tts_speaks_a_long_sentence_in_bounded_runs(voiced: Engines, name: str) -> None:
    """The longest run sets an engine's working memory for good: a long sentence (digits
    make one of a short text) comes in runs of ten seconds or so at most."""
    engine = speaker_of(voiced, name).engine
    text = "The totals were " + ", ".join(f"{n:,}" for n in range(1_234_567, 1_234_587)) + "."
    runs = list(engine.synthesize(text, engine.voices[0], threading.Event()))
    assert len(runs) >= 5
    longest = max(len(r) for r in runs) / engine.sample_rate
    assert 2.0 < longest < 12.0, longest


@pytest.mark.parametrize("name", registry.TTS.names)
def test_tts_refuses_a_voice_it_lacks(voiced: Engines, name: str) -> None:
    engine = speaker_of(voiced, name).engine
    with pytest.raises(ValueError, match="no voice 'alloy'"):
        list(engine.synthesize(SENTENCE, "alloy", threading.Event()))


@pytest.mark.parametrize("name", registry.TTS.names)
def test_tts_two_threads_at_once_each_get_their_own_words(voiced: Engines, name: str) -> None:
    """Two callers in two threads (two sessions' event loops): the lane runs both in its
    own thread, one piece at a time, and each hears its own sentence."""
    speaker = speaker_of(voiced, name)
    engine, lane = speaker.engine, speaker.lane
    texts = ("Paris is the capital of France.", "The weather is cold and windy today.")
    threads_seen: set[str] = set()
    results: dict[int, Float32] = {}

    def traced(text: str) -> Iterator[Float32]:
        for piece in engine.synthesize(text, engine.voices[0], threading.Event()):
            threads_seen.add(threading.current_thread().name)
            yield piece

    async def collect(text: str) -> Float32:
        make: Callable[[], Iterator[Float32]] = lambda: traced(text)  # noqa: E731
        return np.concatenate([p async for p in lane.stream(make, threading.Event(),
                                                              owner=text)])

    def caller(i: int) -> None:
        results[i] = asyncio.run(collect(texts[i]))

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert threads_seen == {f"voxwire-{lane.name}"}
    for i, text in enumerate(texts):
        got = heard(voiced, results[i], engine.sample_rate)
        assert len(set(got) & set(words(text))) >= len(set(words(text))) - 2, (got, text)


# ---------------------------------------------------------------------- ASR and VAD


@pytest.mark.parametrize("name", registry.ASR.names)
def test_asr_contract(engines: Engines, speak: Callable[..., Float32], name: str) -> None:
    asr = engines.asr if name == TEST_SETTINGS.asr_engine else \
        registry.ASR.loader(name)(TEST_SETTINGS)
    assert words(asr.transcribe(padded(speak(SENTENCE), 16000)).text) == words(SENTENCE)
    assert asr.transcribe(np.zeros(32000, np.float32)).text == ""
    stop = threading.Event()
    stop.set()
    with pytest.raises(WorkCancelled):
        asr.transcribe(padded(speak(SENTENCE), 16000), stop=stop)


@pytest.mark.parametrize("name", registry.VAD.names)
def test_vad_contract(engines: Engines, speak: Callable[..., Float32], name: str) -> None:
    vad = engines.vad if name == TEST_SETTINGS.vad_engine else \
        registry.VAD.loader(name)(TEST_SETTINGS)
    one, two = vad.new_stream(), vad.new_stream()  # each session's state is its own
    assert max(one.probabilities(padded(speak(SENTENCE), 16000))) > 0.9
    assert max(two.probabilities(np.zeros(16000, np.float32))) < 0.1


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def voice_pitch(voiced: Engines) -> dict[str, float]:
    out = {}
    for speaker in voiced.speakers:
        engine = speaker.engine
        audio = np.concatenate(list(engine.synthesize(THREE, engine.voices[0],
                                                      threading.Event())))
        out[engine.voices[0]] = pitch_hz(audio, engine.sample_rate)
    assert out["heart"] > 1.3 * out["joe"], out  # a woman's voice and a man's: told apart
    return out


def spoken_by(audio: Float32, pitch: dict[str, float]) -> str:
    own = pitch_hz(audio, RATE)
    return min(pitch, key=lambda voice: abs(pitch[voice] - own))


async def ask(conn: Any, response: dict[str, Any] | None = None) -> list[Any]:
    await conn.conversation.item.create(item={
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "What is the capital of France?"}]})
    await conn.response.create(**({"response": response} if response else {}))
    return await events_until(conn, lambda e: e.type == "response.done")


def check_answer(voiced: Engines, events: list[Any]) -> Float32:
    done = events[-1]
    assert done.response.status in ANSWERED
    said = done.response.output[0].content[0].transcript
    answer = audio_of(events)
    assert said and len(answer) > RATE // 2
    got = heard(voiced, answer, RATE)
    overlap = len(set(got) & set(words(said))) / max(len(set(words(said))), 1)
    assert overlap >= 0.5, (got, said)
    return answer


async def test_a_client_picks_another_engines_voice(
        voiced: Engines, voice_pitch: dict[str, float]) -> None:
    app = App(TEST_SETTINGS.replace(temperature=0.0), engines=voiced)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        async with ga(f"http://{host}:{port}") as conn:
            # For the whole session.
            await conn.session.update(session={"type": "realtime",
                                               "audio": {"output": {"voice": "heart"}}})
            updated = await events_until(conn, lambda e: e.type == "session.updated")
            assert updated[-1].session.audio.output.voice == "heart"
            events = await ask(conn)
            assert events[-1].response.audio.output.voice == "heart"
            assert spoken_by(check_answer(voiced, events), voice_pitch) == "heart"
            # A voice the server lacks: the session's voice speaks, and says so.
            await conn.session.update(session={"type": "realtime",
                                               "audio": {"output": {"voice": "alloy"}}})
            updated = await events_until(conn, lambda e: e.type == "session.updated")
            assert updated[-1].session.audio.output.voice == "heart"
            # For one response, the session's voice staying the server's default.
            await conn.session.update(session={"type": "realtime",
                                               "audio": {"output": {"voice": "joe"}}})
            await events_until(conn, lambda e: e.type == "session.updated")
            events = await ask(conn, {"audio": {"output": {"voice": "heart"}}})
            assert events[-1].response.audio.output.voice == "heart"
            assert spoken_by(check_answer(voiced, events), voice_pitch) == "heart"
            events = await ask(conn)
            assert events[-1].response.audio.output.voice == "joe"
            assert spoken_by(check_answer(voiced, events), voice_pitch) == "joe"
