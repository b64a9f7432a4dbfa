"""Turn detection and the input audio buffer. Pure: probabilities and samples in, events out."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from server.audio import RATE
from server.stages import Float32


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # includes the prefix padding
    onset_ms: int


@dataclass(frozen=True)
class SpeechConfirmed:
    """Speech has lasted long enough to be a turn, not a cough: barge-in may act on it."""

    at_ms: int


@dataclass(frozen=True)
class SpeechPaused:
    """The first silent window of a turn: speech may have ended at ``audio_end_ms``."""

    audio_end_ms: int


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back before the silence was long enough: the pause was not the end."""


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # where speech ended, before the trailing silence


TurnEvent = SpeechStarted | SpeechConfirmed | SpeechPaused | SpeechResumed | SpeechStopped


@dataclass(frozen=True)
class Eagerness:
    """How a `semantic_vad` session reads a pause: the silence before the turn model may end
    the turn, the probability of a finished turn at which it does, and the longest pause
    that still waits for more (then the turn ends whatever the model says). With a text
    turn model, the words of the pause's transcript must read finished too (at least
    ``text_threshold``), or the turn is held until ``unfinished_ms`` of silence."""

    min_silence_ms: int
    threshold: float
    max_wait_ms: int
    text_threshold: float = 0.03
    unfinished_ms: int = 1600


# The longest waits are OpenAI's (low 8 s, medium 4 s, high 2 s); "auto" is "medium". Tuned
# on `bench/pauses.py` (44 utterances with 300-1500 ms hesitations, 20 finished questions):
# the audio turn model hears how a phrase ends more than what it says, so a phrase that
# could stand alone ("Turn off the lights") sounds finished inside a sentence, and the
# longer the silence the surer it is: when it is first asked decides the cut-offs far more
# than its threshold. The words catch what the audio cannot: an unfinished phrase ("I would
# like to", "and then", "saying") reads below 0.001, finished questions 0.5-0.9; requests
# read low too ("Set a timer for 10 minutes." 0.015), which is why the words only hold a
# turn (`unfinished_ms`) and never end one. Replayed offline on the fixtures' audio and
# transcripts, the words took the cut-offs from 34 to 17 (high), 20 to 12 (medium, which
# now needs only 0.5: the same cut-offs, finished questions' p95 1.6 s instead of 3.1 s)
# and 9 to 3 (low); measured on the live server, 33 to 23, 19 to 12 and 9 to 4
# (docs/benchmarks.md, "Pauses inside a turn"). Words that stop where no sentence ends
# ("and then", "to", "um") read unfinished by rule (`turn_text.trails_off`), so `high`
# holds only under 0.01 and lets a request like the timer's through.
EAGERNESS = {
    "low": Eagerness(1100, 0.5, 8000, unfinished_ms=2000),
    "medium": Eagerness(600, 0.5, 4000, unfinished_ms=1600),
    "high": Eagerness(200, 0.3, 2000, text_threshold=0.01, unfinished_ms=1000),
}


def eagerness(name: str) -> Eagerness:
    return EAGERNESS.get(name, EAGERNESS["medium"])


