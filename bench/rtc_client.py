"""A Realtime API client over WebRTC, with aiortc: what a browser does, in Python.

`connect` POSTs an SDP offer to a Voxwire server (`/v1/realtime/calls`, with an API key,
an ephemeral token or none), applies the answer and waits for `session.created` on the
data channel `oai-events`. The `Microphone` track plays what it is given at real-time
pace, 20 ms frames at 48 kHz, and silence between; its clock is ideal (frame n goes out
at the first frame's time plus n times 20 ms), so `Microphone.at` tells when any sample
of the stream was spoken. The `Client` keeps every data-channel event and every frame of
the answer track, each with the monotonic time it arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from client.realtime import Float32
from server.edge.webrtc import CALLS_PATH, EVENTS_CHANNEL, candidate_addresses, candidates_on

RATE = 48000  # Opus's rate: what the microphone sends and the answer track brings
FRAME = 960  # 20 ms
VOICED = 64  # an int16 sample above this (-54 dBFS) is sound, not Opus's silence
Reply = tuple[int, dict[str, str], bytes]
Heard = tuple[float, npt.NDArray[np.int16]]


# ---------------------------------------------------------------------------- HTTP


def _post(url: str, body: bytes, headers: dict[str, str]) -> Reply:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def post(url: str, body: bytes, key: str | None = None,
               content_type: str = "application/sdp") -> Reply:
    """A POST from another thread (urllib blocks; a server may share this loop)."""
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return await asyncio.to_thread(_post, url, body, headers)


def multipart(sdp: str, session: dict[str, Any]) -> tuple[bytes, str]:
    """The offer and a session configuration as one form: its body and content type."""
    boundary = uuid.uuid4().hex
    parts = [("sdp", sdp), ("session", json.dumps(session))]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                    f"{value}\r\n".encode() for name, value in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ---------------------------------------------------------------------------- media


class Microphone(MediaStreamTrack):
    """The caller's microphone: what `say` was given, at real-time pace, else silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, np.int16)
        self._first: float | None = None  # when the stream's first sample went out
        self._next: float | None = None
        self._pts = 0  # samples handed out so far

    def queue(self, speech: Float32) -> int:
        """Queue ``speech`` (48 kHz mono float); where its first sample stands in the
        stream (samples from the stream's start)."""
        at = self._pts + len(self._pending)
        pcm = (np.clip(speech, -1, 1) * 32767).astype(np.int16)
        self._pending = np.concatenate([self._pending, pcm])
        return at

    def say(self, speech: Float32) -> float:
        """Queue ``speech``; how long it takes to play, from what is queued now."""
        self.queue(speech)
        return len(self._pending) / RATE

    def at(self, sample: int) -> float:
        """The monotonic time at which sample number ``sample`` of the stream was (or will
        be) spoken: the pacing's clock, not the moment a late loop got to it."""
        if self._first is None:
            raise RuntimeError("the microphone has not started")
        return self._first + sample / RATE

    @property
    def queued(self) -> int:
        """Samples queued and not sent yet."""
        return len(self._pending)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._next is None:
            self._first = self._next = now
        elif self._next > now:
            await asyncio.sleep(self._next - now)
        self._next += FRAME / RATE
        chunk = np.zeros(FRAME, np.int16)
        n = min(FRAME, len(self._pending))
        chunk[:n], self._pending = self._pending[:n], self._pending[n:]
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate, frame.pts = RATE, self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


def voiced(samples: npt.NDArray[Any]) -> bool:
    return bool(np.abs(samples).max(initial=0) > VOICED)


# ---------------------------------------------------------------------------- the call


