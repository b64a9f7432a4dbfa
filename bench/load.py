"""Sessions per machine: a concurrency sweep and memory per session.

N clients talk at once (N = 1, 2, 4, 8 ...), each streaming a spoken question at
real-time pace into its own session. For each N: voice-to-voice p50/p95 on the client's
clock, how far the server's end-of-turn detection lags behind real time (the input
processing keeping up or not), the server process's CPU and peak memory. Then memory per
idle session (sessions that connect and wait) and per active one.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import ANSWERED, Fixture, one_turn

KEEPS_UP_LAG_MS = 300  # end-of-turn lag beyond which a session no longer keeps up


def proc_stats(pid: int) -> dict[str, float]:
    """RSS, peak RSS (MiB), CPU seconds and threads of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status}
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": int(fields["VmRSS"][0]) / 1024, "peak_mib": int(fields["VmHWM"][0]) / 1024,
            "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
            "threads": float(fields["Threads"][0])}


async def timed_turn(url: str, fx: Fixture, delay: float) -> dict[str, Any]:
    await asyncio.sleep(delay)
    turn = await one_turn(url, fx)
    return {"status": turn["status"], "v2v_ms": turn["client_v2v_ms"],
            "endpoint_lag_ms": turn["endpoint_lag_ms"]}


async def step(url: str, fixtures: list[Fixture], sessions: int, pid: int | None
               ) -> dict[str, Any]:
    before = proc_stats(pid) if pid else None
    t0 = time.monotonic()
    # Staggered starts, as people do not all stop talking in the same 40 ms.
    turns = await asyncio.gather(*(
        timed_turn(url, fixtures[i % len(fixtures)], 0.25 * i) for i in range(sessions)))
    wall = time.monotonic() - t0
    after = proc_stats(pid) if pid else None
    v2v = [t["v2v_ms"] for t in turns if t["v2v_ms"] is not None]
    lag = [t["endpoint_lag_ms"] for t in turns if t["endpoint_lag_ms"] is not None]
    out: dict[str, Any] = {
        "sessions": sessions, "completed": sum(t["status"] in ANSWERED for t in turns),
        "v2v_p50_ms": float(np.percentile(v2v, 50)) if v2v else None,
        "v2v_p95_ms": float(np.percentile(v2v, 95)) if v2v else None,
        "endpoint_lag_p95_ms": float(np.percentile(lag, 95)) if lag else None,
        "keeps_up": bool(lag) and float(np.percentile(lag, 95)) < KEEPS_UP_LAG_MS,
        "raw": turns}
    if before and after:
        out["cpu_percent"] = 100 * (after["cpu_s"] - before["cpu_s"]) / wall
        out["rss_mib"] = after["rss_mib"]
        out["peak_mib"] = after["peak_mib"]
        out["threads"] = after["threads"]
    return out


async def idle_memory(url: str, pid: int, count: int) -> float:
    """MiB per connected, idle session."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="bench", base_url=f"{url}/v1")
    before = proc_stats(pid)["rss_mib"]
    conns = [await client.realtime.connect(model="voxwire").enter() for _ in range(count)]
    for conn in conns:
        await conn.recv()  # session.created: the session exists server-side
    await asyncio.sleep(0.5)
    during = proc_stats(pid)["rss_mib"]
    for conn in conns:
        await conn.close()
    return (during - before) / count


async def sweep(url: str, fixtures: list[Fixture], levels: list[int], pid: int | None
                ) -> dict[str, Any]:
    await timed_turn(url, fixtures[0], 0)  # warm up
    base = proc_stats(pid) if pid else None
    steps = [await step(url, fixtures, n, pid) for n in levels]
    result: dict[str, Any] = {"steps": steps}
    falling = [s["sessions"] for s in steps if not s["keeps_up"]]
    result["first_level_not_keeping_up"] = falling[0] if falling else None
    if pid and base:
        result["idle_session_mib"] = await idle_memory(url, pid, 20)
        top = max(steps, key=lambda s: s["sessions"])
        result["active_session_mib"] = (top["peak_mib"] - base["rss_mib"]) / top["sessions"]
        result["baseline_rss_mib"] = base["rss_mib"]
    return result
