"""Worker lanes: every CPU-bound model call runs in a thread, never on the event loop.

Each engine gets its own lane (one worker thread), so calls to the same model are
serialized while different stages (ASR of one session, LLM of another, TTS of a third)
run in parallel. Generators are iterated inside the lane's thread too.

Lanes are shared by every session, so they are fair and cancellable:

- Each job belongs to an owner (a session id). The lane is shared fairly in time: it
  serves next the waiting owner that has used the lane least since it last started
  waiting (start-time fair queueing over the seconds each job held the thread), so a
  session that queues a lot, or whose jobs are long (a long prompt, a long utterance),
  only waits behind itself, and a short job of a light user goes ahead of them.
- An owner that comes back after waiting for nothing starts up to ``RETURN_CREDIT_S`` of
  lane time behind the present (never more than it was away, in the lane's time): someone
  who just finished speaking, back for a turn's transcription, first tokens or first clause,
  goes ahead of the owners that kept the lane busy meanwhile, for that long at most. Owners
  that never stop waiting earn no credit; a newcomer gets it once.
- A job may be background work (a speculation on a turn not yet over): while its
  ``background`` check says so, it waits for every other owner's foreground job. The check
  is made each time the lane picks, so work that becomes urgent (its turn was confirmed)
  is served as foreground from then on.
- Each job carries a token (a ``threading.Event``). A job whose token is set before it
  starts never runs; a long job may check it as it goes. ``cancel_owner`` sets the token
  of every job an owner has queued or running (a session closing).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
_DONE = object()
RETURN_CREDIT_S = 0.5


@dataclass(eq=False)
class _Job:
    fn: Callable[[], Any]
    token: threading.Event
    owner: str
    settle: Callable[[Any, BaseException | None], None] = field(repr=False)
    must_run: bool = False  # a parked generator's resumption: it closes what it started
    background: Callable[[], bool] | None = None  # true while it may wait for the others

    def deferrable(self) -> bool:
        return self.background is not None and self.background()


class StreamControl:
    """Lets someone other than its consumer end a stream (``Lane.stream``): the producer
    stops at its next item or, parked, is woken to close its generator in the lane."""

    def __init__(self) -> None:
        self.halted = False
        self._halt: Callable[[], None] | None = None

    def halt(self) -> None:
        self.halted = True
        if self._halt is not None:
            self._halt()


class WorkLane(Protocol):
    """What callers need of a lane: `Lane`, or `InlineLane` where tests want no threads."""

    @property
    def name(self) -> str: ...

    async def run(self, fn: Callable[[], T], *, owner: str = "",
                  token: threading.Event | None = None,
                  background: Callable[[], bool] | None = None) -> T: ...

    def stream(
        self, make: Callable[[], Iterator[T]], stop: threading.Event, maxsize: int = 16, *,
        owner: str = "", park: bool = True, step: bool = False,
        on_closed: Callable[[], None] | None = None, control: StreamControl | None = None,
        background: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[T, None]: ...

    def cancel_owner(self, owner: str) -> int: ...

    def contended(self) -> bool: ...

    def close(self) -> None: ...


class LaneClosed(RuntimeError):
    """The lane was shut down with this job still waiting."""


class Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Job]] = {}
        self._turns: deque[str] = deque()  # owners with queued jobs, in the order they came
        # Virtual time: each owner's lane seconds used, counted from the virtual time at
        # which it last started waiting; `_now` is the mark of the job last started.
        self._used: dict[str, float] = {}
        self._now = 0.0
        self._running: _Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"voxwire-{name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._turns and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                owner = self._next_owner()
                queue = self._queues[owner]
                job = queue.popleft()
                if queue:
                    self._turns.append(owner)
                else:
                    del self._queues[owner]
                self._running = job
                self._now = max(self._now, self._used[owner])
            started = time.monotonic()
            try:
                if job.token.is_set() and not job.must_run:
                    job.settle(None, asyncio.CancelledError())
                    continue
                try:
                    result = job.fn()
                except BaseException as exc:  # handed to the caller, raised there
                    job.settle(None, exc)
                else:
                    job.settle(result, None)
            finally:
                with self._cond:
                    self._running = None
                    self._used[owner] += time.monotonic() - started
                    if owner not in self._queues and len(self._used) > 2 * len(self._queues):
                        # Owners not waiting whose use is already a full credit behind the
                        # virtual time would start from there anyway: forget them.
                        floor = self._now - RETURN_CREDIT_S
                        for idle in [o for o, used in self._used.items()
                                     if o not in self._queues and used <= floor]:
                            del self._used[idle]

    def _next_owner(self) -> str:
        """The waiting owner that has used the lane least (the first come among equals),
        among those whose next job is foreground if any is. Called with the lock held and
        at least one owner waiting."""
        foreground = [i for i, owner in enumerate(self._turns)
                      if not self._queues[owner][0].deferrable()]
        pick = min(foreground or range(len(self._turns)),
                   key=lambda i: self._used[self._turns[i]])
        owner = self._turns[pick]
        del self._turns[pick]
        return owner

    def _submit(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                job.settle(None, LaneClosed(f"the {self.name} lane is closed"))
                return
            queue = self._queues.get(job.owner)
            if queue is None:
                queue = self._queues[job.owner] = deque()
                self._turns.append(job.owner)
                # Use before the owner last stopped waiting counts only while others
                # still catch up with it; one back from waiting for nothing starts up to
                # a credit behind the present, by as much as it was away.
                floor = self._now - RETURN_CREDIT_S
                self._used[job.owner] = max(self._used.get(job.owner, floor), floor)
            queue.append(job)
            self._cond.notify()

    # ------------------------------------------------------------------ callers

    async def run(self, fn: Callable[[], T], *, owner: str = "",
                  token: threading.Event | None = None,
                  background: Callable[[], bool] | None = None) -> T:
        """Run ``fn`` in the lane. Cancelling the caller cancels the job if it has not
        started (and sets its token, for a job that checks it). While ``background()`` is
        true (called in the lane's thread), the job waits for other owners' other jobs."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        token = token or threading.Event()

        def settle(result: Any, exc: BaseException | None) -> None:
            _call_soon(loop, _settle, future, result, exc)

        self._submit(_Job(fn, token, owner, settle, background=background))
        try:
            return await future
        except asyncio.CancelledError:
            token.set()
            raise

    def cancel_owner(self, owner: str) -> int:
        """Cancel everything ``owner`` has queued, and ask its running job to stop."""
        with self._cond:
            jobs = list(self._queues.get(owner, ()))
            if self._running is not None and self._running.owner == owner:
                jobs.append(self._running)
        for job in jobs:
            job.token.set()
        return len(jobs)

    def contended(self) -> bool:
        """Whether a job of any owner waits for the lane (a hint, read without the lock)."""
        return bool(self._turns)

    def pending(self, owner: str | None = None) -> int:
        with self._cond:
            if owner is not None:
                return len(self._queues.get(owner, ()))
            return sum(len(q) for q in self._queues.values())

    async def stream(
        self, make: Callable[[], Iterator[T]], stop: threading.Event, maxsize: int = 16, *,
        owner: str = "", park: bool = True, step: bool = False,
        on_closed: Callable[[], None] | None = None, control: StreamControl | None = None,
        background: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[T, None]:
        """Iterate ``make()`` in the lane's thread; yield its items here.

        With ``park`` (the default), at most ``maxsize`` items wait for the consumer. When
        they do, the producer parks: it gives the lane's thread back to other callers and
        is resumed (in the lane again, behind every other owner's job) once the consumer
        takes an item, so a consumer that stops reading never holds the lane.

        Without ``park`` the producer never waits for its consumer; the generator must
        bound its own output. With ``step`` it makes one item per turn of the lane and then
        goes behind every other owner's job, so long generations of different sessions
        take turns; without it, it runs to its end in one go.

        Set ``stop`` (or stop consuming) to make the producer abandon the generator.
        ``on_closed`` is called once on the event loop when the producer is done with the
        generator (it ended, failed, was closed, or never started); ``control`` can end the
        stream from outside; ``background`` is as for ``run``, checked at each turn.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()  # bounded by `free`, or by `make`
        lock = threading.Lock()
        free, parked, halted, closed = maxsize, False, False, False
        gen: Iterator[T] | None = None

        def deliver(item: object) -> None:
            _call_soon(loop, queue.put_nowait, item)

        def finished() -> None:  # in the lane's thread, or on the loop; once
            nonlocal closed
            with lock:
                if closed:
                    return
                closed = True
            if on_closed is not None:
                _call_soon(loop, on_closed)

        def close() -> None:
            close_gen = getattr(gen, "close", None)
            try:
                if close_gen is not None:
                    close_gen()
            finally:
                finished()

        def again() -> None:
            self._submit(_Job(pump, stop, owner, settled, must_run=True,
                              background=deferrable))

        def pump() -> None:  # in the lane's thread; never raises: failures are queued
            nonlocal gen, free, parked
            try:
                while True:
                    with lock:
                        if halted or stop.is_set():
                            break
                        if park and free == 0:
                            parked = True  # the consumer resubmits us when it takes one
                            return
                        free -= 1
                    if gen is None:
                        gen = make()
                    try:
                        item = next(gen)
                    except StopIteration:
                        break
                    deliver(item)
                    if step:
                        again()  # the next item waits for everyone else's turn
                        return
                close()
                deliver(_DONE)
            except BaseException as exc:  # handed to the consumer, raised there
                with contextlib.suppress(BaseException):
                    close()
                deliver(_Failure(exc))

        def settled(_result: Any, exc: BaseException | None) -> None:
            if exc is not None:  # never ran: cancelled before it started, or the lane closed
                deliver(_Failure(exc))
                if gen is None or isinstance(exc, LaneClosed):
                    finished()

        def resume() -> None:
            nonlocal parked
            with lock:
                wake, parked = parked, False
            if wake:
                again()

        def halt() -> None:
            nonlocal halted
            with lock:
                halted = True
            resume()

        def deferrable() -> bool:  # a producer that is to close its generator never waits
            return background is not None and not (halted or stop.is_set()) and background()

        if control is not None:
            control._halt = halt
        self._submit(_Job(pump, stop, owner, settled, background=deferrable))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    if isinstance(item.exc, asyncio.CancelledError):
                        break  # stopped before it started: an empty stream
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
        with self._cond:
            self._closed = True
            jobs = [job for queue in self._queues.values() for job in queue]
            self._queues.clear()
            self._turns.clear()
            self._cond.notify_all()
        for job in jobs:
            job.settle(None, LaneClosed(f"the {self.name} lane is closed"))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Hand a result back to the loop, unless the loop is gone (nobody waits any more)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    elif isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class InlineLane:
    """A lane with no thread: each job runs at once, on the event loop, when it is awaited.

    For tests with fake engines that take no time: the session's code is unchanged (the
    `Lane` API), and everything happens in one thread, in an order the test controls.
    A stream yields back to the loop between items, as a real lane's consumer would wait."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs = 0  # jobs run, streams included
        self._tokens: dict[str, set[threading.Event]] = {}

    async def run(self, fn: Callable[[], T], *, owner: str = "",
                  token: threading.Event | None = None,
                  background: Callable[[], bool] | None = None) -> T:
        token = token or threading.Event()
        await asyncio.sleep(0)  # the hop to a worker: others may act before the job runs
        if token.is_set():
            raise asyncio.CancelledError
        self.jobs += 1
        tokens = self._tokens.setdefault(owner, set())
        tokens.add(token)
        try:
            return fn()
        finally:
            tokens.discard(token)

    async def stream(
        self, make: Callable[[], Iterator[T]], stop: threading.Event, maxsize: int = 16, *,
        owner: str = "", park: bool = True, step: bool = False,
        on_closed: Callable[[], None] | None = None, control: StreamControl | None = None,
        background: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[T, None]:
        self.jobs += 1
        tokens = self._tokens.setdefault(owner, set())
        tokens.add(stop)
        gen: Iterator[T] | None = None
        try:
            await asyncio.sleep(0)
            gen = make()
            for item in gen:
                if stop.is_set() or (control is not None and control.halted):
                    break
                yield item
                await asyncio.sleep(0)
        finally:
            tokens.discard(stop)
            close_gen = getattr(gen, "close", None)
            if close_gen is not None:
                close_gen()
            if on_closed is not None:
                on_closed()

    def cancel_owner(self, owner: str) -> int:
        tokens = self._tokens.get(owner, set())
        for token in tokens:
            token.set()
        return len(tokens)

    def pending(self, owner: str | None = None) -> int:
        return 0

    def contended(self) -> bool:
        return False

    def close(self) -> None:
        self._tokens.clear()
