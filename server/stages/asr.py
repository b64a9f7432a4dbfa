"""Whisper transcription with faster-whisper (CTranslate2).

Two paths. ``padded`` is faster-whisper's standard ``transcribe()``, which pads every
clip to 30 s, so the encoder costs the same for one word as for thirty seconds.
``short`` feeds the encoder the utterance's own mel length (CTranslate2 accepts up
to 3,000 frames), with guards against the repetition loops short inputs can fall
into: a token cap proportional to duration, ``no_repeat_ngram_size``, and a fallback
to the padded path when the output still looks degenerate.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from server.errors import ConfigError
from server.stages import Float32, Transcript

log = logging.getLogger(__name__)

RATE = 16000
HOP = 160
MAX_FRAMES = 3000
TAIL = RATE  # a second of trailing silence tells the decoder where speech ends
NO_SPEECH = 0.6
_WORD = re.compile(r"[a-z0-9']+")


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # no CUDA runtime at all
        return "cpu"


def looks_degenerate(text: str, seconds: float) -> bool:
    """Repetition loops and runaway output: the signs that the short path went wrong."""
    words = _WORD.findall(text.lower())
    if len(words) > 6 * max(seconds, 0.5) + 6:
        return True
    grams = [tuple(words[i:i + 2]) for i in range(len(words) - 1)]
    return len(set(grams)) < len(grams)  # a repeated word pair: the usual loop signature


class WhisperTranscriber:
    def __init__(self, path: Path, *, mode: str = "short", device: str = "auto",
                 threads: int = 2, name: str | None = None) -> None:
        if not (path / "model.bin").is_file():
            raise ConfigError(f"no Whisper model (model.bin) in {path}")
        self.device = pick_device(device)
        compute = "float16" if self.device == "cuda" else "int8"
        self.model = WhisperModel(str(path), device=self.device, compute_type=compute,
                                  cpu_threads=threads, num_workers=1, local_files_only=True)
        self.mode = mode
        self.name = name or path.name
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                   language="en" if multilingual else None)
        self._prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self._suppress = [-1]

    def transcribe(self, audio: Float32, *, partial: bool = False) -> Transcript:
        """Final transcripts use the configured path; partials always take the cheap one."""
        seconds = len(audio) / RATE
        if (self.mode == "short" or partial) and len(audio) < MAX_FRAMES * HOP - TAIL:
            result = self._short(audio, seconds)
            if result is not None:
                return result
            if partial:
                return Transcript("", "short")
        return self._padded(audio)

    def _short(self, audio: Float32, seconds: float) -> Transcript | None:
        audio = np.pad(audio, (0, TAIL))
        feats = self.model.feature_extractor(audio)  # (n_mels, frames)
        frames = min(feats.shape[-1], MAX_FRAMES)
        features = np.ascontiguousarray(feats[np.newaxis, :, :frames], dtype=np.float32)
        cap = int(6 * seconds + 8)
        result = self.model.model.generate(
            ctranslate2.StorageView.from_array(features), [self._prompt],
            beam_size=1, max_length=len(self._prompt) + cap, no_repeat_ngram_size=4,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress,
        )[0]
        text = self.tokenizer.decode(result.sequences_ids[0]).strip()
        if result.no_speech_prob > NO_SPEECH and len(_WORD.findall(text.lower())) <= 3:
            return Transcript("", "short", result.no_speech_prob)
        if looks_degenerate(text, seconds) or len(result.sequences_ids[0]) >= cap:
            log.info("short-mel output looked degenerate (%r); using the padded path", text)
            return None
        return Transcript(text, "short", result.no_speech_prob)

    def _padded(self, audio: Float32) -> Transcript:
        segments, _info = self.model.transcribe(
            audio, language="en", beam_size=1, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False,
        )
        kept: list[str] = []
        worst = 0.0
        for seg in segments:  # lazy: iterating is the work, and it happens in this thread
            worst = max(worst, seg.no_speech_prob)
            if seg.no_speech_prob > NO_SPEECH and seg.avg_logprob < -1.0:
                continue
            kept.append(seg.text)
        return Transcript("".join(kept).strip(), "padded", worst)
