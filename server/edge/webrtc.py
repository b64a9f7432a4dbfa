"""The WebRTC door: the Realtime API's browser transport, a thin adapter around `Session`.

A call starts with an HTTP POST of the client's SDP offer (`/v1/realtime/calls`, or the
beta `/v1/realtime?model=...`); the answer names the call. aiortc does ICE, DTLS and SRTP,
and Opus through PyAV: the microphone arrives as an Opus track that aiortc decodes in its
own thread, and is handed to the session as 48 kHz pcm16 (`TRANSPORT_FORMAT`), which the
session's ears resample in the VAD lane as any input. The answer goes out as an Opus track
that this door paces in real time (`Playback`, 20 ms frames; aiortc encodes them in its
executor). Client and server events travel as JSON on the data channel `oai-events`,
exactly as over the WebSocket, but for audio: no audio delta goes over the data channel.

Because the server plays the answer, it knows what was heard: it says so with
`output_audio_buffer.started|stopped|cleared`, stops the track at once on barge-in (and on
the client's `output_audio_buffer.clear`), and truncates the assistant item to what was
played, without waiting for the client to say it.

A sideband WebSocket (`/v1/realtime?call_id=...`, see server.edge.app) attaches to a live
call: it gets a copy of the events the data channel gets, in a bounded queue of its own
(`Sideband`), and its client events go to the same `Call.handle`. A backend with the API
key ends a call by its id (`POST /v1/realtime/calls/{id}/hangup`, `WebRtcDoor.hangup`).

Networks: the calls gather their candidates with the STUN and TURN servers of
`--ice-servers` (server-reflexive and relayed candidates), host candidates on the address
the server listens on only, their UDP sockets on the ports of `--rtc-ports` when it is set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import email.parser
import email.policy
import errno
import fractions
import ipaddress
import json
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aioice.ice
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from av.frame import Frame

import realtime as p
from realtime import Json
from realtime import server_events as se
from server.edge.intake import Intake
from server.edge.tokens import Grant
from server.errors import LimitError, ProtocolError
from server.runtime.config import Settings, ice_servers, port_range
from server.runtime.engines import Engines
from server.runtime.store import Resumable
from server.session.core import Session
from server.session.outbox import FLUSHED, OnSent

log = logging.getLogger(__name__)

OPUS_RATE = 48000
FRAME = 960  # samples in one 20 ms frame at 48 kHz: what the track sends each time
FRAME_S = FRAME / OPUS_RATE
TRANSPORT_FORMAT = p.AudioFormat("audio/pcm", OPUS_RATE)
EVENTS_CHANNEL = "oai-events"
CALLS_PATH = "/v1/realtime/calls"
AHEAD_S = 30.0  # answer audio held for the track at most; beyond, the answer waits
MIC_BEHIND_S = 2.0  # microphone audio the session may fall behind by; older audio is dropped
RESYNC_S = 0.1  # the track this late (a busy loop): it starts over from now, not in a burst
TAIL_FRAMES = 10  # silence sent after an answer (200 ms) before the track pauses
CHANNEL_HIGH = 1024 * 1024  # bytes queued on the data channel before the door waits
SEND_TIMEOUT_S = 10.0  # a client whose data channel takes nothing this long is dropped
MAX_SDP = 32 * 1024
CLOSE_S = 5.0  # at shutdown, how long the calls' sessions may take to close
EVENTS_AHEAD = 64  # client events waiting for the session; more are dropped, with an error
MAX_SIDEBANDS = 2  # sideband WebSockets attached to one call at most
SIDEBAND_AHEAD = 512  # server events a sideband may fall behind by; beyond, it is dropped
NO_FREE_PORT = "no_free_udp_port"  # the LimitError's code when --rtc-ports is all taken
Int16 = npt.NDArray[np.int16]


# ---------------------------------------------------------------------------- candidates

# aioice gathers host candidates on every interface but loopback, and takes no list of
# addresses. A server listening on one address (127.0.0.1 by default) offers media there
# only, loopback included: its UDP sockets are then as private as its HTTP port, and a
# machine with no network interface but lo can still take calls. The choice travels in a
# context variable, set around the gathering, which runs in the task that set it.
_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "voxwire_candidate_addresses", default=None)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _ADDRESSES.get()
    return list(chosen) if chosen is not None else _aioice_host_addresses(use_ipv4, use_ipv6)


aioice.ice.get_host_addresses = _host_addresses


@contextlib.contextmanager
def candidates_on(addresses: tuple[str, ...] | None) -> Iterator[None]:
    """Host candidates gathered in this block are on ``addresses`` (None: aioice's own
    choice, every interface but loopback)."""
    token = _ADDRESSES.set(addresses)
    try:
        yield
    finally:
        _ADDRESSES.reset(token)


def candidate_addresses(host: str) -> tuple[str, ...] | None:
    """Where a server listening on ``host`` offers media: that address when it is one,
    every interface when it is a wildcard or a name."""
    if host == "localhost":
        return ("127.0.0.1",)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if ip.is_unspecified else (str(ip),)


# ---------------------------------------------------------------------------- ports

# aioice binds each host candidate's UDP socket to an ephemeral port and takes no range.
# With --rtc-ports, the loop's create_datagram_endpoint is wrapped (once per loop): a socket
# asked for on port 0 while a range is chosen, in a context variable set around the
# gathering as the addresses above, is bound to the first free port of the range instead.
# When none is free, the bind fails as aioice expects a bind to fail (it gathers on without
# that candidate), and the call is refused.
@dataclass
class Ports:
    """The UDP ports one call's gathering may bind, and whether a bind found none free."""

    span: range
    full: bool = False

    def __str__(self) -> str:
        return f"{self.span.start}-{self.span.stop - 1}"