@dataclass
class Client:
    """A WebRTC caller: the microphone track, the data channel, what it heard and got."""

    pc: RTCPeerConnection
    mic: Microphone
    channel: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # when each event arrived
    heard: list[Heard] = field(default_factory=list)  # answer frames, with their arrival
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    problems: list[str] = field(default_factory=list)  # what `check` found in the events
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def until(self, stop: Callable[[dict[str, Any]], bool], seconds: float = 60,
                    start: int = 0) -> list[dict[str, Any]]:
        """The events from ``start`` on, up to the first that ``stop`` takes (an
        AssertionError naming the events seen when none did within ``seconds``)."""
        deadline, scanned = time.monotonic() + seconds, start
        while True:
            for i in range(scanned, len(self.events)):
                if stop(self.events[i]):
                    return self.events[start:i + 1]
            scanned = len(self.events)
            left = deadline - time.monotonic()
            assert left > 0, [e["type"] for e in self.events]
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def audio(self, since: float = 0.0, until: float = float("inf")) -> Float32:
        """What the answer track brought, mono float at 48 kHz, between two times."""
        chunks = [s for t, s in self.heard if since <= t < until]
        return (np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks
                else np.zeros(0, np.float32))

    def first_voiced(self, since: float = 0.0) -> float | None:
        """When the first voiced answer frame arrived at or after ``since``."""
        return next((t for t, s in self.heard if t >= since and voiced(s)), None)

    async def close(self) -> None:
        """Hang up: DTLS close_notify and an SCTP abort tell the server at once."""
        for task in self.tasks:
            task.cancel()
        await self.pc.close()

    async def vanish(self) -> None:
        """Go without a word, as a tab killed or a network lost: whatever the call's UDP
        sockets send from now on is lost, the hang-up included, and the server finds out
        when its ICE consent checks go unanswered."""
        dtls = [t.sender.transport for t in self.pc.getTransceivers()]
        if self.pc.sctp is not None:
            dtls.append(self.pc.sctp.transport)
        for ice in {id(d.transport): d.transport for d in dtls}.values():
            for protocol in ice._connection._protocols:
                sock: Any = protocol.transport
                sock.sendto = _lost
        with contextlib.suppress(Exception):
            await self.close()


def _lost(data: bytes, addr: Any = None) -> None:
    """A datagram sent into a network that is gone."""


def peer() -> RTCPeerConnection:
    """A caller with no STUN server (aiortc would ask Google's): host candidates only."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def offer(pc: RTCPeerConnection, host: str = "127.0.0.1") -> str:
    """The offer, its candidates where a server on ``host`` offers its own (aioice leaves
    loopback out of its own choice)."""
    with candidates_on(candidate_addresses(host)):
        await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def connect(base: str, key: str | None = None, session: dict[str, Any] | None = None,
                  path: str = CALLS_PATH, check: Callable[[str | bytes], list[str]] | None = None,
                  ready_s: float = 20.0) -> tuple[Client, Reply]:
    """Call the server at ``base`` (http://host:port): the offer posted (with ``session``
    as a form beside it when given), the answer applied, `session.created` received.
    ``check`` looks at each event as it came and says what is wrong with it. The reply is
    the server's (status, headers, body); the call is live when the status is 201."""
    pc = peer()
    mic = Microphone()
    pc.addTrack(mic)
    channel = pc.createDataChannel(EVENTS_CHANNEL)
    client = Client(pc, mic, channel)

    def message(data: str | bytes) -> None:
        if check is not None:
            client.problems += check(data)
        client.events.append(json.loads(data))
        client.times.append(time.monotonic())
        client.arrived.set()

    channel.on("message", message)

    @pc.on("track")
    def track(incoming: MediaStreamTrack) -> None:
        async def hear() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await incoming.recv()
                    assert isinstance(frame, AudioFrame)
                    data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    client.heard.append((time.monotonic(), data[:, 0].astype(np.int16)))
        client.tasks.append(asyncio.ensure_future(hear()))

    try:
        sdp = await offer(pc, urlsplit(base).hostname or "127.0.0.1")
        if session is None:
            reply = await post(base + path, sdp.encode(), key)
        else:
            body, kind = multipart(sdp, session)
            reply = await post(base + path, body, key, kind)
        if reply[0] == 201:
            await pc.setRemoteDescription(RTCSessionDescription(reply[2].decode(), "answer"))
            await client.until(lambda e: e["type"] == "session.created", ready_s)
    except BaseException:
        await client.close()
        raise
    return client, reply
