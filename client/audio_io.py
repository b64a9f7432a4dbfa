"""The talk client's audio boundary: a sound card (sounddevice) or WAV files (tests, scripts).

Both speak pcm16 mono at one rate. Capture hands chunks to a callback from its own thread;
playback queues pcm and counts the frames that really reached the speaker, so the client
can tell the server how much of an answer was heard.
"""

from __future__ import annotations

import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from client.realtime import pcm16, read_wav
from realtime import DEFAULT_RATE

OnInput = Callable[[bytes], None]


class AudioIO(Protocol):
    rate: int

    def start(self, on_input: OnInput) -> None: ...

    def play(self, pcm: bytes) -> None: ...

    def flush(self) -> None:
        """Drop everything queued for playback at once (barge-in)."""

    @property
    def played_frames(self) -> int: ...

    @property
    def queued_frames(self) -> int:
        """Frames ever queued for playback (played, queued or flushed)."""

    @property
    def playing(self) -> bool: ...

    def close(self) -> None: ...


class Playback:
    """A thread-safe pcm16 playback queue, drained by a device callback or a clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = bytearray()
        self.played = 0  # frames
        self.queued = 0  # frames

    def push(self, pcm: bytes) -> None:
        with self._lock:
            self._buf += pcm
            self.queued += len(pcm) // 2

    def pull(self, frames: int) -> bytes:
        """Up to ``frames`` frames of queued audio, padded with silence."""
        with self._lock:
            take = bytes(self._buf[: frames * 2])
            del self._buf[: frames * 2]
            self.played += len(take) // 2
        return take + b"\x00" * (frames * 2 - len(take))

    def flush(self) -> None:
        with self._lock:
            self._buf.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buf) // 2


class _Speaker:
    """The playback half both boundaries share: a `Playback` queue and its counters."""

    _playback: Playback

    def play(self, pcm: bytes) -> None:
        self._playback.push(pcm)

    def flush(self) -> None:
        self._playback.flush()

    @property
    def played_frames(self) -> int:
        return self._playback.played

    @property
    def queued_frames(self) -> int:
        return self._playback.queued

    @property
    def playing(self) -> bool:
        return self._playback.pending > 0


class SoundDeviceIO(_Speaker):
    """The default microphone and speaker (PortAudio through sounddevice)."""

    def __init__(self, rate: int = DEFAULT_RATE, *, input_device: int | None = None,
                 output_device: int | None = None, block_ms: int = 20) -> None:
        import sounddevice as sd  # needs PortAudio: imported only when a device is used

        self.rate = rate
        self._sd = sd
        self._block = rate * block_ms // 1000
        self._playback = Playback()
        self._in: Any = None
        self._out = sd.RawOutputStream(samplerate=rate, channels=1, dtype="int16",
                                       blocksize=self._block, device=output_device,
                                       callback=self._on_output)
        self._input_device = input_device

    def start(self, on_input: OnInput) -> None:
        def callback(data: Any, frames: int, when: Any, status: Any) -> None:
            on_input(bytes(data))

        self._in = self._sd.RawInputStream(samplerate=self.rate, channels=1, dtype="int16",
                                           blocksize=self._block, device=self._input_device,
                                           callback=callback)
        self._in.start()
        self._out.start()

    def _on_output(self, out: Any, frames: int, when: Any, status: Any) -> None:
        out[:] = self._playback.pull(frames)

    def close(self) -> None:
        for stream in (self._in, self._out):
            if stream is not None:
                stream.stop()
                stream.close()


class WavIO(_Speaker):
    """A WAV file as the microphone (sent at real-time pace) and a buffer as the speaker.

    Playback advances with the wall clock, as a sound card would, so gating, barge-in and
    truncation behave as they do with real devices.
    """

    def __init__(self, source: Path, rate: int = DEFAULT_RATE, *, block_ms: int = 20,
                 tail_ms: int = 3000) -> None:
        self.rate = rate
        self._audio = np.concatenate([read_wav(source, rate),
                                      np.zeros(rate * tail_ms // 1000, np.float32)])
        self._block = rate * block_ms // 1000
        self._block_s = block_ms / 1000
        self._playback = Playback()
        self.heard = bytearray()  # everything the "speaker" played
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.finished = threading.Event()  # the whole file was sent

    def start(self, on_input: OnInput) -> None:
        def capture() -> None:
            start = time.monotonic()
            for n, i in enumerate(range(0, len(self._audio), self._block)):
                if self._stop.is_set():
                    return
                on_input(pcm16(self._audio[i:i + self._block]))
                time.sleep(max(0.0, start + (n + 1) * self._block_s - time.monotonic()))
            self.finished.set()

        def speaker() -> None:
            while not self._stop.wait(self._block_s):
                self.heard += self._playback.pull(self._block)

        for fn in (capture, speaker):
            thread = threading.Thread(target=fn, daemon=True, name=f"wavio-{fn.__name__}")
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=1)

    def save_heard(self, path: Path) -> None:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(bytes(self.heard))
