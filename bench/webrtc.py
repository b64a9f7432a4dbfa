"""The benchmark's WebRTC row: voice to voice over a WebRTC call, and what a call costs.

A turn over WebRTC (`turn`) is the WebSocket row's turn (`bench.latency.one_turn`) over
the other door: a fresh call per question, answered by the same server, the fixture's
audio (lead-in silence, speech, trailing silence) resampled to 48 kHz and played on the
call's microphone track at real-time pace, 20 ms frames, silence before and after.

`client_v2v_ms` is measured on the client's clock, as the WebSocket row's is: from the
moment the end of the speech was spoken, on the microphone's pacing clock (the time the
frame holding the fixture's first sample was due to go out, plus the speech's end in the
fixture; the WebSocket row anchors its 40 ms chunks the same way), to the arrival of the
first voiced frame of the answer track (a sample above -54 dBFS, out of aiortc's jitter
buffer and Opus decoder). It therefore also counts the server's pacing of the answer
track (the next 20 ms tick), Opus encoding, RTP over loopback, the client's jitter buffer
and decoding, and any quiet lead-in of the synthesized answer below that level; the
WebSocket row stops at the first `response.output_audio.delta` message, whatever its
samples. `started_ms` is the arrival of `output_audio_buffer.started` on the data
channel, on the same clock: the server's word that it began playing the answer.

`cpu_per_call` measures the server process's CPU seconds per second of call (from
/proc/<pid>/stat) over a fixed window: with nobody connected, one idle connected call
(WebRTC: the caller's microphone track carries Opus-coded silence, 50 frames a second, as
a browser's does; WebSocket: nothing moves), and
one call that talks (the fixtures spoken one after another, each answered), over each
transport. The difference between the two transports for the same workload is Opus
(encoding, decoding, resampling), SRTP and the track's pacing, against base64 and JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench import latency, rtc_client
from bench.fixtures import RATE
from bench.latency import METRICS, SILENCE_MS, Fixture
from bench.load import proc_stats
from client.realtime import resample

TRANSPORTS = ("websocket", "webrtc")
TURN_S = 120.0  # one turn at most, from the first sample played
HEARD_S = 5.0  # after the turn's metrics, how long the first voiced frame may still take
COST_WINDOW_S = 15.0
SETTLE_S = 2.0  # a call connected this long before its window starts
SESSION = {"type": "realtime", "temperature": 0.0, "voxwire": {"metrics": True}}


async def call(url: str, key: str | None = None) -> rtc_client.Client:
    """A WebRTC call to the server at ``url``, set up as the WebSocket row's sessions are
    (temperature 0, the per-turn metrics asked for)."""
    client, (status, _, body) = await rtc_client.connect(url, key)
    if status != 201:
        raise RuntimeError(f"the call was refused: {status} {body[:200]!r}")
    client.send({"type": "session.update", "session": SESSION})
    return client


async def turn(url: str, fx: Fixture, key: str | None = None) -> dict[str, Any]:
    """One spoken question in a fresh call, hung up after the answer's first audio."""
    client = await call(url, key)
    try:
        return await turn_on(client, fx)
    finally:
        await client.close()


async def turn_on(client: rtc_client.Client, fx: Fixture, turn_s: float = TURN_S
                  ) -> dict[str, Any]:
    """One spoken question on a live call; the result has the WebSocket row's keys."""
    audio = resample(fx.audio, RATE, rtc_client.RATE)
    first = len(client.events)
    at = client.mic.queue(audio)
    ended = await client.until(lambda e: e["type"] == "voxwire.turn.metrics", turn_s, first)
    metrics = ended[-1]
    began = client.mic.at(at)
    spoken_end = began + fx.speech_end_s
    heard = client.first_voiced(began)
    deadline = time.monotonic() + HEARD_S
    while heard is None and metrics.get("status") in ("completed", "incomplete") \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        heard = client.first_voiced(began)

    def arrival(kind: str) -> float | None:
        return next((client.times[i] for i in range(first, len(client.events))
                     if client.events[i]["type"] == kind), None)

    def since_end(t: float | None) -> float | None:
        return round((t - spoken_end) * 1000, 1) if t is not None else None

    stopped, started = arrival("input_audio_buffer.speech_stopped"), \
        arrival("output_audio_buffer.started")
    transcript = next((e["transcript"] for e in client.events[first:] if e["type"] ==
                       "conversation.item.input_audio_transcription.completed"), "")
    endpoint = since_end(stopped)
    return {"question": fx.text, "transcript": transcript, "status": metrics.get("status"),
            "transport": "webrtc", "client_v2v_ms": since_end(heard),
            "started_ms": since_end(started),
            "stages_ms": metrics.get("stages_ms", {}),
            "compute_ms": metrics.get("compute_ms", {}),
            "overhead_ms": metrics.get("overhead_ms"), "endpoint_ms": endpoint,
            "endpoint_lag_ms": round(endpoint - SILENCE_MS, 1) if endpoint is not None
            else None}


