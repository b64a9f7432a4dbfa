"""hibari text-to-speech: 8 MB Kokoro-distilled voices at 24 kHz, onnxruntime and numpy only.

The package carries its own text-to-phoneme rules (a lexicon, a tagger and a small net for
unknown words), so it needs no espeak-ng. The voice's model is the manifest's verified
copy of the packaged file. The first synthesis loads the lexicons and plans the model's
memory (most of a second): the synthesizer speaks one sentence at load, not in a turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from hibari import SAMPLE_RATE, Hibari
from hibari.voices import VOICES

from models import get_spec
from server.errors import ConfigError
from server.stages import Float32, resolve

if TYPE_CHECKING:
    from server.config import Settings

_WARM_TEXT = "The quick brown fox jumps over the lazy dog, and the sky turns blue."


def load(settings: Settings, voices: Sequence[str]) -> list[HibariSynthesizer]:
    """One synthesizer per voice, each an embedded hibari voice by its manifest name."""
    for voice in voices:
        if voice not in VOICES or get_spec(voice, "tts").engine != "hibari":
            raise ConfigError(f"no embedded hibari voice {voice!r}")
    return [HibariSynthesizer(resolve(voice, "tts"), voice, threads=settings.tts_threads)
            for voice in voices]


class HibariSynthesizer:
    name = "hibari"
    sample_rate: int = SAMPLE_RATE

    def __init__(self, path: Path, voice: str, *, threads: int = 1, warm: bool = True) -> None:
        if not path.is_file():
            raise ConfigError(f"no hibari voice model at {path}")
        # `voice` picks the pronunciation rules (American or British); `model` the weights.
        self.model = Hibari(voice=voice, model=str(path), threads=threads)
        self.voices = (voice,)
        if warm:
            list(self.synthesize(_WARM_TEXT, voice, threading.Event()))

    def synthesize(self, text: str, voice: str, stop: threading.Event) -> Iterator[Float32]:
        if voice not in self.voices:
            raise ValueError(f"hibari has no voice {voice!r} here (it has {self.voices[0]!r})")
        rng = np.random.default_rng()
        for sentence in self.model.split_sentences(text):  # the first is heard sooner
            for phonemes in self.model.phonemize(sentence):
                if stop.is_set():
                    return
                audio = self.model.from_ids(self.model.ids(phonemes), 1.0, rng)
                yield np.asarray(audio, dtype=np.float32).reshape(-1)
