"""Whisper transcription with faster-whisper (CTranslate2).

Two paths. ``padded`` is faster-whisper's standard ``transcribe()``, which pads every
clip to 30 s, so the encoder costs the same for one word as for thirty seconds.
``short`` feeds the encoder a shorter mel window (CTranslate2 accepts up to 3,000
frames): the utterance padded with silence to ``window_s`` (15 s by default), or its
own length when ``window_s`` is 0. Whisper was trained on 30 s windows; the shorter the
window, the more it loops ("what is 12 times 8? what is 12") or slips words. Guards: a
token cap proportional to duration, ``no_repeat_ngram_size``, cutting a transcript
where it restarts itself after a sentence end, and a fallback to the padded path when
the output still looks degenerate. `voxwire eval` measures the paths' WER on the same
speech (``asr_paths``); a 15 s window matched the padded path there, 8-10 s did not.

The final transcript on the short path is beam-searched (``beam_size``, 5 by default):
on short questions greedy decoding slips words ("How tall is my turmeric?"), and the
answer is only as good as the question heard. Measured on 238 clips (46 short questions
in piper and three espeak-ng voices, 23 sentences in two), tiny.en: greedy 10.4 % WER,
beam 8.2 %, the padded path 14.5 %, for about 55 ms more than greedy per clip, spent
inside the end-of-turn wait when the transcription is speculative. Partials stay greedy.

Bounded work, whatever the audio. Garbage (noise, a hum, music, pcm16 read one byte off)
makes Whisper hallucinate ("I'm sorry.", "Thanks for watching."), and faster-whisper's
standard decode then retries at six temperatures, five samples each, up to 448 tokens
apiece: 2 to 9 s for a 2 s clip on two cores, and 30 s and more under load, all that time
holding the one ASR lane every session shares. So:

- a decode that is unsure of its words on audio Whisper itself doubts is speech
  (``no_speech_prob`` above ``DOUBT_NO_SPEECH`` with an average log-probability below
  ``LOGPROB_FLOOR``) is no speech: an empty transcript, never a retry, never an answer;
- the padded fallback runs only on audio the VAD finds speech in;
- every decode is capped at ``token_cap(seconds)`` tokens, and the padded path falls back
  to one more temperature (``FALLBACK_TEMPERATURES``), one sample, not five times five;
- a call has a time budget, ``budget_s + budget_ratio`` x the audio's duration
  (``--asr-budget-s``, ``--asr-budget-ratio``), checked before each pass and between
  segments: past it, ``TranscriptionTimeout`` (``transcription_timeout``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

# oneDNN (CTranslate2's convolutions on the CPU) keeps a compiled primitive, with its
# buffers, for every input shape it sees, up to 1024 of them. Partials come in every
# length, so the default cache grew the server by megabytes a minute; the final window
# is one shape, and a handful of slots keep it. Read when oneDNN first runs.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.vad import VadOptions, get_speech_timestamps

from server.audio import RATE
from server.errors import ConfigError, TranscriptionTimeout, WorkCancelled
from server.runtime.config import Settings
from server.stages import Float32, Transcript, resolve

log = logging.getLogger(__name__)

HOP = 160
MAX_FRAMES = 3000
TAIL = RATE  # a second of trailing silence tells the decoder where speech ends
NO_SPEECH = 0.6
# Speech, piper and espeak voices through tiny.en and base: no_speech_prob <= 0.20 and an
# average log-probability >= -0.75. Garbage: no_speech_prob >= 0.44, log-probability <= -1.09.
DOUBT_NO_SPEECH = 0.3
LOGPROB_FLOOR = -1.0  # Whisper's own log_prob_threshold
# Spoken English runs at 2-4 Whisper tokens a second of audio (measured: 3.2-3.9 for
# sentences, 5.8 for numbers spoken 1.7x as fast); 6 a second, plus a few, leaves room.
TOKENS_PER_S = 6
TOKENS_EXTRA = 8
# CTranslate2 (4.x) lets a Whisper decode produce at most half its ``max_length``
# (OpenAI's reference sample_len), so a cap of n tokens asks for prompt + 2n; Whisper's
# decoder holds 448 positions, the prompt included.
MAX_NEW_TOKENS = 220
FALLBACK_TEMPERATURES = (0.0, 0.4)
# Hypotheses the short path's final decode keeps (--asr-beam-size; partials keep one).
BEAM_SIZE = 5
MAX_RATIO = 2.4  # Whisper's compression_ratio_threshold: above it, text repeats itself
# A call may take this long, plus this many times the audio's duration (defaults of
# --asr-budget-s, --asr-budget-ratio). Bounded, the worst garbage measured took 1.2 s of CPU
# and 0.3x its duration (base, forced through the padded path, two shared cores); the rest
# is headroom for a busy machine, so that speech is not failed for want of time.
BUDGET_S = 5.0
BUDGET_RATIO = 1.0
# Which path made a transcript, in its details (the turn's metric `asr_path_short`).
SHORT: Mapping[str, float] = MappingProxyType({"path_short": 1.0})
PADDED: Mapping[str, float] = MappingProxyType({"path_short": 0.0})
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


def token_cap(seconds: float) -> int:
    """The most tokens a decode of ``seconds`` of audio may produce."""
    return min(int(TOKENS_PER_S * seconds + TOKENS_EXTRA), MAX_NEW_TOKENS)


def max_length(prompt: int, cap: int) -> int:
    """The ``max_length`` that lets a CTranslate2 Whisper decode produce ``cap`` tokens."""
    return prompt + 2 * cap


def doubtful(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper guessing words on audio it doubts holds speech: a hallucination."""
    return no_speech_prob > DOUBT_NO_SPEECH and avg_logprob < LOGPROB_FLOOR


