"""Handing freed native memory back to the system.

The models' native code (CTranslate2, onnxruntime, llama.cpp) allocates through glibc's
malloc from several threads, so freed memory lies in several arenas, mostly not at their
top, where glibc would release it by itself. `malloc_trim(0)` releases the free pages
inside every arena. Without it a busy server's RSS crept up by a few MiB a minute with
most of the growth free memory (measured with `malloc_info`; see the README's soak).

glibc also gives threads arenas of their own as they contend, up to eight per core, and
free memory scattered over many arenas is what comes back slowest. The server caps them
at `ARENAS` before any worker thread starts, unless ``MALLOC_ARENA_MAX`` is set (glibc
then does as it says).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from typing import Any, cast

from server.runtime.metrics import Registry

log = logging.getLogger("voxwire.heap")
ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _libc(symbol: str) -> Any:
    """A function of glibc's, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), symbol)
    except (OSError, AttributeError):
        return None


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none."""
    fn = _libc("malloc_trim")
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return cast(Callable[[int], int] | None, fn)


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count``; call it before threads start. Nothing is
    done where ``MALLOC_ARENA_MAX`` is set, or the C library is not glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, count))


async def trim_every(interval_s: float, registry: Registry) -> None:
    """Trim the heap every `interval_s` seconds, in a worker thread (it walks every
    arena), until cancelled; counts each trim and its time in the registry."""
    if interval_s <= 0:
        return
    trim = malloc_trim()
    if trim is None:
        log.info("heap trimming unavailable: this C library has no malloc_trim")
        return
    while True:
        await asyncio.sleep(interval_s)
        started = time.monotonic()
        await asyncio.to_thread(trim, 0)
        registry.inc("heap_trims_total")
        registry.inc("heap_trim_seconds_total", time.monotonic() - started)
