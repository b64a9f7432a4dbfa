"""One assistant response: responder events in, Realtime server events out.

Text deltas become a message item (spoken sentence by sentence through TTS, or written);
tool calls become `function_call` items. Cancellation (barge-in, `response.cancel`)
stops the responder and TTS at once and keeps only what the client was sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

import realtime as p
from realtime import AudioFormat, Json
from realtime import server_events as se
from server import audio as audio_codec
from server.audio import RATE
from server.clock import SYSTEM, Clock
from server.config import Settings
from server.conversation import Conversation, Spoken, item_text
from server.echo import EchoReference
from server.engines import SessionEngines
from server.errors import BackendError, ProtocolError, StageError, StoreError
from server.metrics import TurnClock
from server.stages import (
    ChatRequest,
    Finished,
    Float32,
    ResponderEvent,
    TextDelta,
    ToolCallArguments,
    ToolCallStart,
)
from server.store import NullStore, Recording, Store, Turn
from server.text import SentenceSplitter

log = logging.getLogger(__name__)
turn_log = logging.getLogger("voxwire.turns")

DELTA_MS = 200  # audio per output delta
BYTES_PER_TOKEN = 16  # generous: what an answer's text may take per output token
APOLOGY = "Sorry, I couldn't get an answer just now."
CANNOT_SEE = "I can't see images with the current model, so I'll answer from your words."

Emit = Callable[..., Awaitable[None]]


@dataclass
class Response:
    id: str
    modalities: tuple[str, ...]
    clock: TurnClock
    user_item_id: str | None
    in_conversation: bool
    metadata: Any = None
    stop: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    spoken: Spoken = field(default_factory=Spoken)
    audio_ms: float = 0.0
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None
    message: Json | None = None  # the assistant message item, once there is text
    outputs: list[Json] = field(default_factory=list)
    calls: dict[int, Json] = field(default_factory=dict)
    user_audio: Float32 | None = None  # the user's utterance (16 kHz), kept with --record
    sent_audio: list[Float32] = field(default_factory=list)  # the answer as sent, 16 kHz
    voice: str = ""  # the voice that speaks it, as response.created/done show it
    max_output_tokens: int | None = None

    @property
    def audio(self) -> bool:
        return "audio" in self.modalities

    def ids(self, item: Json) -> se.ContentIds:
        return {"response_id": self.id, "item_id": item["id"],
                "output_index": self.outputs.index(item), "content_index": 0}


@dataclass
class ResponseContext:
    """What a response needs from its session."""

    session_id: str
    emit: Emit
    conv: Conversation
    engines: SessionEngines
    settings: Settings
    output_format: AudioFormat
    store: Store = field(default_factory=NullStore)
    echo: EchoReference = field(default_factory=EchoReference)
    gate: Gate | None = None  # a speculative response: `emit` is the gate's
    caught_up: Callable[[], Awaitable[None]] = field(default=lambda: _at_once())  # client read
    clock: Clock = SYSTEM

    def tentative(self) -> bool:
        """Whether the response is still a speculation: its gate is not open yet. Lanes
        call it from their threads, to let its work wait for other sessions'."""
        return self.gate is not None and not self.gate.opened.is_set()


async def _at_once() -> None:
    return None


