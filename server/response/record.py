"""What a response leaves behind when it ends: one `TurnRecord`, handed to the sinks the
session was given (the store, the metrics and the turn log), each on its own: a sink that
fails is logged (and, when it has something to tell the client, told) and the others still
get the record."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from realtime import Json
from server.errors import VoxwireError
from server.stages import Float32

if TYPE_CHECKING:
    from server.runtime.metrics import TurnClock

log = logging.getLogger(__name__)

# When a sink takes a turn: "ended" as soon as the response has ended, before
# `response.done` announces it (so an announced turn is never lost); "sent" once its first
# output has left (so its latency figures are whole), after `response.done`.
When = Literal["ended", "sent"]


@dataclass(frozen=True)
class Timings:
    """A turn's clock, read at one moment (milliseconds)."""

    stages_ms: dict[str, float]
    overhead_ms: float | None
    marks_ms: dict[str, float]
    compute_ms: dict[str, float]


@dataclass(frozen=True)
class TurnRecord:
    response_id: str
    session_id: str
    user_item_id: str | None  # the user message it answers
    user_text: str
    said: str  # the answer's text as the client got it: heard (audio) or written (text)
    status: str  # completed, incomplete (cut at max tokens), cancelled or failed
    backend: str
    tools: tuple[str, ...]  # the tools called, in order
    usage: Json | None  # `response.usage`, where the backend gave token counts
    audio_ms: float  # the answer's audio sent
    timings: Timings
    started_at: float  # wall clock (Unix seconds)
    finished_at: float
    user_audio: Float32 | None = None  # 16 kHz, kept only where turns' audio is recorded
    answer_audio: Float32 | None = None  # as sent, 16 kHz; the same
    transport: str = "websocket"  # the door the session came through: websocket, webrtc

    @property
    def answered(self) -> bool:
        """An answer was given: completed, or cut at the token cap."""
        return self.status in ("completed", "incomplete")

    def metrics(self) -> Json:
        """The turn's figures, as `voxwire.turn.metrics` and the turn log show them."""
        t = self.timings
        return {"response_id": self.response_id, "item_id": self.user_item_id,
                "status": self.status, "stages_ms": t.stages_ms, "overhead_ms": t.overhead_ms,
                "marks_ms": t.marks_ms, "compute_ms": t.compute_ms,
                "audio_ms": round(self.audio_ms, 1), "backend": self.backend,
                "transport": self.transport}


class TurnSink(Protocol):
    """Takes the record of each turn that ends, at the moment ``when`` says."""

    @property
    def when(self) -> When: ...

    async def take(self, turn: TurnRecord) -> None: ...


@runtime_checkable
class TurnWatcher(Protocol):
    """A sink that also sees each response start (the traces' turn span): what ``begin``
    returns is held open while the response runs, in the response's own task."""

    def begin(self, session_id: str, response_id: str,
              turn: TurnClock) -> contextlib.AbstractContextManager[None]: ...


def watched(sinks: Sequence[TurnSink], session_id: str, response_id: str,
            turn: TurnClock) -> contextlib.ExitStack:
    """Each watching sink's ``begin`` for one response, entered; one that fails is logged
    and the response goes on without it."""
    stack = contextlib.ExitStack()
    for sink in sinks:
        if isinstance(sink, TurnWatcher):
            try:
                stack.enter_context(sink.begin(session_id, response_id, turn))
            except Exception:
                log.exception("turn %s: %s failed", response_id, type(sink).__name__)
    return stack


async def hand_over(sinks: Sequence[TurnSink], turn: TurnRecord, when: When,
                    tell: Callable[[VoxwireError], Awaitable[None]]) -> None:
    """Give ``turn`` to each sink whose moment is ``when``. A sink that fails breaks
    nothing: it is logged, and what it raised is told (``tell``) when it is ours to tell."""
    for sink in sinks:
        if sink.when != when:
            continue
        try:
            await sink.take(turn)
        except Exception as exc:
            log.exception("turn %s: %s failed", turn.response_id, type(sink).__name__)
            if isinstance(exc, VoxwireError):
                await tell(exc)
