"""What the noise suppressors share: a 48 kHz frame-by-frame engine, streamed on 16 kHz audio.

RNNoise and DeepFilterNet both take 10 ms frames at 48 kHz and give each frame back late by
a fixed delay of their own. `FramedStream` resamples the session's 16 kHz audio up, cuts it
into frames, drops the engine's delay so that the output lines up with the input sample for
sample, mixes back what the attenuation limit keeps of the noisy input, and resamples down.
The turn's timestamps and the audio given to the ASR therefore stay where they were; the
only cost is that the last few milliseconds come out a little later (``delay_ms``).
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable

import numpy as np
import soxr

from server.audio import RATE
from server.stages import Float32

ENGINE_RATE = 48000
# soxr's low-quality setting (a shorter filter; still flat over the 8 kHz of speech a
# 16 kHz stream carries) holds back 6 ms each way once running, 20 ms at most (measured;
# the high-quality one holds 21 and 37 ms): part of what a stream may owe its caller.
QUALITY = "LQ"
RESAMPLER_HOLD_MS = 40.0
FLUSH_CHUNK = RATE // 10  # silence fed to push the held audio out, 100 ms at a time
NO_LIMIT_DB = 100.0  # a limit this high keeps nothing of the noisy input

Frame = Callable[[Float32], Float32]  # one frame in, one frame out, float32 in [-1, 1]
FloatPointer = ctypes.POINTER(ctypes.c_float)


class FramedStream:
    """One session's stream through a frame engine: the `Denoiser` the session holds."""

    def __init__(self, frame: Frame, frame_len: int, delay: int, limit_db: float) -> None:
        self._frame, self._frame_len, self._skip = frame, frame_len, delay
        # The share of the noisy input mixed back: the limit on what is taken off.
        self._dry_gain = 0.0 if limit_db >= NO_LIMIT_DB else float(10 ** (-limit_db / 20))
        self.delay_ms = (delay + frame_len) * 1000 / ENGINE_RATE + RESAMPLER_HOLD_MS
        self._up = soxr.ResampleStream(RATE, ENGINE_RATE, 1, dtype="float32", quality=QUALITY)
        self._down = soxr.ResampleStream(ENGINE_RATE, RATE, 1, dtype="float32", quality=QUALITY)
        self._pending: Float32 = np.zeros(0, np.float32)  # 48 kHz, short of a whole frame
        self._dry: Float32 = np.zeros(0, np.float32)  # 48 kHz input not yet matched by output
        self._fed = 0  # 16 kHz samples taken in, flush padding included
        self._given = 0  # of those, how many have come out (padding included)
        self._padding: deque[tuple[int, int]] = deque()  # the ranges that were flush padding

    def process(self, samples: Float32) -> Float32:
        return self._feed(samples.astype(np.float32, copy=False))

    def flush(self) -> Float32:
        target, parts = self._fed, []
        while self._given < target:
            start = self._fed
            self._padding.append((start, start + FLUSH_CHUNK))
            parts.append(self._feed(np.zeros(FLUSH_CHUNK, np.float32)))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _feed(self, samples: Float32) -> Float32:
        self._fed += len(samples)
        up = self._up.resample_chunk(samples)
        self._dry = np.concatenate([self._dry, up])
        buf = np.concatenate([self._pending, up])
        whole = len(buf) // self._frame_len * self._frame_len
        frames = [self._frame(buf[at:at + self._frame_len])
                  for at in range(0, whole, self._frame_len)]
        self._pending = buf[whole:]
        wet = np.concatenate(frames) if frames else np.zeros(0, np.float32)
        cut = min(self._skip, len(wet))  # the engine's delay: what it gave before any input
        wet, self._skip = wet[cut:], self._skip - cut
        dry, self._dry = self._dry[:len(wet)], self._dry[len(wet):]
        if self._dry_gain:
            wet = wet * (1 - self._dry_gain) + dry * self._dry_gain
        out: Float32 = self._down.resample_chunk(wet.astype(np.float32, copy=False))
        return self._without_padding(out)

    def _without_padding(self, out: Float32) -> Float32:
        first = self._given
        self._given += len(out)
        keep = np.ones(len(out), bool)
        for start, end in self._padding:
            keep[max(start - first, 0):max(min(end - first, len(out)), 0)] = False
        while self._padding and self._padding[0][1] <= self._given:
            self._padding.popleft()
        kept: Float32 = out[keep]
        return kept
