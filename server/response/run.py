"""One assistant response: responder events in, Realtime server events out.

Text deltas become a message item (spoken sentence by sentence through TTS, or written);
tool calls become `function_call` items. Cancellation (barge-in, `response.cancel`)
stops the responder and TTS at once and keeps only what the client was sent.

This module coordinates; the jobs are elsewhere: the model's stream in `answer_stream`,
the items and their events in `output_items`, the audio in `speech_out`, and what a turn
leaves behind in a `TurnRecord` handed to the session's sinks (`turn_record`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import realtime as p
from realtime import AudioFormat, Json
from realtime import server_events as se
from server.errors import ProtocolError, StageError, VoxwireError
from server.response.gate import Gate
from server.response.output import BYTES_PER_TOKEN, OutputItems
from server.response.record import TurnRecord, TurnSink, hand_over, watched
from server.response.speech import SpeechOut
from server.response.stream import answer_events, usage
from server.response.text import SentenceSplitter
from server.runtime.clock import SYSTEM, Clock
from server.runtime.config import Settings
from server.runtime.engines import SessionEngines
from server.runtime.metrics import TurnClock
from server.session.conversation import Conversation, Spoken, item_text
from server.session.echo import EchoReference
from server.session.outbox import Emit as Emit
from server.stages import (
    ChatRequest,
    Finished,
    Float32,
    TextDelta,
    ToolCallArguments,
    ToolCallStart,
)

log = logging.getLogger(__name__)
WIRE_CANCEL_REASONS = ("turn_detected", "client_cancelled")

APOLOGY = "Sorry, I couldn't get an answer just now."
CANNOT_SEE = "I can't see images with the current model, so I'll answer from your words."
SENT_WAIT_S = 2  # how long the turn's figures wait for its first output to leave
READ_SLICE_S = 0.02  # the longest the answer's reader keeps the loop before it yields
# A spoken answer whose client holds this much of it unplayed is not urgent: its next
# words and clauses wait for other sessions' work (in the lanes) until it holds less.
AHEAD_S = 3.0


@dataclass
class ResponseContext:
    """What a response needs from its session."""

    session_id: str
    emit: Emit
    conv: Conversation
    engines: SessionEngines
    settings: Settings
    output_format: AudioFormat
    sinks: Sequence[TurnSink] = ()  # who takes the turn's record when it ends
    echo: EchoReference = field(default_factory=EchoReference)
    gate: Gate | None = None  # a speculative response: `emit` is the gate's
    caught_up: Callable[[], Awaitable[None]] = field(default=lambda: _at_once())  # client read
    clock: Clock = SYSTEM
    transport: str = "websocket"  # the session's door, for the turn's figures
    # The audio the door takes, when its transport fixes it (WebRTC's Opus: 48 kHz pcm16);
    # None: `output_format`, which the response shows either way.
    speech_format: AudioFormat | None = None

    def tentative(self) -> bool:
        """Whether the response is still a speculation: its gate is not open yet. Lanes
        call it from their threads, to let its work wait for other sessions'."""
        return self.gate is not None and not self.gate.opened.is_set()

    def unplayed_s(self) -> float:
        """Seconds of audio sent to the client and not yet played, on the echo guard's
        model of its playback (read from the lanes' threads too)."""
        return max(0.0, self.echo.play_end - self.clock.monotonic())

    def ahead(self) -> bool:
        """Whether the client holds more than `AHEAD_S` of the answer unplayed."""
        return self.unplayed_s() > AHEAD_S

    def deferrable(self) -> bool:
        """Whether the response's synthesis may wait for other sessions': while it is a
        speculation, or while the client is far from needing more of it."""
        return self.tentative() or self.ahead()


T = TypeVar("T")


async def _at_once() -> None:
    return None


@contextlib.asynccontextmanager
async def _closing(stream: AsyncGenerator[T, None]) -> AsyncIterator[AsyncGenerator[T, None]]:
    """``stream``, closed on the way out; unless it is itself running, which happens only
    when this coroutine is closed from inside it (torn down with its loop): then the
    stream's own finalizer closes it."""
    try:
        yield stream
    finally:
        with contextlib.suppress(RuntimeError):
            await stream.aclose()