_PORTS: contextvars.ContextVar[Ports | None] = contextvars.ContextVar(
    "voxwire_candidate_ports", default=None)
_IN_RANGE = "_voxwire_in_range"  # marks a loop's create_datagram_endpoint as wrapped


def _bind_in_range(loop: asyncio.AbstractEventLoop) -> None:
    original = loop.create_datagram_endpoint
    if getattr(original, _IN_RANGE, False):
        return

    async def create_datagram_endpoint(protocol_factory: Callable[[], Any],
                                       local_addr: tuple[str, int] | None = None,
                                       remote_addr: Any = None, **kwargs: Any) -> Any:
        ports = _PORTS.get()
        if ports is None or local_addr is None or local_addr[1] != 0 or remote_addr:
            return await original(protocol_factory, local_addr, remote_addr, **kwargs)
        for port in ports.span:
            try:
                return await original(protocol_factory, (local_addr[0], port), **kwargs)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        ports.full = True
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {ports} on {local_addr[0]}")

    setattr(create_datagram_endpoint, _IN_RANGE, True)
    setattr(loop, "create_datagram_endpoint", create_datagram_endpoint)  # noqa: B010 (mypy)


@contextlib.contextmanager
def ports_in(span: range | None) -> Iterator[Ports | None]:
    """Host candidates gathered in this block bind a UDP port of ``span`` (None: any
    ephemeral port); what is yielded says, after the block, whether any bind found none."""
    ports = None if span is None else Ports(span)
    if ports is not None:
        _bind_in_range(asyncio.get_running_loop())
    token = _PORTS.set(ports)
    try:
        yield ports
    finally:
        _PORTS.reset(token)


# ---------------------------------------------------------------------------- the offer


@dataclass(frozen=True)
class Offer:
    sdp: str
    session: Json | None = None  # the multipart form's `session` field, parsed


