"""One Realtime session: typed client events in, server events out through a bounded outbox.

The session knows no sockets. The WebSocket edge feeds it parsed events and drains
its outbox; tests can do the same with no network. CPU-bound work (decoding, VAD,
Whisper, llama.cpp, piper) runs in the engines' worker lanes, never on the loop.

The session coordinates; its jobs live in modules of their own: the ears (audio in and
turn-taking), the turn worker (transcription), speculation, partial transcripts, items,
requests and responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence

import realtime as p
from realtime import AudioFormat, Json, SessionConfig, TurnDetection
from realtime import server_events as se
from server.errors import LimitError, ProtocolError, VoxwireError
from server.response.gate import Gate
from server.response.record import TurnSink
from server.response.run import Response, ResponseContext
from server.runtime.clock import SYSTEM, Clock
from server.runtime.config import Settings
from server.runtime.engines import SessionEngines
from server.runtime.metrics import TurnClock
from server.runtime.store import NullStore, SessionHistory, Store, TurnStore
from server.session import requests
from server.session.conversation import Conversation
from server.session.ears import (
    Backchannel,
    Confirmed,
    EarEvent,
    Ears,
    Paused,
    Resumed,
    Started,
    Stopped,
    TimedOut,
)
from server.session.echo import EchoReference
from server.session.items import Items
from server.session.jobs import RespondJob, TranscribeJob
from server.session.outbox import Emit, OnSent, Outbox
from server.session.partials import Partials
from server.session.speculation import EarlyAnswer, Speculation, Speculator
from server.session.worker import Transcribed, TurnWorker
from server.stages import (
    ChatMessage,
    ChatRequest,
    Float32,
)
from server.stages.turns import InputBuffer

log = logging.getLogger(__name__)

SILENCE = "(The user has said nothing since your last answer.)"  # after idle_timeout_ms
INTERRUPTED_GRACE_S = 2.0  # a client's cancel this soon after a barge-in is for that one
TRANSCRIPT_RESERVE = 2048  # bytes counted for a user item's transcript, written later


class Session:
    def __init__(self, engines: SessionEngines, settings: Settings, *, dialect: p.Dialect = "ga",
                 model: str = "voxwire", store: Store | None = None,
                 kind: str = "realtime", clock: Clock = SYSTEM,
                 sinks: Sequence[TurnSink] = (), transport: str = "websocket",
                 transport_format: AudioFormat | None = None, session_id: str | None = None,
                 owner: str = "") -> None:
        self.engines = engines
        self.clock = clock
        self.store = SessionHistory(
            store or NullStore(), self.error, max_text=settings.max_stored_text_bytes,
            max_bytes=settings.max_store_bytes_per_session,
            max_total=int(settings.store_max_mb * 1024 * 1024))
        # Who takes each turn's record: this session's history first, then ``sinks``.
        self._sinks: tuple[TurnSink, ...] = (TurnStore(self.store), *sinks)
        self.settings = settings
        self.dialect = dialect
        self.id = session_id or p.new_id("sess")
        self.owner = owner  # fingerprint of the key it counts against, kept with its history
        self._restored: list[tuple[str | None, Json]] = []  # items of a resumed session
        self.outbox = Outbox(settings.send_queue, settings.max_outbox_bytes)
        self.cfg = SessionConfig(
            model=model, instructions=settings.instructions, voice=engines.voice,
            temperature=settings.temperature,
            turn_detection=TurnDetection(
                threshold=settings.vad_threshold, prefix_padding_ms=settings.prefix_padding_ms,
                silence_duration_ms=settings.silence_duration_ms, type=settings.turn_detection,
                eagerness=settings.eagerness),
            type=kind,
        )
        self.conv = Conversation(settings.max_items, settings.max_conversation_bytes)
        self.echo = EchoReference()
        self.transport = transport  # the door it came through, named in its turns' figures
        # A transport that carries its own codec (WebRTC's Opus) takes and gives audio in
        # this format, whatever the session's formats say; None: the session's formats.
        self.transport_format = transport_format
        self.ears = Ears(self.id, engines, settings, clock, self.echo, self, transport_format)
        self._partials = Partials(self.id, engines, settings, self.emit,
                                  lambda: self.ears.speaking, self._heard_so_far)
        self.worker = TurnWorker(self.id, engines, settings.max_buffer_s, clock, self.conv,
                                 self.emit, self)
        self.response: Response | None = None
        self._spec = Speculator(self.id, engines, clock, self)
        self._closed = False
        self.items = Items(engines, settings, clock, self.conv, self.emit)
        self._interrupted: tuple[str, float] | None = None  # the answer barge-in cancelled, when

    @property
    def buffer(self) -> InputBuffer:
        """The input audio held for turns (the ears')."""
        return self.ears.buffer

    # ------------------------------------------------------------------ lifecycle

    def restore(self, turns: Sequence[Json]) -> None:
        """Before start: the conversation so far of a resumed session, from its stored turns
        (their words: the audio is not kept). Oldest turns are left out if the conversation's
        bounds would be crossed."""
        items: list[Json] = []
        for turn in turns:
            if turn["user_text"]:
                items.append(se.item(turn["user_item_id"] or p.new_id("item"), "message",
                                     role="user", content=[{"type": "input_text",
                                                            "text": turn["user_text"]}]))
            if turn["assistant_text"]:
                status = "completed" if turn["status"] in ("completed", "incomplete") \
                    else "incomplete"
                items.append(se.item(p.new_id("item"), "message", status, role="assistant",
                                     content=[{"type": "output_text",
                                               "text": turn["assistant_text"]}]))
        kept: list[Json] = []
        room = self.conv.max_bytes
        for item in reversed(items):
            room -= self.conv.size_of(item)
            if room < 0 or len(kept) >= self.conv.max_items:
                break
            kept.append(item)
        for item in reversed(kept):
            with contextlib.suppress(ProtocolError):  # an id seen twice: keep the first
                self._restored.append((self.conv.add(item), item))

    async def start(self) -> None:
        self.worker.start()
        await self.emit(se.session_created(self._session_wire()))
        for previous, item in self._restored:  # a resumed session: what it holds
            await self.emit(se.conversation_item_added(previous, item))
            await self.emit(se.conversation_item_done(item, previous))
        self._restored.clear()
        # After session.created: a store that is down is reported, and the session goes on.
        await self.store.open_session(self.id, self.cfg.model, self.dialect, self.owner)

    async def close(self) -> None:
        self._closed = True
        for lane in self.engines.lanes:  # nobody waits for what this session queued
            lane.cancel_owner(self.id)
        if self.engines.llm is not None:
            self.engines.llm.forget(self.id)
        self._spec.close()
        if self.response is not None:
            await self._cancel_response("client_disconnected", wait=True)
        if self._partials.task is not None:
            self._partials.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._partials.task
        await self.worker.close()
        with contextlib.suppress(Exception):
            await self.store.close_session(self.id)

    async def emit(self, event: Json, on_sent: OnSent | None = None) -> None:
        if p.wants(self.cfg, event):
            await self.outbox.put(event, on_sent)

    async def error(self, exc: BaseException, event_id: str | None = None) -> None:
        self.engines.registry.inc("errors_total")
        await self.emit(se.error_event(exc, event_id))

    # ------------------------------------------------------------------ client events

    async def handle(self, event: p.ClientEvent) -> None:
        """Apply one client event. Errors become `error` events; the session goes on."""
        try:
            await self._dispatch(event)
        except VoxwireError as exc:
            await self.error(exc, event.event_id)

    async def _dispatch(self, ev: p.ClientEvent) -> None:
        match ev:
            case p.AudioAppend():
                await self.ears.append(ev.audio)
                self._maybe_partial()
            case p.SessionUpdate():
                await self._update_session(ev)
            case p.AudioCommit():
                await self._commit_manual(ev)
            case p.AudioClear():
                self.ears.clear()
                self._forget_turn()
                await self.emit(se.input_audio_buffer_cleared())
            case p.ItemCreate():
                await self.items.create(ev)
            case p.FrameAppend():
                await self.items.frame(ev)
            case p.ItemTruncate():
                self.conv.truncate(ev.item_id, ev.audio_end_ms, ev.event_id)
                self.echo.stop(self.clock.monotonic())
                await self.emit(se.conversation_item_truncated(ev.item_id, ev.content_index,
                                                               ev.audio_end_ms))
            case p.ItemDelete():
                self.conv.delete(ev.item_id, ev.event_id)
                await self.emit(se.conversation_item_deleted(ev.item_id))
            case p.ItemRetrieve():
                await self.items.retrieve(ev, self.cfg)
            case p.ResponseCreate():
                if self.cfg.type == "transcription":
                    raise ProtocolError("this is a transcription session: it gives transcripts "
                                        "only, never a response", code="invalid_request",
                                        param="type")
                self.worker.put(RespondJob(ev.response, ev.event_id, None), ev.event_id)
            case p.ResponseCancel():
                if self._just_interrupted(ev.response_id):
                    return  # the client's cancel for the barge-in the server already made
                if self.response is None or (ev.response_id not in (None, self.response.id)):
                    raise ProtocolError("no active response to cancel",
                                        code="response_cancel_not_active")
                await self._cancel_response("client_cancelled")
            case p.OutputAudioClear():
                # The door that plays the answer itself (WebRTC) takes this event first.
                raise ProtocolError("output_audio_buffer.clear is for WebRTC connections, "
                                    "where the server plays the audio; over a WebSocket the "
                                    "client stops its own playback",
                                    code="unsupported_event", param="type")

    async def _update_session(self, ev: p.SessionUpdate) -> None:
        self.configure(ev.session)
        await self.emit(se.session_updated(self._session_wire()))

    def configure(self, session: Json) -> None:
        """Apply a `session.update`'s `session` object (raises ProtocolError, changes
        nothing, when a value is invalid). Before `start`, `session.created` shows it."""
        new = p.apply_session_update(self.cfg, session, self.dialect)
        new = dataclasses.replace(new, voice=requests.voice(new.voice, self.engines.voices,
                                                                 self.cfg.voice))
        if self.ears.configure(new):
            self._forget_turn()
        self.cfg = new

    def _session_wire(self) -> Json:
        return p.session_to_wire(self.cfg, self.id, self.dialect)

    # ------------------------------------------------------------------ turns heard

    async def heard(self, event: EarEvent) -> None:
        """React to what the ears heard."""
        td = self.cfg.turn_detection
        respond = td is not None and td.create_response
        match event:
            case Started():
                self._partials.restart(event.onset_ms)
                # Realtime clients stop playing on speech_started
                self.echo.stop(self.clock.monotonic())
                await self.emit(se.input_audio_buffer_speech_started(event.audio_start_ms,
                                                                     event.item_id))
            case Confirmed():
                if self.response is not None and td is not None and td.interrupt_response:
                    await self._cancel_response("turn_detected")
            case Paused():
                # Transcribe the turn so far now, in case this silence is its end, then
                # start answering it; all of it is dropped if speech resumes.
                self._spec.start(event.item_id, event.start_ms, event.end_ms, event.audio,
                                 event.speech_end)
                spec = self._spec.current
                if self.ears.reads_words and spec is not None:
                    spec.reader = asyncio.create_task(self._read_words(spec),
                                                      name=f"{self.id}-words")
            case Resumed():
                if self._spec.current is not None:
                    self._spec.resumed()  # a pause, not the end
            case Stopped():
                if event.cut:
                    await self.error(LimitError(
                        f"utterance longer than {self.settings.max_utterance_s:g} s; ending "
                        "the turn here", code="utterance_too_long"))
                await self._end_of_speech(event, respond)
            case Backchannel():
                # Kept in the conversation as what it was; nothing answers it.
                clock = TurnClock(clock=self.clock)
                await self._commit(event.item_id, event.audio, clock, False, None,
                                   transcript=event.text)
            case TimedOut():
                await self.emit(se.input_audio_buffer_timeout_triggered(
                    event.start_ms, event.end_ms, event.item_id))
                clock = TurnClock(clock=self.clock)
                clock.mark("speech_end")
                clock.mark("speech_stopped")
                await self._commit(event.item_id, event.audio, clock, respond, None, idle=True)

    async def _read_words(self, spec: Speculation) -> None:
        """semantic_vad: the speculation's transcript of the turn up to its pause, for the
        ears to read (None when it failed or was dropped)."""
        try:
            text: str | None = (await spec.result).text
        except (asyncio.CancelledError, Exception):
            if not spec.result.done():
                raise  # this task itself was cancelled
            text = None
        await self.ears.words(spec.end_ms, text)

    def quiet(self) -> bool:
        return self.response is None and self.worker.idle

    def answering(self) -> bool:
        return self.clock.monotonic() < self.echo.play_end

    def may_answer_early(self) -> bool:
        td = self.cfg.turn_detection
        return (self.settings.speculate_answer and td is not None and td.create_response
                and self.cfg.type == "realtime" and self.quiet())

    async def _end_of_speech(self, event: Stopped, respond: bool) -> None:
        spec = self._spec.take(event.start_ms, event.end_ms, event.item_id)
        clock = spec.clock if spec is not None else TurnClock(clock=self.clock)
        clock.mark("speech_end", event.speech_end)
        clock.mark("speech_stopped")
        await self.emit(se.input_audio_buffer_speech_stopped(event.end_ms, event.item_id))
        self._partials.cancel()
        clock.compute_ms["speculative_discarded"] = float(self._spec.discarded())
        if event.judged is not None:  # the turn model ended it, this sure
            clock.compute_ms["turn_complete"] = round(event.judged, 3)
        if event.words is not None:  # and its words read this finished
            clock.compute_ms["turn_words"] = round(event.words, 3)
        await self._commit(event.item_id, event.audio, clock, respond, None, spec)

    async def _commit_manual(self, ev: p.AudioCommit) -> None:
        await self.ears.drain()
        item_id, utterance = self.ears.commit()
        self._forget_turn()
        clock = TurnClock(clock=self.clock)
        clock.mark("speech_end")
        clock.mark("speech_stopped")
        await self._commit(item_id, utterance, clock, False, ev.event_id)

    def _forget_turn(self) -> None:
        """The turn being heard ended other than by its own silence: what was started on
        its account (a speculation, its answer, a partial preview) stops."""
        self._spec.drop()
        self._partials.cancel()

    async def _commit(self, item_id: str, utterance: Float32, clock: TurnClock, respond: bool,
                      event_id: str | None, early: Speculation | None = None,
                      idle: bool = False, transcript: str | None = None) -> None:
        item = se.item(item_id, "message", role="user",
                       content=[{"type": "input_audio", "transcript": None}])
        frame = self.items.take_frame(self.cfg)
        frames = (frame,) if frame is not None else ()
        if frame is not None:
            item["content"].append({"type": "input_image", "image_url": frame.data_uri()})
        # A spoken turn never fails for want of room: the oldest items make way for it.
        size = self.conv.size_of(item, frames, TRANSCRIPT_RESERVE)
        for gone in self.conv.make_room(size):
            await self.emit(se.conversation_item_deleted(gone))
        prev = self.conv.add(item, images=frames, reserve=TRANSCRIPT_RESERVE)
        if self.settings.record:
            self.items.keep_audio(item_id, utterance)
        await self.emit(se.input_audio_buffer_committed(prev, item_id))
        if self.cfg.type == "realtime":  # a transcription session sends transcripts only
            await self.emit(se.conversation_item_added(prev, item))
        try:
            self.worker.put(TranscribeJob(item_id, utterance, clock, respond, early, idle,
                                          transcript), event_id)
        except LimitError:
            if early is not None and early.answer is not None:
                early.answer.discard()
            raise

    # ------------------------------------------------------------------ partial transcripts

    def _maybe_partial(self) -> None:
        # Only while the user is audibly speaking: a partial started in a pause could hold
        # the ASR lane just when the final transcript of that turn needs it.
        item_id = self.ears.speaking
        if self._closed or item_id is None or not self.ears.hearing_speech:
            return
        self._partials.maybe(item_id, self.buffer.total_ms, self.ears.so_far)

    def _heard_so_far(self, text: str) -> None:
        if self.settings.prepare_words and self.ears.hearing_speech:
            self._spec.prepare(text)

    # ------------------------------------------------------------------ turns transcribed

    async def answer(self, turn: Transcribed) -> None:
        # After the idle timeout the model is told of the silence, as it would hear it.
        pending = None if turn.text.strip() else ChatMessage("user", SILENCE)
        await self._respond({}, turn.clock, None, user_item_id=turn.item_id, early=turn.early,
                            user_audio=turn.audio, pending=pending)

    async def respond(self, job: RespondJob) -> None:
        await self._respond(job.params, job.clock, job.event_id)

    async def _respond(self, params: Json, clock: TurnClock | None, event_id: str | None,
                       user_item_id: str | None = None, early: EarlyAnswer | None = None,
                       user_audio: Float32 | None = None,
                       pending: ChatMessage | None = None) -> None:
        if self.response is not None:
            if clock is None:  # an explicit response.create
                raise ProtocolError("a response is already in progress",
                                    code="conversation_already_has_active_response",
                                    event_id=event_id)
            td = self.cfg.turn_detection
            if td is not None and td.interrupt_response:
                await self._cancel_response("turn_detected", wait=True)
            else:
                await self.response.wait()
        if clock is None:
            clock = TurnClock(clock=self.clock)
            clock.mark("speech_end")
        conversation = params.get("conversation", "auto")
        if conversation not in ("auto", "none"):
            raise ProtocolError('response.conversation must be "auto" or "none"',
                                code="invalid_value", param="response.conversation",
                                event_id=event_id)
        context = await requests.input_context(params["input"], event_id, self.conv,
                                               self.settings, self.items.image) \
            if "input" in params else None
        request, notice, modalities = self._prepare(params, event_id, pending, context)
        voice, output_format = requests.response_audio(self.cfg, self.engines.voices, params)
        metadata = (p.metadata_value(params["metadata"], "response.metadata")
                    if "metadata" in params else None)
        if user_item_id is None:  # response.create: it answers the latest user message
            user_item_id = next((i["id"] for i in reversed(self.conv.items)
                                 if i.get("role") == "user"), None)
        if (early is not None and early.request == request and early.modalities == modalities
                and early.resp.user_item_id == user_item_id and self.response is None):
            # The turn is confirmed and nothing changed: release what was prepared.
            early.adopted = True
            early.resp.keep_user_audio(user_audio)
            clock.compute_ms["speculative"] = 1.0
            self.response = early.resp
            await early.gate.open()
            return
        if early is not None:
            early.discard()
        resp = Response(self._response_context(self.emit, output_format), request, notice,
                        modalities=modalities, turn=clock, user_item_id=user_item_id,
                        in_conversation=conversation != "none", metadata=metadata,
                        voice=voice, user_audio=user_audio)
        self.response = resp
        resp.start(self.response_ended)

    # ------------------------------------------------------------------ for speculation

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def voice(self) -> str:
        return self.cfg.voice

    def prepare_early(self, text: str) -> tuple[ChatRequest, str | None, tuple[str, ...]]:
        frame = self.items.take_frame(self.cfg, peek=True)
        pending = ChatMessage("user", text, images=(frame,) if frame else ())
        return self._prepare({}, None, pending)

    def gated_context(self) -> tuple[ResponseContext, Gate]:
        gate = Gate(self.emit)
        return self._response_context(gate.emit, self.cfg.output_format, gate), gate

    def _response_context(self, emit: Emit, output_format: AudioFormat,
                          gate: Gate | None = None) -> ResponseContext:
        return ResponseContext(self.id, emit, self.conv, self.engines, self.settings,
                               output_format, self._sinks, self.echo, gate,
                               self.outbox.caught_up, self.clock, self.transport,
                               self.transport_format)

    def _prepare(self, params: Json, event_id: str | None, pending: ChatMessage | None = None,
                 context: Conversation | None = None
                 ) -> tuple[ChatRequest, str | None, tuple[str, ...]]:
        return requests.prepare(self.cfg, self.settings, self.conv, self.engines.responder,
                                self.id, params, event_id, pending, context)

    def response_ended(self, resp: Response) -> None:
        """A response of this session's has ended, however it ended."""
        if self.response is not resp:
            return
        self.response = None
        if resp.cancelled_by is None:  # the idle timeout counts from here
            self.ears.answered()
        audio = resp.sent_audio
        if self.settings.record and resp.message_id is not None and audio is not None:
            self.items.keep_audio(resp.message_id, audio)

    async def answer_ended(self) -> None:
        """Until the answer in progress (if any) has ended."""
        if self.response is not None:
            await self.response.wait()

    def _just_interrupted(self, response_id: str | None) -> bool:
        """Whether a `response.cancel` names (or, naming none, means) the answer the user's
        speech cancelled a moment ago. Clients cancel on `speech_started`; with
        backchannels, that event comes when the server has decided it is an interruption,
        and cancels the answer itself at once: their cancel then only arrives second."""
        last = self._interrupted
        if last is None or self.clock.monotonic() - last[1] > INTERRUPTED_GRACE_S:
            return False
        return response_id == last[0] or (response_id is None and self.response is None)

    async def _cancel_response(self, reason: str, *, wait: bool = False) -> None:
        resp = self.response
        if resp is None:
            return
        if reason == "turn_detected":
            self._interrupted = (resp.id, self.clock.monotonic())
        resp.cancel(reason)
        self.echo.stop(self.clock.monotonic())  # the client stops playing at once
        if wait:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await self.clock.wait_for(resp.wait(), 5)
