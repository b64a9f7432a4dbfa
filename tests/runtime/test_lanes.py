"""Worker lanes: a stream's producer never holds its lane while the consumer is away."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from server.runtime.lanes import RETURN_CREDIT_S, Lane


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


async def test_sessions_take_turns_on_a_lane() -> None:
    """One session's queue of work waits behind itself, not in front of everyone."""
    lane = Lane("test")
    order: list[str] = []
    gate = threading.Event()
    try:
        first = asyncio.ensure_future(lane.run(lambda: gate.wait(5), owner="a"))
        await asyncio.sleep(0.05)  # the lane is busy with a's first job
        hog = [asyncio.ensure_future(lane.run(lambda i=i: order.append(f"a{i}"), owner="a"))
               for i in range(10)]
        await asyncio.sleep(0.01)
        other = asyncio.ensure_future(lane.run(lambda: order.append("b"), owner="b"))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, *hog, other)
        assert order.index("b") <= 1, order  # b's one job goes before a's second
    finally:
        lane.close()


async def test_cancelled_jobs_never_run_and_an_owner_can_be_cancelled_at_once() -> None:
    lane = Lane("test")
    ran: list[int] = []
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(lane.run(lambda: gate.wait(5), owner="other"))
        await asyncio.sleep(0.05)
        token = threading.Event()
        dropped = asyncio.ensure_future(lane.run(lambda: ran.append(0), token=token))
        waiting = [asyncio.ensure_future(lane.run(lambda i=i: ran.append(i), owner="gone"))
                   for i in range(1, 6)]
        caller = asyncio.ensure_future(lane.run(lambda: ran.append(99), owner="x"))
        await asyncio.sleep(0.01)
        token.set()  # a dropped speculation
        assert lane.cancel_owner("gone") == 5  # a closed session
        caller.cancel()  # a caller that stopped waiting
        await asyncio.sleep(0.01)
        assert lane.pending() == 7  # still queued, but marked
        gate.set()
        await busy
        for job in (dropped, *waiting, caller):
            with pytest.raises(asyncio.CancelledError):
                await job
        assert ran == [] and lane.pending() == 0
        # The lane goes on serving others.
        assert await lane.run(lambda: "next", owner="gone") == "next"
    finally:
        lane.close()


async def test_a_stream_without_parking_runs_to_its_end_before_the_next_job() -> None:
    """For one llama.cpp context: a reader that stalls never lets another generation in
    between two of its items."""
    lane = Lane("test")
    events: list[str] = []

    def gen(name: str) -> Iterator[int]:
        for i in range(30):
            events.append(f"{name}{i}")
            yield i

    try:
        slow = lane.stream(lambda: gen("a"), threading.Event(), maxsize=2, owner="a",
                           park=False)
        assert await anext(slow) == 0
        other = asyncio.ensure_future(lane.run(lambda: events.append("b"), owner="b"))
        await other
        assert events.index("b") == 30  # all of a's items were made first
        assert [x async for x in slow] == list(range(1, 30))
    finally:
        lane.close()


async def test_a_parked_stream_that_is_stopped_still_closes_its_generator() -> None:
    lane = Lane("test")
    closed = threading.Event()
    stop = threading.Event()

    def endless() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.set()

    try:
        stream = lane.stream(endless, stop, maxsize=2)
        assert await anext(stream) == 0
        await asyncio.sleep(0.1)  # parked, two items waiting
        stop.set()
        await stream.aclose()
        assert await asyncio.to_thread(closed.wait, 2.0)
    finally:
        lane.close()


async def test_background_work_waits_for_other_sessions_until_it_becomes_urgent() -> None:
    """A speculation's job waits for every other owner's foreground job; once its turn is
    confirmed (its check turns false) it takes its turn like any other."""
    lane = Lane("test")
    order: list[str] = []
    speculating = {"a": True}
    try:
        for confirmed in (False, True):
            order.clear()
            busy = threading.Event()
            first = asyncio.ensure_future(lane.run(lambda b=busy: b.wait(5), owner="x"))
            await asyncio.sleep(0.05)  # the lane is busy: everything below queues
            # fresh owners each round: the lane remembers recent use, ties aside
            jobs = [asyncio.ensure_future(lane.run(
                lambda: order.append("spec"), owner=f"a{confirmed}",
                background=lambda: speculating["a"]))]
            jobs += [asyncio.ensure_future(lane.run(lambda o=o: order.append(o),
                                                    owner=f"{o}{confirmed}"))
                     for o in ("b", "c")]
            await asyncio.sleep(0.01)
            speculating["a"] = not confirmed
            busy.set()
            await asyncio.gather(first, *jobs)
            if confirmed:
                assert order == ["spec", "b", "c"], order  # round robin, in arrival order
            else:
                assert order == ["b", "c", "spec"], order
    finally:
        lane.close()


async def test_the_lane_is_shared_fairly_in_time_not_in_jobs() -> None:
    """A session whose jobs are long (a long prompt computed in chunks) does not get a
    turn for every short job of another: the one that has used the lane least goes next."""
    lane = Lane("test")
    order: list[str] = []

    def job(name: str, seconds: float) -> None:
        time.sleep(seconds)
        order.append(name)

    try:
        heavy = [asyncio.ensure_future(lane.run(lambda: job("h", 0.04), owner="heavy"))
                 for _ in range(4)]
        await asyncio.sleep(0.01)  # heavy's first job holds the lane
        light = [asyncio.ensure_future(lane.run(lambda: job("l", 0.0), owner="light"))
                 for _ in range(4)]
        await asyncio.gather(*heavy, *light)
        assert order == ["h", "l", "l", "l", "l", "h", "h", "h"], order
    finally:
        lane.close()


async def test_an_owner_back_from_waiting_for_nothing_goes_first_for_a_credit_at_most() -> None:
    """Someone back for a turn (after the lane was kept busy by another) is served first
    for up to `RETURN_CREDIT_S` of lane time, then the two take turns fairly."""
    lane = Lane("test")
    order: list[str] = []
    step = 0.05

    def job(name: str) -> None:
        time.sleep(step)
        order.append(name)

    try:
        busy = [asyncio.ensure_future(lane.run(lambda: job("h"), owner="busy"))
                for _ in range(40)]
        # the busy owner has had the lane to itself, past its own credit as a newcomer
        await asyncio.sleep(RETURN_CREDIT_S + 0.3)
        back = [asyncio.ensure_future(lane.run(lambda: job("b"), owner="back"))
                for _ in range(20)]
        await asyncio.gather(*busy, *back)
        after = "".join(order)[order.index("b") :]
        first_run = len(after) - len(after.lstrip("b"))
        credit_jobs = RETURN_CREDIT_S / step
        assert credit_jobs - 1 <= first_run <= credit_jobs + 3, after
        rest = after[first_run:after.rindex("b") + 1]
        assert "hh" not in rest, after  # then by turns, while both wait
    finally:
        lane.close()
