"""Drive a real `Session` with scripted engines and a fake clock: the session's logic in
milliseconds, with exact timings.

The engines are fakes that take no time and do what the test scripts: the VAD calls a
window speech when its audio is loud, the ASR returns the transcripts it was given, the
responder streams its scripted words (one every ``token_ms`` on the fake clock), the TTS
makes ``ms_per_word`` of audio per word. Every lane is an `InlineLane` (no threads).
Time moves only when the test moves it: `Harness.speech` and `Harness.silence` feed audio
in 20 ms chunks and move the clock 20 ms with each, as a live microphone would.

The real models are proved by the end-to-end tests; these prove the session's logic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

import realtime as p
from server.audio import RATE
from server.errors import ProtocolError
from server.response.record import TurnRecord, TurnSink, When
from server.runtime.clock import FakeClock
from server.runtime.config import Settings
from server.runtime.engines import Speaker
from server.runtime.lanes import InlineLane
from server.runtime.metrics import Registry
from server.session.core import Session
from server.stages import (
    ChatRequest,
    Finished,
    Float32,
    ResponderEvent,
    TextDelta,
    Transcript,
)

WINDOW = 512  # samples per VAD window (32 ms at 16 kHz), as silero's
CHUNK_MS = 20  # audio per input_audio_buffer.append
INPUT_RATE = 16000  # the harness's sessions take 16 kHz audio: no resampling, exact windows
LOUD = 0.1  # RMS above which the fake VAD hears speech

Json = dict[str, Any]


# ---------------------------------------------------------------------------- fake engines


class FakeVadStream:
    window_ms = WINDOW * 1000 // RATE

    def __init__(self, script: Callable[[int], float] | None) -> None:
        self.script = script
        self.position_ms = 0
        self._held: Float32 = np.zeros(0, np.float32)

    def probabilities(self, samples: Float32) -> list[float]:
        self._held = np.concatenate([self._held, samples])
        probs: list[float] = []
        while len(self._held) >= WINDOW:
            window, self._held = self._held[:WINDOW], self._held[WINDOW:]
            if self.script is not None:
                probs.append(self.script(self.position_ms))
            else:
                probs.append(1.0 if float(np.sqrt(np.mean(window ** 2))) > LOUD else 0.0)
            self.position_ms += self.window_ms
        return probs


class FakeVad:
    """Speech where the audio is loud; or, with ``script``, the probability it gives for
    each window's start (ms on the session's input timeline)."""

    def __init__(self, script: Callable[[int], float] | None = None) -> None:
        self.script = script
        self.streams: list[FakeVadStream] = []  # every stream made, the session's last

    def new_stream(self) -> FakeVadStream:
        self.streams.append(FakeVadStream(self.script))
        return self.streams[-1]


class FakeDenoiseStream:
    """Turns all it is given into silence, holding the last ``hold`` samples back as a real
    suppressor's delay does (``flush`` gives them)."""

    def __init__(self, limit_db: float, hold: int) -> None:
        self.limit_db, self.hold = limit_db, hold
        self.taken = self.given = 0
        self.delay_ms = hold * 1000 / RATE

    def process(self, samples: Float32) -> Float32:
        self.taken += len(samples)
        return self._out(max(self.taken - self.hold - self.given, 0))

    def flush(self) -> Float32:
        return self._out(self.taken - self.given)

    def _out(self, n: int) -> Float32:
        self.given += n
        return np.zeros(n, np.float32)


@dataclass
class FakeDenoiser:
    """A `NoiseSuppressor` whose streams silence everything: the fake VAD hears no speech
    in what went through one."""

    hold: int = 160
    streams: list[FakeDenoiseStream] = field(default_factory=list)  # every one made, in order
    name: str = "fake-denoise"

    def new_stream(self, limit_db: float) -> FakeDenoiseStream:
        self.streams.append(FakeDenoiseStream(limit_db, self.hold))
        return self.streams[-1]


