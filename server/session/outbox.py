"""The session's outbox: server events waiting for a door to send them, bounded."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import realtime as p
from realtime import Json

OnSent = Callable[[], None]
# Never sent: a door that takes it calls its on_sent, which says the events before it were.
FLUSHED: Json = {"type": "flushed"}
Emit = Callable[..., Awaitable[None]]  # put a server event (and what to do once it is sent)


class Outbox:
    """Server events waiting for the edge to send them, bounded by count and by bytes (an
    estimate of their JSON). A full outbox makes the producer wait; an event larger than
    the whole byte budget still goes through, alone."""

    def __init__(self, maxsize: int, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.maxsize, self.max_bytes = maxsize, max_bytes
        self.bytes = 0
        self._events: deque[tuple[Json, OnSent | None, int]] = deque()
        self._changed = asyncio.Condition()
        # Told of each event as it is put, before it waits for room or for its turn: a
        # door that must act on one at once (a barge-in silencing a track that holds
        # seconds of the answer) need not wait until the events before it are sent.
        self.observer: Callable[[Json], None] | None = None

    def __len__(self) -> int:
        return len(self._events)

    async def put(self, event: Json, on_sent: OnSent | None = None) -> None:
        if self.observer is not None:
            self.observer(event)
        size = p.json_size(event)

        def room() -> bool:
            return not self._events or (len(self._events) < self.maxsize
                                        and self.bytes + size <= self.max_bytes)

        async with self._changed:
            await self._changed.wait_for(room)
            self._events.append((event, on_sent, size))
            self.bytes += size
            self._changed.notify_all()

    async def caught_up(self) -> None:
        """Wait until the client has taken at least half of what its outbox may hold."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._events) <= self.maxsize // 2
                                         and self.bytes <= self.max_bytes // 2)

    async def get(self) -> tuple[Json, OnSent | None]:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._events))
            event, on_sent, size = self._events.popleft()
            self.bytes -= size
            self._changed.notify_all()
        return event, on_sent

    async def drain(self) -> list[tuple[Json, OnSent | None]]:
        """Take every waiting event at once, without waiting for more (for a door that
        sends in batches, and for tests). The caller calls each ``on_sent`` once sent."""
        async with self._changed:
            taken = [(event, on_sent) for event, on_sent, _ in self._events]
            self._events.clear()
            self.bytes = 0
            self._changed.notify_all()
        return taken

    def __aiter__(self) -> AsyncIterator[tuple[Json, OnSent | None]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[tuple[Json, OnSent | None]]:
        while True:
            yield await self.get()
