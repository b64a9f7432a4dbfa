"""One Realtime session: typed client events in, server events out through a bounded outbox.

The session knows no sockets. The WebSocket edge feeds it parsed events and drains
its outbox; tests can do the same with no network. CPU-bound work (decoding, VAD,
Whisper, llama.cpp, piper) runs in the engines' worker lanes, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import realtime as p
from realtime import AudioFormat, Json, SessionConfig, TurnDetection
from realtime import server_events as se
from server import audio as audio_codec
from server import requests
from server.audio import RATE
from server.clock import SYSTEM, Clock
from server.config import Settings
from server.conversation import Conversation
from server.echo import MAX_LAG_S, EchoReference, echo_likeness
from server.engines import SessionEngines
from server.errors import LimitError, ProtocolError, TranscriptionTimeout, VoxwireError
from server.gate import Gate
from server.items import Items
from server.jobs import RespondJob, TranscribeJob, TurnQueue
from server.metrics import TurnClock
from server.outbox import Emit, OnSent, Outbox
from server.partials import Partials
from server.response import Response, ResponseContext
from server.speculation import EarlyAnswer, Speculation, Speculator
from server.stages import (
    ChatMessage,
    ChatRequest,
    Float32,
    VadStream,
)
from server.store import NullStore, SessionHistory, Store, TurnStore
from server.turn_record import TurnSink
from server.turns import (
    AudioBudget,
    InputBuffer,
    SpeechConfirmed,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
)

log = logging.getLogger(__name__)

ECHO_WINDOW = 4000  # samples (250 ms at 16 kHz) of microphone audio judged for echo
ASR_TAIL_MS = 200  # trailing silence handed to Whisper with an utterance
MIN_COMMIT_MS = 100
AHEAD_S = 2.0  # audio this far ahead of real time is not live: no speculation on it
IDLE_KEEP_MS = 1000  # input kept between turns beyond the prefix padding and minimum speech
SILENCE = "(The user has said nothing since your last answer.)"  # after idle_timeout_ms
TRANSCRIPT_RESERVE = 2048  # bytes counted for a user item's transcript, written later

@dataclass
class Idle:
    """The wait for the user after an answer (turn detection's `idle_timeout_ms`), on the
    input audio's clock: it starts when the answer has finished playing."""

    since: float  # when the answer ended (monotonic); its audio may still be playing
    start_ms: int | None = None  # the input audio position when playback ended


class Session:
    def __init__(self, engines: SessionEngines, settings: Settings, *, dialect: p.Dialect = "ga",
                 model: str = "voxwire", store: Store | None = None,
                 kind: str = "realtime", clock: Clock = SYSTEM,
                 sinks: Sequence[TurnSink] = ()) -> None:
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
        self.id = p.new_id("sess")
        self.outbox = Outbox(settings.send_queue, settings.max_outbox_bytes)
        self.cfg = SessionConfig(
            model=model, instructions=settings.instructions, voice=engines.voice,
            temperature=settings.temperature,
            turn_detection=TurnDetection(
                threshold=settings.vad_threshold, prefix_padding_ms=settings.prefix_padding_ms,
                silence_duration_ms=settings.silence_duration_ms),
            type=kind,
        )
        self.conv = Conversation(settings.max_items, settings.max_conversation_bytes)
        self.buffer = InputBuffer(settings.max_buffer_s)
        self._audio_budget = AudioBudget(settings.audio_rate, settings.audio_burst_s)
        self._vad: VadStream = engines.vad.new_stream()
        self._detector = self._new_detector()
        self._resampler = audio_codec.StreamResampler(self.cfg.input_format.rate, RATE)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)
        self._speech_item: str | None = None
        self._utt_start_ms = 0
        self._partials = Partials(self.id, engines, settings, self.emit,
                                  lambda: self._speech_item)
        self._jobs = TurnQueue(settings.max_buffer_s)
        self._worker: asyncio.Task[None] | None = None
        self.response: Response | None = None
        self._spec = Speculator(self.id, engines, clock, self)
        self._busy = False  # the turn worker is handling a job
        self.echo = EchoReference()
        self._mic_tail: Float32 = np.zeros(0, np.float32)
        self._closed = False
        self._idle: Idle | None = None  # armed after an answer when idle_timeout_ms is set
        self.items = Items(engines, settings, clock, self.conv, self.emit)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name=f"{self.id}-turns")
        await self.emit(se.session_created(self._session_wire()))
        # After session.created: a store that is down is reported, and the session goes on.
        await self.store.open_session(self.id, self.cfg.model, self.dialect)

    async def close(self) -> None:
        self._closed = True
        for lane in self.engines.lanes:  # nobody waits for what this session queued
            lane.cancel_owner(self.id)
        if self.engines.llm is not None:
            self.engines.llm.forget(self.id)
        self._spec.close()
        if self.response is not None:
            await self._cancel_response("client_disconnected", wait=True)
        for task in (self._partials.task, self._worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
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
                await self._append(ev)
            case p.SessionUpdate():
                await self._update_session(ev)
            case p.AudioCommit():
                await self._commit_manual(ev)
            case p.AudioClear():
                self.buffer.clear()
                self._detector.reset()
                self._speech_item = None
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
                self._jobs.put(RespondJob(ev.response, ev.event_id, None), ev.event_id)
            case p.ResponseCancel():
                if self.response is None or (ev.response_id not in (None, self.response.id)):
                    raise ProtocolError("no active response to cancel",
                                        code="response_cancel_not_active")
                await self._cancel_response("client_cancelled")

    async def _update_session(self, ev: p.SessionUpdate) -> None:
        self.configure(ev.session)
        await self.emit(se.session_updated(self._session_wire()))

    def configure(self, session: Json) -> None:
        """Apply a `session.update`'s `session` object (raises ProtocolError, changes
        nothing, when a value is invalid). Before `start`, `session.created` shows it."""
        new = p.apply_session_update(self.cfg, session, self.dialect)
        new = dataclasses.replace(new, voice=requests.voice(new.voice, self.engines.voices,
                                                                 self.cfg.voice))
        if new.input_format != self.cfg.input_format:
            self._resampler = audio_codec.StreamResampler(new.input_format.rate, RATE)
        changed_td = new.turn_detection != self.cfg.turn_detection
        self.cfg = new
        if changed_td:
            self._detector = self._new_detector()
            self._speech_item = None

    def _session_wire(self) -> Json:
        return p.session_to_wire(self.cfg, self.id, self.dialect)

    def _new_detector(self) -> TurnDetector:
        td = self.cfg.turn_detection or TurnDetection()
        s = self.settings
        return TurnDetector(window_ms=self._vad.window_ms, threshold=td.threshold,
                            silence_ms=td.silence_duration_ms,
                            prefix_padding_ms=td.prefix_padding_ms,
                            min_speech_ms=s.min_speech_ms, confirm_ms=s.barge_in_ms,
                            start_ms=self.buffer.total_ms)

    # ------------------------------------------------------------------ audio in

    async def _append(self, ev: p.AudioAppend) -> None:
        fmt = self.cfg.input_format
        per_ms = audio_codec.bytes_per_ms(fmt.type, fmt.rate)
        seconds = len(ev.audio) / per_ms / 1000
        limit = self.settings.max_append_s
        if seconds > limit:
            raise LimitError(f"one append holds {seconds:.1f} s of audio; at most {limit:g} s "
                             "per append (send it in smaller chunks)", code="append_too_large")
        if fmt.type == "audio/pcm" and len(ev.audio) % 2:
            audio_codec.decode(ev.audio, fmt.type)  # raises: an odd byte count
        wait = self._audio_budget.take(seconds, self.clock.monotonic())
        if wait > 0:  # faster than real time past the burst: slowed down, not refused
            await self.clock.sleep(wait)
        # At most a second of audio per lane job: the VAD lane takes one job from each
        # session in turn, so nobody's 20 ms chunk waits behind a long append.
        step = int(per_ms * 1000) // 2 * 2 or 2
        for at in range(0, len(ev.audio), step):
            await self._ingest(ev.audio[at:at + step])
            if self._closed:
                return
        await self._maybe_partial()

    async def _ingest(self, raw: bytes) -> None:
        fmt = self.cfg.input_format
        vad = self._vad if self.cfg.turn_detection is not None else None
        resampler = self._resampler
        reference = self._echo_window(len(raw) / audio_codec.bytes_per_ms(
            fmt.type, fmt.rate) / 1000) if vad is not None else None
        guard, tail = self.settings.echo_guard, self._mic_tail

        def ingest() -> tuple[Float32, list[float]]:
            samples = resampler(audio_codec.decode(raw, fmt.type))
            probs = vad.probabilities(samples) if vad is not None else []
            if reference is not None:
                # Judge the last quarter second, not just this chunk: steadier evidence.
                recent = np.concatenate([tail, samples])[-ECHO_WINDOW:]
                likeness = echo_likeness(recent, reference)
                log.debug("echo likeness %.2f", likeness)
                if likeness >= guard:
                    probs = [0.0] * len(probs)  # the assistant's own voice: not the user
            return samples, probs

        samples, probs = await self.engines.vad_lane.run(ingest, owner=self.id)
        self._mic_tail = np.concatenate([self._mic_tail, samples])[-ECHO_WINDOW:]
        self.buffer.append(samples)
        self._arrivals.append((self.buffer.total_ms, self.clock.monotonic()))
        for prob in probs:  # window by window: the utterance limit holds inside an append
            for turn_event in self._detector.feed([prob]):
                await self._on_turn_event(turn_event)
            await self._enforce_utterance_limit()
        await self._check_idle()
        td = self.cfg.turn_detection
        if td is not None and self._speech_item is None:
            # Nobody speaks: keep only what a turn starting now would reach back for.
            keep_ms = td.prefix_padding_ms + self.settings.min_speech_ms + IDLE_KEEP_MS
            self.buffer.drop_before_ms(self.buffer.total_ms - keep_ms)

    def _echo_window(self, seconds: float) -> Float32 | None:
        """The reference audio a chunk arriving now may echo, if anything was playing."""
        if self.settings.echo_guard <= 0:
            return None
        now = self.clock.monotonic()
        start = now - seconds - ECHO_WINDOW / RATE - MAX_LAG_S
        if not self.echo.playing_between(start, now):
            return None
        return self.echo.window(start, now)

    def _wall_time_of(self, ms: int) -> float:
        for end_ms, t in self._arrivals:
            if end_ms >= ms:
                return t
        return self.clock.monotonic()

    async def _on_turn_event(self, event: object) -> None:
        td = self.cfg.turn_detection
        if td is None:
            return
        if isinstance(event, SpeechStarted):
            self._speech_item = p.new_id("item")
            self._utt_start_ms = max(event.audio_start_ms, self.buffer.base_ms)
            self._partials.restart(event.onset_ms)
            # Realtime clients stop playing on speech_started
            self.echo.stop(self.clock.monotonic())
            self._idle = None
            await self.emit(se.input_audio_buffer_speech_started(event.audio_start_ms,
                                                                 self._speech_item))
        elif isinstance(event, SpeechConfirmed):
            if self.response is not None and td.interrupt_response:
                await self._cancel_response("turn_detected")
        elif isinstance(event, SpeechPaused) and self.settings.speculate and self._live():
            self._speculate(event.audio_end_ms)
        elif isinstance(event, SpeechResumed) and self._spec.current is not None:
            self._spec.resumed()  # a pause, not the end
        elif isinstance(event, SpeechStopped) and self._speech_item is not None:
            await self._end_of_speech(event.audio_end_ms, td.create_response)

    def _speculate(self, audio_end_ms: int) -> None:
        """Transcribe the turn so far now, in case this silence turns out to be its end,
        then start answering it: LLM and first-clause TTS behind a gate.

        Nothing is sent and nothing is written until the turn is confirmed; if speech
        resumes, everything speculative is dropped.
        """
        audio = self.buffer.slice_ms(self._utt_start_ms, audio_end_ms + ASR_TAIL_MS)
        self._spec.start(self._speech_item or "", self._utt_start_ms, audio_end_ms, audio,
                         self._wall_time_of(audio_end_ms))

    def _live(self) -> bool:
        """Whether audio arrives as it is spoken. Speculation buys a live speaker time; audio
        sent faster than real time reaches its next pause before the work would be of use,
        so its pauses start nothing (they still end turns as usual)."""
        budget = self._audio_budget
        return budget.level >= budget.burst - AHEAD_S

    def may_answer_early(self) -> bool:
        td = self.cfg.turn_detection
        return (self.settings.speculate_answer and td is not None and td.create_response
                and self.cfg.type == "realtime" and self.response is None
                and not self._busy and self._jobs.empty())

    async def _end_of_speech(self, audio_end_ms: int, respond: bool) -> None:
        item_id, self._speech_item = self._speech_item or p.new_id("item"), None
        spec = self._spec.take(self._utt_start_ms, audio_end_ms, item_id)
        clock = spec.clock if spec is not None else TurnClock(clock=self.clock)
        clock.mark("speech_end", self._wall_time_of(audio_end_ms))
        clock.mark("speech_stopped")
        await self.emit(se.input_audio_buffer_speech_stopped(audio_end_ms, item_id))
        self._partials.cancel()
        utterance = self.buffer.slice_ms(self._utt_start_ms, audio_end_ms + ASR_TAIL_MS)
        self.buffer.drop_before_ms(audio_end_ms)
        clock.compute_ms["speculative_discarded"] = float(self._spec.discarded())
        await self._commit(item_id, utterance, clock, respond, None, spec)

    async def _enforce_utterance_limit(self) -> None:
        if self._speech_item is None:
            return
        at_ms = self._detector.position_ms
        if at_ms - self._utt_start_ms >= self.settings.max_utterance_s * 1000:
            self._detector.reset()
            await self.error(LimitError(
                f"utterance longer than {self.settings.max_utterance_s:g} s; ending the turn here",
                code="utterance_too_long"))
            td = self.cfg.turn_detection
            await self._end_of_speech(at_ms, td is not None and td.create_response)

    async def _commit_manual(self, ev: p.AudioCommit) -> None:
        if self.buffer.held_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                f"buffer too small: {self.buffer.held_ms} ms held, at least {MIN_COMMIT_MS} ms "
                "needed", code="input_audio_buffer_commit_empty")
        clock = TurnClock(clock=self.clock)
        clock.mark("speech_end")
        clock.mark("speech_stopped")
        utterance = self.buffer.slice_ms(self.buffer.base_ms)
        self.buffer.clear()
        self._detector.reset()
        item_id, self._speech_item = self._speech_item or p.new_id("item"), None
        await self._commit(item_id, utterance, clock, False, ev.event_id)

    async def _commit(self, item_id: str, utterance: Float32, clock: TurnClock, respond: bool,
                      event_id: str | None, early: Speculation | None = None,
                      idle: bool = False) -> None:
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
            self._jobs.put(TranscribeJob(item_id, utterance, clock, respond, early, idle),
                           event_id)
        except LimitError:
            if early is not None and early.answer is not None:
                early.answer.discard()
            raise

    # ------------------------------------------------------------------ partial transcripts

    async def _maybe_partial(self) -> None:
        # Only while the user is audibly speaking: a partial started in a pause could hold
        # the ASR lane just when the final transcript of that turn needs it.
        if self._speech_item is None or not self._detector.hearing_speech:
            return
        self._partials.maybe(self._speech_item, self.buffer.total_ms,
                             lambda: self.buffer.slice_ms(self._utt_start_ms))

    # ------------------------------------------------------------------ turns

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            self._busy = True
            try:
                if isinstance(job, TranscribeJob):
                    await self._transcribe(job)
                else:
                    await self._respond(job.params, job.clock, job.event_id)
            except VoxwireError as exc:  # a ProtocolError names the response.create
                await self.error(exc, getattr(job, "event_id", None))
            except Exception as exc:
                log.exception("turn failed")
                await self.error(exc)
            finally:
                self._busy = False
                if isinstance(job, TranscribeJob) and job.early and job.early.answer:
                    job.early.answer.discard()  # not adopted: no-op if it was

    async def _transcribe(self, job: TranscribeJob) -> None:
        asr = self.engines.asr
        started = self.clock.monotonic()
        try:
            if job.early is not None:  # started at the first silence: usually done already
                result = await job.early.result
                job.clock.compute_ms["asr_speculative"] = 1.0
            else:
                result = await self.engines.asr_lane.run(lambda: asr.transcribe(job.audio),
                                                         owner=self.id)
        except Exception as exc:
            code = "asr_failed"
            if isinstance(exc, TranscriptionTimeout):  # bad audio, not a server fault
                log.warning("transcription failed: %s", exc)
                code = exc.code
            else:
                log.exception("transcription failed")
            await self.emit(se.input_audio_transcription_failed(job.item_id, str(exc), code))
            return
        job.clock.compute_once("asr", started)
        job.clock.mark("asr_done")
        job.clock.compute_ms["asr_path_short"] = float(result.path == "short")
        try:
            item = self.conv.get(job.item_id)
        except ProtocolError:
            return  # the client deleted the item meanwhile
        item["content"][0]["transcript"] = result.text
        await self.emit(se.input_audio_transcription_completed(
            job.item_id, result.text, len(job.audio) / RATE))
        if self.cfg.type != "realtime":
            return  # transcripts only
        await self.emit(se.conversation_item_done(item))
        if job.respond and (result.text.strip() or job.idle):
            early = job.early.answer if job.early is not None else None
            # After the idle timeout the model is told of the silence, as it would hear it.
            pending = None if result.text.strip() else ChatMessage("user", SILENCE)
            await self._respond({}, job.clock, None, user_item_id=job.item_id, early=early,
                                user_audio=job.audio, pending=pending)

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
                               self.outbox.caught_up, self.clock)

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
            self._idle = Idle(self.clock.monotonic())
        audio = resp.sent_audio
        if self.settings.record and resp.message_id is not None and audio is not None:
            self.items.keep_audio(resp.message_id, audio)

    async def answer_ended(self) -> None:
        """Until the answer in progress (if any) has ended."""
        if self.response is not None:
            await self.response.wait()

    # ------------------------------------------------------------------ idle timeout

    async def _check_idle(self) -> None:
        """After an answer has played, `idle_timeout_ms` of input audio with no speech
        starts a turn of its own: `input_audio_buffer.timeout_triggered`, the silent audio
        committed, and an answer (as OpenAI's server VAD does)."""
        td, idle = self.cfg.turn_detection, self._idle
        if (idle is None or td is None or td.idle_timeout_ms is None
                or self.cfg.type != "realtime" or self._speech_item is not None
                or self.response is not None or self._busy or not self._jobs.empty()):
            return
        if idle.start_ms is None:
            played = max(idle.since, self.echo.play_end)
            if self.clock.monotonic() < played:
                return  # still playing
            idle.start_ms = next((ms for ms, t in self._arrivals if t >= played),
                                 self.buffer.total_ms)
        end_ms = self.buffer.total_ms
        if end_ms - idle.start_ms < td.idle_timeout_ms:
            return
        self._idle = None
        item_id = p.new_id("item")
        await self.emit(se.input_audio_buffer_timeout_triggered(idle.start_ms, end_ms, item_id))
        clock = TurnClock(clock=self.clock)
        clock.mark("speech_end")
        clock.mark("speech_stopped")
        audio = self.buffer.slice_ms(max(idle.start_ms, self.buffer.base_ms), end_ms)
        self.buffer.drop_before_ms(end_ms)
        await self._commit(item_id, audio, clock, td.create_response, None, idle=True)

    async def _cancel_response(self, reason: str, *, wait: bool = False) -> None:
        resp = self.response
        if resp is None:
            return
        resp.cancel(reason)
        self.echo.stop(self.clock.monotonic())  # the client stops playing at once
        if wait:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await self.clock.wait_for(resp.wait(), 5)
