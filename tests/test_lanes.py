"""Worker lanes: a stream's producer never holds its lane while the consumer is away."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator

import pytest

from server.lanes import Lane


async def test_items_arrive_in_order_and_the_generator_ends() -> None:
    lane = Lane("test")
    try:
        got = [x async for x in lane.stream(lambda: iter(range(50)), threading.Event(),
                                            maxsize=3)]
        assert got == list(range(50))
    finally:
        lane.close()


async def test_a_consumer_that_stops_reading_does_not_hold_the_lane() -> None:
    lane = Lane("test")
    made: list[int] = []
    closed = threading.Event()
    threads: set[str] = set()

    def endless() -> Iterator[int]:
        try:
            for i in itertools.count():
                threads.add(threading.current_thread().name)
                made.append(i)
                yield i
        finally:
            threads.add(threading.current_thread().name)
            closed.set()

    try:
        stream = lane.stream(endless, threading.Event(), maxsize=4)
        assert await anext(stream) == 0
        # The reader stalls. Others get the lane at once, and the producer stops at
        # the bound: it is parked, not spinning or blocked in the thread.
        assert await asyncio.wait_for(lane.run(lambda: "other"), 1.0) == "other"
        await asyncio.sleep(0.2)
        assert len(made) == 1 + 4
        # Taking items resumes the producer.
        assert [await anext(stream) for _ in range(10)] == list(range(1, 11))
        await asyncio.sleep(0.1)
        assert len(made) == 11 + 4
        # Leaving closes the generator, in the lane's thread.
        await stream.aclose()
        assert await asyncio.to_thread(closed.wait, 2.0)
        assert threads == {threads.copy().pop()} and all(
            t.startswith("voxwire-test") for t in threads)
    finally:
        lane.close()


async def test_stop_ends_the_stream_and_errors_reach_the_consumer() -> None:
    lane = Lane("test")
    stop = threading.Event()

    def until_stopped() -> Iterator[int]:
        for i in itertools.count():
            if i == 3:
                stop.set()
            yield i

    def broken() -> Iterator[int]:
        yield 1
        raise ValueError("bad chunk")

    try:
        got = [x async for x in lane.stream(until_stopped, stop, maxsize=1)]
        assert got[:3] == [0, 1, 2] and len(got) <= 4
        seen: list[int] = []
        with pytest.raises(ValueError, match="bad chunk"):
            async for x in lane.stream(broken, threading.Event()):
                seen.append(x)
        assert seen == [1]
    finally:
        lane.close()