def read_offer(content_type: str, body: bytes) -> Offer:
    """The SDP offer from a POST body: `application/sdp`, or the multipart form with the
    fields `sdp` and `session` (raises ProtocolError naming what is wrong)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        fields = _form_fields(content_type, body)
        if "sdp" not in fields:
            raise ProtocolError("the form has no `sdp` field", code="invalid_offer", param="sdp")
        session = None
        if "session" in fields:
            try:
                session = json.loads(fields["session"])
            except (ValueError, RecursionError) as exc:
                raise ProtocolError("the form's `session` field is not JSON",
                                    code="invalid_json", param="session") from exc
            if not isinstance(session, dict):
                raise ProtocolError("the form's `session` field must be a JSON object",
                                    code="invalid_value", param="session")
        return Offer(_checked_sdp(fields["sdp"]), p.without_nulls(session) if session else None)
    if kind in ("application/sdp", "text/plain", ""):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("the SDP offer is not UTF-8 text", code="invalid_sdp") from exc
        return Offer(_checked_sdp(text))
    raise ProtocolError(f"send the SDP offer as application/sdp or multipart/form-data, not "
                        f"{kind}", code="unsupported_media_type")


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ProtocolError("the multipart form could not be read (its boundary?)",
                            code="invalid_offer")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8", errors="replace")
    return fields


def _checked_sdp(text: str) -> str:
    """The offer, if it looks like one Voxwire can answer: SDP, with Opus audio."""
    sdp = text.strip().replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"
    if not sdp.startswith("v=0"):
        raise ProtocolError("the body is not an SDP offer (it must start with v=0)",
                            code="invalid_sdp")
    if len(sdp) > MAX_SDP:
        raise ProtocolError(f"the SDP offer is over {MAX_SDP} bytes", code="invalid_sdp")
    if "\r\nm=audio " not in sdp:
        raise ProtocolError("the SDP offer has no audio (m=audio): a call needs the "
                            "microphone's track", code="invalid_sdp")
    if "opus/48000" not in sdp.lower():
        raise ProtocolError("the SDP offer's audio has no Opus (a=rtpmap:... opus/48000/2)",
                            code="invalid_sdp")
    return sdp


# ---------------------------------------------------------------------------- audio out


@dataclass
class Clip:
    """One output audio delta on its way out on the track."""

    response_id: str
    item_id: str
    samples: Int16  # 48 kHz mono
    on_sent: OnSent | None
    at: int = 0  # samples already sent


@dataclass
class Playing:
    """The response whose audio the track carries, and how much of it went out."""

    response_id: str
    item_id: str
    sent: int = 0  # samples of this item sent
    finished: bool = False  # all its audio is queued: stopped once it has all gone


class Playback(MediaStreamTrack):
    """The answer's audio track, paced in real time by the server: one 20 ms frame each
    `recv`. Between answers it sends `TAIL_FRAMES` of silence and then nothing until the
    next answer (its timestamps jump by the pause, as with Opus's discontinuous
    transmission): an idle call costs no encoding and no packets. ``notify`` is told
    `output_audio_buffer.started` and `.stopped` as they happen."""

    kind = "audio"

    def __init__(self, notify: Callable[[Json], None]) -> None:
        super().__init__()
        self._notify = notify
        self._clips: deque[Clip] = deque()
        self._queued = 0  # samples in `_clips` not yet sent
        self._room = asyncio.Event()
        self._room.set()
        self._next: float | None = None  # when the next frame is due (loop time)
        self._pts = 0
        self._silent = 0  # frames sent without answer audio since the last with some
        self._wake = asyncio.Event()  # audio to send, or the track stopped
        self.playing: Playing | None = None
        self._dropped: deque[str] = deque(maxlen=16)  # responses cut off: their audio is not
        self._finished: deque[str] = deque(maxlen=16)  # responses whose audio is all queued
        self.frames = 0

    async def room(self) -> None:
        """Until the track holds less than `AHEAD_S` of audio."""
        while self._queued >= AHEAD_S * OPUS_RATE:
            self._room.clear()
            await self._room.wait()

    def put(self, clip: Clip) -> None:
        if clip.response_id in self._dropped:
            return  # audio of an answer cut off: never played
        self._clips.append(clip)
        self._queued += len(clip.samples)
        self._wake.set()

    def finish(self, response_id: str) -> None:
        """All of the response's audio is queued (`output_audio.done`, `response.done`)."""
        if response_id not in self._finished:
            self._finished.append(response_id)
        if self.playing is not None and self.playing.response_id == response_id:
            self.playing.finished = True
            if not self._clips:
                self._stopped()

    def clear(self) -> Playing | None:
        """Drop the audio not yet sent, at once; what was playing (or about to), with how
        much of it went out."""
        was = self.playing
        if was is None and self._clips:
            was = Playing(self._clips[0].response_id, self._clips[0].item_id)
        for rid in {c.response_id for c in self._clips} | ({was.response_id} if was else set()):
            if rid not in self._dropped:
                self._dropped.append(rid)
        self._clips.clear()
        self._queued = 0
        self.playing = None
        self._room.set()
        return was

    def _stopped(self) -> None:
        if self.playing is not None:
            self._notify(se.output_audio_buffer_stopped(self.playing.response_id))
            self.playing = None

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    async def _pause(self) -> None:
        """Send nothing until there is answer audio; the timeline goes on meanwhile."""
        loop = asyncio.get_running_loop()
        paused = loop.time()
        while not self._clips and self.readyState == "live":
            self._wake.clear()
            await self._wake.wait()
        if self.readyState != "live":
            raise MediaStreamError
        self._pts += int((loop.time() - paused) * OPUS_RATE) // FRAME * FRAME
        self._next = None  # paced from now

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._clips and self._silent >= TAIL_FRAMES:
            await self._pause()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next is None or now - self._next > RESYNC_S:
            self._next = now
        elif self._next > now:
            await asyncio.sleep(self._next - now)
        self._next += FRAME_S
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(self._take().tobytes())
        frame.sample_rate = OPUS_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, OPUS_RATE)
        self._pts += FRAME
        self.frames += 1
        return frame

    def _take(self) -> Int16:
        """The next 20 ms of answer audio (zeros where there is none)."""
        out = np.zeros(FRAME, np.int16)
        filled = 0
        before = self._queued
        while filled < FRAME and self._clips:
            clip = self._clips[0]
            if clip.at == 0:
                self._begin(clip)
            n = min(FRAME - filled, len(clip.samples) - clip.at)
            out[filled:filled + n] = clip.samples[clip.at:clip.at + n]
            clip.at += n
            filled += n
            self._queued -= n
            if self.playing is not None:
                self.playing.sent += n
            if clip.at >= len(clip.samples):
                self._clips.popleft()
        if self.playing is not None and self.playing.finished and not self._clips:
            self._stopped()
        self._silent = 0 if filled else self._silent + 1
        if before >= AHEAD_S * OPUS_RATE > self._queued:
            self._room.set()
        return out

    def _begin(self, clip: Clip) -> None:
        """A clip's first sample goes out now: its delta counts as sent from here (the
        turn's first audio, the echo guard's reference), and a new answer has started."""
        if self.playing is None or self.playing.response_id != clip.response_id:
            self._stopped()  # the answer before, queued back to back, has all been played
            self.playing = Playing(clip.response_id, clip.item_id,
                                   finished=clip.response_id in self._finished)
            self._notify(se.output_audio_buffer_started(clip.response_id))
        elif self.playing.item_id != clip.item_id:
            self.playing.item_id, self.playing.sent = clip.item_id, 0
        if clip.on_sent is not None:
            clip.on_sent()


