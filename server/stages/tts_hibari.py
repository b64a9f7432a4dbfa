"""hibari text-to-speech: 8 MB Kokoro-distilled voices at 24 kHz, onnxruntime and numpy only.

The package carries its own text-to-phoneme rules (a lexicon, a tagger and a small net for
unknown words), so it needs no espeak-ng. The voice's model is the manifest's verified
copy of the packaged file. The first synthesis loads the lexicons (most of a second),
and the memory grows with the longest run spoken (see ``server.stages.phonemes``): the
synthesizer speaks one run of the longest size at load, not in a turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from hibari import SAMPLE_RATE, Hibari
from hibari.voices import VOICES

from models import get_spec
from server.errors import ConfigError
from server.stages import Float32, resolve
from server.stages.phonemes import bounded

if TYPE_CHECKING:
    from server.runtime.config import Settings

MAX_PHONEMES = 160  # about eight seconds of speech in one run
_WARM_WORDS = ("the quick brown fox jumps over the lazy dog while the sky turns blue "
               "because light scatters in the air and the water reflects it back ")


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

    def __init__(self, path: Path, voice: str, *, threads: int = 1,
                 max_phonemes: int = MAX_PHONEMES, warm: bool = True) -> None:
        if not path.is_file():
            raise ConfigError(f"no hibari voice model at {path}")
        # `voice` picks the pronunciation rules (American or British); `model` the weights.
        self.model = Hibari(voice=voice, model=str(path), threads=threads)
        # Memory patterns are planned, and kept, per input length; without them (as in
        # piper's session) every run is served from the same arena blocks.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_mem_pattern = False
        opts.log_severity_level = 3
        self.model.sess = ort.InferenceSession(str(path), sess_options=opts,
                                               providers=["CPUExecutionProvider"])
        self.voices = (voice,)
        self.max_phonemes = max_phonemes
        if warm:
            self.warm_up()

    def warm_up(self) -> None:
        """Speak one run of the longest size: the memory takes its full size now."""
        phonemes = self.model.phonemize(_WARM_WORDS * (self.max_phonemes // 100 + 1))[0]
        self._speak(next(bounded(list(phonemes), self.max_phonemes)), np.random.default_rng())

    def synthesize(self, text: str, voice: str, stop: threading.Event) -> Iterator[Float32]:
        if voice not in self.voices:
            raise ValueError(f"hibari has no voice {voice!r} here (it has {self.voices[0]!r})")
        rng = np.random.default_rng()
        for sentence in self.model.split_sentences(text):  # the first is heard sooner
            for phonemes in self.model.phonemize(sentence):
                for part in bounded(list(phonemes), self.max_phonemes):
                    if stop.is_set():
                        return
                    yield self._speak(part, rng)

    def _speak(self, phonemes: list[str], rng: np.random.Generator) -> Float32:
        audio = self.model.from_ids(self.model.ids("".join(phonemes)), 1.0, rng)
        return np.asarray(audio, dtype=np.float32).reshape(-1)
