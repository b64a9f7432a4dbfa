"""Piper text-to-speech (onnxruntime), one piece of text at a time.

Memory: onnxruntime's default CPU arena grows in powers of two and, with memory patterns
on, plans each new input length anew, so a server speaking ever new sentences grows for
hours. Piper sessions here share one arena that extends only by what is requested, with
memory patterns off, and are warmed at load with the longest piece the splitter can
produce: the arena reaches its size then, and stays there.
"""

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
from server.text import MAX_PIECE_CHARS

_ARENA_LOCK = threading.Lock()
_arena_registered = False
# Ordinary words, one sentence of the longest piece: what the warm-up speaks.
_WARM_WORDS = ("the quick brown fox jumps over the lazy dog while the sky turns blue "
               "because light scatters in the air and the water reflects it back ")


def _exact_arena(opts: ort.SessionOptions) -> None:
    """Make ``opts`` use the process's shared CPU arena, which grows only as requested."""
    global _arena_registered
    with _ARENA_LOCK:
        if not _arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                     ort.OrtMemType.DEFAULT)
            # max_mem 0 (no cap), extend strategy 1 (kSameAsRequested), defaults for the rest
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _arena_registered = True
    opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.enable_mem_pattern = False


class PiperSynthesizer:
    def __init__(self, path: Path, *, threads: int = 1, warm_chars: int = MAX_PIECE_CHARS
                 ) -> None:
        config = Path(str(path) + ".json")
        if not path.is_file() or not config.is_file():
            raise ConfigError(f"no Piper voice at {path} (needs {path.name} and {config.name})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        _exact_arena(opts)
        session = ort.InferenceSession(str(path), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(session=session,
                                config=PiperConfig.from_dict(json.loads(config.read_text())))
        self.sample_rate: int = self.voice.config.sample_rate
        self.name = path.stem
        if warm_chars > 0:
            self.warm_up(warm_chars)

    def warm_up(self, chars: int) -> None:
        """Speak one sentence of ``chars`` characters: the arena takes its full size now."""
        text = (_WARM_WORDS * (chars // len(_WARM_WORDS) + 1))[:chars].rsplit(" ", 1)[0]
        for _ in self.synthesize(text + ".", threading.Event()):
            pass

    def synthesize(self, text: str, stop: threading.Event) -> Iterator[Float32]:
        for chunk in self.voice.synthesize(text):
            if stop.is_set():
                return
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)
