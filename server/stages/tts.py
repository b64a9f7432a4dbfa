"""Piper text-to-speech (onnxruntime), one piece of text at a time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from piper import PiperVoice
from piper.config import PiperConfig

from server.errors import ConfigError
from server.stages import Float32


class PiperSynthesizer:
    def __init__(self, path: Path, *, threads: int = 1) -> None:
        config = Path(str(path) + ".json")
        if not path.is_file() or not config.is_file():
            raise ConfigError(f"no Piper voice at {path} (needs {path.name} and {config.name})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(session=session,
                                config=PiperConfig.from_dict(json.loads(config.read_text())))
        self.sample_rate: int = self.voice.config.sample_rate
        self.name = path.stem

    def synthesize(self, text: str, stop: threading.Event) -> Iterator[Float32]:
        for chunk in self.voice.synthesize(text):
            if stop.is_set():
                return
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)
