"""The turns waiting for a session's turn worker: transcriptions of spoken turns and
explicit `response.create`s, bounded by count and by the audio they hold."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from realtime import Json
from server.audio import RATE
from server.errors import LimitError
from server.runtime.metrics import TurnClock
from server.session.speculation import Speculation
from server.stages import Float32


@dataclass
class TranscribeJob:
    item_id: str
    audio: Float32
    clock: TurnClock
    respond: bool
    early: Speculation | None = None  # started at the first silence, same span
    idle: bool = False  # committed by the idle timeout: answered even if nothing was heard
    transcript: str | None = None  # already known (a backchannel): no transcription


@dataclass
class RespondJob:
    params: Json
    event_id: str | None
    clock: TurnClock | None


Job = TranscribeJob | RespondJob


class TurnQueue:
    def __init__(self, max_buffer_s: float, maxsize: int = 8) -> None:
        self.max_buffer_s = max_buffer_s
        self._jobs: asyncio.Queue[Job] = asyncio.Queue(maxsize)
        self._queued_samples = 0  # audio held by the turns waiting: max_buffer_s at most

    def empty(self) -> bool:
        return self._jobs.empty()

    def put(self, job: Job, event_id: str | None) -> None:
        """Queue ``job``, or raise LimitError (naming ``event_id``) when it has no room."""
        samples = len(job.audio) if isinstance(job, TranscribeJob) else 0
        if self._queued_samples + samples > self.max_buffer_s * RATE:
            raise LimitError(f"more than {self.max_buffer_s:g} s of turns waiting to "
                             "be transcribed; this one was dropped", code="turn_queue_full",
                             event_id=event_id)
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            raise LimitError("too many turns waiting; this one was dropped",
                             code="turn_queue_full", event_id=event_id) from None
        self._queued_samples += samples

    async def get(self) -> Job:
        job = await self._jobs.get()
        if isinstance(job, TranscribeJob):
            self._queued_samples -= len(job.audio)
        return job
