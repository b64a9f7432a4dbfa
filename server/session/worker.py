"""A session's turn worker: takes the turns from its queue one at a time, transcribes each
spoken one (or takes the transcript its speculation already made), reports the transcript,
and hands the turn on to be answered; an explicit `response.create` is handed on as it is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from realtime import SessionConfig
from realtime import server_events as se
from server.audio import RATE
from server.errors import ProtocolError, TranscriptionTimeout, VoxwireError
from server.response.run import Emit
from server.runtime.clock import Clock
from server.runtime.engines import SessionEngines
from server.runtime.metrics import TurnClock
from server.session.conversation import Conversation
from server.session.jobs import Job, RespondJob, TranscribeJob, TurnQueue
from server.session.speculation import EarlyAnswer
from server.stages import Float32, Transcript

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcribed:
    """A spoken turn, transcribed, to be answered."""

    item_id: str
    text: str
    audio: Float32
    clock: TurnClock
    early: EarlyAnswer | None  # prepared while the turn was ending, if any
    idle: bool  # committed by the idle timeout: answered even if nothing was heard


class Host(Protocol):
    """What the turn worker needs from its session."""

    @property
    def cfg(self) -> SessionConfig: ...
    async def error(self, exc: BaseException, event_id: str | None = None) -> None: ...
    async def answer(self, turn: Transcribed) -> None: ...
    async def respond(self, job: RespondJob) -> None: ...


class TurnWorker:
    def __init__(self, owner: str, engines: SessionEngines, max_buffer_s: float, clock: Clock,
                 conv: Conversation, emit: Emit, host: Host) -> None:
        self.owner, self.engines, self.clock = owner, engines, clock
        self.conv, self.emit, self.host = conv, emit, host
        self._jobs = TurnQueue(max_buffer_s)
        self._busy = False  # handling a job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name=f"{self.owner}-turns")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def put(self, job: Job, event_id: str | None) -> None:
        """Queue ``job``, or raise LimitError (naming ``event_id``) when it has no room."""
        self._jobs.put(job, event_id)

    @property
    def idle(self) -> bool:
        """No turn is being handled or waits to be."""
        return not self._busy and self._jobs.empty()

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            self._busy = True
            try:
                if isinstance(job, TranscribeJob):
                    await self._transcribe(job)
                else:
                    await self.host.respond(job)
            except VoxwireError as exc:  # a ProtocolError names the response.create
                await self.host.error(exc, getattr(job, "event_id", None))
            except Exception as exc:
                log.exception("turn failed")
                await self.host.error(exc)
            finally:
                self._busy = False
                if isinstance(job, TranscribeJob) and job.early and job.early.answer:
                    job.early.answer.discard()  # not adopted: no-op if it was

    async def _transcribe(self, job: TranscribeJob) -> None:
        started = self.clock.monotonic()
        try:
            if job.transcript is not None:
                result = Transcript(job.transcript)
            elif job.early is not None:  # started at the first silence: usually done already
                result = await job.early.result
                job.clock.compute_ms["asr_speculative"] = 1.0
            else:
                result = await self._run_asr(job.audio)
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
        for name, value in result.details.items():
            job.clock.compute_ms[f"asr_{name}"] = value
        try:
            item = self.conv.get(job.item_id)
        except ProtocolError:
            return  # the client deleted the item meanwhile
        item["content"][0]["transcript"] = result.text
        await self.emit(se.input_audio_transcription_completed(
            job.item_id, result.text, len(job.audio) / RATE))
        if self.host.cfg.type != "realtime":
            return  # transcripts only
        await self.emit(se.conversation_item_done(item))
        if job.respond and (result.text.strip() or job.idle):
            early = job.early.answer if job.early is not None else None
            await self.host.answer(Transcribed(job.item_id, result.text, job.audio,
                                               job.clock, early, job.idle))

    async def _run_asr(self, audio: Float32) -> Transcript:
        asr = self.engines.asr
        return await self.engines.asr_lane.run(lambda: asr.transcribe(audio), owner=self.owner)
