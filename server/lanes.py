"""Worker lanes: every CPU-bound model call runs in a thread, never on the event loop.

Each engine gets its own lane (a one-thread executor), so calls to the same model are
serialized in arrival order while different stages (ASR of one session, LLM of another,
TTS of a third) run in parallel. Generators are iterated inside the lane's thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
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

        At most ``maxsize`` items wait for the consumer. When they do, the producer parks:
        it gives the lane's thread back to other callers and is resumed (in the lane again)
        once the consumer takes an item, so a consumer that stops reading never holds the
        lane. Set ``stop`` (or stop consuming) to make the producer abandon the generator.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()  # bounded by `free`, below
        lock = threading.Lock()
        free, parked, halted = maxsize, False, False
        gen: Iterator[T] | None = None

        def deliver(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def close() -> None:
            close_gen = getattr(gen, "close", None)
            if close_gen is not None:
                close_gen()

        def pump() -> None:  # in the lane's thread; never raises: failures are queued
            nonlocal gen, free, parked
            try:
                if gen is None:
                    gen = make()
                while True:
                    with lock:
                        if halted or stop.is_set():
                            break
                        if free == 0:
                            parked = True  # the consumer resubmits us when it takes one
                            return
                        free -= 1
                    try:
                        item = next(gen)
                    except StopIteration:
                        break
                    deliver(item)
                close()
                deliver(_DONE)
            except BaseException as exc:  # handed to the consumer, raised there
                with contextlib.suppress(BaseException):
                    close()
                deliver(_Failure(exc))

        def resume() -> None:
            nonlocal parked
            with lock:
                again, parked = parked, False
            if again:
                loop.run_in_executor(self._pool, pump)

        loop.run_in_executor(self._pool, pump)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                with lock:
                    free += 1
                resume()
                yield item  # type: ignore[misc]
        finally:
            with lock:
                halted = True  # a running producer stops at its next item
            resume()  # a parked one is woken to close its generator in the lane

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
