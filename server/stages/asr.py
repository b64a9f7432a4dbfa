"""Whisper transcription with faster-whisper (CTranslate2).

Two paths. ``padded`` is faster-whisper's standard ``transcribe()``, which pads every
clip to 30 s, so the encoder costs the same for one word as for thirty seconds.
``short`` feeds the encoder a shorter mel window (CTranslate2 accepts up to 3,000
frames): the utterance padded with silence to ``window_s`` (15 s by default), or its
own length when ``window_s`` is 0. Whisper was trained on 30 s windows; the shorter the
window, the more it loops ("what is 12 times 8? what is 12") or slips words. Guards: a
token cap proportional to duration, ``no_repeat_ngram_size``, cutting a transcript
where it restarts itself after a sentence end, and a fallback to the padded path when
the output still looks degenerate. `voxwire eval` measures both paths' WER on the same
speech (``asr_paths``); a 15 s window matched the padded path there, 8-10 s did not.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

# oneDNN (CTranslate2's convolutions on the CPU) keeps a compiled primitive, with its
# buffers, for every input shape it sees, up to 1024 of them. Partials come in every
# length, so the default cache grew the server by megabytes a minute; the final window
# is one shape, and a handful of slots keep it. Read when oneDNN first runs.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from server.config import Settings
from server.errors import ConfigError, WorkCancelled
from server.stages import Float32, Transcript, resolve

log = logging.getLogger(__name__)

RATE = 16000
HOP = 160
MAX_FRAMES = 3000
TAIL = RATE  # a second of trailing silence tells the decoder where speech ends
NO_SPEECH = 0.6
_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE_END = re.compile(r"[.?!]\s+")


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


def cut_restart(text: str) -> str:
    """Drop what follows a sentence end when it starts the transcript over again: the
    decoder, given no more speech, tends to repeat the utterance from its beginning."""
    words = text.split()
    if len(words) < 3:
        return text
    head = " ".join(words[:2]).lower()
    for end in _SENTENCE_END.finditer(text):
        rest = text[end.end():].lower()
        if rest.startswith(head) or head.startswith(rest):
            return text[:end.start() + 1]
    return text


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise WorkCancelled("transcription stopped")


class WhisperTranscriber:
    def __init__(self, path: Path, *, mode: str = "short", device: str = "auto",
                 threads: int = 2, name: str | None = None, window_s: float = 15.0) -> None:
        if not (path / "model.bin").is_file():
            raise ConfigError(f"no Whisper model (model.bin) in {path}")
        self.device = pick_device(device)
        compute = "float16" if self.device == "cuda" else "int8"
        self.model = WhisperModel(str(path), device=self.device, compute_type=compute,
                                  cpu_threads=threads, num_workers=1, local_files_only=True)
        self.mode = mode
        self.window = int(min(max(window_s, 0.0), MAX_FRAMES * HOP / RATE) * RATE)
        self.name = name or path.name
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                   language="en" if multilingual else None)
        self._prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self._suppress = [-1]

    def transcribe(self, audio: Float32, *, partial: bool = False,
                   stop: threading.Event | None = None) -> Transcript:
        """Final transcripts use the configured path; partials always take the cheap one.

        ``stop`` is checked before each pass and between segments: a transcription nobody
        waits for any more (a dropped speculation, a closed session) ends early."""
        stop = stop or threading.Event()
        _check(stop)
        seconds = len(audio) / RATE
        if (self.mode == "short" or partial) and len(audio) < MAX_FRAMES * HOP - TAIL:
            # Partials are previews: the real length is cheapest, and a slip costs nothing.
            result = self._short(audio, seconds, 0 if partial else self.window)
            if result is not None:
                return result
            if partial:
                return Transcript("", "short")
        _check(stop)
        return self._padded(audio, stop)

    def _short(self, audio: Float32, seconds: float, window: int) -> Transcript | None:
        audio = np.pad(audio, (0, max(TAIL, window - len(audio))))
        feats = self.model.feature_extractor(audio)  # (n_mels, frames)
        frames = min(feats.shape[-1], MAX_FRAMES)
        features = np.ascontiguousarray(feats[np.newaxis, :, :frames], dtype=np.float32)
        cap = int(6 * seconds + 8)
        result = self.model.model.generate(
            ctranslate2.StorageView.from_array(features), [self._prompt],
            beam_size=1, max_length=len(self._prompt) + cap, no_repeat_ngram_size=4,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress,
        )[0]
        raw = self.tokenizer.decode(result.sequences_ids[0]).strip()
        text = cut_restart(raw)
        runaway = text == raw and len(result.sequences_ids[0]) >= cap  # not a restart: a loop
        if result.no_speech_prob > NO_SPEECH and len(_WORD.findall(text.lower())) <= 3:
            return Transcript("", "short", result.no_speech_prob)
        if looks_degenerate(text, seconds) or runaway:
            log.info("short-mel output looked degenerate (%r); using the padded path", text)
            return None
        return Transcript(text, "short", result.no_speech_prob)

    def _padded(self, audio: Float32, stop: threading.Event | None = None) -> Transcript:
        stop = stop or threading.Event()
        segments, _info = self.model.transcribe(
            audio, language="en", beam_size=1, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False,
        )
        kept: list[str] = []
        worst = 0.0
        for seg in segments:  # lazy: iterating is the work, and it happens in this thread
            _check(stop)
            worst = max(worst, seg.no_speech_prob)
            if seg.no_speech_prob > NO_SPEECH and seg.avg_logprob < -1.0:
                continue
            kept.append(seg.text)
        return Transcript("".join(kept).strip(), "padded", worst)


def load(settings: Settings) -> WhisperTranscriber:
    return WhisperTranscriber(resolve(settings.asr_model, "asr"), mode=settings.asr_mode,
                              device=settings.device, threads=settings.asr_threads,
                              name=settings.asr_model, window_s=settings.asr_window_s)