class FakeEchoStream:
    """Keeps every far-end sample it is given; gives the microphone back scaled by
    ``gain``, less its last ``hold`` samples (a real canceller's framing; ``flush`` gives
    them)."""

    def __init__(self, gain: float, hold: int) -> None:
        self.gain, self.hold = gain, hold
        self.far_fed: list[Float32] = []
        self.near_fed: list[Float32] = []
        self.given = 0
        self.delay_ms = hold * 1000 / RATE

    @property
    def far_audio(self) -> Float32:
        return np.concatenate(self.far_fed) if self.far_fed else np.zeros(0, np.float32)

    def far(self, samples: Float32) -> None:
        self.far_fed.append(samples.copy())

    def near(self, samples: Float32) -> Float32:
        self.near_fed.append(samples.copy())
        taken = sum(len(n) for n in self.near_fed)
        return self._out(max(taken - self.hold - self.given, 0))

    def flush(self) -> Float32:
        return self._out(sum(len(n) for n in self.near_fed) - self.given)

    def _out(self, n: int) -> Float32:
        near = np.concatenate(self.near_fed)[self.given:self.given + n]
        self.given += n
        out: Float32 = (near * self.gain).astype(np.float32)
        return out


@dataclass
class FakeEchoCanceller:
    """An `EchoCanceller` whose streams keep what they are fed; ``gain`` 0 silences the
    microphone (the fake VAD then hears no speech in what went through one)."""

    gain: float = 1.0
    hold: int = 0
    streams: list[FakeEchoStream] = field(default_factory=list)  # every one made, in order
    name: str = "fake-aec"

    def new_stream(self) -> FakeEchoStream:
        self.streams.append(FakeEchoStream(self.gain, self.hold))
        return self.streams[-1]