# ---------------------------------------------------------------------- CPU per call


async def _websocket_talk(url: str, fixtures: list[Fixture], ready: asyncio.Event) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="bench", base_url=f"{url}/v1")
    async with client.realtime.connect(model="voxwire", extra_query=METRICS) as typed_conn:
        conn: Any = typed_conn
        await conn.session.update(session={"type": "realtime", "temperature": 0.0})
        ready.set()
        n = 0
        while True:
            await latency.turn_on(conn, fixtures[n % len(fixtures)])
            n += 1


async def _websocket_idle(url: str, ready: asyncio.Event) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="bench", base_url=f"{url}/v1")
    async with client.realtime.connect(model="voxwire") as conn:
        await conn.recv()  # session.created
        ready.set()
        await asyncio.Event().wait()


async def _webrtc_call(url: str, fixtures: list[Fixture] | None, ready: asyncio.Event
                       ) -> None:
    client = await call(url)
    try:
        await asyncio.sleep(SETTLE_S)
        ready.set()
        n = 0
        while fixtures:
            await turn_on(client, fixtures[n % len(fixtures)])
            n += 1
        await asyncio.Event().wait()
    finally:
        await client.close()


Load = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def cpu_rate(pid: int, window_s: float, load: Load | None = None) -> float:
    """The process's CPU seconds per second over ``window_s``, while ``load`` runs (from
    the moment it says it is ready)."""
    ready = asyncio.Event()
    task = asyncio.create_task(load(ready)) if load else None
    if task is None:
        ready.set()
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([waiting, *([task] if task else [])], timeout=60,
                       return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiting.cancel()
        if task is not None and task.done():
            task.result()  # the load failed: say how
        raise RuntimeError("the load did not start")
    before, t0 = proc_stats(pid)["cpu_s"], time.monotonic()
    await asyncio.sleep(window_s)
    used, took = proc_stats(pid)["cpu_s"] - before, time.monotonic() - t0
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.sleep(1.0)  # the session closes before the next window
    return round(used / took, 4)


async def cpu_per_call(url: str, pid: int, fixtures: list[Fixture],
                       window_s: float = COST_WINDOW_S) -> dict[str, Any]:
    """CPU seconds per second of call, by transport, idle and talking (see the module)."""
    nobody = await cpu_rate(pid, window_s)
    rates = {
        "websocket_idle": await cpu_rate(pid, window_s, lambda r: _websocket_idle(url, r)),
        "webrtc_idle": await cpu_rate(pid, window_s, lambda r: _webrtc_call(url, None, r)),
        "websocket_talking": await cpu_rate(
            pid, window_s, lambda r: _websocket_talk(url, fixtures, r)),
        "webrtc_talking": await cpu_rate(
            pid, window_s, lambda r: _webrtc_call(url, fixtures, r)),
    }
    per_call = {k: round(v - nobody, 4) for k, v in rates.items()}
    return {"window_s": window_s, "nobody_cpu_s_per_s": nobody, "cpu_s_per_s": per_call,
            "webrtc_over_websocket": {
                state: round(per_call[f"webrtc_{state}"] - per_call[f"websocket_{state}"], 4)
                for state in ("idle", "talking")}}