class TurnDetector:
    """OpenAI-style server VAD over silero probabilities (one per window).

    Speech starts after ``min_speech_ms`` above ``threshold``; it stops after
    ``silence_ms`` below ``threshold - 0.15`` (hysteresis keeps soft syllables in).
    """

    def __init__(self, *, window_ms: int, threshold: float, silence_ms: int,
                 prefix_padding_ms: int, min_speech_ms: int, confirm_ms: int,
                 start_ms: int = 0) -> None:
        self.window_ms = window_ms
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.silence_ms = silence_ms
        self.prefix_padding_ms = prefix_padding_ms
        self.min_speech_ms = min_speech_ms
        self.confirm_ms = confirm_ms
        self.position_ms = start_ms  # on the input buffer's timeline
        self.in_speech = False
        self._run_start: int | None = None  # first window of a candidate speech run
        self._onset = 0
        self._silence_start: int | None = None
        self._confirmed = False

    def feed(self, probs: list[float]) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for p in probs:
            start, self.position_ms = self.position_ms, self.position_ms + self.window_ms
            if self.in_speech:
                self._in_speech(p, start, events)
            else:
                self._idle(p, start, events)
        return events

    def _idle(self, p: float, start: int, events: list[TurnEvent]) -> None:
        if p < self.threshold:
            self._run_start = None
            return
        if self._run_start is None:
            self._run_start = start
        if self.position_ms - self._run_start >= self.min_speech_ms:
            self.in_speech, self._onset, self._confirmed = True, self._run_start, False
            self._silence_start = None
            events.append(SpeechStarted(max(0, self._onset - self.prefix_padding_ms), self._onset))

    def _in_speech(self, p: float, start: int, events: list[TurnEvent]) -> None:
        if p >= self.neg_threshold:
            if p >= self.threshold and self._silence_start is not None:
                self._silence_start = None
                events.append(SpeechResumed())
            if not self._confirmed and self.position_ms - self._onset >= self.confirm_ms:
                self._confirmed = True
                events.append(SpeechConfirmed(self.position_ms))
            return
        if self._silence_start is None:
            self._silence_start = start
            events.append(SpeechPaused(start))
        if self.position_ms - self._silence_start >= self.silence_ms:
            self.in_speech, self._run_start = False, None
            events.append(SpeechStopped(self._silence_start))

    @property
    def hearing_speech(self) -> bool:
        """In a turn and the last window was voiced (not a pause that may end the turn)."""
        return self.in_speech and self._silence_start is None

    @property
    def pause_start_ms(self) -> int | None:
        """Where the pause that may end the turn began, while it lasts."""
        return self._silence_start if self.in_speech else None

    def reset(self) -> None:
        self.in_speech, self._run_start, self._silence_start = False, None, None


class InputBuffer:
    """The session's 16 kHz input timeline, holding only what a turn may still need.

    Chunks are kept as they came, in a ring: appending and dropping the oldest cost the
    chunks they touch, not the whole buffer, and only a slice that is asked for is joined.
    """

    def __init__(self, max_seconds: float) -> None:
        self.max_samples = int(max_seconds * RATE)
        self._chunks: deque[Float32] = deque()
        self._base = 0  # timeline sample index of the first held sample
        self.total = 0  # samples appended since the session started

    def append(self, samples: Float32) -> None:
        if not len(samples):
            return
        self._chunks.append(samples)
        self.total += len(samples)
        if self.total - self._base > self.max_samples:
            self.drop_before(self.total - self.max_samples)

    def slice_ms(self, start_ms: int, end_ms: int | None = None) -> Float32:
        start = max(start_ms * RATE // 1000, self._base)
        end = self.total if end_ms is None else min(end_ms * RATE // 1000, self.total)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        parts: list[Float32] = []
        at = self._base
        for chunk in self._chunks:
            after = at + len(chunk)
            if after > start:
                parts.append(chunk[max(start - at, 0):min(end - at, len(chunk))])
            if after >= end:
                break
            at = after
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def drop_before_ms(self, ms: int) -> None:
        self.drop_before(ms * RATE // 1000)

    def drop_before(self, sample: int) -> None:
        sample = min(max(sample, self._base), self.total)
        while self._chunks and self._base + len(self._chunks[0]) <= sample:
            self._base += len(self._chunks.popleft())
        if self._chunks and sample > self._base:
            self._chunks[0] = self._chunks[0][sample - self._base:]
        self._base = sample

    def clear(self) -> None:
        self._chunks.clear()
        self._base = self.total

    @property
    def held_ms(self) -> int:
        return (self.total - self._base) * 1000 // RATE

    @property
    def base_ms(self) -> int:
        return self._base * 1000 // RATE

    @property
    def total_ms(self) -> int:
        return self.total * 1000 // RATE


class AudioBudget:
    """Audio seconds a session may send per second of wall time: a token bucket of
    ``burst_s`` seconds, refilled at ``rate`` times real time. Going over is not refused:
    ``take`` says how long to wait before the audio is due, so a sender faster than real
    time is slowed down to it and nothing is lost."""

    def __init__(self, rate: float, burst_s: float) -> None:
        self.rate, self.burst = rate, burst_s
        self.level = burst_s
        self._at: float | None = None

    def take(self, seconds: float, now: float) -> float:
        """Spend ``seconds`` of audio at ``now``; return the seconds to wait first."""
        if self._at is not None:
            self.level = min(self.burst, self.level + (now - self._at) * self.rate)
        self._at = now
        self.level -= seconds
        return max(0.0, -self.level / self.rate)
