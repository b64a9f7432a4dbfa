"""Transcription takes bounded time and yields no words, whatever the audio: noise, a hum,
music-like tones, clicks, clipped speech, and speech sent as pcm16 one byte off (a client
bug). Garbage is made here, deterministically, from numpy and the piper voice."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import pytest
from openai.types.realtime import ConversationItemInputAudioTranscriptionFailedEvent
from piper.config import SynthesisConfig

from client.realtime import Float32, from_pcm16, pcm16, resample
from server.errors import TranscriptionTimeout
from server.runtime.engines import Engines, resolve
from server.stages.asr import WhisperTranscriber, token_cap
from server.stages.tts import PiperSynthesizer
from tests.conftest import padded, words
from tests.e2e.test_e2e import events_until, ga, is_metrics, spoken_turn, types

Speak = Callable[..., Float32]
RATE = 16000
CLIENT_RATE = 24000
SENTENCE = "Set a timer for ten minutes."
LONG = ("I would like to plan a trip to the mountains next weekend with my family. We need a "
        "place to stay, somewhere to eat dinner on Saturday night, and a short hike that the "
        "children can manage.")
# CPU seconds a call may use: a constant plus a share of the audio's duration. Measured on
# two shared cores, the worst garbage took 0.4 s (base) for up to 28 s of audio once bounded;
# before, base spent 3.5 s of CPU on 2.3 s of speech sent one byte off (the padded fallback
# retrying at six temperatures, five samples each).
CPU_BASE_S = 1.0
CPU_PER_S = 0.25
# The padded path always encodes a 30 s window (about 1 s of CPU for base): its own bound.
PADDED_CPU_BASE_S = 2.5


def misaligned(speech_24k: Float32) -> bytes:
    """pcm16 as a buggy client sends it: the byte stream one byte off, every sample garbage."""
    data = pcm16(speech_24k)[1:]
    return data[:len(data) // 2 * 2]


def heard(data: bytes) -> Float32:
    """What the server makes of client pcm16 at 24 kHz: samples at 16 kHz."""
    return resample(from_pcm16(data), CLIENT_RATE, RATE)


def tone_chords(seconds: float) -> Float32:
    """Music-like: four triads, half a second each, struck and decaying."""
    t = np.arange(int(seconds * RATE)) / RATE
    out = np.zeros_like(t)
    triads = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6),
              (196.0, 246.9, 293.7)]
    beat = RATE // 2
    for i in range(0, len(t), beat):
        part = t[i:i + beat]
        env = np.exp(-3 * (part - part[0]))
        out[i:i + beat] = sum(np.sin(2 * np.pi * f * part) for f in triads[i // beat % 4]) * env
    return (0.2 * out).astype(np.float32)


def garbage(speak: Speak) -> dict[str, Float32]:
    t = np.arange(5 * RATE) / RATE
    clicks = np.zeros(5 * RATE, np.float32)
    rng = np.random.default_rng(2)
    for at in rng.integers(0, len(clicks) - 4, 15):
        clicks[at:at + 4] = rng.choice([-0.9, 0.9])
    sweep = 200 + 1800 * t / 5  # Hz, rising
    return {
        "misaligned": heard(misaligned(padded(speak(SENTENCE, rate=CLIENT_RATE), CLIENT_RATE,
                                              300, 300))),
        "misaligned_long": heard(misaligned(padded(speak(LONG, rate=CLIENT_RATE), CLIENT_RATE,
                                                   300, 300))),
        "white_noise": np.clip(np.random.default_rng(1).standard_normal(5 * RATE) * 0.3,
                               -1, 1).astype(np.float32),
        "hum_50hz": (0.4 * np.sin(2 * np.pi * 50 * t)
                     + 0.15 * np.sin(2 * np.pi * 150 * t)).astype(np.float32),
        "hum_60hz": (0.4 * np.sin(2 * np.pi * 60 * t)
                     + 0.15 * np.sin(2 * np.pi * 180 * t)).astype(np.float32),
        "chords": tone_chords(6),
        "sweep": (0.3 * np.sin(2 * np.pi * np.cumsum(sweep) / RATE)).astype(np.float32),
        "silence_with_clicks": clicks,
    }


KINDS = ["misaligned", "misaligned_long", "white_noise", "hum_50hz", "hum_60hz", "chords",
         "sweep", "silence_with_clicks"]


@pytest.fixture(scope="module")
def base_asr() -> Iterator[WhisperTranscriber]:
    """The larger embedded Whisper model, the one that spent longest on garbage."""
    yield WhisperTranscriber(resolve("base", "asr"), threads=2, name="base")


@pytest.fixture(scope="module")
def junk(speak: Speak) -> dict[str, Float32]:
    return garbage(speak)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.monotonic(), time.process_time()
    out = fn()
    return out, time.monotonic() - wall, time.process_time() - cpu


@pytest.mark.parametrize("model", ["tiny.en", "base"])
@pytest.mark.parametrize("kind", KINDS)
def test_garbage_is_no_speech_in_bounded_time(engines: Engines, base_asr: WhisperTranscriber,
                                              junk: dict[str, Float32], model: str,
                                              kind: str) -> None:
    asr = cast(WhisperTranscriber, engines.asr) if model == "tiny.en" else base_asr
    audio = junk[kind]
    seconds = len(audio) / RATE
    result, wall, cpu = timed(lambda: asr.transcribe(audio))
    assert words(result.text) == [], f"{model} heard words in {kind}: {result.text!r}"
    assert cpu <= CPU_BASE_S + CPU_PER_S * seconds, f"{kind}: {cpu:.2f} s CPU for {seconds:.1f} s"
    assert wall <= asr.budget_s + asr.budget_ratio * seconds


@pytest.mark.parametrize("kind", ["misaligned", "misaligned_long", "white_noise", "chords"])
def test_the_padded_path_is_bounded_and_drops_hallucinations(
        base_asr: WhisperTranscriber, junk: dict[str, Float32], kind: str) -> None:
    audio = junk[kind]
    seconds = len(audio) / RATE
    result, _wall, cpu = timed(lambda: base_asr._padded(audio))
    assert words(result.text) == [], f"padded path heard words in {kind}: {result.text!r}"
    assert cpu <= PADDED_CPU_BASE_S + CPU_PER_S * seconds, f"{cpu:.2f} s CPU for {seconds:.1f} s"


def test_clipped_speech_is_still_heard_in_bounded_time(engines: Engines, speak: Speak) -> None:
    audio = np.clip(padded(speak(LONG), RATE, 300, 300) * 30, -1, 1).astype(np.float32)
    seconds = len(audio) / RATE
    result, _wall, cpu = timed(lambda: engines.asr.transcribe(audio))
    said, got = words(LONG), words(result.text)
    assert len(set(said) & set(got)) >= 0.8 * len(set(said)), result.text
    assert cpu <= CPU_BASE_S + CPU_PER_S * seconds


@pytest.mark.parametrize(("text", "pace"), [
    ("What is the weather like in Paris today, and should I take an umbrella with me when I "
     "go out this afternoon? I also want to know about tomorrow.", 1.0),
    ("Call me at 5:30 on March 3rd, and remind me about the 12 o'clock meeting at 4 Elm "
     "Street.", 0.6),  # numbers, spoken 1.7 times as fast
])
def test_the_token_cap_leaves_room_for_long_and_fast_speech(engines: Engines, text: str,
                                                            pace: float) -> None:
    voice = cast(PiperSynthesizer, engines.tts).voice
    config = SynthesisConfig(length_scale=pace, noise_scale=0.0, noise_w_scale=0.0)
    speech = resample(np.concatenate([c.audio_float_array for c in voice.synthesize(text, config)]),
                      engines.tts.sample_rate, RATE)
    audio = padded(speech, RATE, 200, 200)
    result = engines.asr.transcribe(audio)
    assert words(result.text)[-2:] == words(text)[-2:], result.text  # not cut short
    generated = len(cast(WhisperTranscriber, engines.asr).tokenizer.encode(" " + result.text))
    assert generated < token_cap(len(audio) / RATE)


@pytest.fixture
def tight_budget(engines: Engines) -> Iterator[WhisperTranscriber]:
    """The embedded transcriber with a budget nothing fits in; restored afterwards."""
    asr = cast(WhisperTranscriber, engines.asr)
    saved = asr.budget_s, asr.budget_ratio
    asr.budget_s, asr.budget_ratio = 0.01, 0.0
    try:
        yield asr
    finally:
        asr.budget_s, asr.budget_ratio = saved


def test_a_call_past_its_budget_raises_before_the_next_pass(
        tight_budget: WhisperTranscriber, speak: Speak) -> None:
    # A loop-like utterance: the short pass trips the guard, and the padded pass is not run.
    looping = padded(speak("Hello hello hello hello hello hello."), RATE, 200, 200)
    with pytest.raises(TranscriptionTimeout) as caught:
        tight_budget.transcribe(looping)
    assert caught.value.code == "transcription_timeout"


# ---------------------------------------------------------------------- over a real server


async def append_bytes(conn: Any, data: bytes, chunk: int = 9600) -> None:
    for i in range(0, len(data), chunk):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data[i:i + chunk]).decode())


def transcription_outcome(ev: Any) -> bool:
    return ev.type in ("conversation.item.input_audio_transcription.completed",
                       "conversation.item.input_audio_transcription.failed")


async def test_misaligned_pcm16_is_never_answered(server_url: str, speak: Speak,
                                                  engines: Engines) -> None:
    data = misaligned(padded(speak(SENTENCE, rate=CLIENT_RATE), CLIENT_RATE, 300, 300))
    seconds = len(data) / 2 / CLIENT_RATE
    asr = cast(WhisperTranscriber, engines.asr)
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "temperature": 0.0})
        await append_bytes(conn, data)  # server_vad: the VAD hears no speech in it
        await conn.input_audio_buffer.commit()  # a push-to-talk client commits anyway
        started = time.monotonic()
        garbled = await events_until(conn, transcription_outcome)
        took = time.monotonic() - started
        # The session goes on: an ordinary spoken turn after it is heard and answered.
        following = await spoken_turn(conn, speak(SENTENCE, rate=CLIENT_RATE))
    assert "input_audio_buffer.speech_started" not in types(garbled)
    outcome = garbled[-1]
    if outcome.type.endswith(".failed"):
        assert outcome.error.code == "transcription_timeout"
    else:
        assert words(outcome.transcript) == [], f"a hallucination: {outcome.transcript!r}"
    assert took <= asr.budget_s + asr.budget_ratio * seconds
    names = types(following)
    assert names.count("response.created") == 1  # the spoken turn's answer, no other
    heard_turn = next(e for e in following
                      if e.type == "conversation.item.input_audio_transcription.completed")
    assert words(heard_turn.transcript) == words(SENTENCE)
    assert names.index("conversation.item.input_audio_transcription.completed") < \
        names.index("response.created")


async def test_a_transcription_past_its_budget_fails_and_is_not_answered(
        server_url: str, speak: Speak, tight_budget: WhisperTranscriber) -> None:
    tight_budget.budget_s = -1.0  # spent before it starts: even a clean pass is not begun
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "temperature": 0.0})
        speech = speak(SENTENCE, rate=CLIENT_RATE)
        send = asyncio.create_task(append_bytes(conn, pcm16(padded(speech, CLIENT_RATE, 300,
                                                                   1200))))
        events = await events_until(conn, transcription_outcome)
        await send
        failed = events[-1]
        tight_budget.budget_s, tight_budget.budget_ratio = 5.0, 1.0
        # Whatever comes next belongs to the next turn: nothing answers the failed one.
        following = await spoken_turn(conn, speech)
    assert failed.type == "conversation.item.input_audio_transcription.failed"
    checked = ConversationItemInputAudioTranscriptionFailedEvent.model_validate(
        failed.model_dump())
    assert checked.error.code == "transcription_timeout"
    assert checked.error.type == "transcription_error" and checked.error.message
    assert "response.created" not in types(events)
    names = types(following)
    assert names.count("response.created") == 1
    assert names.index("input_audio_buffer.speech_started") < names.index("response.created")


async def test_garbage_in_one_session_does_not_starve_another(
        server_url: str, speak: Speak, engines: Engines, junk: dict[str, Float32]) -> None:
    asr = cast(WhisperTranscriber, engines.asr)
    clips = [misaligned(padded(speak(LONG, rate=CLIENT_RATE), CLIENT_RATE, 300, 300)),
             pcm16(resample(junk["white_noise"], RATE, CLIENT_RATE)),
             pcm16(resample(junk["chords"], RATE, CLIENT_RATE))]
    longest = max(len(c) for c in clips) / 2 / CLIENT_RATE
    outcomes: list[Any] = []

    async def garbage_talker() -> None:
        async with ga(server_url) as conn:
            await conn.session.update(session={"type": "realtime", "audio": {
                "input": {"turn_detection": None}}})
            for clip in clips:  # queued back to back: the lane holds them one at a time
                await append_bytes(conn, clip)
                await conn.input_audio_buffer.commit()
            while len(outcomes) < len(clips):
                outcomes.append((await events_until(conn, transcription_outcome))[-1])

    async def ordinary_talker() -> float:
        async with ga(server_url) as conn:
            await conn.session.update(session={"type": "realtime",
                                               "output_modalities": ["text"]})
            events = await spoken_turn(conn, speak(SENTENCE, rate=CLIENT_RATE))
        stamps = {e.type: i for i, e in enumerate(events)}
        assert stamps["conversation.item.input_audio_transcription.completed"] > \
            stamps["input_audio_buffer.speech_stopped"]
        heard_turn = next(e for e in events
                          if e.type == "conversation.item.input_audio_transcription.completed")
        assert words(heard_turn.transcript) == words(SENTENCE)
        metrics = next(e for e in events if is_metrics(e))
        return float(metrics.model_dump()["stages_ms"]["asr"]) / 1000  # speech end to transcript

    garbage_task = asyncio.create_task(garbage_talker())
    waited = await ordinary_talker()
    await asyncio.wait_for(garbage_task, 60)
    # Round robin by session: the spoken turn waits for at most one garbage job.
    assert waited <= asr.budget_s + asr.budget_ratio * longest + 5.0, waited
    for outcome in outcomes:
        if outcome.type.endswith(".failed"):
            assert outcome.error.code == "transcription_timeout"
        else:
            assert words(outcome.transcript) == [], outcome.transcript