@dataclass
class FakeAsr:
    """Transcripts in call order: ``finals`` for whole turns (speculative ones included),
    ``partials`` for the previews while the user speaks. Out of script: ""."""

    finals: list[str] = field(default_factory=list)
    partials: list[str] = field(default_factory=list)
    calls: list[tuple[int, bool]] = field(default_factory=list)  # (audio ms, partial)
    details: dict[str, float] = field(default_factory=dict)  # reported with each transcript
    name: str = "fake-asr"

    def transcribe(self, audio: Float32, *, partial: bool = False,
                   stop: threading.Event | None = None) -> Transcript:
        self.calls.append((len(audio) * 1000 // RATE, partial))
        script = self.partials if partial else self.finals
        return Transcript(script.pop(0) if script else "", self.details)


@dataclass
class FakeTurn:
    """A turn model giving the scripted probabilities in call order (out of script: 0.0,
    an unfinished turn); ``calls`` keeps how much audio each call was given (ms)."""

    script: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    name: str = "fake-turn"

    def complete(self, audio: Float32) -> float:
        self.calls.append(len(audio) * 1000 // RATE)
        return self.script.pop(0) if self.script else 0.0


@dataclass
class FakeTurnText:
    """A text turn model giving the scripted probabilities in call order (out of script:
    1.0, a finished turn); ``calls`` keeps the texts it was given."""

    script: list[float] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    name: str = "fake-turn-text"

    def complete(self, text: str) -> float:
        self.calls.append(text)
        return self.script.pop(0) if self.script else 1.0


@dataclass
class FakeResponder:
    """Streams each scripted reply word by word: the first word after ``first_ms``, the
    next ones ``token_ms`` apart, on the fake clock. The last reply repeats."""

    clock: FakeClock
    replies: list[str] = field(default_factory=lambda: ["Hello there."])
    first_ms: float = 0.0
    token_ms: float = 0.0
    requests: list[ChatRequest] = field(default_factory=list)
    prepared: list[ChatRequest] = field(default_factory=list)  # `prepare`d, the words so far
    asked_at: list[float] = field(default_factory=list)  # when each request came (clock)
    words_sent: list[int] = field(default_factory=list)  # words each stream yielded
    closed: int = 0
    name: str = "fake-llm"
    can_see: bool = False
    can_use_tools: bool = False

    async def prepare(self, request: ChatRequest) -> int:
        self.prepared.append(request)
        return len(request.messages[-1].content.split())

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        self.requests.append(request)
        self.asked_at.append(self.clock.monotonic())
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        words = reply.split()
        self.words_sent.append(0)
        try:
            for i, word in enumerate(words):
                await self.clock.sleep((self.first_ms if i == 0 else self.token_ms) / 1000)
                self.words_sent[-1] += 1
                yield TextDelta(word if i == 0 else " " + word)
            yield Finished("stop", input_tokens=10, output_tokens=len(words))
        finally:
            self.closed += 1


@dataclass
class FakeTts:
    """``ms_per_word`` of a quiet 1 kHz tone per word (nothing like the microphone's)."""

    ms_per_word: int = 100
    texts: list[str] = field(default_factory=list)
    name: str = "fake-tts"
    voices: tuple[str, ...] = ("fake",)
    sample_rate: int = RATE

    def synthesize(self, text: str, voice: str, stop: threading.Event) -> Iterator[Float32]:
        self.texts.append(text)
        n = self.ms_per_word * self.sample_rate // 1000
        tone = (0.05 * np.sin(2 * np.pi * 1000 * np.arange(n) / self.sample_rate)).astype(
            np.float32)
        for _ in text.split():
            if stop.is_set():
                return
            yield tone


class Keeper:
    """A sink that keeps what it is given, then raises ``fail`` if it has one."""

    def __init__(self, when: When, fail: Exception | None = None) -> None:
        self._when, self.fail = when, fail
        self.turns: list[TurnRecord] = []

    @property
    def when(self) -> When:
        return self._when

    async def take(self, turn: TurnRecord) -> None:
        self.turns.append(turn)
        if self.fail is not None:
            raise self.fail


@dataclass
class FakeEngines:
    """`SessionEngines` with fakes in every stage and inline lanes."""

    vad: FakeVad
    asr: FakeAsr
    responder: FakeResponder
    tts: FakeTts
    turn: FakeTurn | None = field(default_factory=FakeTurn)  # None: a server without one
    turn_text: FakeTurnText | None = None  # None: the audio decides alone
    registry: Registry = field(default_factory=Registry)
    llm: None = None
    denoiser: FakeDenoiser | None = None
    echo_canceller: FakeEchoCanceller | None = None
    vad_lane: InlineLane = field(default_factory=lambda: InlineLane("vad"))
    turn_lane: InlineLane = field(default_factory=lambda: InlineLane("turn"))
    asr_lane: InlineLane = field(default_factory=lambda: InlineLane("asr"))
    tts_lane: InlineLane = field(default_factory=lambda: InlineLane("tts"))
    image_lane: InlineLane = field(default_factory=lambda: InlineLane("images"))

    @property
    def voice(self) -> str:
        return self.tts.voices[0]

    @property
    def voices(self) -> tuple[str, ...]:
        return self.tts.voices

    def speaker(self, voice: str) -> tuple[Speaker, str]:
        return Speaker(self.tts, self.tts_lane), voice if voice in self.voices else self.voice

    @property
    def lanes(self) -> tuple[InlineLane, ...]:
        return (self.vad_lane, self.turn_lane, self.asr_lane, self.tts_lane)


# ---------------------------------------------------------------------------- audio


def tone(ms: int, amplitude: float = 0.3, rate: int = INPUT_RATE) -> bytes:
    """``ms`` of a 440 Hz tone as pcm16: what the fake VAD calls speech."""
    t = np.arange(ms * rate // 1000) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def quiet(ms: int, rate: int = INPUT_RATE) -> bytes:
    return bytes(2 * (ms * rate // 1000))


# ---------------------------------------------------------------------------- the harness

# Backchannels off: any speech over an answer interrupts it at once (the plain behaviour);
# tests of backchannels give the words.
HARNESS_SETTINGS = Settings(port=0, store="none", log_level="DEBUG", backchannel_words="")
IDLE_TURNS = 40  # loop turns with nothing new before the session counts as settled


class Harness:
    """A session under test: send client events and audio, move time, read what it sent."""

    def __init__(self, session: Session, engines: FakeEngines, clock: FakeClock) -> None:
        self.session, self.engines, self.clock = session, engines, clock
        self.events: list[Json] = []  # every server event, in order
        self.sent_ms: list[float] = []  # when each was taken from the outbox, on the clock
        self.start = clock.monotonic()
        self._read = 0

    # -- driving

    async def send(self, event: Json) -> None:
        """A client event, as JSON a client sends; parse errors are reported as the edge
        reports them."""
        await self.send_now(event)
        await self.settle()

    async def send_now(self, event: Json) -> None:
        """A client event, handled without letting anything it started run yet: the next
        one arrives right behind it."""
        try:
            parsed = p.parse_client_event(json.dumps(event))
        except ProtocolError as exc:
            await self.session.error(exc)
        else:
            await self.session.handle(parsed)

    async def audio(self, pcm: bytes) -> None:
        """Feed audio in 20 ms appends, moving the clock with it (a live microphone)."""
        step = CHUNK_MS * INPUT_RATE // 1000 * 2
        for at in range(0, len(pcm), step):
            chunk = pcm[at:at + step]
            await self.advance(len(chunk) / 2 / INPUT_RATE * 1000)
            await self.send({"type": "input_audio_buffer.append",
                             "audio": base64.b64encode(chunk).decode()})

    async def speech(self, ms: int) -> None:
        await self.audio(tone(ms))

    async def silence(self, ms: int) -> None:
        await self.audio(quiet(ms))

    async def advance(self, ms: float) -> None:
        """Move the clock ``ms`` forward, stopping at every sleeper's deadline on the way so
        that each wakes at its exact time."""
        end = self.clock.monotonic() + ms / 1000
        while (due := self.clock.next_deadline()) is not None and due <= end:
            self.clock.set(due)
            await self.settle()
        self.clock.set(end)
        await self.settle()

    async def settle(self) -> None:
        """Let the loop run until nothing more happens without the clock moving; what the
        session sent is taken out of its outbox as an edge would (`on_sent` called)."""
        idle = 0
        while idle < IDLE_TURNS:
            await asyncio.sleep(0)
            sent = await self.session.outbox.drain()
            for event, on_sent in sent:
                self.events.append(event)
                self.sent_ms.append(self.ms)
                if on_sent is not None:
                    on_sent()
            idle = 0 if sent else idle + 1

    # -- reading

    @property
    def ms(self) -> float:
        """Milliseconds on the fake clock since the session started."""
        return round((self.clock.monotonic() - self.start) * 1000, 3)

    def at(self, kind: str, n: int = 0) -> float:
        """When the ``n``th event of ``kind`` was sent (ms since the session started)."""
        return [t for e, t in zip(self.events, self.sent_ms, strict=True)
                if e["type"] == kind][n]

    def take(self) -> list[Json]:
        """The events sent since the last `take`."""
        new, self._read = self.events[self._read:], len(self.events)
        return new

    def types(self, events: list[Json] | None = None) -> list[str]:
        return [e["type"] for e in (self.events if events is None else events)]

    def of(self, kind: str) -> list[Json]:
        return [e for e in self.events if e["type"] == kind]

    def one(self, kind: str) -> Json:
        found = self.of(kind)
        assert len(found) == 1, (kind, self.types())
        return found[0]


@asynccontextmanager
async def harness(*, finals: list[str] | None = None, partials: list[str] | None = None,
                  replies: list[str] | None = None, first_ms: float = 0.0,
                  token_ms: float = 0.0, ms_per_word: int = 100,
                  vad: Callable[[int], float] | None = None,
                  turn: Sequence[float] = (),
                  sinks: Sequence[TurnSink] = (), denoiser: FakeDenoiser | None = None,
                  echo_canceller: FakeEchoCanceller | None = None,
                  **settings: Any) -> AsyncIterator[Harness]:
    """A started session on fake engines and a fake clock; ``settings`` override
    `HARNESS_SETTINGS`; ``sinks`` take each turn's record; ``turn``: the turn model's
    answers, in order. Closed (as a client leaving) at the end."""
    clock = FakeClock()
    engines = FakeEngines(
        FakeVad(vad), FakeAsr(list(finals or []), list(partials or [])),
        FakeResponder(clock, list(replies or ["Hello there."]), first_ms, token_ms),
        FakeTts(ms_per_word), FakeTurn(list(turn)), denoiser=denoiser,
        echo_canceller=echo_canceller)
    session = Session(engines, replace(HARNESS_SETTINGS, **settings), clock=clock,
                      sinks=sinks)
    session.configure({"type": "realtime", "audio": {"input": {"format": {
        "type": "audio/pcm", "rate": INPUT_RATE}}}})
    h = Harness(session, engines, clock)
    await session.start()
    await h.settle()
    try:
        yield h
    finally:
        await session.close()