class Gate:
    """Holds a speculative response's events until its turn is confirmed, then lets them
    through in order. Until then the response computes (LLM, first-clause TTS) but sends
    nothing and changes nothing: it waits at `opened` before touching the conversation,
    the store or the metrics. Never opened, it is simply cancelled and dropped."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._held: list[tuple[Json, Callable[[], None] | None]] | None = []
        self.opened = asyncio.Event()

    async def emit(self, event: Json, on_sent: Callable[[], None] | None = None) -> None:
        if self._held is None:
            await self._emit(event, on_sent)
        else:
            self._held.append((event, on_sent))

    async def open(self) -> None:
        # Events emitted while the held ones drain join the end of the list: order is kept.
        while self._held:
            event, on_sent = self._held.pop(0)
            await self._emit(event, on_sent)
        self._held = None
        self.opened.set()

    @property
    def held(self) -> int:
        return len(self._held or ())


class ResponseRun:
    def __init__(self, ctx: ResponseContext, resp: Response, request: ChatRequest,
                 notice: str | None) -> None:
        self.ctx, self.resp, self.request, self.notice = ctx, resp, request, notice
        self.started_at = ctx.clock.now()
        self._stream_resampler: audio_codec.StreamResampler | None = None
        self._first_sent = asyncio.Event()  # the first audio (or text) left the socket
        self.finished: Finished | None = None  # how the backend ended, with its usage
        self.base: Json = {"object": "realtime.response", "id": resp.id,
                           "metadata": resp.metadata, "output_modalities": list(resp.modalities),
                           # an out-of-band response (conversation "none") belongs to none
                           "conversation_id": (f"conv_{ctx.session_id}" if resp.in_conversation
                                               else None),
                           "audio": {"output": {"voice": resp.voice, "format": {
                               "type": ctx.output_format.type, "rate": ctx.output_format.rate}}},
                           "max_output_tokens": resp.max_output_tokens or "inf"}

    async def run(self) -> None:
        resp = self.resp
        await self.ctx.emit(se.response_created({**self.base, "status": "in_progress",
                                                 "output": []}))
        status, details = "completed", cast(Json | None, None)
        try:
            if resp.audio:
                await self._speak()
            else:
                await self._write()
            if self.finished is not None and self.finished.reason == "length":
                status = "incomplete"
                details = {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            status = "cancelled"
            details = {"type": "cancelled", "reason": resp.cancel_reason or "client_cancelled"}
            if resp.cancel_reason is None:
                raise
        except Exception as raised:
            exc = raised.exceptions[0] if isinstance(raised, ExceptionGroup) else raised
            status, details = "failed", await self._failed(exc)
        finally:
            resp.stop.set()
        await self._finish(status, details)

    async def _failed(self, exc: BaseException) -> Json:
        if not isinstance(exc, StageError):
            log.exception("response %s failed", self.resp.id, exc_info=exc)
        event = se.error_event(exc)
        code, message = event["error"]["code"], event["error"]["message"]
        log.warning("response %s failed: %s (%s)", self.resp.id, message, code)
        await self.ctx.emit(event)
        stage = exc.stage if isinstance(exc, StageError) else ""
        if self.resp.audio and stage != "tts":
            # The listener hears that something went wrong, not silence.
            with contextlib.suppress(Exception):
                await self._voice_pieces([APOLOGY])
        return {"type": "failed", "error": {"type": "server_error", "code": code,
                                            "message": message}}

    # ------------------------------------------------------------------ responder events

    async def _events(self) -> AsyncIterator[ResponderEvent]:
        """The responder's events, with the notice first, a first-token timeout and marks."""
        resp, settings = self.resp, self.ctx.settings
        if self.notice:
            yield TextDelta(self.notice + " ")
        resp.clock.mark("llm_request")
        started = self.ctx.clock.monotonic()
        stream = self.ctx.engines.responder.stream(self.request)
        first = True
        try:
            while True:
                try:
                    if first:
                        event = await self.ctx.clock.wait_for(
                            anext(stream), settings.first_token_timeout_s)
                    else:
                        event = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise BackendError(f"no first token within "
                                       f"{settings.first_token_timeout_s:g} s",
                                       code="llm_timeout") from None
                except (StageError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    raise StageError("llm", f"{type(exc).__name__}: {exc}") from exc
                if first:
                    resp.clock.mark("llm_first_token")
                    resp.clock.compute_once("llm_first_token", started)
                    first = False
                yield event
        finally:
            await stream.aclose()  # closes the HTTP stream, or stops the local model

    async def _consume(self, on_text: Callable[[str], Awaitable[None]]) -> None:
        async for event in self._events():
            if isinstance(event, TextDelta):
                if event.text:
                    self.resp.text += event.text
                    await on_text(event.text)
            elif isinstance(event, ToolCallStart):
                await self._tool_start(event)
            elif isinstance(event, ToolCallArguments):
                await self._tool_arguments(event)
            elif isinstance(event, Finished):
                self.finished = event

    async def _write(self) -> None:
        async def on_text(delta: str) -> None:
            self.resp.clock.mark("first_sentence")
            item = await self._message()
            self.resp.clock.mark("released")
            await self.ctx.emit(se.response_output_text_delta(self.resp.ids(item), delta),
                                self._mark_sent)

        await self._consume(on_text)

    async def _speak(self) -> None:
        # Room for the whole answer (a piece is at least a token): the model's reader never
        # waits for speech, only for the client, so it is away only when the client is.
        pieces: asyncio.Queue[str | None] = asyncio.Queue(self.request.max_tokens + 2)
        splitter = SentenceSplitter(first_clause_words=self.ctx.settings.first_clause_words)

        async def on_text(delta: str) -> None:
            for piece in splitter.feed(delta):
                self.resp.clock.mark("first_sentence")
                await pieces.put(piece)
            # The model's reader waits for the client, never for speech: what a client does
            # not read is not computed further (and its context may go to someone else).
            await self.ctx.caught_up()

        async def produce() -> None:
            await self._consume(on_text)
            for piece in splitter.flush():
                self.resp.clock.mark("first_sentence")
                await pieces.put(piece)
            await pieces.put(None)

        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            group.create_task(self._voice(pieces))

    # ------------------------------------------------------------------ output items

    async def _released(self) -> None:
        """A speculative response waits here until its turn is confirmed."""
        if self.ctx.gate is not None:
            await self.ctx.gate.opened.wait()

    async def _add_output(self, item: Json) -> None:
        await self._released()  # the user's item goes into the conversation first
        resp = self.resp
        resp.outputs.append(item)
        if resp.in_conversation:
            # The answer is the server's own: it never fails for want of room, the oldest
            # items make way for it. Its text, still to come, is counted in advance.
            conv = self.ctx.conv
            reserve = self.ctx.settings.max_output_tokens * BYTES_PER_TOKEN
            for gone in conv.make_room(conv.size_of(item, (), reserve)):
                await self.ctx.emit(se.conversation_item_deleted(gone))
            prev = conv.add(item, reserve=reserve)
            await self.ctx.emit(se.conversation_item_added(prev, item))
        await self.ctx.emit(se.response_output_item_added(resp.id, len(resp.outputs) - 1, item))

    async def _message(self) -> Json:
        resp = self.resp
        if resp.message is None:
            part: Json = ({"type": "output_audio", "transcript": ""} if resp.audio
                          else {"type": "output_text", "text": ""})
            resp.message = se.item(p.new_id("item"), "message", "in_progress",
                                   role="assistant", content=[part])
            await self._add_output(resp.message)
            await self.ctx.emit(se.response_content_part_added(resp.ids(resp.message),
                                                               dict(part)))
        return resp.message

    async def _tool_start(self, event: ToolCallStart) -> None:
        item = se.item(p.new_id("item"), "function_call", "in_progress",
                       call_id=event.call_id, name=event.name, arguments="")
        self.resp.calls[event.index] = item
        await self._add_output(item)

    async def _tool_arguments(self, event: ToolCallArguments) -> None:
        item = self.resp.calls.get(event.index)
        if item is None:
            return
        item["arguments"] += event.delta
        await self.ctx.emit(se.response_function_call_arguments_delta(
            self.resp.ids(item), item["call_id"], event.delta))

    # ------------------------------------------------------------------ audio

    async def _voice(self, pieces: asyncio.Queue[str | None]) -> None:
        batch: list[str] = []
        while (piece := await pieces.get()) is not None:
            batch.append(piece)
            await self._voice_pieces(batch)
            batch.clear()
        await self._voice_tail()

    async def _voice_tail(self) -> None:
        """The resampler holds the answer's last few milliseconds back (its filter's delay)
        until it is told that the stream has ended: send them."""
        resampler, resp, fmt = self._stream_resampler, self.resp, self.ctx.output_format
        if resampler is None or resp.stop.is_set() or not resp.spoken.pieces:
            return
        tail = resampler(np.zeros(0, np.float32), last=True)
        if len(tail):
            ids = resp.ids(await self._message())
            data = base64.b64encode(audio_codec.encode(tail, fmt.type)).decode()
            reference = audio_codec.resample(tail, fmt.rate, RATE)
            resp.audio_ms += len(tail) * 1000 / fmt.rate
            await self.ctx.emit(se.response_output_audio_delta(ids, data),
                                self._on_sent(reference))
            if self.ctx.settings.record:
                resp.sent_audio.append(reference)

    def _on_sent(self, reference: Float32) -> Callable[[], None]:
        """What to do once a piece of audio has left: the echo guard listens for it."""
        def sent() -> None:
            self._mark_sent()
            self.ctx.echo.sent(reference, self.ctx.clock.monotonic())
        return sent

    def _resampler(self, rate_in: int, rate_out: int) -> audio_codec.StreamResampler:
        """One stream resampler for the whole answer, so sentences join without seams."""
        if self._stream_resampler is None:
            self._stream_resampler = audio_codec.StreamResampler(rate_in, rate_out)
        return self._stream_resampler

    async def _voice_pieces(self, pieces: list[str]) -> None:
        resp, engines, fmt = self.resp, self.ctx.engines, self.ctx.output_format
        speaker, voice = engines.speaker(resp.voice)
        tts = speaker.engine
        per_delta = int(fmt.rate * DELTA_MS / 1000)
        resampler = self._resampler(tts.sample_rate, fmt.rate)

        def encoded(text: str) -> Iterator[tuple[str, float, Float32]]:
            started = self.ctx.clock.monotonic()
            for chunk in tts.synthesize(text, voice, resp.stop):
                resp.clock.compute_once("tts_first_audio", started)
                samples = resampler(chunk)
                for i in range(0, len(samples), per_delta):
                    piece = samples[i:i + per_delta]
                    data = base64.b64encode(audio_codec.encode(piece, fmt.type)).decode()
                    # What the echo guard listens for: the same audio at 16 kHz.
                    reference = audio_codec.resample(piece, fmt.rate, RATE)
                    yield data, len(piece) * 1000 / fmt.rate, reference

        for text in pieces:
            started = False

            async def start(text: str = text) -> se.ContentIds:
                # After the first audio is ready: a speculative response synthesizes its
                # first clause ahead and waits for its turn here, in `_message`.
                ids = resp.ids(await self._message())
                resp.clock.mark("released")
                spacer = " " if resp.spoken.pieces else ""
                await self.ctx.emit(se.response_output_audio_transcript_delta(ids,
                                                                              spacer + text))
                return ids

            try:
                async for data, ms, reference in speaker.lane.stream(
                        lambda text=text: encoded(text), resp.stop,  # type: ignore[misc]
                        owner=self.ctx.session_id, background=self.ctx.tentative):
                    resp.clock.mark("tts_first_audio")
                    if not started:
                        ids, started = await start(), True
                    resp.audio_ms += ms
                    await self.ctx.emit(se.response_output_audio_delta(ids, data),
                                        self._on_sent(reference))
                    if self.ctx.settings.record:
                        resp.sent_audio.append(reference)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise StageError("tts", f"{type(exc).__name__}: {exc}") from exc
            if not started:  # nothing to hear (punctuation only): the words still count
                await start()
            resp.spoken.pieces.append((int(resp.audio_ms), text))

    # ------------------------------------------------------------------ the end

    async def _finish(self, status: str, details: Json | None) -> None:
        await self._released()
        resp, emit = self.resp, self.ctx.emit
        done = "completed" if status == "completed" else "incomplete"
        for item in resp.outputs:
            item["status"] = done
            ids = resp.ids(item)
            if item["type"] == "message":
                part = item["content"][0]
                if resp.audio:
                    part["transcript"] = resp.spoken.text_until(10**12)
                    await emit(se.response_output_audio_done(ids))
                    await emit(se.response_output_audio_transcript_done(ids, part["transcript"]))
                else:
                    part["text"] = resp.text
                    await emit(se.response_output_text_done(ids, resp.text))
                await emit(se.response_content_part_done(ids, part))
                if resp.in_conversation:
                    self.ctx.conv.spoken[item["id"]] = resp.spoken
            else:
                await emit(se.response_function_call_arguments_done(
                    ids, item["call_id"], item["name"], item["arguments"]))
            await emit(se.response_output_item_done(resp.id, ids["output_index"], item))
            if resp.in_conversation:
                await emit(se.conversation_item_done(item))
        resp.clock.mark("response_done")
        await self._store(status)  # before response.done: an announced turn is never lost
        await emit(se.response_done({**self.base, "status": status, "status_details": details,
                                     "output": resp.outputs, "usage": self._usage()}))
        await self._report(status)

    def _usage(self) -> Json | None:
        """`response.usage` from the backend's token counts, where it gave them."""
        done = self.finished
        if done is None or done.input_tokens is None or done.output_tokens is None:
            return None
        cached = done.cached_tokens or 0
        inputs: Json = {"cached_tokens": cached}
        if not any(m.images for m in self.request.messages):  # text alone: split it
            inputs |= {"text_tokens": done.input_tokens, "audio_tokens": 0, "image_tokens": 0,
                       "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0,
                                                 "image_tokens": 0}}
        # Speech is synthesized from the model's text: every output token is a text token.
        return {"total_tokens": done.input_tokens + done.output_tokens,
                "input_tokens": done.input_tokens, "output_tokens": done.output_tokens,
                "input_token_details": inputs,
                "output_token_details": {"text_tokens": done.output_tokens, "audio_tokens": 0}}

    async def _store(self, status: str) -> None:
        resp, ctx = self.resp, self.ctx
        user = ""
        if resp.user_item_id is not None:
            with contextlib.suppress(ProtocolError):
                user = item_text(ctx.conv.get(resp.user_item_id))
        said = resp.spoken.text_until(10**12) if resp.audio else resp.text
        turn = Turn(resp.id, ctx.session_id, resp.user_item_id, user, said, status,
                    status == "cancelled", ctx.settings.llm_backend,
                    {"stages_ms": resp.clock.stages_ms(),
                     "tools": [i["name"] for i in resp.outputs if i["type"] == "function_call"]},
                    self.started_at, ctx.clock.now())
        recordings = [Recording(role, RATE, audio_codec.to_pcm16(audio).tobytes())
                      for role, audio in (("user", resp.user_audio),
                                          ("assistant", _joined(resp.sent_audio)))
                      if ctx.settings.record and audio is not None and len(audio)]
        try:
            await ctx.store.record(turn, recordings)
        except Exception as exc:
            log.exception("could not store turn %s", resp.id)
            await ctx.emit(se.error_event(StoreError(f"the turn could not be saved: {exc}")))

    def _mark_sent(self) -> None:
        self.resp.clock.mark("first_audio_sent")
        self._first_sent.set()

    async def _report(self, status: str) -> None:
        resp = self.resp
        answered = status in ("completed", "incomplete")  # incomplete: cut at max tokens
        if (answered and "released" in resp.clock.marks
                and not self._first_sent.is_set()):
            # Output is queued but not sent yet (a released speculative answer arrives all
            # at once): the turn's figures are only whole once its first audio has left.
            with contextlib.suppress(TimeoutError):
                await self.ctx.clock.wait_for(self._first_sent.wait(), 2)
        stages = resp.clock.stages_ms()
        record = {"response_id": resp.id, "item_id": resp.user_item_id, "status": status,
                  "stages_ms": stages, "overhead_ms": resp.clock.overhead_ms(),
                  "marks_ms": resp.clock.marks_ms(), "compute_ms": resp.clock.compute_ms,
                  "audio_ms": round(resp.audio_ms, 1),
                  "backend": self.ctx.settings.llm_backend}
        registry = self.ctx.engines.registry
        registry.inc("turns_total")
        registry.inc(f"responses_{status}_total")
        if answered:
            registry.observe_turn(stages)
        turn_log.info(json.dumps({"session": self.ctx.session_id, **record}))
        await self.ctx.emit(se.turn_metrics(record))


def _joined(chunks: list[Float32]) -> Float32 | None:
    return np.concatenate(chunks) if chunks else None
