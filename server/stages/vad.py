"""Silero VAD through onnxruntime (no torch), streamed in 512-sample windows at 16 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.audio import RATE
from server.runtime.config import Settings
from server.stages import Float32, resolve

WINDOW = 512
CONTEXT = 64


class SileroVad:
    """The shared model; each session gets its own `SileroStream` with its own state."""

    def __init__(self, path: Path) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def new_stream(self) -> SileroStream:
        return SileroStream(self.session)


class SileroStream:
    window_ms = WINDOW * 1000 // RATE

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._sr = np.array(RATE, dtype=np.int64)

    def probabilities(self, samples: Float32) -> list[float]:
        buf = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(buf) // WINDOW
        out: list[float] = []
        for i in range(n):
            window = buf[i * WINDOW:(i + 1) * WINDOW]
            x = np.concatenate([self._context, window])[np.newaxis, :]
            prob, self._state = self._session.run(
                None, {"input": x, "state": self._state, "sr": self._sr})
            self._context = window[-CONTEXT:]
            out.append(float(prob[0, 0]))
        self._pending = buf[n * WINDOW:]
        return out


def load(settings: Settings) -> SileroVad:
    return SileroVad(resolve("silero-vad", "vad"))
