"""The soak: many sessions held for minutes, idle and misbehaving ones among them.

Against a real `voxwire serve` on loopback, for a bounded time:
- talkers: a few sessions speak the fixtures at real-time pace, several turns per
  connection, measuring voice to voice on the client's clock;
- idle: many sessions connect and say nothing (the client library pings now and then);
- WebRTC callers: calls that connect, ask one question each, hear the answer start and go,
  every other one hanging up cleanly and the rest vanishing without a word (all they send
  lost from then on: the server finds out by its ICE consent checks, some 30 s later);
- misbehavers, one lane per kind, each repeating its misdeed and checking what the server
  answers: garbage JSON, wrong types, oversized messages, event floods, bad audio, a client
  that never reads its socket, clients leaving mid-answer, connection churn, TCP
  connections that never finish the WebSocket handshake, appends too long to take,
  audio faster than real time, speech whose every pause starts a speculative
  transcription, prompts too long to take, a client stuffing its own outbox, and POST
  requests trickled a byte at a time;
- the server process sampled every few seconds: RSS, open file descriptors, threads and
  the sessions it holds (its `sessions_active` gauge on /metrics).
When the clients have left (the vanished calls found out), the server must hold no session
and be back to the file descriptors and threads it had before they came; its memory must be
flat under load, and the talkers' voice to voice within 1.5 times what the same talkers
measured alone, before the load and after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.uri import parse_uri

from bench import webrtc
from bench.fixtures import RATE
from bench.latency import (
    ANSWERED,
    METRICS,
    QUESTIONS,
    Fixture,
    machine,
    make_fixtures,
    one_turn,
    server_process,
    turn_on,
)
from bench.load import proc_stats
from client.realtime import pcm16

# Memory is flat when RSS over the last two thirds of the run (the first third is the
# warm-up to this load) fits a line rising less than this.
FLAT_MIB_PER_MIN = 2.0
# The talkers under load, against the same talkers alone before it (p50 voice to voice).
LOADED_V2V_RATIO = 1.5
# The talkers alone, before the load and again after it (pooled): the figure they are held
# to under the load, from both sides of it, so that a machine that drifts does not decide
# the ratio.
QUIET_TURNS = 8
IDLE_TIMEOUT_S = 600.0  # the server's default --idle-timeout-s: idle sessions end there
# A client that does not read gets its socket backed up within seconds; the server must
# drop it (it gives a stuck send 10 s) well before this.
SLOW_HOLD_S = 60.0
HANDSHAKE_S = 10.0  # the server's open_timeout: a handshake must be over by then
TURNS_PER_SESSION = 4
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the server's default --max-message-bytes
LONG_ASK = "Tell me a long story about a lighthouse keeper and the sea."
# A vanished WebRTC peer is found when six ICE consent checks, 4-6 s apart, went unanswered.
VANISHED_FOUND_S = 60.0
# WebRTC calls at once in the warm-up, for each caller: enough for the default thread pool
# that encodes the answer tracks to reach its most threads (min(32, cores + 4)), which it
# keeps; with 4, a fast machine's soak held more calls at once than its warm-up had, and
# ended a thread over the baseline.
WARM_CALLS = min(32, (os.cpu_count() or 1) + 4)
# A warm-up call may take this long; one that does not finish is hung up and the soak goes
# on: it is there to make threads, not to be measured (on a slow machine with six calls at
# once, one test client's data channel once went silent after an answer's audio, for more
# than 120 s, while the other five finished).
WARM_TURN_S = 60.0


@dataclass
class Plan:
    duration_s: float = 180.0
    talkers: int = 2
    idle: int = 50
    sample_s: float = 3.0
    pause_s: float = 4.0  # between two misdeeds of one lane
    quiet_turns: int = QUIET_TURNS  # the talkers alone, before the load and again after
    rtc_callers: int = 1  # WebRTC calls at once, each replaced when it goes
    misdeeds: list[str] = field(default_factory=lambda: list(MISDEEDS))  # the lanes run

    @property
    def max_sessions(self) -> int:
        """The server's session limit: everyone at once, with room to spare (a vanished
        call holds its session until the server finds out)."""
        return (self.idle + self.talkers + 2 * len(MISDEEDS) + 16
                + self.rtc_callers * int(VANISHED_FOUND_S / 4))


@dataclass
class Tally:
    turns: list[dict[str, Any]] = field(default_factory=list)
    quiet: list[dict[str, Any]] = field(default_factory=list)  # the talkers alone
    outcomes: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    codes: defaultdict[str, Counter[str]] = field(  # what the server answered
        default_factory=lambda: defaultdict(Counter))
    unexpected: list[str] = field(default_factory=list)
    slow_dropped_s: list[float] = field(default_factory=list)  # how long each took
    rtc: Counter[str] = field(default_factory=Counter)  # WebRTC calls: made, failed, how ended
    rtc_turns: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, who: str, what: str) -> None:
        self.unexpected.append(f"{who}: {what}")


def metrics_gauge(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(rf"^voxwire_{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def server_stats(pid: int) -> dict[str, float]:
    stats = proc_stats(pid)
    return {"rss_mib": round(stats["rss_mib"], 1), "threads": stats["threads"],
            "fds": float(len(os.listdir(f"/proc/{pid}/fd")))}


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ASK_LONG = [event("conversation.item.create", item={
    "type": "message", "role": "user", "content": [{"type": "input_text", "text": LONG_ASK}]}),
    event("response.create")]


class Soak:
    def __init__(self, url: str, pid: int, plan: Plan, fixtures: list[Fixture]) -> None:
        self.url, self.pid, self.plan, self.fixtures = url, pid, plan, fixtures
        self.ws_url = url.replace("http://", "ws://") + "/v1/realtime"
        self.deadline = 0.0
        self.tally = Tally()
        self.samples: list[dict[str, float]] = []
        self._t0 = 0.0
        self._leaves = 0

    # ------------------------------------------------------------------ measuring

    async def sample(self) -> dict[str, float]:
        sessions = await asyncio.to_thread(metrics_gauge, self.url, "sessions_active")
        return {"t_s": round(time.monotonic() - self._t0, 1), **server_stats(self.pid),
                "sessions": sessions}

    async def sampler(self) -> None:
        while True:
            self.samples.append(await self.sample())
            await asyncio.sleep(self.plan.sample_s)

    async def until_released(self, within_s: float = 30.0) -> float:
        """Wait for the server to hold no session; how many it still holds."""
        end = time.monotonic() + within_s
        held = await asyncio.to_thread(metrics_gauge, self.url, "sessions_active")
        while held and time.monotonic() < end:
            await asyncio.sleep(0.5)
            held = await asyncio.to_thread(metrics_gauge, self.url, "sessions_active")
        return held

    async def until_settled(self, baseline: dict[str, float], within_s: float = 30.0
                            ) -> dict[str, float]:
        """Sample until file descriptors and threads are back to the baseline, or
        `within_s` passed: a half-open connection lasts until the server's handshake
        timeout, and a thread may be finishing a piece of work."""
        end = time.monotonic() + within_s
        after = await self.sample()
        while time.monotonic() < end and (after["fds"] > baseline["fds"]
                                          or after["threads"] > baseline["threads"]):
            await asyncio.sleep(1.0)
            after = await self.sample()
        return after

    # ------------------------------------------------------------------ well-behaved

    async def talker(self, n: int, quiet_turns: int = 0) -> None:
        """Speak the fixtures until the deadline; or, with `quiet_turns`, until the talkers
        have that many quiet turns in all, with nothing else going on (the figure the
        loaded turns are held to)."""
        from openai import AsyncOpenAI

        client = AsyncOpenAI(api_key="bench", base_url=f"{self.url}/v1")
        turn = n
        into = self.tally.quiet if quiet_turns else self.tally.turns
        while time.monotonic() < self.deadline and (not quiet_turns or len(into) < quiet_turns):
            try:
                async with client.realtime.connect(model="voxwire",
                                                   extra_query=METRICS) as typed_conn:
                    conn: Any = typed_conn
                    await conn.session.update(session={"type": "realtime", "temperature": 0.0})
                    for _ in range(TURNS_PER_SESSION):
                        if time.monotonic() >= self.deadline or (
                                quiet_turns and len(into) >= quiet_turns):
                            break
                        fx = self.fixtures[turn % len(self.fixtures)]
                        turn += 1
                        result = await asyncio.wait_for(turn_on(conn, fx), 120)
                        result["t_s"] = round(time.monotonic() - self._t0, 1)
                        into.append(result)
                        if result["status"] not in ANSWERED or result["client_v2v_ms"] is None:
                            self.tally.fail(f"talker {n}", f"turn {result['status']}")
            except Exception as exc:  # a well-behaved session must not fail
                self.tally.fail(f"talker {n}", f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1)

    async def idle(self, n: int) -> ClientConnection | None:
        """An idle session held to the end of the run; one the server closes at its idle
        timeout is replaced. The open connection, or None after a failure."""
        await asyncio.sleep(0.02 * n)  # not all in the same instant
        try:
            while True:
                ws = await connect(self.ws_url)
                opened = time.monotonic()
                codes = []
                try:
                    while True:
                        left = max(0.0, self.deadline - time.monotonic())
                        ev = json.loads(await asyncio.wait_for(ws.recv(), left))
                        if ev["type"] == "error":
                            codes.append(ev["error"]["code"])
                except TimeoutError:
                    return ws
                except ConnectionClosed:
                    held = time.monotonic() - opened
                    if codes != ["idle_timeout"] or held < IDLE_TIMEOUT_S - 1:
                        self.tally.fail(f"idle {n}", f"closed after {held:.0f} s "
                                                     f"({ws.close_code}, errors {codes})")
                        return None
                    self.tally.codes["idle"]["idle_timeout"] += 1
        except Exception as exc:  # a well-behaved session must not fail
            self.tally.fail(f"idle {n}", f"{type(exc).__name__}: {exc}")
            return None

    async def rtc_caller(self, n: int) -> None:
        """WebRTC calls until the deadline, one at a time: each asks one question, hears
        its answer start, and goes; every other one hangs up (DTLS close_notify, SCTP
        abort), the others vanish without a word."""
        made = n
        while time.monotonic() < self.deadline:
            fx = self.fixtures[made % len(self.fixtures)]
            made += 1
            self.tally.rtc["calls"] += 1
            try:
                client = await asyncio.wait_for(webrtc.call(self.url), 30)
            except Exception as exc:  # a well-behaved caller must get through
                self.tally.rtc["failed"] += 1
                self.tally.fail(f"webrtc caller {n}", f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1)
                continue
            try:
                result = await asyncio.wait_for(webrtc.turn_on(client, fx), 120)
                result["t_s"] = round(time.monotonic() - self._t0, 1)
                self.tally.rtc_turns.append(result)
                if result["status"] not in ANSWERED or result["client_v2v_ms"] is None:
                    self.tally.rtc["failed"] += 1
                    self.tally.fail(f"webrtc caller {n}", f"turn {result['status']}, "
                                                          f"heard {result['client_v2v_ms']}")
            except Exception as exc:
                self.tally.rtc["failed"] += 1
                self.tally.fail(f"webrtc caller {n}", f"{type(exc).__name__}: {exc}")
            finally:
                if made % 2:
                    await client.vanish()
                    self.tally.rtc["vanished"] += 1
                else:
                    await client.close()
                    self.tally.rtc["hung_up"] += 1

    # ------------------------------------------------------------------ misbehavers

    async def expect_errors(self, kind: str, messages: list[str | bytes], codes: list[str]
                            ) -> str:
        """Send `messages`, expect one error each with these codes, then a live session."""
        async with connect(self.ws_url) as ws:
            for message in messages:
                await ws.send(message)
            got: list[str] = []
            while len(got) < len(codes):
                ev = json.loads(await ws.recv())
                if ev["type"] == "error":
                    got.append(ev["error"]["code"])
            self.tally.codes[kind].update(got)
            if got != codes:
                return f"answered {got}"
            return await self.still_alive(ws, "errors, then the session went on")

    @staticmethod
    async def still_alive(ws: ClientConnection, label: str) -> str:
        await ws.send(event("input_audio_buffer.clear"))
        while True:
            ev = json.loads(await ws.recv())
            if ev["type"] == "input_audio_buffer.cleared":
                return label

    async def garbage_json(self) -> str:
        junk = ["{not json", "", "[1, 2", '{"type": "session.update", ', "\u0000\u0001 ~~~"]
        return await self.expect_errors("garbage_json", list(junk), ["invalid_json"] * len(junk))

    async def wrong_types(self) -> str:
        cases: list[tuple[str | bytes, str]] = [
            ("[1, 2, 3]", "invalid_event"),
            ('{"type": 5}', "invalid_event"),
            (event("no.such.event"), "unknown_event"),
            (event("session.update", session="loud"), "invalid_value"),
            (event("input_audio_buffer.append", audio=12), "invalid_value"),
            (event("conversation.item.truncate", item_id="x", audio_end_ms=-5), "invalid_value"),
            (event("response.create", response=[1]), "invalid_value"),
            (b"\x00\x01binary", "invalid_message"),
        ]
        return await self.expect_errors("wrong_types", [m for m, _ in cases],
                                        [c for _, c in cases])

    async def bad_audio(self) -> str:
        return await self.expect_errors("bad_audio", [
            event("input_audio_buffer.append", audio="!!not base64!!"),
            event("input_audio_buffer.append", audio=b64(b"\x01\x02\x03")),  # odd byte count
            event("input_audio_buffer.append", audio="QUJD="),  # bad padding
        ], ["invalid_audio"] * 3)

    async def huge(self) -> str:
        """One message beyond --max-message-bytes: the server closes with 1009."""
        # No compression: deflating megabytes would stall this client's own event loop.
        ws = await connect(self.ws_url, compression=None)
        try:
            await ws.recv()  # session.created
            big = event("input_audio_buffer.append", audio="A" * MAX_MESSAGE_BYTES)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(big)
                while True:
                    await ws.recv()
        finally:  # not `async with`: closing again what the server closed mid-write fails
            if ws.state is not State.CLOSED:
                ws.transport.abort()
        self.tally.codes["huge"][str(ws.close_code)] += 1
        return f"closed {ws.close_code}"

    async def flood(self) -> str:
        """Four seconds' worth of events at once: throttled, and the session goes on."""
        chunk = event("input_audio_buffer.append", audio=b64(b"\x00\x00" * (RATE // 100)))
        started = time.monotonic()
        async with connect(self.ws_url) as ws:
            for _ in range(4 * 100):  # the server's default --max-events-per-s is 100
                await ws.send(chunk)
            await asyncio.sleep(1.5)  # the bucket refills
            codes: list[str] = []

            async def cleared() -> None:
                while (ev := json.loads(await ws.recv()))["type"] != "input_audio_buffer.cleared":
                    if ev["type"] == "error":
                        codes.append(ev["error"]["code"])

            # A busy server may still be working through the flood, at the rate limit, when
            # the clear arrives, and drop it too: ask again until it is answered.
            for _ in range(10):
                await ws.send(event("input_audio_buffer.clear"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cleared(), 3)
                    break
        self.tally.codes["flood"].update(codes)
        if codes and set(codes) == {"rate_limited"} and len(codes) <= 3:
            return "throttled, then the session went on"
        # A server too busy to read faster than the limit never needs to throttle: 400
        # events read over 2 s or more stay within the bucket (200 at once, 100 a second).
        # A fast server reads them all within the 1.5 s pause, and must throttle.
        if not codes and time.monotonic() - started >= (400 - 200) / 100:
            return "read no faster than the limit, then the session went on"
        return f"answered {codes}"

    async def leave_mid_answer(self) -> str:
        """Ask for a long answer and leave at its first audio (a clean close or a reset)."""
        self._leaves += 1
        abrupt = self._leaves % 2 == 0
        ws = await connect(self.ws_url)
        try:
            for message in ASK_LONG:
                await ws.send(message)
            while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
                pass
        finally:
            if abrupt:
                ws.transport.abort()
            else:
                await ws.close()
        return "left at the first audio" + (" (reset)" if abrupt else "")

    async def churn(self) -> str:
        """Connections that open and close at once, some before reading anything."""
        for n in range(6):
            ws = await connect(self.ws_url)
            if n % 3 == 0:
                await ws.recv()
            if n % 3 == 2:
                ws.transport.abort()
            else:
                await ws.close()
        return "opened and closed"

    async def half_open(self) -> str:
        """TCP connections that never finish the handshake: the server must drop them."""
        host, port = self.url.removeprefix("http://").split(":")
        partial = [b"", b"GET /v1/realtime HTTP/1.1\r\n",
                   b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"]
        started = time.monotonic()

        async def one(head: bytes) -> bool:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head)
            try:
                with contextlib.suppress(ConnectionResetError):
                    while await asyncio.wait_for(reader.read(4096), HANDSHAKE_S + 10):
                        pass
                return True
            except TimeoutError:
                return False
            finally:
                writer.close()

        closed = await asyncio.gather(*(one(head) for head in partial))
        if not all(closed):
            return f"{closed.count(False)} still open after {HANDSHAKE_S + 10:g} s"
        took = time.monotonic() - started
        return "dropped by the server" if took < HANDSHAKE_S + 5 else f"dropped after {took:.0f} s"

    async def unread_connection(
            self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, ClientProtocol]:
        """A socket with a small receive window (the server's side backs up within seconds
        once it is not read) and a WebSocket handshake ready to send."""
        host, port = self.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        proto = ClientProtocol(parse_uri(self.ws_url), max_size=None)
        proto.send_request(proto.connect())
        return reader, writer, proto

    async def slow_reader(self) -> str:
        """Send audio and ask for long answers, never read: once its socket has backed up,
        the server must drop it (and not hold everyone else's answers meanwhile)."""
        reader, writer, proto = await self.unread_connection()
        started = time.monotonic()

        async def flush() -> None:
            writer.write(b"".join(proto.data_to_send()))
            with contextlib.suppress(TimeoutError):  # the server may have stopped reading
                await asyncio.wait_for(writer.drain(), 1)

        try:
            await flush()
            while proto.state is State.CONNECTING:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    return "closed during the handshake"
                proto.receive_data(data)
            speech = self.fixtures[0].audio[: RATE * 2]
            proto.send_text(event("input_audio_buffer.append", audio=b64(pcm16(speech))).encode())
            for n in range(int(SLOW_HOLD_S)):  # a long answer asked for every 4 s; nothing read
                for message in ASK_LONG if n % 4 == 0 else []:
                    proto.send_text(message.encode())
                await flush()
                await asyncio.sleep(1)
        except (ConnectionResetError, BrokenPipeError):
            self.tally.slow_dropped_s.append(round(time.monotonic() - started, 1))
            return "dropped by the server"
        finally:
            writer.transport.abort()
        return f"still held after {SLOW_HOLD_S:g} s without reading"

    async def big_append(self) -> str:
        """An append longer than --max-append-s is refused; appends at the limit, faster
        than real time, are slowed down to it and kept."""
        too_long = b64(pcm16(np.zeros(RATE * 16, np.float32)))  # under the event size limit
        at_limit = b64(pcm16(np.zeros(RATE * 15, np.float32)))
        async with connect(self.ws_url, max_size=None) as ws:
            await ws.send(event("input_audio_buffer.append", audio=too_long))
            for _ in range(4):  # 60 s of audio at once: 30 s of burst, then paced
                await ws.send(event("input_audio_buffer.append", audio=at_limit))
            codes = []
            while (ev := json.loads(await ws.recv()))["type"] != "error":
                pass
            codes.append(ev["error"]["code"])
            self.tally.codes["big_append"].update(codes)
            if codes != ["append_too_large"]:
                return f"answered {codes}"
            return await self.still_alive(ws, "refused, the rest paced, then the session went on")

    async def speculation_flood(self) -> str:
        """A slow speaker's long turn, sent as fast as allowed: every short pause starts a
        speculative transcription of the turn so far; then it leaves mid-turn."""
        fx = self.fixtures[1 % len(self.fixtures)]
        unit = np.concatenate([fx.audio[:int(fx.speech_end_s * RATE)],
                               np.zeros(RATE * 3 // 10, np.float32)])
        speech = np.tile(unit, 25 * RATE // len(unit) + 1)[:25 * RATE]
        async with connect(self.ws_url, max_size=None) as ws:
            await ws.send(event("session.update", session={
                "type": "realtime", "audio": {"input": {"turn_detection": {
                    "type": "server_vad", "silence_duration_ms": 2000}}}}))
            for at in range(0, len(speech), RATE * 5):
                await ws.send(event("input_audio_buffer.append",
                                    audio=b64(pcm16(speech[at:at + RATE * 5]))))
            while (json.loads(await ws.recv()))["type"] != "input_audio_buffer.speech_started":
                pass
            await asyncio.sleep(2)
        return "spoke with pauses, then left"

    async def huge_prompt(self) -> str:
        """Instructions and text beyond the one text limit, on every path that takes them."""
        long = "Always answer at great length. " * 1200  # about 37,000 characters
        return await self.expect_errors("huge_prompt", [
            event("response.create", response={"instructions": long}),
            event("session.update", session={"type": "realtime", "instructions": long}),
            event("conversation.item.create", item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": long * 4}]}),
        ], ["invalid_value", "invalid_value", "item_too_large"])

    async def outbox_stuffing(self) -> str:
        """Items of 30 KB each, every one echoed back twice, and answers asked for; never
        reads: its outbox fills by bytes, and the server drops it."""
        reader, writer, proto = await self.unread_connection()
        item = event("conversation.item.create", item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say something about the sea. " * 1000}]})
        started = time.monotonic()
        try:
            for data in proto.data_to_send():
                writer.write(data)
            while proto.state is State.CONNECTING:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    return "closed during the handshake"
                proto.receive_data(data)
            for n in range(int(SLOW_HOLD_S)):
                for _ in range(8):
                    proto.send_text(item.encode())
                if n % 4 == 0:
                    proto.send_text(event("response.create").encode())
                for data in proto.data_to_send():
                    writer.write(data)
                await asyncio.wait_for(writer.drain(), 1)
                await asyncio.sleep(1)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            self.tally.slow_dropped_s.append(round(time.monotonic() - started, 1))
            return "dropped by the server"
        finally:
            writer.transport.abort()
        return f"still held after {SLOW_HOLD_S:g} s without reading"

    async def trickled_post(self) -> str:
        """A token request sent a byte every 200 ms: the server cuts it off early."""
        host, port = self.url.removeprefix("http://").split(":")
        body = b'{"session": {"type": "realtime"}}'
        request = (b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\nContent-Length: "
                   + str(len(body) * 100).encode() + b"\r\n\r\n" + body * 100)
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        try:
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
                if reader.at_eof() or time.monotonic() - started > HANDSHAKE_S + 10:
                    break
            answer = await asyncio.wait_for(reader.read(4096), 5)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            answer = b""
        finally:
            writer.close()
        took = time.monotonic() - started
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
        self.tally.codes["trickled_post"][status] += 1
        if took > HANDSHAKE_S + 5:
            return f"still read after {took:.0f} s"
        return "cut off by the server"

    # ------------------------------------------------------------------ the run

    async def lane(self, kind: str, misdeed: Callable[[], Awaitable[str]]) -> None:
        while time.monotonic() < self.deadline:
            try:
                outcome = await asyncio.wait_for(misdeed(), SLOW_HOLD_S + 30)
            except Exception as exc:  # every failure is a finding
                outcome = f"{type(exc).__name__}: {exc}"
            self.tally.outcomes[kind][outcome] += 1
            if not EXPECTED[kind](outcome):
                self.tally.fail(kind, outcome)
            await asyncio.sleep(self.plan.pause_s)

    def misdeeds(self) -> dict[str, Callable[[], Awaitable[str]]]:
        return {kind: getattr(self, kind) for kind in self.plan.misdeeds}

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        self._t0 = time.monotonic()
        # Warm up: a turn, and each quick misdeed once, so that lazily made threads and
        # caches exist before the baseline.
        await one_turn(self.url, self.fixtures[0])
        # WebRTC calls at once, as many as the load holds at most (a caller's live call and
        # its vanished ones not found yet): the pool of threads that encodes the answer
        # tracks grows with them, and then stays.
        warm = await asyncio.gather(
            *(asyncio.wait_for(webrtc.turn(self.url, self.fixtures[n % len(self.fixtures)]),
                               WARM_TURN_S) for n in range(WARM_CALLS * plan.rtc_callers)),
            return_exceptions=True)
        for failed in (w for w in warm if isinstance(w, BaseException)):
            print(f"soak: a warm-up call did not finish: {type(failed).__name__}: "
                  f"{str(failed)[:300]}")
        for kind, misdeed in self.misdeeds().items():
            if kind not in ("slow_reader", "half_open"):
                await misdeed()
        await self.until_released()
        await asyncio.sleep(1.0)
        baseline = await self.sample()
        self.tally = Tally()
        # The talkers alone first (and again after the load): the figure they are held to.
        self.deadline = time.monotonic() + 600
        await asyncio.gather(*(self.talker(n, plan.quiet_turns) for n in range(plan.talkers)))
        self.deadline = time.monotonic() + plan.duration_s
        sampler = asyncio.create_task(self.sampler())
        idle = [asyncio.create_task(self.idle(n)) for n in range(plan.idle)]
        lanes = [self.lane(kind, misdeed) for kind, misdeed in self.misdeeds().items()]
        callers = [self.rtc_caller(n) for n in range(plan.rtc_callers)]
        await asyncio.gather(*(self.talker(n) for n in range(plan.talkers)), *lanes,
                             *callers)
        held = await asyncio.gather(*idle)
        loaded = await self.sample()
        for ws in held:
            if ws is not None:
                await ws.close()
        sampler.cancel()
        held_after = await self.until_released(
            VANISHED_FOUND_S if self.tally.rtc["vanished"] else 30.0)
        # A vanished call's sockets close once its session has (aiortc's teardown): on a
        # busy machine that took longer than 30 s.
        after = await self.until_settled(
            baseline, VANISHED_FOUND_S if self.tally.rtc["vanished"] else 30.0)
        after["sessions"] = held_after
        self.deadline = time.monotonic() + 600  # the talkers alone again
        await asyncio.gather(*(self.talker(n, 2 * plan.quiet_turns)
                               for n in range(plan.talkers)))
        result = summarize(plan, baseline, self.samples, loaded, after, self.tally)
        trims = await asyncio.to_thread(metrics_gauge, self.url, "heap_trims_total")
        spent = await asyncio.to_thread(metrics_gauge, self.url, "heap_trim_seconds_total")
        result["heap_trims"] = {"count": trims,
                                "mean_ms": round(1000 * spent / trims, 2) if trims else None}
        return result


MISDEEDS: tuple[str, ...] = (
    "garbage_json", "wrong_types", "bad_audio", "huge", "flood", "slow_reader",
    "leave_mid_answer", "churn", "half_open", "big_append", "speculation_flood", "huge_prompt",
    "outbox_stuffing", "trickled_post")
EXPECTED: dict[str, Callable[[str], bool]] = {
    "garbage_json": lambda o: o == "errors, then the session went on",
    "wrong_types": lambda o: o == "errors, then the session went on",
    "bad_audio": lambda o: o == "errors, then the session went on",
    "huge": lambda o: o == "closed 1009",
    "flood": lambda o: o in ("throttled, then the session went on",
                             "read no faster than the limit, then the session went on"),
    "slow_reader": lambda o: o == "dropped by the server",
    "leave_mid_answer": lambda o: o.startswith("left at the first audio"),
    "churn": lambda o: o == "opened and closed",
    "half_open": lambda o: o == "dropped by the server",
    "big_append": lambda o: o == "refused, the rest paced, then the session went on",
    "speculation_flood": lambda o: o == "spoke with pauses, then left",
    "huge_prompt": lambda o: o == "errors, then the session went on",
    "outbox_stuffing": lambda o: o == "dropped by the server",
    "trickled_post": lambda o: o == "cut off by the server",
}


MISDEED_DOCS = {
    "garbage_json": "garbage JSON (5 messages)",
    "wrong_types": "wrong types: not an object, no type, unknown type, bad fields, binary",
    "bad_audio": "bad audio: not base64, bad padding, an odd byte count",
    "huge": "a message beyond `--max-message-bytes` (4 MiB)",
    "flood": "400 events at once (`--max-events-per-s` 100)",
    "slow_reader": "never reads: audio in, a long answer asked for every 4 s, a small "
                   "receive window",
    "leave_mid_answer": "leaves at the first audio of a long answer (close, or TCP reset)",
    "churn": "6 connections opened and closed at once",
    "half_open": "3 TCP connections that never finish the handshake",
    "big_append": "an append of 16 s (over `--max-append-s`), then 60 s of audio at once",
    "speculation_flood": "25 s of a slow speaker's turn (a pause every sentence) at once, "
                         "then gone",
    "huge_prompt": "instructions and a message over the text limits",
    "outbox_stuffing": "never reads: 8 items of 30 KB a second (each echoed twice) and "
                       "answers asked for, a small receive window",
    "trickled_post": "a token request sent a byte every 200 ms",
}


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def summarize(plan: Plan, baseline: dict[str, float], samples: list[dict[str, float]],
              loaded: dict[str, float], after: dict[str, float], tally: Tally
              ) -> dict[str, Any]:
    under_load = [*samples, loaded]
    settled = under_load[len(under_load) // 3:]
    slope = 0.0
    if len(settled) >= 2 and settled[-1]["t_s"] > settled[0]["t_s"]:
        fit = np.polyfit([s["t_s"] / 60 for s in settled], [s["rss_mib"] for s in settled], 1)
        slope = round(float(fit[0]), 2)
    v2v = [t["client_v2v_ms"] for t in tally.turns if t["client_v2v_ms"] is not None]
    rtc_v2v = [t["client_v2v_ms"] for t in tally.rtc_turns if t["client_v2v_ms"] is not None]
    quiet = [t["client_v2v_ms"] for t in tally.quiet if t["client_v2v_ms"] is not None]
    ratio = (round(float(np.median(v2v) / np.median(quiet)), 2) if v2v and quiet else None)

    def stage_p50(turns: list[dict[str, Any]]) -> dict[str, float | None]:
        names = sorted({k for t in turns for k in t.get("stages_ms", {})})
        return {k: percentile([t["stages_ms"][k] for t in turns
                               if t.get("stages_ms", {}).get(k) is not None], 50) for k in names}
    resources = {name: {"start": baseline[name], "end": loaded[name],
                        "max": max(s[name] for s in under_load), "after": after[name]}
                 for name in ("rss_mib", "fds", "threads")}
    verdict = {"memory_flat": slope < FLAT_MIB_PER_MIN,
               "fds_back": after["fds"] <= baseline["fds"],
               "threads_back": after["threads"] <= baseline["threads"],
               "sessions_released": after["sessions"] == 0,
               "talkers_within_ratio": ratio is not None and ratio <= LOADED_V2V_RATIO,
               "no_unexpected_errors": not tally.unexpected}
    return {
        "machine": machine(), "plan": {**asdict(plan), "max_sessions": plan.max_sessions,
                                       "flat_mib_per_min": FLAT_MIB_PER_MIN,
                                       "loaded_v2v_ratio": LOADED_V2V_RATIO},
        "sessions": {"peak": max(s["sessions"] for s in under_load), "end": loaded["sessions"],
                     "after": after["sessions"]},
        "turns": {"completed": sum(t["status"] in ANSWERED for t in tally.turns),
                  "total": len(tally.turns), "v2v_p50_ms": percentile(v2v, 50),
                  "v2v_p95_ms": percentile(v2v, 95), "v2v_max_ms": max(v2v, default=None),
                  "quiet_total": len(tally.quiet), "quiet_v2v_p50_ms": percentile(quiet, 50),
                  "quiet_v2v_p95_ms": percentile(quiet, 95), "loaded_to_quiet_p50": ratio,
                  "stages_p50_ms": stage_p50(tally.turns),
                  "quiet_stages_p50_ms": stage_p50(tally.quiet)},
        "misbehavers": {kind: {"runs": sum(tally.outcomes[kind].values()),
                               "outcomes": dict(tally.outcomes[kind]),
                               "server_answers": dict(tally.codes[kind])}
                        for kind in plan.misdeeds},
        "webrtc": {"callers": plan.rtc_callers, "calls": tally.rtc["calls"],
                   "failed": tally.rtc["failed"], "hung_up": tally.rtc["hung_up"],
                   "vanished": tally.rtc["vanished"],
                   "completed": sum(t["status"] in ANSWERED for t in tally.rtc_turns),
                   "v2v_p50_ms": percentile(rtc_v2v, 50), "v2v_p95_ms": percentile(rtc_v2v, 95)},
        "unexpected": tally.unexpected,
        "slow_reader_dropped_after_s": tally.slow_dropped_s,
        "idle_sessions_replaced": tally.codes["idle"]["idle_timeout"],
        "resources": resources, "rss_mib_per_min": slope,
        "verdict": {**verdict, "flat": all(verdict.values())},
        "samples": [baseline, *under_load, after],
        # every talker turn, quiet ones first: where a slow one spent its time
        "turn_log": [{"phase": phase, **{k: t.get(k) for k in (
            "t_s", "status", "client_v2v_ms", "stages_ms", "compute_ms")}}
            for phase, turns in (("quiet", tally.quiet), ("loaded", tally.turns))
            for t in turns],
    }


def run(plan: Plan, port: int, server_args: list[str], out: Path) -> dict[str, Any]:
    """The soak against a fresh `voxwire serve`; the result also lands in `out` (JSON)."""
    from openai import AsyncOpenAI

    _ = AsyncOpenAI(api_key="bench").realtime  # the SDK's lazy imports, before the loop runs
    fixtures = make_fixtures(QUESTIONS[:6])
    # every client is on loopback: one address holds all of them
    args = [*server_args, "--max-sessions", str(plan.max_sessions),
            "--max-connections-per-ip", str(plan.max_sessions + 16),
            "--max-pending-handshakes-per-ip", str(plan.max_sessions + 16),
            "--log-level", "WARNING"]
    with server_process(port, args) as (url, pid):
        result = asyncio.run(Soak(url, pid, plan, fixtures).run())
    result["server_args"] = args
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def section(soak: dict[str, Any]) -> list[str]:
    """The soak's part of docs/benchmarks.md."""
    m, plan, res, v = soak["machine"], soak["plan"], soak["resources"], soak["verdict"]
    turns, held = soak["turns"], soak["sessions"]
    rtc = soak.get("webrtc", {})
    lines = ["## Soak: many sessions for minutes, idle and misbehaving ones among them", "",
             f"`make bench-soak` holds {plan['idle']} idle sessions and {plan['talkers']} "
             "talking ones" + (f", with {plan['rtc_callers']} WebRTC caller(s) calling one "
                               "question at a time," if plan.get("rtc_callers") else "")
             + f" for {plan['duration_s']:.0f} s against one `voxwire serve` on "
             "loopback, while one lane of each misbehaviour below repeats it every "
             f"{plan['pause_s']:g} s; the talkers speak the fixtures at real-time pace, "
             f"{TURNS_PER_SESSION} turns per connection. The server process is sampled every "
             f"{plan['sample_s']:g} s; its start is after a warm-up, with no client connected.",
             "", f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}.", "",
             "| server | start | end of the load | max | after the clients left |",
             "|---|---|---|---|---|"]
    for name, label in (("rss_mib", "RSS MiB"), ("fds", "file descriptors"),
                        ("threads", "threads")):
        r = res[name]
        lines.append(f"| {label} | {r['start']:.0f} | {r['end']:.0f} | {r['max']:.0f} | "
                     f"{r['after']:.0f} |")
    lines += [f"| sessions held | 0 | {held['end']:.0f} | {held['peak']:.0f} | "
              f"{held['after']:.0f} |", "",
              f"- Talkers: {turns['completed']}/{turns['total']} turns completed, voice to "
              f"voice p50 {turns['v2v_p50_ms'] or 0:.0f} ms, p95 {turns['v2v_p95_ms'] or 0:.0f}"
              " ms (on the client's clock, with everything else going on).",
              *([f"- The same talkers alone, before and after the load "
                 f"({turns['quiet_total']} turns): p50 "
                 f"{turns['quiet_v2v_p50_ms'] or 0:.0f} ms, p95 "
                 f"{turns['quiet_v2v_p95_ms'] or 0:.0f} ms; under the load p50 was "
                 f"{turns['loaded_to_quiet_p50']}x that (held to "
                 f"{plan.get('loaded_v2v_ratio', LOADED_V2V_RATIO):g}x)."]
                if turns.get("quiet_total") else []),
              *([f"- WebRTC: {rtc['callers']} caller(s) made {rtc['calls']} calls, one "
                 f"question each ({rtc['completed']} answered, voice to voice p50 "
                 f"{rtc['v2v_p50_ms'] or 0:.0f} ms, p95 {rtc['v2v_p95_ms'] or 0:.0f} ms to the "
                 f"first voiced frame heard); {rtc['hung_up']} hung up, {rtc['vanished']} "
                 "vanished without a word (found by the server's ICE consent checks); "
                 f"{rtc['failed']} failed."] if rtc.get("calls") else []),
              *([f"- Idle sessions the server closed at its idle timeout "
                 f"({IDLE_TIMEOUT_S:g} s), each replaced: {soak['idle_sessions_replaced']}."]
                if soak["idle_sessions_replaced"] else []),
              f"- Memory: over the last two thirds of the run RSS rose "
              f"{soak['rss_mib_per_min']:.1f} MiB a minute (a least-squares line through the "
              f"samples; flat below {plan['flat_mib_per_min']:g}).",
              *([f"- The server handed freed memory back (`--heap-trim-s`) "
                 f"{soak['heap_trims']['count']:.0f} times, {soak['heap_trims']['mean_ms']} ms "
                 "each on average, in a worker thread."]
                if soak.get("heap_trims", {}).get("count") else []),
              "- Verdict: " + ("**flat**: memory flat, file descriptors and threads back to "
                               "where they started, no session left behind, no unexpected "
                               "error." if v["flat"] else "**not flat**: " + ", ".join(
                                   k.replace("_", " ") for k, ok in v.items()
                                   if not ok and k != "flat") + " failed."), "",
              "| misbehaviour | runs | outcome | the server's answers |", "|---|---|---|---|"]
    for kind, mis in soak["misbehavers"].items():
        outcomes = "; ".join(f"{o}: {n}" for o, n in mis["outcomes"].items())
        answers = ", ".join(f"`{c}`: {n}" for c, n in mis["server_answers"].items())
        lines.append(f"| {MISDEED_DOCS[kind]} | {mis['runs']} | {outcomes} | {answers} |")
    lines.append("")
    dropped = soak["slow_reader_dropped_after_s"]
    if dropped:
        lines += [f"A client that does not read was dropped {min(dropped):.0f}-"
                  f"{max(dropped):.0f} s after it connected (its socket backs up, then the "
                  "server gives a stuck send 10 s).", ""]
    if soak["unexpected"]:
        lines += ["Unexpected failures:", "", *(f"- {u}" for u in soak["unexpected"][:20]), ""]
    return lines
