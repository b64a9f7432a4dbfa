"""The session's clock: wall time, monotonic time and waiting, given rather than read.

The session core never calls `time` or `asyncio.sleep` itself: it asks the clock it was
given. A server runs on `SYSTEM`; tests use `FakeClock`, which moves only when the test
advances it, so turn timings are exact and instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for records that outlive the process)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...

    async def wait_for(self, aw: Awaitable[T], seconds: float) -> T:
        """``aw``'s result, or TimeoutError (``aw`` cancelled) after ``seconds`` on this
        clock, as `asyncio.wait_for`."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_for(self, aw: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(aw, seconds)


SYSTEM: Clock = SystemClock()


class FakeClock:
    """A clock that stands still until `advance` moves it; sleepers wake in deadline order.

    ``now`` is ``epoch`` plus the monotonic reading, so both move together."""

    def __init__(self, start: float = 1000.0, epoch: float = 1_700_000_000.0) -> None:
        self._t = start
        self._epoch = epoch
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._epoch + self._t

    def monotonic(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._order), future))
        await future

    async def wait_for(self, aw: Awaitable[T], seconds: float) -> T:
        task = asyncio.ensure_future(aw)
        timer = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            timer.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise TimeoutError

    @property
    def sleepers(self) -> int:
        """Waits not yet due (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """When the earliest pending sleeper is due, if any."""
        live = [at for at, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper now due (their tasks run
        at the loop's next turn)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.set(self._t + seconds)

    def set(self, t: float) -> None:
        """Move time forward to monotonic ``t``."""
        self._t = max(self._t, t)
        while self._sleepers and self._sleepers[0][0] <= self._t:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
