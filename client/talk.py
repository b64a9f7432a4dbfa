"""`voxwire talk`: talk to a Voxwire (or any OpenAI Realtime) server from a terminal.

Captures the microphone, streams it as pcm16 at 24 kHz, plays the answer, prints the
transcripts and each turn's latency, and handles barge-in: when the server hears the
user interrupt, playback stops at once and the client tells the server how much of
the answer was heard (`conversation.item.truncate`).

Echo: without an echo canceller, the speaker's sound reaches the microphone and the
server would take the assistant's own voice for the user interrupting. ``half`` duplex
(the default) therefore does not send the microphone while an answer plays (and for a
short tail after); ``full`` duplex always sends it and allows interrupting by voice: it
asks the server to cancel the echo (`session.voxwire.echo_cancellation`), so that speakers
and a microphone in one room work without a headset.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from client.audio_io import AudioIO
from realtime import AudioAppend, FrameAppend, ItemTruncate, SessionUpdate, dump

Duplex = Literal["half", "full"]
ECHO_TAIL_S = 0.3
MAX_BACKOFF_S = 10.0
RESUME_PARAM = "voxwire_resume"  # the server's extension: go on with a stored session


class TalkError(Exception):
    """A problem the user must fix (wrong URL, no microphone); not worth retrying."""


class NotResumable(Exception):
    """The server will not go on with the last session (gone, expired, or no history)."""


@dataclass
class TurnState:
    item_id: str | None = None  # the assistant item being played
    item_start_frame: int = 0  # playback position where that item's audio begins
    answer: str = ""


@dataclass
class TalkClient:
    url: str
    audio: AudioIO
    duplex: Duplex = "half"
    echo_cancellation: bool | None = None  # ask the server to cancel echo; None: in full duplex
    api_key: str | None = None
    out: Callable[[str], None] = print
    instructions: str | None = None
    frames: Callable[[], bytes | None] | None = None  # the latest camera JPEG, if any
    turns: int = 0  # completed responses so far
    session_id: str | None = None  # the session to go on with after a lost connection
    truncated: list[tuple[str, int]] = field(default_factory=list)  # (item, ms) sent
    _turn: TurnState = field(default_factory=TurnState)
    _mic: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(100))
    _quiet_until: float = 0.0

    # ------------------------------------------------------------------ connection

    async def run(self, *, max_turns: int | None = None, attempts: int | None = None,
                  drain: bool = True) -> int:
        """Talk until interrupted (or ``max_turns`` answers, the last one heard to the end
        when ``drain``); reconnect with backoff, at most ``attempts`` times if given."""
        loop = asyncio.get_running_loop()

        def on_input(pcm: bytes) -> None:  # the audio thread hands chunks to the loop
            loop.call_soon_threadsafe(self._on_mic, pcm)

        self.audio.start(on_input)
        backoff, tries = 0.5, 0
        try:
            while True:
                tries += 1
                try:
                    await self._connect_once(max_turns, drain)
                    return 0
                except TalkError as exc:
                    self.out(f"error: {exc}")
                    return 2
                except NotResumable as exc:
                    self.out(f"the conversation could not go on ({exc}); starting a new one")
                    self.session_id = None
                    continue
                except (OSError, ConnectionClosed, TimeoutError) as exc:
                    self.out(f"connection: {describe(exc, self.url)}")
                if attempts is not None and tries >= attempts:
                    return 1
                self.out(f"reconnecting in {backoff:.1f} s ...")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self.audio.close()

    async def _connect_once(self, max_turns: int | None, drain: bool) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = self.url
        if self.session_id is not None:  # go on with the conversation (a Voxwire extension)
            parts = urlsplit(url)
            query = [*parse_qsl(parts.query), (RESUME_PARAM, self.session_id)]
            url = urlunsplit(parts._replace(query=urlencode(query)))
        try:
            ws = await connect(url, additional_headers=headers, max_size=None,
                               open_timeout=10)
        except InvalidURI as exc:
            raise TalkError(f"{self.url!r} is not a WebSocket URL (ws://host:port/v1/realtime)"
                            ) from exc
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                raise TalkError(f"the server refused the key (HTTP {code}); set --key or "
                                "VOXWIRE_API_KEY") from exc
            if self.session_id is not None and code in (400, 404, 410):
                raise NotResumable(f"HTTP {code}") from exc
            if code == 404:
                raise TalkError(f"nothing at {self.url} (HTTP 404); the path is "
                                "/v1/realtime") from exc
            raise OSError(f"the server answered HTTP {code}") from exc
        async with ws:
            echo = ", server echo cancellation" if self.cancels_echo else ""
            self.out(f"connected to {self.url} ({self.duplex} duplex{echo}); speak now")
            await self._configure(ws)
            tasks = [asyncio.create_task(self._send_mic(ws))]
            if self.frames is not None:
                tasks.append(asyncio.create_task(self._send_frames(ws)))
            try:
                await self._receive(ws, max_turns)
                # Let the last answer finish playing; the device thread drains it.
                while drain and self.audio.playing:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _configure(self, ws: ClientConnection) -> None:
        fmt = {"type": "audio/pcm", "rate": self.audio.rate}
        session: dict[str, Any] = {"type": "realtime",
                                   "audio": {"input": {"format": fmt}, "output": {"format": fmt}}}
        if self.instructions:
            session["instructions"] = self.instructions
        # Extensions: the per-turn latency line (voxwire.turn.metrics), camera frames, echo
        # cancellation.
        session["voxwire"] = {"metrics": True}
        if self.frames is not None:
            session["voxwire"]["attach_latest_frame"] = True
        if self.cancels_echo:
            session["voxwire"]["echo_cancellation"] = True
        await ws.send(dump(SessionUpdate(None, session)))

    @property
    def cancels_echo(self) -> bool:
        """Whether the server is asked to cancel the echo (half duplex needs no help)."""
        return self.duplex == "full" if self.echo_cancellation is None else self.echo_cancellation

    # ------------------------------------------------------------------ microphone

    def _on_mic(self, pcm: bytes) -> None:
        if self._mic.full():
            self._mic.get_nowait()  # a stalled connection must not grow memory: drop oldest
        self._mic.put_nowait(pcm)

    def gated(self) -> bool:
        """Half duplex: the microphone is closed while the answer plays, plus a tail."""
        if self.duplex == "full":
            return False
        if self.audio.playing:
            self._quiet_until = time.monotonic() + ECHO_TAIL_S
            return True
        return time.monotonic() < self._quiet_until

    async def _send_mic(self, ws: ClientConnection) -> None:
        while True:
            pcm = await self._mic.get()
            if self.gated():
                pcm = b"\x00" * len(pcm)  # keep the server's clock running, send no echo
            await ws.send(dump(AudioAppend(None, pcm)))

    async def _send_frames(self, ws: ClientConnection) -> None:
        assert self.frames is not None
        while True:
            jpeg = await asyncio.to_thread(self.frames)
            if jpeg:
                uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
                await ws.send(dump(FrameAppend(None, uri)))
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ server events

    async def _receive(self, ws: ClientConnection, max_turns: int | None) -> None:
        async for message in ws:
            event = json.loads(message)
            await self._on_event(ws, event)
            if max_turns is not None and self.turns >= max_turns:
                return

    async def _on_event(self, ws: ClientConnection, ev: dict[str, Any]) -> None:
        kind = ev.get("type", "")
        if kind == "session.created":
            resumed = ev.get("session", {}).get("id") == self.session_id
            self.session_id = ev.get("session", {}).get("id")
            if resumed:
                self.out("the conversation goes on where it was")
        elif kind in ("response.output_audio.delta", "response.audio.delta"):
            if ev.get("item_id") != self._turn.item_id:  # a new answer starts playing here
                self._turn.item_id = ev.get("item_id")
                self._turn.item_start_frame = self.audio.queued_frames
            self.audio.play(base64.b64decode(ev["delta"]))
        elif kind == "input_audio_buffer.speech_started":
            await self._stop_playback(ws)
        elif kind == "conversation.item.input_audio_transcription.delta":
            self.out(f"  ~ {ev.get('delta', '').strip()}")
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.out(f"you: {ev.get('transcript', '')}")
        elif kind in ("response.output_audio_transcript.delta", "response.output_text.delta"):
            self._turn.answer += ev.get("delta", "")
        elif kind == "response.done":
            response = ev.get("response", {})
            if response.get("status") == "cancelled":
                await self._stop_playback(ws)
            status = response.get("status")
            self.out(f"assistant: {self._turn.answer.strip()}"
                     + ("" if status == "completed" else f"  [{status}]"))
            self._turn.answer = ""
        elif kind == "voxwire.turn.metrics":
            self.out(latency_line(ev))
            self.turns += 1
        elif kind == "error":
            err = ev.get("error", {})
            self.out(f"server error: {err.get('message')} ({err.get('code')})")

    async def _stop_playback(self, ws: ClientConnection) -> None:
        """Barge-in: silence the speaker now and tell the server what was heard."""
        if not self.audio.playing or self._turn.item_id is None:
            return
        heard = max(0, self.audio.played_frames - self._turn.item_start_frame)
        self.audio.flush()
        ms = heard * 1000 // self.audio.rate
        self.truncated.append((self._turn.item_id, ms))
        await ws.send(dump(ItemTruncate(None, self._turn.item_id, 0, ms)))


def latency_line(ev: dict[str, Any]) -> str:
    s = ev.get("stages_ms", {})
    parts = [f"{label} {s[key]:.0f}" for key, label in (
        ("endpoint", "endpoint"), ("asr", "asr"), ("llm_first_token", "llm"),
        ("first_sentence", "first sentence"), ("tts_first_audio", "tts")) if key in s]
    v2v = s.get("voice_to_voice")
    head = f"voice-to-voice {v2v:.0f} ms" if v2v is not None else f"[{ev.get('status')}]"
    return f"latency: {head} ({', '.join(parts)})"


def describe(exc: BaseException, url: str) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return f"refused at {url}: is `voxwire serve` running there?"
    if isinstance(exc, ConnectionClosed):
        return "the server closed the connection" + (f" ({exc.rcvd.reason})" if exc.rcvd
                                                     and exc.rcvd.reason else "")
    if isinstance(exc, TimeoutError):
        return f"no answer from {url}"
    return str(exc) or type(exc).__name__


def list_devices() -> str:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio itself is missing
        raise TalkError(f"no audio system: {exc} (install PortAudio: apt-get install "
                        "libportaudio2)") from exc
    return str(sd.query_devices())


def camera_source(index: int) -> Callable[[], bytes | None]:
    """The latest frame of a V4L2 camera as JPEG (PyAV), at most 640 px wide."""
    import io

    import av
    from PIL import Image

    try:
        container = av.open(f"/dev/video{index}", format="v4l2")
    except (OSError, av.error.FFmpegError) as exc:
        raise TalkError(f"cannot open camera {index}: {exc}") from exc
    frames = container.decode(video=0)

    def grab() -> bytes | None:
        with contextlib.suppress(StopIteration, av.error.FFmpegError):
            image: Image.Image = next(frames).to_image()  # type: ignore[no-untyped-call]
            image.thumbnail((640, 640))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=70)
            return out.getvalue()
        return None

    return grab


def parser() -> argparse.ArgumentParser:
    talk = argparse.ArgumentParser(prog="voxwire talk",
                                   description="talk to a server with this machine's microphone")
    talk.add_argument("--url", default="ws://127.0.0.1:8765/v1/realtime")
    talk.add_argument("--device", type=int, default=None, help="input device number")
    talk.add_argument("--output-device", type=int, default=None, help="output device number")
    talk.add_argument("--camera", type=int, default=None,
                      help="send frames from /dev/videoN with each turn")
    talk.add_argument("--duplex", choices=["half", "full"], default="half",
                      help="half: the mic is muted while the answer plays (no echo); "
                           "full: always on, allows interrupting by voice; the server "
                           "cancels the echo of the speakers")
    talk.add_argument("--no-echo-cancellation", dest="echo_cancellation",
                      action="store_false", default=None,
                      help="full duplex without the server's echo canceller (a headset, or "
                           "a device that cancels echo itself)")
    talk.add_argument("--key", default=None, help="API key (default: $VOXWIRE_API_KEY)")
    talk.add_argument("--list-devices", action="store_true")
    return talk


def main(argv: list[str] | None = None) -> int:
    """Entry point for `voxwire talk`."""
    import os

    from client.audio_io import SoundDeviceIO

    args = parser().parse_args(argv)
    if args.list_devices:
        try:
            print(list_devices())
        except TalkError as exc:
            print(f"voxwire talk: {exc}")
            return 2
        return 0
    try:
        audio = SoundDeviceIO(input_device=args.device, output_device=args.output_device)
        frames = camera_source(args.camera) if args.camera is not None else None
    except TalkError as exc:
        print(f"voxwire talk: {exc}")
        return 2
    except Exception as exc:  # PortAudio errors: no microphone, busy or unknown device
        print(f"voxwire talk: no usable microphone or speaker: {exc} "
              "(see `voxwire talk --list-devices`)")
        return 2
    client = TalkClient(args.url, audio, duplex=args.duplex,
                        echo_cancellation=args.echo_cancellation,
                        api_key=args.key or os.environ.get("VOXWIRE_API_KEY"), frames=frames)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(client.run())
    return 130

