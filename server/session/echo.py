"""Echo guard: tell the assistant's own voice, coming back through the microphone, from the
user speaking. Pure numpy, no I/O.

The server knows what it sent and when; a client plays it from the first chunk on,
continuously. When the incoming microphone audio is mostly a delayed copy of that
reference (high normalized cross-correlation at some lag), it is echo, not a user turn.
A user talking over the echo lowers the correlation, so barge-in still works.

The same record, kept sample for sample (`EchoReference.played`), is the far end an echo
canceller takes: `FarEnd` reads it in step with the microphone audio as it arrives.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from server.audio import RATE
from server.stages import Float32

MAX_LAG_S = 0.8  # acoustic delay plus the client's capture, buffering and network latency
KEEP_S = 20.0
RESYNC_S = 0.2  # the microphone this far off the wall clock: read the far end from now on


class EchoReference:
    """The audio the client is presumed to be playing, on the server's wall clock."""

    def __init__(self) -> None:
        self._segments: deque[tuple[float, Float32]] = deque()  # (start time, 16 kHz audio)
        self.play_end = 0.0
        # The same audio by sample (wall time x RATE): chunks queued back to back stay
        # contiguous, whatever the clock's rounding; a stop cuts what was not played.
        self._timeline: deque[tuple[int, Float32]] = deque()
        self._timeline_end = 0

    def sent(self, samples: Float32, now: float) -> None:
        """A chunk went out; it plays after what is queued, or now if nothing is."""
        at = self._timeline_end if now < self.play_end else max(round(now * RATE),
                                                                 self._timeline_end)
        self._timeline.append((at, samples))
        self._timeline_end = at + len(samples)
        start = max(now, self.play_end)
        self._segments.append((start, samples))
        self.play_end = start + len(samples) / RATE
        while self._segments and self._segments[0][0] < now - KEEP_S:
            self._segments.popleft()
        oldest = round((now - KEEP_S) * RATE)
        while self._timeline and self._timeline[0][0] + len(self._timeline[0][1]) < oldest:
            self._timeline.popleft()

    def stop(self, now: float) -> None:
        """The client stopped playback (barge-in): nothing more of the queue is played."""
        self.play_end = min(self.play_end, now)
        while self._segments and self._segments[-1][0] >= now:
            self._segments.pop()
        cut = round(now * RATE)
        while self._timeline and self._timeline[-1][0] >= cut:
            self._timeline.pop()
        if self._timeline and self._timeline_end > cut:
            at, samples = self._timeline.pop()
            self._timeline.append((at, samples[:cut - at]))
        self._timeline_end = min(self._timeline_end, cut)

    def played(self, first: int, end: int) -> Float32:
        """The audio played from sample ``first`` to ``end`` (zeros where none was)."""
        out = np.zeros(max(end - first, 0), np.float32)
        for at, samples in self._timeline:
            a, b = max(at, first), min(at + len(samples), end)
            if a < b:
                out[a - first:b - first] = samples[a - at:b - at]
        return out

    def playing_between(self, t0: float, t1: float) -> bool:
        return bool(self._segments) and self._segments[0][0] < t1 and t0 < self.play_end

    def window(self, t0: float, t1: float) -> Float32:
        """Reference audio played between wall times t0 and t1 (zeros where silent)."""
        out = np.zeros(max(int((t1 - t0) * RATE), 0), dtype=np.float32)
        for start, samples in self._segments:
            end = start + len(samples) / RATE
            if end <= t0 or start >= t1 or not len(out):
                continue
            a = max(int((start - t0) * RATE), 0)
            b = max(int((t0 - start) * RATE), 0)
            n = min(len(out) - a, len(samples) - b)
            if n > 0:
                out[a:a + n] = samples[b:b + n]
        return out


def echo_likeness(mic: Float32, reference: Float32) -> float:
    """Max normalized cross-correlation of ``mic`` against any stretch of ``reference``."""
    n = len(mic)
    if n == 0 or len(reference) < n:
        return 0.0
    mic = mic - mic.mean()
    mic_norm = float(np.linalg.norm(mic))
    if mic_norm < 1e-6:
        return 0.0
    size = 1 << int(np.ceil(np.log2(len(reference) + n)))
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(mic, size)), size)
    corr = corr[: len(reference) - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(reference.astype(np.float64) ** 2)])
    sliding = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12))
    return float(np.max(np.abs(corr) / (sliding * mic_norm)))


class FarEnd:
    """The far end for an echo canceller: what the client played while each stretch of
    microphone audio was captured, read from the reference in step with that audio.

    Each call reads on from where the last one ended, so the far end is the sent audio
    sample for sample; when the microphone's pace leaves the wall clock by more than
    `RESYNC_S` (a gap, a burst), reading starts over at the wall clock. What is left of
    the delay (the network both ways, the client's buffers, the room) the canceller finds."""

    def __init__(self, reference: EchoReference) -> None:
        self._reference = reference
        self._at: int | None = None  # the next sample to read
        self._carry = 0.0  # fractions of a sample, from inputs at other rates

    def take(self, seconds: float, now: float) -> Float32:
        """The far end for ``seconds`` of microphone audio that arrived by ``now``."""
        self._carry += seconds * RATE
        n = int(self._carry)
        self._carry -= n
        end = round(now * RATE)
        if self._at is None or abs(self._at + n - end) > RESYNC_S * RATE:
            self._at = end - n
        first, self._at = self._at, self._at + n
        return self._reference.played(first, first + n)


ECHO_HEARD = 0.5  # the raw microphone this like the played audio: the loudspeaker reaches it
NO_ECHO_S = 0.5  # this long playing with no echo in the raw microphone: no path (a headset)
REMEMBER_S = 30.0  # how long either finding holds without new evidence


class EchoPath:
    """Whether the loudspeaker reaches the microphone at all, judged from the raw microphone
    while something plays.

    An echo canceller suppresses whatever it cannot tell from the far end, and WebRTC's
    AEC3 suppresses near-end speech over the far end by 30-70 dB for its first seconds
    (measured here, no echo in the signal at all). With a headset there is no echo to take
    out, and that suppression only costs the user's barge-in; so the canceller's output is
    used while an echo path is heard or not yet ruled out, and the raw microphone once
    ``NO_ECHO_S`` of playback brought no echo back."""

    def __init__(self) -> None:
        self._present_until = -np.inf
        self._absent_until = -np.inf
        self._quiet_since: float | None = None  # playing, and no echo heard since

    def observe(self, likeness: float | None, now: float) -> None:
        """The raw microphone's echo likeness now (None: nothing was playing)."""
        if likeness is None:
            self._quiet_since = None
        elif likeness >= ECHO_HEARD:
            self._present_until, self._absent_until = now + REMEMBER_S, -np.inf
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= NO_ECHO_S and now >= self._present_until:
            self._absent_until = now + REMEMBER_S

    def cancel(self, now: float) -> bool:
        """Whether the canceller's output is what the VAD and the ASR should hear."""
        return now < self._present_until or now >= self._absent_until
