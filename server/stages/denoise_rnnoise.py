"""RNNoise (Xiph's recurrent noise suppressor), from pyrnnoise's build.

The model is compiled into ``librnnoise.so``; it is loaded here with ctypes, not through the
``pyrnnoise`` package, whose import pulls in its command-line tool's dependencies. A stream
costs a few kilobytes of state and about 2 % of one core.
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import numpy as np

from server.runtime.config import Settings
from server.stages import Float32, resolve
from server.stages.denoise import FloatPointer, FramedStream

FRAME = 480  # 10 ms at 48 kHz
DELAY = 960  # 20 ms at 48 kHz: where a frame's audio comes back (measured)
SCALE = 32768.0  # RNNoise works on pcm16-scaled floats


class RnnoiseSuppressor:
    name = "rnnoise"

    def __init__(self, library: Path) -> None:
        lib = ctypes.CDLL(str(library))
        lib.rnnoise_create.restype = ctypes.c_void_p
        lib.rnnoise_create.argtypes = [ctypes.c_void_p]
        lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
        lib.rnnoise_process_frame.restype = ctypes.c_float
        lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, FloatPointer, FloatPointer]
        if lib.rnnoise_get_frame_size() != FRAME:
            raise ImportError(f"{library}: RNNoise frames of {FRAME} samples expected")
        self._lib = lib

    def new_stream(self, limit_db: float) -> FramedStream:
        lib = self._lib
        state = lib.rnnoise_create(None)
        if not state:
            raise MemoryError("rnnoise_create failed")
        buf = np.zeros(FRAME, np.float32)
        ptr = buf.ctypes.data_as(FloatPointer)

        def frame(samples: Float32) -> Float32:
            buf[:] = samples * SCALE
            lib.rnnoise_process_frame(state, ptr, ptr)
            out: Float32 = buf / SCALE
            return out

        stream = FramedStream(frame, FRAME, DELAY, limit_db)
        weakref.finalize(stream, lib.rnnoise_destroy, state)
        return stream


def load(settings: Settings) -> RnnoiseSuppressor:
    return RnnoiseSuppressor(resolve("rnnoise", "denoise"))
