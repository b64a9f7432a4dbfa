"""The server hands freed native memory back to the system on an interval."""

import asyncio
import os
import platform
import subprocess
import sys

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


ARENA_COUNT = """
import ctypes, sys, threading
from server.runtime.heap import limit_arenas
capped = limit_arenas(2) if sys.argv[1] == "cap" else False
gate = threading.Barrier(8)
def work() -> None:
    gate.wait()
    blocks = [bytearray(200_000) for _ in range(20)]
    gate.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(capped, flush=True)
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt's arena cap is glibc's")
@pytest.mark.parametrize("how", ["cap", "default", "operator"])
def test_the_server_caps_mallocs_arenas_unless_the_operator_set_them(how: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if how == "operator":
        env["MALLOC_ARENA_MAX"] = "6"
    done = subprocess.run([sys.executable, "-c", ARENA_COUNT,
                           "default" if how == "default" else "cap"],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    arenas = done.stderr.count("Arena ")
    if how == "cap":
        assert done.stdout.strip() == "True" and arenas <= 2, done.stderr
    elif how == "default":
        assert arenas > 2, done.stderr  # glibc's own default: up to 8 a core
    else:
        assert done.stdout.strip() == "False" and 2 < arenas <= 6, done.stderr
