"""Worker lanes: every CPU-bound model call runs in a thread, never on the event loop.

Each engine gets its own lane (a one-thread executor), so calls to the same model are
serialized in arrival order while different stages (ASR of one session, LLM of another,
TTS of a third) run in parallel. Generators are iterated inside the lane's thread too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"voxwire-{name}")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def stream(
        self, make: Callable[[], Iterator[T]], stop: threading.Event, maxsize: int = 16
    ) -> AsyncGenerator[T, None]:
        """Iterate ``make()`` in the lane's thread; yield its items here, with backpressure.

        Set ``stop`` (or stop consuming) to make the thread abandon the generator.
        """
        loop = asyncio.get_running_loop()
        halt = threading.Event()  # this stream only: the consumer went away

        def stopped() -> bool:
            return halt.is_set() or stop.is_set()

        # The queue itself is unbounded; the slots bound it: the thread takes one per item
        # and the consumer gives it back, so a slow consumer holds the producer back.
        queue: asyncio.Queue[object] = asyncio.Queue()
        slots = threading.Semaphore(maxsize)

        def put(item: object) -> bool:
            while not stopped():
                if slots.acquire(timeout=0.05):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                    return True
            return False

        def work() -> None:
            try:
                gen = make()
                try:
                    for item in gen:
                        if stopped() or not put(item):
                            break
                finally:
                    close = getattr(gen, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:  # handed to the consumer, raised there
                put(_Failure(exc))
                return
            put(_DONE)

        loop.run_in_executor(self._pool, work)  # work() never raises: failures are queued
        try:
            while True:
                item = await queue.get()
                slots.release()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                yield item  # type: ignore[misc]
        finally:
            halt.set()  # the thread notices within 50 ms; the loop never waits for it

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
