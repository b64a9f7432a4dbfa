"""Speech out on a fake TTS: the deltas it cuts, the resampler's tail it sends at the end,
and the echo guard told exactly what left, when it left."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import pytest

from realtime import AudioFormat, Json
from realtime import server_events as se
from server import audio as audio_codec
from server.audio import RATE
from server.errors import StageError
from server.response.run import AHEAD_S, ResponseContext
from server.response.speech import DELTA_MS, SpeechOut
from server.runtime.clock import FakeClock
from server.runtime.engines import Speaker
from server.runtime.lanes import InlineLane
from server.runtime.metrics import TurnClock
from server.session.echo import EchoReference
from server.stages import Float32
from tests.support.harness import FakeTts

TTS_RATE = 22050  # not the output rate: every piece goes through the stream resampler
OUT = AudioFormat("audio/pcm", 24000)
IDS: se.ContentIds = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0,
                      "content_index": 0}


class ListeningEcho(EchoReference):
    """The real echo reference, and every chunk it was told of."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[Float32] = []

    def sent(self, samples: Float32, now: float) -> None:
        self.told.append(samples)
        super().sent(samples, now)


class WordsOnlyTts(FakeTts):
    """Says words; punctuation alone makes no sound."""

    def synthesize(self, text: str, voice: str, stop: threading.Event) -> Iterator[Float32]:
        spoken = " ".join(w for w in text.split() if any(c.isalpha() for c in w))
        return super().synthesize(spoken, voice, stop)


class BrokenTts(FakeTts):
    def synthesize(self, text: str, voice: str, stop: threading.Event) -> Iterator[Float32]:
        raise RuntimeError("the voice is gone")


class Out:
    """A `SpeechOut` on ``tts``, with its events held as an outbox holds them."""

    def __init__(self, tts: FakeTts, *, record: bool = False) -> None:
        self.tts, self.echo, self.clock = tts, ListeningEcho(), FakeClock()
        self.events: list[tuple[Json, Callable[[], None] | None]] = []
        self.placed = 0
        self.left = 0
        self.stop = threading.Event()
        self.speech = SpeechOut(
            Speaker(tts, InlineLane("tts")), "fake", OUT, emit=self.emit, place=self.place,
            on_sent=self.on_sent, echo=self.echo, clock=self.clock,
            turn=TurnClock(clock=self.clock), stop=self.stop, owner="sess_1",
            background=lambda: False, record=record)

    async def emit(self, event: Json, on_sent: Callable[[], None] | None = None) -> None:
        self.events.append((event, on_sent))

    async def place(self) -> se.ContentIds:
        self.placed += 1
        return IDS

    def on_sent(self) -> None:
        self.left += 1

    def deltas(self) -> list[Float32]:
        return [audio_codec.decode(base64.b64decode(e["delta"]), OUT.type)
                for e, _ in self.events if e["type"] == "response.output_audio.delta"]

    def send_all(self) -> None:
        for _, on_sent in self.events:
            if on_sent is not None:
                on_sent()


async def test_pieces_become_whole_deltas_and_the_tail_is_sent_at_the_end() -> None:
    out = Out(FakeTts(ms_per_word=900, sample_rate=TTS_RATE))  # one chunk from the TTS
    await out.speech.say("one")
    before_tail = sum(len(d) for d in out.deltas())
    await out.speech.finish()
    deltas = out.deltas()
    per_delta = OUT.rate * DELTA_MS // 1000
    # Whole deltas of 200 ms, then the rest of the piece, then the resampler's tail.
    assert len(deltas) == 6
    assert all(len(d) == per_delta for d in deltas[:-2])
    assert 0 < len(deltas[-1]) < per_delta
    tail = len(deltas[-1])
    assert sum(len(d) for d in deltas) == before_tail + tail
    # With the tail, the answer is all there: 900 ms at the output rate, give or take one
    # sample of rounding.
    assert abs(sum(len(d) for d in deltas) - 0.9 * OUT.rate) <= 1
    assert out.speech.audio_ms == pytest.approx(sum(len(d) for d in deltas) * 1000 / OUT.rate)
    assert out.speech.spoken.pieces == [(int(before_tail * 1000 / OUT.rate), "one")]


