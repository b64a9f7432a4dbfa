"""The server hands freed native memory back to the system on an interval."""

import asyncio
import platform

import pytest

from server.errors import ConfigError
from server.runtime.config import Settings
from server.runtime.heap import malloc_trim, trim_every
from server.runtime.metrics import Registry

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; this C library has none")
def test_malloc_trim_releases_memory_freed_inside_the_heap() -> None:
    trim = malloc_trim()
    assert trim is not None
    blocks = [bytearray(48 * 1024) for _ in range(600)]  # about 28 MiB, in the heap
    del blocks[::2]  # holes below the top, which free() alone never hands back
    assert trim(0) == 1  # glibc: 1 when some memory went back to the system


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; this C library has none")
async def test_the_trimmer_runs_on_its_interval_and_stops_when_cancelled() -> None:
    registry = Registry()
    task = asyncio.create_task(trim_every(0.05, registry))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    trims = registry.counters["heap_trims_total"]
    assert trims >= 3
    await asyncio.sleep(0.2)
    assert registry.counters["heap_trims_total"] == trims
    assert "voxwire_heap_trims_total" in registry.render()


async def test_an_interval_of_zero_turns_trimming_off() -> None:
    registry = Registry()
    await asyncio.wait_for(trim_every(0.0, registry), 1.0)  # returns at once
    assert "heap_trims_total" not in registry.counters


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="heap_trim_s"):
        Settings(heap_trim_s=-1.0)
