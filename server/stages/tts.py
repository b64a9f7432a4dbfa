"""Piper text-to-speech (onnxruntime), one piece of text at a time.

Memory: piper's working memory grows with the length of what it speaks in one run, and
onnxruntime keeps what a run needed for the next ones. A long run of digits makes a
short piece of text a long one to speak ("1,234,567" is 44 phonemes), so what bounds
the memory is the phonemes per run: a sentence longer than ``max_phonemes`` is spoken
in parts, cut at a clause mark or else between words. The synthesizer speaks one run of
the longest size at load, so its memory reaches its full size then and stays there.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from piper import PiperVoice
from piper.config import PiperConfig

from server.errors import ConfigError
from server.stages import Float32, resolve
from server.stages.phonemes import bounded

if TYPE_CHECKING:
    from server.runtime.config import Settings

MAX_PHONEMES = 160  # about ten seconds of speech in one run
# Ordinary words: what the warm-up speaks, one run of the longest size.
_WARM_WORDS = ("the quick brown fox jumps over the lazy dog while the sky turns blue "
               "because light scatters in the air and the water reflects it back ")


def load(settings: Settings, voices: Sequence[str]) -> list[PiperSynthesizer]:
    """One synthesizer per voice file: an embedded voice's name, or a path to a piper
    ``.onnx`` (with its ``.onnx.json``), which clients then name by the file's stem."""
    return [PiperSynthesizer(resolve(voice, "tts"), threads=settings.tts_threads,
                             voice=voice if not Path(voice).expanduser().exists() else None)
            for voice in voices]


class PiperSynthesizer:
    name = "piper"

    def __init__(self, path: Path, *, threads: int = 1, max_phonemes: int = MAX_PHONEMES,
                 warm: bool = True, voice: str | None = None) -> None:
        config = Path(str(path) + ".json")
        if not path.is_file() or not config.is_file():
            raise ConfigError(f"no Piper voice at {path} (needs {path.name} and {config.name})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Memory patterns are planned (and kept) per input length: one per length ever
        # spoken. Without them the arena serves every length from the same blocks.
        opts.enable_mem_pattern = False
        session = ort.InferenceSession(str(path), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(session=session,
                                config=PiperConfig.from_dict(json.loads(config.read_text())))
        self.sample_rate: int = self.voice.config.sample_rate
        self.voices = (voice or path.stem,)
        self.max_phonemes = max_phonemes
        if warm:
            self.warm_up()

    def warm_up(self) -> None:
        """Speak one run of the longest size: the arena takes its full size now."""
        sentence = self.voice.phonemize(_WARM_WORDS * (self.max_phonemes // 100 + 1))[0]
        self._speak(next(bounded(sentence, self.max_phonemes)))

    def synthesize(self, text: str, voice: str, stop: threading.Event) -> Iterator[Float32]:
        if voice not in self.voices:
            raise ValueError(f"piper has no voice {voice!r} here (it has {self.voices[0]!r})")
        for sentence in self.voice.phonemize(text):
            for part in bounded(sentence, self.max_phonemes):
                if stop.is_set():
                    return
                yield self._speak(part)

    def _speak(self, phonemes: list[str]) -> Float32:
        audio = np.asarray(self.voice.phoneme_ids_to_audio(
            self.voice.phonemes_to_ids(phonemes)), dtype=np.float32).reshape(-1)
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        if peak < 1e-8:  # piper's own normalization: each run peaks at full scale
            return np.zeros_like(audio)
        out: Float32 = np.clip(audio / peak, -1.0, 1.0).astype(np.float32)
        return out