async def test_the_echo_guard_is_told_exactly_what_left_and_only_once_it_left() -> None:
    out = Out(FakeTts(ms_per_word=300, sample_rate=TTS_RATE))
    await out.speech.say("one two")
    await out.speech.finish()
    assert out.echo.told == [] and out.left == 0  # queued is not sent
    out.send_all()
    deltas = out.deltas()
    assert out.left == len(deltas) == len(out.echo.told)
    for sent, told in zip(deltas, out.echo.told, strict=True):
        # The same audio at 16 kHz: the output's pcm16 rounding aside.
        expected = audio_codec.resample(sent, OUT.rate, RATE)
        assert len(told) == len(expected)
        assert np.max(np.abs(told - expected)) < 1e-3


async def test_transcripts_go_before_their_audio_with_a_space_between_pieces() -> None:
    out = Out(WordsOnlyTts(ms_per_word=100, sample_rate=TTS_RATE))
    await out.speech.say("Hello there.")
    await out.speech.say("...")  # nothing to hear: the words still count
    await out.speech.say("Bye.")
    kinds = [e["type"] for e, _ in out.events]
    assert kinds[0] == "response.output_audio_transcript.delta"
    assert [e["delta"] for e, _ in out.events
            if e["type"] == "response.output_audio_transcript.delta"] == [
        "Hello there.", " ...", " Bye."]
    assert [text for _, text in out.speech.spoken.pieces] == ["Hello there.", "...", "Bye."]
    assert out.speech.spoken.pieces[0][0] == out.speech.spoken.pieces[1][0] > 0


async def test_what_was_sent_is_kept_only_when_recording() -> None:
    kept = Out(FakeTts(ms_per_word=200, sample_rate=TTS_RATE), record=True)
    await kept.speech.say("one two")
    await kept.speech.finish()
    audio = kept.speech.sent_audio
    assert audio is not None
    assert len(audio) == sum(len(t) for t in (audio_codec.resample(d, OUT.rate, RATE)
                                               for d in kept.deltas()))
    plain = Out(FakeTts(ms_per_word=200, sample_rate=TTS_RATE))
    await plain.speech.say("one two")
    assert plain.speech.sent_audio is None


async def test_a_stopped_answer_sends_no_tail() -> None:
    out = Out(FakeTts(ms_per_word=300, sample_rate=TTS_RATE))
    await out.speech.say("one two")
    sent = len(out.events)
    out.stop.set()
    await out.speech.finish()
    assert len(out.events) == sent


async def test_speak_says_each_piece_until_none_then_the_tail() -> None:
    tts = FakeTts(ms_per_word=300, sample_rate=TTS_RATE)
    out = Out(tts)
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    for piece in ("First one.", "Second.", None):
        pieces.put_nowait(piece)
    await out.speech.speak(pieces)
    assert tts.texts == ["First one.", "Second."]
    assert abs(sum(len(d) for d in out.deltas()) - 0.9 * OUT.rate) <= 1  # tail included


async def test_a_failing_voice_is_a_tts_stage_error() -> None:
    out = Out(BrokenTts(sample_rate=TTS_RATE))
    with pytest.raises(StageError) as info:
        await out.speech.say("anything")
    assert info.value.stage == "tts"
    assert out.events == []


def test_an_answer_is_deferrable_while_its_client_holds_seconds_of_it_unplayed() -> None:
    """Its synthesis and next words may wait for other sessions' work while the client has
    more than `AHEAD_S` to play, and never while it has less (or while it is a speculation
    behind its gate: `tentative`)."""
    clock, echo = FakeClock(), EchoReference()
    unused = cast(Any, None)
    ctx = ResponseContext("s", unused, unused, unused, unused, unused, echo=echo, clock=clock)
    assert not ctx.deferrable()
    echo.sent(np.zeros(int(RATE * (AHEAD_S + 1.0)), np.float32), clock.monotonic())
    assert ctx.ahead() and ctx.deferrable()
    clock.advance(0.9)
    assert ctx.deferrable()
    clock.advance(0.2)  # less than AHEAD_S left to play
    assert not ctx.ahead() and not ctx.deferrable()
    assert ctx.unplayed_s() == pytest.approx(AHEAD_S - 0.1)