class Response:
    """One response, from `response.created` to `response.done`. It runs as a task of its
    own (`start`); from outside it is only cancelled (`cancel`) and waited for (`wait`)."""

    def __init__(self, ctx: ResponseContext, request: ChatRequest, notice: str | None, *,
                 modalities: tuple[str, ...], turn: TurnClock, user_item_id: str | None,
                 in_conversation: bool = True, metadata: Any = None, voice: str = "",
                 user_audio: Float32 | None = None) -> None:
        self._id = p.new_id("resp")
        self._ctx, self._request, self._notice, self._turn = ctx, request, notice, turn
        self._audio = "audio" in modalities
        self._user_item_id, self._user_audio = user_item_id, user_audio
        self._stop = threading.Event()  # set when the response ends: its work stops at once
        self._text = ""
        self._finished: Finished | None = None  # how the backend ended, with its usage
        self._cancel_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_sent = asyncio.Event()  # the first audio (or text) left the socket
        self._started_at = ctx.clock.now()
        self._items = OutputItems(
            self._id, audio=self._audio, in_conversation=in_conversation, conv=ctx.conv,
            emit=ctx.emit, reserve_bytes=ctx.settings.max_output_tokens * BYTES_PER_TOKEN,
            released=self._released)
        self._speech: SpeechOut | None = None
        if self._audio:
            speaker, spoken_voice = ctx.engines.speaker(voice)
            self._speech = SpeechOut(
                speaker, spoken_voice, ctx.speech_format or ctx.output_format, emit=ctx.emit,
                place=self._place,
                on_sent=self._mark_sent, echo=ctx.echo, clock=ctx.clock, turn=turn,
                stop=self._stop, owner=ctx.session_id, background=ctx.deferrable,
                record=ctx.settings.record)
            self._request = dataclasses.replace(request, ahead=ctx.ahead)
        fmt = ctx.output_format
        self._base: Json = {
            "object": "realtime.response", "id": self._id, "metadata": metadata,
            "output_modalities": list(modalities),
            # an out-of-band response (conversation "none") belongs to none
            "conversation_id": f"conv_{ctx.session_id}" if in_conversation else None,
            "audio": {"output": {"voice": voice, "format": {"type": fmt.type,
                                                            "rate": fmt.rate}}},
            "max_output_tokens": request.max_tokens or "inf"}

    # ------------------------------------------------------------------ control

    @property
    def id(self) -> str:
        return self._id

    @property
    def user_item_id(self) -> str | None:
        """The user message this response answers."""
        return self._user_item_id

    @property
    def cancelled_by(self) -> str | None:
        """Why the response was cancelled (None: it was not, or was dropped unannounced)."""
        return self._cancel_reason

    @property
    def message_id(self) -> str | None:
        """The assistant message's item id, once there is one."""
        return None if self._items.message is None else str(self._items.message["id"])

    @property
    def sent_audio(self) -> Float32 | None:
        """The answer's audio as sent (16 kHz), where turns' audio is recorded."""
        return None if self._speech is None else self._speech.sent_audio

    def keep_user_audio(self, audio: Float32 | None) -> None:
        """The user's utterance it answers (16 kHz), kept with the turn where recorded."""
        self._user_audio = audio

    def start(self, on_end: Callable[[Response], None] | None = None, *,
              name: str | None = None) -> None:
        """Run the response as a task; ``on_end`` is called when it ends, however it ends."""
        self._task = asyncio.create_task(self._run(on_end), name=name or self._id)

    def cancel(self, reason: str | None) -> None:
        """Stop at once. With a ``reason`` the response ends as `cancelled` (and says so in
        `response.done`); without one it is dropped unannounced (a speculation)."""
        if reason is not None:
            self._cancel_reason = reason
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        """Until the response has ended (cancelling the wait leaves the response be)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    # ------------------------------------------------------------------ the run

    async def _run(self, on_end: Callable[[Response], None] | None) -> None:
        try:
            with watched(self._ctx.sinks, self._ctx.session_id, self._id, self._turn):
                await self._respond()
        finally:
            if on_end is not None:
                on_end(self)

    async def _respond(self) -> None:
        await self._ctx.emit(se.response_created({**self._base, "status": "in_progress",
                                                 "output": []}))
        status, details = "completed", cast(Json | None, None)
        try:
            if self._audio:
                await self._speak()
            else:
                await self._write()
            if self._finished is not None and self._finished.reason == "length":
                status = "incomplete"
                details = {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            status = "cancelled"
            # The API names two reasons; one it has no name for (a client gone, a server
            # shutting down) is left out, as strict clients allow.
            reason = self._cancel_reason or "client_cancelled"
            details = {"type": "cancelled",
                       **({"reason": reason} if reason in WIRE_CANCEL_REASONS else {})}
            if self._cancel_reason is None:
                raise
        except Exception as raised:
            exc = raised.exceptions[0] if isinstance(raised, ExceptionGroup) else raised
            status, details = "failed", await self._failed(exc)
        finally:
            self._stop.set()
        await self._finish(status, details)

    async def _failed(self, exc: BaseException) -> Json:
        if not isinstance(exc, StageError):
            log.exception("response %s failed", self._id, exc_info=exc)
        event = se.error_event(exc)
        code, message = event["error"]["code"], event["error"]["message"]
        log.warning("response %s failed: %s (%s)", self._id, message, code)
        await self._ctx.emit(event)
        stage = exc.stage if isinstance(exc, StageError) else ""
        if self._speech is not None and stage != "tts":
            # The listener hears that something went wrong, not silence.
            with contextlib.suppress(Exception):
                await self._speech.say(APOLOGY)
        return {"type": "failed", "error": {"type": "server_error", "code": code,
                                            "message": message}}

    async def _consume(self, on_text: Callable[[str], Awaitable[None]]) -> None:
        # Closed here whatever happens (a cancel, a failed send): left to the garbage
        # collector, an abandoned stream would hold its LLM context until it ran.
        async with _closing(answer_events(
                self._ctx.engines.responder, self._request, self._notice, turn=self._turn,
                clock=self._ctx.clock,
                first_token_timeout_s=self._ctx.settings.first_token_timeout_s)) as events:
            turn_began = self._ctx.clock.monotonic()
            async for event in events:
                # A stream whose text is all there already (a fast backend, a backlog) would
                # be read in one step of the loop: give the other sessions a turn.
                if self._ctx.clock.monotonic() - turn_began >= READ_SLICE_S:
                    await asyncio.sleep(0)
                    turn_began = self._ctx.clock.monotonic()
                if isinstance(event, TextDelta):
                    if event.text:
                        self._text += event.text
                        await on_text(event.text)
                elif isinstance(event, ToolCallStart):
                    await self._items.tool_start(event)
                elif isinstance(event, ToolCallArguments):
                    await self._items.tool_arguments(event)
                elif isinstance(event, Finished):
                    self._finished = event

    async def _write(self) -> None:
        async def on_text(delta: str) -> None:
            self._turn.mark("first_sentence")
            ids = await self._place()
            await self._ctx.emit(se.response_output_text_delta(ids, delta), self._mark_sent)

        await self._consume(on_text)

    async def _speak(self) -> None:
        assert self._speech is not None
        # Room for the whole answer (a piece is at least a token): the model's reader never
        # waits for speech, only for the client, so it is away only when the client is.
        pieces: asyncio.Queue[str | None] = asyncio.Queue(self._request.max_tokens + 2)
        splitter = SentenceSplitter(first_clause_words=self._ctx.settings.first_clause_words,
                                    first_max_words=self._ctx.settings.first_max_words)

        async def on_text(delta: str) -> None:
            for piece in splitter.feed(delta):
                self._turn.mark("first_sentence")
                await pieces.put(piece)
            # The model's reader waits for the client, never for speech: what a client does
            # not read is not computed further (and its context may go to someone else).
            await self._ctx.caught_up()

        async def produce() -> None:
            await self._consume(on_text)
            for piece in splitter.flush():
                self._turn.mark("first_sentence")
                await pieces.put(piece)
            await pieces.put(None)

        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            group.create_task(self._speech.speak(pieces))

    async def _released(self) -> None:
        """A speculative response waits here until its turn is confirmed."""
        if self._ctx.gate is not None:
            await self._ctx.gate.opened.wait()

    async def _place(self) -> se.ContentIds:
        """Where the answer's output goes: the message (added the first time); from here
        on the output is released to the client."""
        ids = await self._items.open_message()
        self._turn.mark("released")
        return ids

    def _mark_sent(self) -> None:
        self._turn.mark("first_audio_sent")
        self._first_sent.set()

    # ------------------------------------------------------------------ the end

    async def _finish(self, status: str, details: Json | None) -> None:
        spoken = self._speech.spoken if self._speech is not None else Spoken()
        said = spoken.text_until(10**12) if self._audio else self._text
        await self._items.finish(status, said, spoken)
        self._turn.mark("response_done")
        record = self._record(status, said)
        # Before response.done: an announced turn is never lost.
        await hand_over(self._ctx.sinks, record, "ended", self._tell)
        await self._ctx.emit(se.response_done({
            **self._base, "status": status, "status_details": details,
            "output": self._items.outputs, "usage": record.usage}))
        if record.answered:
            await self._first_output_left()
        record = dataclasses.replace(record, timings=self._turn.timings())
        await hand_over(self._ctx.sinks, record, "sent", self._tell)
        await self._ctx.emit(se.turn_metrics(record.metrics()))

    async def _first_output_left(self) -> None:
        if "released" in self._turn.marks and not self._first_sent.is_set():
            # Output is queued but not sent yet (a released speculative answer arrives all
            # at once): the turn's figures are only whole once its first audio has left.
            with contextlib.suppress(TimeoutError):
                await self._ctx.clock.wait_for(self._first_sent.wait(), SENT_WAIT_S)

    def _record(self, status: str, said: str) -> TurnRecord:
        ctx = self._ctx
        user = ""
        if self._user_item_id is not None:
            with contextlib.suppress(ProtocolError):
                user = item_text(ctx.conv.get(self._user_item_id))
        record_audio = ctx.settings.record
        return TurnRecord(
            self._id, ctx.session_id, self._user_item_id, user, said, status,
            ctx.settings.llm_backend, tuple(self._items.tools),
            usage(self._finished, self._request),
            self._speech.audio_ms if self._speech is not None else 0.0,
            self._turn.timings(), self._started_at, ctx.clock.now(),
            self._user_audio if record_audio else None,
            self.sent_audio if record_audio else None, ctx.transport)

    async def _tell(self, exc: VoxwireError) -> None:
        await self._ctx.emit(se.error_event(exc))