# ---------------------------------------------------------------------------- audio in

MIC_PREFETCH = 1  # packets aiortc's jitter buffer holds back before a microphone frame


def prompt_microphone(receiver: RTCRtpReceiver) -> None:
    """The microphone's frames as soon as they are whole. aiortc's audio receiver holds
    four packets back (80 ms) for smooth playout; the session does not play the audio, it
    listens to it, and each packet held back is that much later an end of speech is heard.
    Packets out of order are still put back in order (the buffer keeps its 16 places)."""
    attribute = "_RTCRtpReceiver__jitter_buffer"
    if isinstance(getattr(receiver, attribute, None), JitterBuffer):
        setattr(receiver, attribute, JitterBuffer(capacity=16, prefetch=MIC_PREFETCH))


class Microphone:
    """The caller's microphone: frames aiortc decoded (48 kHz, stereo s16) made mono, held
    in a bounded buffer, and handed to the session as one append per wait: a session that
    falls behind gets bigger appends, and past `MIC_BEHIND_S` loses the oldest audio."""

    def __init__(self, session: Session, heard: Callable[[], None]) -> None:
        self._session, self._heard = session, heard
        self._pending: deque[Int16] = deque()
        self._held = 0
        self._ready = asyncio.Event()
        self.dropped_s = 0.0

    async def listen(self, track: MediaStreamTrack) -> None:
        """Until the track ends."""
        feeding = asyncio.create_task(self._feed())
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                if isinstance(frame, AudioFrame):
                    self._hold(_mono(frame))
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding

    def _hold(self, samples: Int16) -> None:
        self._heard()
        self._pending.append(samples)
        self._held += len(samples)
        while self._held > MIC_BEHIND_S * OPUS_RATE and len(self._pending) > 1:
            gone = self._pending.popleft()
            self._held -= len(gone)
            self.dropped_s += len(gone) / OPUS_RATE
        self._ready.set()

    async def _feed(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if not self._pending:
                continue
            pcm = np.concatenate(self._pending).astype("<i2").tobytes()
            self._pending.clear()
            self._held = 0
            await self._session.handle(p.AudioAppend(None, pcm))


def _mono(frame: AudioFrame) -> Int16:
    """One channel of 16-bit audio, whatever layout aiortc's decoder gave."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    wide = data.astype(np.int32)
    mixed = wide.mean(axis=0) if frame.format.is_planar else \
        wide.reshape(-1, channels).mean(axis=1)
    out: Int16 = mixed.astype(np.int16)
    return out


# ---------------------------------------------------------------------------- the call


class Sessions(Protocol):
    """What the door needs from the server: its settings, and sessions counted in and out
    as every door's are."""

    settings: Settings

    async def admit(self, key: str, session_id: str) -> str | None: ...

    def open_session(self, engines: Engines, key: str, grant: Grant | None, *,
                     transport: str,
                     dialect: p.Dialect = "ga", model: str = "voxwire",
                     kind: str = "realtime",
                     transport_format: p.AudioFormat | None = None,
                     resume: Resumable | None = None,
                     session_id: str | None = None) -> Session: ...

    async def close_session(self, session: Session, key: str) -> None: ...


class Sideband:
    """A copy of a call's server events for a sideband WebSocket, bounded: a sideband that
    falls `SIDEBAND_AHEAD` events behind is dropped, so that it never stalls the call."""

    def __init__(self) -> None:
        self._events: asyncio.Queue[Json | None] = asyncio.Queue()
        self._held = 0
        self.behind = False  # dropped for falling too far behind

    def put(self, event: Json) -> None:
        if self.behind:
            return
        if self._held >= SIDEBAND_AHEAD:
            self.behind = True
            self.end()
            return
        self._held += 1
        self._events.put_nowait(event)

    def end(self) -> None:
        """No more events: `get` says so (None) once what is queued has been taken."""
        self._events.put_nowait(None)

    async def get(self) -> Json | None:
        event = await self._events.get()
        if event is not None:
            self._held -= 1
        return event


@dataclass
class Call:
    """One WebRTC call: a peer connection and its session."""

    id: str
    session: Session
    key: str
    pc: RTCPeerConnection
    dialect: p.Dialect
    settings: Settings
    expects_channel: bool  # the offer has a data channel (m=application)
    channel: RTCDataChannel | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    last_heard: float = 0.0  # when a client event or microphone audio came (loop time)

    def __post_init__(self) -> None:
        self.playback = Playback(self.notify)
        self.intake = Intake(self.settings, self.session, self.handle)
        # Client events in arrival order, one at a time, as a WebSocket's are read.
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue(EVENTS_AHEAD)
        self._overflow_told = 0.0
        self._truncate_after: dict[str, Playing] = {}  # by response: wait for its end
        self._done: deque[str] = deque(maxlen=16)  # responses whose response.done has gone
        # What a barge-in silenced as soon as the session said so (`_emitted`), for the
        # speech_started it came with to tell the client, in order, when that is sent.
        self._silenced: Playing | None = None
        self.session.outbox.observer = self._emitted
        self.sidebands: list[Sideband] = []
        self._handling = asyncio.Lock()  # the data channel's events and the sidebands' take
        # turns, as one WebSocket's do

    def attach(self) -> Sideband:
        """A sideband's copy of the call's server events from now on (raises LimitError when
        `MAX_SIDEBANDS` are attached, ProtocolError when the call has ended)."""
        if self.ended.is_set():
            raise ProtocolError(f"call {self.id} has ended", code="call_not_found")
        if len(self.sidebands) >= MAX_SIDEBANDS:
            raise LimitError(f"call {self.id} has {MAX_SIDEBANDS} sidebands attached already",
                             code="too_many_sidebands")
        sideband = Sideband()
        self.sidebands.append(sideband)
        return sideband

    def detach(self, sideband: Sideband) -> None:
        if sideband in self.sidebands:
            self.sidebands.remove(sideband)
        sideband.end()

    def sideband_intake(self) -> Intake:
        """A sideband's client events into the call's session: the same handling as the
        data channel's (and its own rate buckets of the same size)."""
        return Intake(self.settings, self.session, self._from_sideband)

    async def _from_sideband(self, event: p.ClientEvent) -> None:
        self.heard()  # a backend driving the call keeps it alive, as its client would
        await self.handle(event)

    def spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(f"{name} {self.id}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: %s failed; the call ends", self.id, task.get_name(),
                      exc_info=task.exception())
            if not self.ended.is_set():  # a call missing a part is no call: end it whole
                self.spawn(self.close(), "close")

    def heard(self) -> None:
        self.last_heard = asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ client events

    async def handle(self, event: p.ClientEvent) -> None:
        """A client event from the data channel or a sideband, one at a time:
        `output_audio_buffer.clear` is the door's, everything else the session's, but
        audio: the microphone track carries that."""
        async with self._handling:
            await self._handle(event)

    async def _handle(self, event: p.ClientEvent) -> None:
        if isinstance(event, p.OutputAudioClear):
            self.cut(always=True)
            return
        if isinstance(event, p.AudioAppend):
            await self.session.error(ProtocolError(
                "on a WebRTC call the microphone's track carries the audio, not "
                "input_audio_buffer.append", code="unsupported_event", param="type"),
                event.event_id)
            return
        await self.session.handle(event)

    def message(self, data: str | bytes) -> None:
        """A data channel message (called by aiortc, in order)."""
        self.heard()
        try:
            self.inbox.put_nowait(data)
        except asyncio.QueueFull:
            now = asyncio.get_running_loop().time()
            if now - self._overflow_told >= 1.0:  # one error a second, not one an event
                self._overflow_told = now
                self.spawn(self.session.error(LimitError(
                    f"more than {EVENTS_AHEAD} client events wait for the session; events "
                    "are being dropped", code="rate_limited")), "error")

    async def read(self) -> None:
        while True:
            await self.intake.take(await self.inbox.get())

    # ------------------------------------------------------------------ server events

    async def drain(self) -> None:
        """Send the outbox: audio to the track, every other event to the data channel."""
        async for event, on_sent in self.session.outbox:
            if event is FLUSHED:
                if on_sent is not None:
                    on_sent()
                continue
            kind = event["type"]
            if kind == "response.output_audio.delta":
                await self.playback.room()
                samples = np.frombuffer(base64.b64decode(event["delta"]), "<i2")
                self.playback.put(Clip(event["response_id"], event["item_id"], samples,
                                       on_sent))
                continue
            if kind == "input_audio_buffer.speech_started" and self._interrupts():
                # Barge-in: the track went quiet when the session said so (`_emitted`);
                # the client hears of it now, in order, and of what was cut.
                was, self._silenced = self._silenced, None
                self.cut(was=was)
            await self.send(event)
            if on_sent is not None:
                on_sent()
            if kind in ("response.output_audio.done", "response.done"):
                response = event["response"]["id"] if kind == "response.done" else \
                    event["response_id"]
                self.playback.finish(response)
                if kind == "response.done":
                    self._responded(response)

    def notify(self, event: Json) -> None:
        """A server event of the door's own (output_audio_buffer.*), sent at once."""
        self.spawn(self.send(event), "notice")

    async def send(self, event: Json) -> None:
        for sideband in list(self.sidebands):
            sideband.put(event)
            if sideband.behind:
                log.warning("call %s: a sideband fell %d events behind; dropped", self.id,
                            SIDEBAND_AHEAD)
                self.detach(sideband)
        if self.expects_channel and not self.channel_open.is_set():
            await self.channel_open.wait()
        channel = self.channel
        text = p.encode(event, self.dialect)
        if text is None or channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > CHANNEL_HIGH:
            drained = asyncio.Event()
            channel.once("bufferedamountlow", drained.set)
            try:
                await asyncio.wait_for(drained.wait(), SEND_TIMEOUT_S)
            except TimeoutError:
                log.warning("call %s: the data channel took nothing for %g s; dropped",
                            self.id, SEND_TIMEOUT_S)
                self.spawn(self.close(), "close")
                return
        try:
            channel.send(text)
        except ValueError:  # over the peer's message size
            told = p.encode(se.error_event(LimitError(
                f"a {event['type']} event of {len(text)} bytes is over what this data "
                "channel carries", code="message_too_large")), self.dialect)
            with contextlib.suppress(ValueError):
                channel.send(told or "")

    # ------------------------------------------------------------------ cutting the answer

    def _interrupts(self) -> bool:
        td = self.session.cfg.turn_detection
        return td is not None and td.interrupt_response

    def _emitted(self, event: Json) -> None:
        """Each server event as the session puts it in the outbox. A barge-in silences the
        track there and then: seconds of the answer's audio may be waiting in the outbox
        ahead of its speech_started (a fast machine makes the answer faster than it is
        played), and the user must not hear them out."""
        if event["type"] == "input_audio_buffer.speech_started" and self._interrupts():
            silenced = self.playback.clear()
            if self._silenced is None:
                self._silenced = silenced

    def cut(self, always: bool = False, was: Playing | None = None) -> None:
        """Stop the answer's audio at once (barge-in, `output_audio_buffer.clear`): tell the
        client, and truncate the assistant item to what was played (``was``: what a
        barge-in already silenced)."""
        cleared = self.playback.clear()
        was = was or cleared
        if was is None:
            if always and self._done:
                self.notify(se.output_audio_buffer_cleared(self._done[-1]))
            return
        self.notify(se.output_audio_buffer_cleared(was.response_id))
        if was.response_id in self._done:
            self.spawn(self._truncate(was), "truncate")
        else:  # the response is still ending: its item takes its last words first
            self._truncate_after[was.response_id] = was

    def _responded(self, response_id: str) -> None:
        self._done.append(response_id)
        was = self._truncate_after.pop(response_id, None)
        if was is not None:
            self.spawn(self._truncate(was), "truncate")

    async def _truncate(self, was: Playing) -> None:
        try:
            self.session.conv.get(was.item_id)
        except ProtocolError:
            return  # deleted meanwhile, or an answer outside the conversation
        played_ms = was.sent * 1000 // OPUS_RATE
        await self.session.handle(p.ItemTruncate(None, was.item_id, 0, played_ms))

    # ------------------------------------------------------------------ lifetime

    async def watch(self) -> None:
        """Close the call when ICE and DTLS do not complete in time, on the session's
        idle timeout and at its longest length."""
        st = self.settings
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.connected.wait(), st.webrtc_connect_timeout_s)
        except TimeoutError:
            log.info("call %s: ICE and DTLS did not complete in %g s; closed", self.id,
                     st.webrtc_connect_timeout_s)
            self.session.engines.registry.inc("webrtc_connect_timeouts_total")
            self.spawn(self.close(), "close")
            return
        ends = loop.time() + st.max_session_s
        self.heard()
        while True:
            now = loop.time()
            if now >= ends:
                await self._expire("session_expired",
                                   f"sessions last at most {st.max_session_s:g} s")
                return
            if now - self.last_heard >= st.idle_timeout_s:
                await self._expire("idle_timeout",
                                   f"nothing from the client for {st.idle_timeout_s:g} s")
                return
            await asyncio.sleep(min(ends, self.last_heard + st.idle_timeout_s) - now)

    async def _expire(self, code: str, message: str) -> None:
        await self.session.error(LimitError(message, code=code))
        await asyncio.sleep(0.2)
        self.spawn(self.close(), "close")

    async def close(self) -> None:
        """End the call's peer connection (once); whatever waits to send stops waiting, so
        that its session can close."""
        if self.ended.is_set():
            return
        self.ended.set()
        self.channel_open.set()
        self.session.outbox.observer = None  # the session may outlive the call
        for sideband in list(self.sidebands):
            self.detach(sideband)
        self.playback.clear()
        self.playback.stop()
        # Shielded: aiortc's own close (when the peer closed) may be awaiting the same
        # future, which a cancelled waiter would cancel under it.
        with contextlib.suppress(Exception):
            await asyncio.shield(self.pc.close())

    async def stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in self.tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class WebRtcDoor:
    """The calls of one server, by id."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.calls: dict[str, Call] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}  # by call id
        settings = sessions.settings
        self.ice_servers = [RTCIceServer(list(server.urls), server.username, server.credential)
                            for server in ice_servers(settings.ice_servers)]
        self.ports = port_range(settings.rtc_ports)

    async def answer(self, offer: Offer, engines: Engines, key: str, grant: Grant | None,
                     dialect: p.Dialect, model: str,
                     resume: Resumable | None = None) -> tuple[str, str]:
        """Start a call for ``offer`` (going on with ``resume``'s conversation, if given):
        its SDP answer and its id (raises ProtocolError for an offer it cannot answer,
        LimitError when the server or key is full)."""
        session_id = resume.session_id if resume is not None else p.new_id("sess")
        refused = await self.sessions.admit(key, session_id)
        if refused is not None:
            raise LimitError(refused, code="too_many_sessions")
        session = self.sessions.open_session(engines, key, grant, transport="webrtc",
                                             dialect=dialect, model=model,
                                             transport_format=TRANSPORT_FORMAT,
                                             resume=resume, session_id=session_id)
        # --ice-servers, or none: aiortc would ask Google's STUN server
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
        call = Call("rtc_" + secrets.token_hex(12), session, key, pc, dialect,
                    self.sessions.settings, "\r\nm=application " in offer.sdp)
        try:
            if offer.session is not None:
                session.configure(offer.session)
            sdp = await self._negotiate(call, offer.sdp)
        except BaseException:
            await call.close()
            await self.sessions.close_session(session, key)
            await call.stop_tasks()  # the microphone's, when the offer's track came
            raise
        self.calls[call.id] = call
        run = asyncio.create_task(self._run(call), name=f"call {call.id}")
        self._runs[call.id] = run
        run.add_done_callback(lambda _: self._runs.pop(call.id, None))
        log.info("call %s: session %s answered (%s dialect)", call.id, session.id, dialect)
        return sdp, call.id

    async def _negotiate(self, call: Call, offer: str) -> str:
        pc = call.pc

        @pc.on("connectionstatechange")
        def changed() -> None:
            state = pc.connectionState
            log.debug("call %s: %s", call.id, state)
            if state == "connected":
                call.connected.set()
            elif state in ("failed", "closed"):
                call.spawn(call.close(), "close")

        @pc.on("datachannel")
        def channel(ch: RTCDataChannel) -> None:
            if ch.label != EVENTS_CHANNEL or call.channel is not None:
                return
            call.channel = ch
            ch.bufferedAmountLowThreshold = CHANNEL_HIGH // 4
            ch.on("message", call.message)
            if ch.readyState == "open":
                call.channel_open.set()
            ch.on("open", call.channel_open.set)

        @pc.on("track")
        def track(incoming: MediaStreamTrack) -> None:
            if incoming.kind == "audio":
                microphone = Microphone(call.session, call.heard)
                call.spawn(microphone.listen(incoming), "microphone")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        except Exception as exc:
            raise ProtocolError(f"the SDP offer could not be read: {exc}",
                                code="invalid_sdp") from exc
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise ProtocolError("the SDP offer has no audio", code="invalid_sdp")
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs
                if c.mimeType.lower() == "audio/opus"]
        audio[0].setCodecPreferences(opus)
        prompt_microphone(audio[0].receiver)
        pc.addTrack(call.playback)
        with candidates_on(candidate_addresses(self.sessions.settings.host)), \
                ports_in(self.ports) as ports:
            await pc.setLocalDescription(await pc.createAnswer())
        if ports is not None and ports.full:
            raise LimitError(f"no free UDP port in the range {ports} (--rtc-ports): every "
                             "port is taken by a call; try again later", code=NO_FREE_PORT)
        return str(pc.localDescription.sdp)

    async def _run(self, call: Call) -> None:
        session = call.session
        try:
            call.spawn(call.drain(), "drain")
            call.spawn(call.watch(), "watch")
            call.spawn(call.read(), "read")
            await session.start()
            await call.ended.wait()
        finally:
            await call.close()
            await self.sessions.close_session(session, call.key)
            await call.stop_tasks()
            self.calls.pop(call.id, None)
            log.info("call %s ended", call.id)

    async def hangup(self, call_id: str) -> bool:
        """End a live call by its id: True once it has ended and its session closed (or
        `CLOSE_S` has passed), False when there is no such call."""
        call = self.calls.get(call_id)
        if call is None or call.ended.is_set():
            return False
        log.info("call %s: hung up", call_id)
        await call.close()
        run = self._runs.get(call_id)
        if run is not None:
            await asyncio.wait({run}, timeout=CLOSE_S)
        return True

    async def close_all(self) -> None:
        """At shutdown: every call ends, and its session closes."""
        for call in list(self.calls.values()):
            await call.close()
        if self._runs:
            await asyncio.wait(set(self._runs.values()), timeout=CLOSE_S)
