"""WebRTC's echo canceller (AEC3, from its audio processing module), through the ``livekit``
wheel's FFI (Apache-2.0; no LiveKit server is involved).

The module takes 10 ms frames of pcm16 and runs in the caller's thread. The far end is
given frame by frame before the microphone frames of the same stretch; AEC3 finds the
echo's delay by itself and follows a changing one (measured: the same echo cut whether
``set_stream_delay_ms`` is told the room's delay or 0). Its high-pass
filter stays on (AEC3 expects it); its own noise suppressor and gain control stay off:
noise suppression is a stage of its own, and a gain control would move the VAD's levels.
A stream costs about 1 % of one core (measured: bench/echo.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from server.audio import RATE
from server.runtime.config import Settings
from server.stages import Float32

if TYPE_CHECKING:
    from livekit import rtc

FRAME = RATE // 100  # 10 ms: the only frame length the module takes
SCALE = 32767.0


class _Frame:
    """One reusable 10 ms pcm16 frame, with a numpy view on its buffer."""

    def __init__(self) -> None:
        from livekit import rtc

        self.frame = rtc.AudioFrame.create(RATE, 1, FRAME)
        self.pcm = np.asarray(self.frame.data)

    def load(self, samples: Float32) -> rtc.AudioFrame:
        self.pcm[:] = np.clip(samples * SCALE, -32768, 32767)
        return self.frame

    def samples(self) -> Float32:
        out: Float32 = self.pcm.astype(np.float32) / SCALE
        return out


class WebrtcEchoStream:
    """One session's echo canceller: the `EchoStream` the session holds."""

    delay_ms = FRAME * 1000 / RATE

    def __init__(self) -> None:
        from livekit import rtc

        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self._far, self._near = _Frame(), _Frame()
        self._far_pending: Float32 = np.zeros(0, np.float32)
        self._near_pending: Float32 = np.zeros(0, np.float32)

    def far(self, samples: Float32) -> None:
        buf = np.concatenate([self._far_pending, samples.astype(np.float32, copy=False)])
        whole = len(buf) // FRAME * FRAME
        for at in range(0, whole, FRAME):
            self._apm.process_reverse_stream(self._far.load(buf[at:at + FRAME]))
        self._far_pending = buf[whole:]

    def near(self, samples: Float32) -> Float32:
        buf = np.concatenate([self._near_pending, samples.astype(np.float32, copy=False)])
        whole = len(buf) // FRAME * FRAME
        parts = []
        for at in range(0, whole, FRAME):
            frame = self._near.load(buf[at:at + FRAME])
            # The far end is given as it plays: no delay known beyond what AEC3 finds.
            self._apm.set_stream_delay_ms(0)
            self._apm.process_stream(frame)
            parts.append(self._near.samples())
        self._near_pending = buf[whole:]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def flush(self) -> Float32:
        held = len(self._near_pending)
        if not held:
            return np.zeros(0, np.float32)
        return self.near(np.zeros(FRAME - held, np.float32))[:held]


class WebrtcEchoCanceller:
    name = "webrtc"

    def __init__(self) -> None:
        from livekit import rtc

        if not hasattr(rtc, "AudioProcessingModule"):
            raise ImportError("this livekit wheel has no AudioProcessingModule (1.1.21 has)")

    def new_stream(self) -> WebrtcEchoStream:
        return WebrtcEchoStream()


def load(settings: Settings) -> WebrtcEchoCanceller:
    return WebrtcEchoCanceller()
