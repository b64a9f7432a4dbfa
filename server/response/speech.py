"""Speech out: an answer's text, piece by piece, becomes `response.output_audio.delta`
events. Each piece is synthesized in its voice's TTS lane, resampled to the session's
output rate by one stream resampler for the whole answer (so pieces join without seams),
cut into deltas of `DELTA_MS`, encoded and base64'd. Each delta, once it has left, is told
to the echo guard (the same audio at 16 kHz); the resampler's tail is sent at the end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple

import numpy as np

from realtime import AudioFormat
from realtime import server_events as se
from server import audio as audio_codec
from server.audio import RATE
from server.errors import StageError
from server.runtime.clock import Clock
from server.runtime.engines import Speaker
from server.runtime.metrics import TurnClock
from server.session.conversation import Spoken
from server.session.echo import EchoReference
from server.session.outbox import Emit
from server.stages import Float32

DELTA_MS = 200  # audio per output delta


class AudioChunk(NamedTuple):
    data: str  # base64, in the output format
    ms: float
    reference: Float32  # the same audio at 16 kHz: what the echo guard listens for


class SpeechOut:
    """Speaks one answer in ``voice`` on ``speaker``, in the output format ``fmt``.

    ``place`` gives where the audio goes (the message's content part); it is awaited once
    a piece's first audio is ready, so a speculative answer synthesizes ahead and waits for
    its turn there. ``on_sent`` is called as each delta leaves. ``stop`` ends synthesis at
    once. With ``record``, what was sent is kept (16 kHz) in `sent_audio`."""

    def __init__(self, speaker: Speaker, voice: str, fmt: AudioFormat, *, emit: Emit,
                 place: Callable[[], Awaitable[se.ContentIds]], on_sent: Callable[[], None],
                 echo: EchoReference, clock: Clock, turn: TurnClock, stop: threading.Event,
                 owner: str, background: Callable[[], bool], record: bool = False) -> None:
        self._speaker, self._voice, self._fmt = speaker, voice, fmt
        self._emit, self._place, self._on_sent = emit, place, on_sent
        self._echo, self._clock, self._turn, self._stop = echo, clock, turn, stop
        self._owner, self._background, self._record = owner, background, record
        self._per_delta = int(fmt.rate * DELTA_MS / 1000)
        self._resampler = audio_codec.StreamResampler(speaker.engine.sample_rate, fmt.rate)
        self.spoken = Spoken()  # each piece said, with where its audio ends
        self.audio_ms = 0.0  # audio sent so far
        self._sent: list[Float32] = []

    @property
    def sent_audio(self) -> Float32 | None:
        """The answer as sent, at 16 kHz (with ``record``; else None)."""
        return np.concatenate(self._sent) if self._sent else None

    async def speak(self, pieces: asyncio.Queue[str | None]) -> None:
        """Say each piece from ``pieces`` until None, then send the resampler's tail."""
        while (piece := await pieces.get()) is not None:
            await self.say(piece)
        await self.finish()

    async def say(self, text: str) -> None:
        """Synthesize ``text`` and send it; its transcript goes first. A failure is a
        `StageError` of the ``tts`` stage."""
        ids: se.ContentIds | None = None
        try:
            async with contextlib.aclosing(self._speaker.lane.stream(
                    functools.partial(self._chunks, text), self._stop,
                    owner=self._owner, background=self._background)) as chunks:
                async for chunk in chunks:
                    self._turn.mark("tts_first_audio")
                    if ids is None:
                        ids = await self._transcript(text)
                    await self._send(ids, chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise StageError("tts", f"{type(exc).__name__}: {exc}") from exc
        if ids is None:  # nothing to hear (punctuation only): the words still count
            await self._transcript(text)
        self.spoken.pieces.append((int(self.audio_ms), text))

    async def finish(self) -> None:
        """The resampler holds the answer's last few milliseconds back (its filter's delay)
        until it is told that the stream has ended: send them."""
        if self._stop.is_set() or not self.spoken.pieces:
            return
        tail = self._resampler(np.zeros(0, np.float32), last=True)
        if len(tail):
            await self._send(await self._place(), self._chunk(tail))

    async def _transcript(self, text: str) -> se.ContentIds:
        ids = await self._place()
        spacer = " " if self.spoken.pieces else ""
        await self._emit(se.response_output_audio_transcript_delta(ids, spacer + text))
        return ids

    async def _send(self, ids: se.ContentIds, chunk: AudioChunk) -> None:
        self.audio_ms += chunk.ms
        await self._emit(se.response_output_audio_delta(ids, chunk.data),
                         functools.partial(self._sent_one, chunk.reference))
        if self._record:
            self._sent.append(chunk.reference)

    def _sent_one(self, reference: Float32) -> None:
        self._on_sent()
        self._echo.sent(reference, self._clock.monotonic())

    def _chunks(self, text: str) -> Iterator[AudioChunk]:
        """In the TTS lane's thread: ``text`` synthesized, resampled and cut into deltas."""
        started = self._clock.monotonic()
        for audio in self._speaker.engine.synthesize(text, self._voice, self._stop):
            self._turn.compute_once("tts_first_audio", started)
            samples = self._resampler(audio)
            for i in range(0, len(samples), self._per_delta):
                yield self._chunk(samples[i:i + self._per_delta])

    def _chunk(self, samples: Float32) -> AudioChunk:
        fmt = self._fmt
        data = base64.b64encode(audio_codec.encode(samples, fmt.type)).decode()
        return AudioChunk(data, len(samples) * 1000 / fmt.rate,
                          audio_codec.resample(samples, fmt.rate, RATE))