def hears_speech(audio: Float32) -> bool:
    """Whether the VAD (faster-whisper's silero) finds any speech at all."""
    return bool(get_speech_timestamps(audio, VadOptions()))


class _Budget:
    """A stop event and a deadline: the points between passes and segments check both."""

    def __init__(self, stop: threading.Event, seconds: float, limit_s: float) -> None:
        self.stop = stop
        self.seconds = seconds
        self.limit_s = limit_s
        self.deadline = time.monotonic() + limit_s

    def check(self) -> None:
        if self.stop.is_set():
            raise WorkCancelled("transcription stopped")
        if time.monotonic() > self.deadline:
            raise TranscriptionTimeout(
                f"transcribing {self.seconds:.1f} s of audio took longer than its "
                f"{self.limit_s:.1f} s budget; the audio may not be speech (is it pcm16 "
                "at the session's rate?)")


class WhisperTranscriber:
    def __init__(self, path: Path, *, mode: str = "short", device: str = "auto",
                 threads: int = 2, name: str | None = None, window_s: float = 15.0,
                 beam_size: int = BEAM_SIZE, budget_s: float = BUDGET_S,
                 budget_ratio: float = BUDGET_RATIO) -> None:
        if not (path / "model.bin").is_file():
            raise ConfigError(f"no Whisper model (model.bin) in {path}")
        self.device = pick_device(device)
        compute = "float16" if self.device == "cuda" else "int8"
        self.model = WhisperModel(str(path), device=self.device, compute_type=compute,
                                  cpu_threads=threads, num_workers=1, local_files_only=True)
        self.mode = mode
        self.window = int(min(max(window_s, 0.0), MAX_FRAMES * HOP / RATE) * RATE)
        self.name = name or path.name
        self.beam_size = max(beam_size, 1)
        self.budget_s = budget_s
        self.budget_ratio = budget_ratio
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                   language="en" if multilingual else None)
        self._prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self._suppress = [-1]

    def transcribe(self, audio: Float32, *, partial: bool = False,
                   stop: threading.Event | None = None) -> Transcript:
        """Final transcripts use the configured path; partials always take the cheap one.

        ``stop`` is checked before each pass and between segments: a transcription nobody
        waits for any more (a dropped speculation, a closed session) ends early. So is the
        call's time budget (``TranscriptionTimeout``)."""
        seconds = len(audio) / RATE
        budget = _Budget(stop or threading.Event(), seconds,
                         self.budget_s + self.budget_ratio * seconds)
        budget.check()
        if (self.mode == "short" or partial) and len(audio) < MAX_FRAMES * HOP - TAIL:
            # Partials are previews: the real length and one hypothesis are cheapest, and a
            # slip costs nothing. The final transcript is what gets answered: beam search.
            result = (self._short(audio, seconds, 0, 1) if partial
                      else self._short(audio, seconds, self.window, self.beam_size))
            if result is not None:
                return result
            if partial:
                log.debug("a partial's output looked degenerate; the preview is dropped")
                return Transcript("", SHORT)
            if not hears_speech(audio):
                log.info("short-mel output looked degenerate and the VAD hears no speech")
                return Transcript("", SHORT)
            log.info("short-mel output looked degenerate; using the padded path")
        budget.check()
        return self._padded(audio, budget)

    def _short(self, audio: Float32, seconds: float, window: int,
               beam_size: int) -> Transcript | None:
        audio = np.pad(audio, (0, max(TAIL, window - len(audio))))
        feats = self.model.feature_extractor(audio)  # (n_mels, frames)
        frames = min(feats.shape[-1], MAX_FRAMES)
        features = np.ascontiguousarray(feats[np.newaxis, :, :frames], dtype=np.float32)
        cap = token_cap(seconds)
        result = self.model.model.generate(
            ctranslate2.StorageView.from_array(features), [self._prompt],
            beam_size=beam_size, max_length=max_length(len(self._prompt), cap),
            no_repeat_ngram_size=4,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        # The score is the summed log-probability over the length (length_penalty 1);
        # faster-whisper's average counts the end token too.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        raw = self.tokenizer.decode(tokens).strip()
        text = cut_restart(raw)
        runaway = text == raw and len(tokens) >= cap  # not a restart: a loop
        if ((result.no_speech_prob > NO_SPEECH and len(_WORD.findall(text.lower())) <= 3)
                or doubtful(result.no_speech_prob, avg_logprob)):
            return Transcript("", SHORT)
        if looks_degenerate(text, seconds) or runaway:
            log.debug("short-mel output looked degenerate: %r", text)
            return None
        return Transcript(text, SHORT)

    def _padded(self, audio: Float32, budget: _Budget | None = None) -> Transcript:
        seconds = len(audio) / RATE
        budget = budget or _Budget(threading.Event(), seconds, float("inf"))
        segments, _info = self.model.transcribe(
            audio, language="en", beam_size=1, best_of=1, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False,
            temperature=list(FALLBACK_TEMPERATURES),
            max_new_tokens=max_length(0, token_cap(seconds)),  # faster-whisper adds the prompt
        )
        kept: list[str] = []
        for seg in segments:  # lazy: iterating is the work, and it happens in this thread
            # The fallback's sample can settle into a loop ("B-B-B-B"): no more believable.
            looping = seg.no_speech_prob > DOUBT_NO_SPEECH and seg.compression_ratio > MAX_RATIO
            if not doubtful(seg.no_speech_prob, seg.avg_logprob) and not looping:
                kept.append(seg.text)
            if seg.end < seconds:
                budget.check()  # before the next 30 s window is decoded
        return Transcript("".join(kept).strip(), PADDED)


def load(settings: Settings) -> WhisperTranscriber:
    return WhisperTranscriber(resolve(settings.asr_model, "asr"), mode=settings.asr_mode,
                              device=settings.device, threads=settings.asr_threads,
                              name=settings.asr_model, window_s=settings.asr_window_s,
                              beam_size=settings.asr_beam_size, budget_s=settings.asr_budget_s,
                              budget_ratio=settings.asr_budget_ratio)
