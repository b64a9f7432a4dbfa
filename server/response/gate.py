"""The gate of a speculative response: what it emits is held until its turn is confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from realtime import Json
from server.session.outbox import Emit


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
