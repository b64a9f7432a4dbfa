"""Speculation: work started at the first silence of a turn, before the turn is known to
be over. Its transcript first; then, when nothing else is going on, the answer itself
(LLM and first-clause TTS) behind a gate. Nothing is sent and nothing is written until the
turn is confirmed; if speech resumes, everything speculative is dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from server.errors import VoxwireError
from server.response.gate import Gate
from server.response.run import Response, ResponseContext
from server.runtime.clock import Clock
from server.runtime.engines import SessionEngines
from server.runtime.metrics import TurnClock
from server.stages import ChatRequest, Float32, Transcript

log = logging.getLogger(__name__)


@dataclass(eq=False)
class EarlyAnswer:
    """A response computed speculatively for a turn not yet over, held behind its gate."""

    request: ChatRequest
    modalities: tuple[str, ...]
    resp: Response
    gate: Gate
    adopted: bool = False

    def discard(self) -> None:
        if self.adopted:
            return
        self.resp.cancel(None)  # no reason: it ends without a word


@dataclass
class Speculation:
    """Work started at the first silence of a turn, before the turn is known to be over:
    its transcript, then (when nothing else is going on) the answer itself."""

    start_ms: int
    end_ms: int
    item_id: str
    clock: TurnClock
    result: asyncio.Future[Transcript]
    stop: threading.Event  # set when the speculation is dropped: its ASR job is not run
    starter: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None  # semantic_vad: its words, to the ears
    answer: EarlyAnswer | None = None


class Host(Protocol):
    """What a speculation needs from its session."""

    @property
    def closed(self) -> bool: ...
    @property
    def voice(self) -> str: ...
    def may_answer_early(self) -> bool: ...
    def prepare_early(self, text: str) -> tuple[ChatRequest, str | None, tuple[str, ...]]:
        """The request answering ``text`` as the turn's user message (raises VoxwireError)."""
        ...
    def gated_context(self) -> tuple[ResponseContext, Gate]:
        """A response context whose events wait behind a new gate, and the gate."""
        ...
    def response_ended(self, resp: Response) -> None:
        """A response it started has ended, however it ended."""
        ...


class Speculator:
    """A session's speculation: the one in progress, the early answers still alive, and how
    many speculative starts the current turn dropped."""

    def __init__(self, owner: str, engines: SessionEngines, clock: Clock, host: Host) -> None:
        self.owner, self.engines, self.clock, self.host = owner, engines, clock, host
        self.current: Speculation | None = None
        self._discarded = 0  # speculative starts dropped in the current turn
        self._early: set[EarlyAnswer] = set()  # live ones, to discard at close
        self._preparing: asyncio.Task[None] | None = None

    def prepare(self, text: str) -> None:
        """The user's words so far (a partial transcript) while the turn goes on: the
        model may compute them into its prompt now (`Responder.prepare`), so that the
        answer, when the turn ends, computes only the words after them. One at a time:
        the next preview brings more words anyway."""
        if self._preparing is not None and not self._preparing.done():
            return
        if not text.strip() or self.host.closed or not self.host.may_answer_early():
            return
        try:
            request, _, _ = self.host.prepare_early(text)
        except VoxwireError:
            return  # the turn's own answer will say so
        self._preparing = asyncio.create_task(self._prepare(request),
                                              name=f"{self.owner}-prepare")

    async def _prepare(self, request: ChatRequest) -> None:
        try:
            computed = await self.engines.responder.prepare(request)
        except Exception:  # optional work: the answer computes the words itself
            log.warning("preparing the model's prompt failed", exc_info=True)
        else:
            log.debug("prepared %d prompt tokens of %r", computed,
                      request.messages[-1].content)

    def start(self, item_id: str, start_ms: int, end_ms: int, audio: Float32,
              speech_end: float) -> None:
        """Transcribe the turn so far (``audio``) now, in case this silence turns out to be
        its end, then start answering it: LLM and first-clause TTS behind a gate."""
        self.drop()
        asr = self.engines.asr
        clock = TurnClock(clock=self.clock)
        clock.mark("speech_end", speech_end)

        stop = threading.Event()

        def transcribe() -> Transcript:
            started = self.clock.monotonic()
            out = asr.transcribe(audio, stop=stop)
            clock.compute_once("asr", started)
            return out

        def tentative() -> bool:  # until the turn is confirmed (or this is dropped)
            return self.current is not None and self.current.stop is stop

        result = asyncio.ensure_future(
            self.engines.asr_lane.run(transcribe, owner=self.owner, token=stop,
                                      background=tentative))
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # never unretrieved
        spec = Speculation(start_ms, end_ms, item_id, clock, result, stop)
        self.current = spec
        if self.host.may_answer_early():
            spec.starter = asyncio.create_task(self._answer_early(spec),
                                               name=f"{self.owner}-early")

    def resumed(self) -> None:
        """Speech resumed: the silence was a pause, not the end."""
        self.drop()
        self._discarded += 1

    def take(self, start_ms: int, end_ms: int, item_id: str) -> Speculation | None:
        """The turn ended: its speculation if it covered exactly this span, else nothing
        (one that covered another is dropped)."""
        spec, self.current = self.current, None
        if spec is not None and (spec.start_ms, spec.end_ms, spec.item_id) != (
                start_ms, end_ms, item_id):
            self.current = spec
            self.drop()
            spec = None
        return spec

    def discarded(self) -> int:
        """How many speculative starts the turn now ending dropped; the count starts over."""
        count, self._discarded = self._discarded, 0
        return count

    def drop(self) -> None:
        spec, self.current = self.current, None
        if spec is None:
            return
        spec.stop.set()  # its transcription is not run, or ends at its next check
        spec.result.cancel()
        for task in (spec.starter, spec.reader):
            if task is not None:
                task.cancel()
        if spec.answer is not None:
            spec.answer.discard()

    def close(self) -> None:
        self.drop()
        if self._preparing is not None:
            self._preparing.cancel()
        for answer in list(self._early):
            answer.discard()

    async def _answer_early(self, spec: Speculation) -> None:
        try:
            result = await spec.result
        except Exception:
            return  # the turn's own transcription will report it
        spec.clock.mark("asr_done")
        if self.current is not spec or not result.text.strip() or self.host.closed:
            return
        if not self.host.may_answer_early():
            return
        try:
            request, notice, modalities = self.host.prepare_early(result.text)
        except VoxwireError:
            return  # the confirmed turn will raise it again, and say so
        ctx, gate = self.host.gated_context()
        request = dataclasses.replace(request, speculative=True, background=ctx.tentative)
        resp = Response(ctx, request, notice, modalities=modalities, turn=spec.clock,
                        user_item_id=spec.item_id, voice=self.host.voice)
        answer = EarlyAnswer(request, modalities, resp, gate)
        spec.answer = answer
        self._early.add(answer)

        def ended(resp: Response) -> None:
            self.host.response_ended(resp)
            self._early.discard(answer)

        resp.start(ended, name=f"{resp.id}-early")
