"""The ears: a session's audio intake and turn-taking.

Input audio is checked, paced (the audio budget), decoded, resampled to 16 kHz, cleared of
the assistant's own voice by the echo canceller and denoised when the session asks
(`voxwire.echo_cancellation`, `noise_reduction`), and judged by the VAD in the VAD lane,
with the echo guard silencing what is left of the assistant's own voice. The
turn detector turns the probabilities into turns, the utterance limit cuts a turn that runs
too long, and the idle timeout makes a turn of the silence after an answer. In a
`semantic_vad` session a pause ends the turn when the turn model (in its own lane) judges
the turn so far finished, or when it outlasts the eagerness's longest wait. What happens
reaches the session as typed events (`EarEvent`); the session decides what they mean for
the conversation and the response.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

import realtime as p
from realtime import AudioFormat, SessionConfig, TurnDetection
from server import audio as audio_codec
from server.audio import RATE
from server.errors import LimitError, ProtocolError
from server.runtime.clock import Clock
from server.runtime.config import Settings
from server.runtime.engines import SessionEngines
from server.session.echo import MAX_LAG_S, EchoPath, EchoReference, FarEnd, echo_likeness
from server.session.overlap import (
    LONGEST_MS,
    LOOK_EVERY_MS,
    Overlap,
    is_backchannel,
    phrases,
    tokens,
)
from server.stages import Denoiser, EchoStream, Float32, TurnModel, VadStream
from server.stages.turns import (
    AudioBudget,
    Eagerness,
    InputBuffer,
    SpeechConfirmed,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    TurnEvent,
    eagerness,
)

log = logging.getLogger(__name__)

ECHO_WINDOW = 4000  # samples (250 ms at 16 kHz) of microphone audio judged for echo
ASR_TAIL_MS = 200  # trailing silence handed to Whisper with an utterance
MIN_COMMIT_MS = 100
AHEAD_S = 2.0  # audio this far ahead of real time is not live: no speculation on it
TURN_MODEL_S = 8  # the end of the turn the turn model is given
IDLE_KEEP_MS = 1000  # input kept between turns beyond the prefix padding and minimum speech


# ---------------------------------------------------------------------------- what is heard


@dataclass(frozen=True)
class Started:
    """The user started speaking: a new turn, whose item will be ``item_id``."""

    item_id: str
    audio_start_ms: int  # includes the prefix padding
    onset_ms: int


@dataclass(frozen=True)
class Confirmed:
    """The speech has lasted long enough to be a turn, not a cough: barge-in may act."""


@dataclass(frozen=True)
class Paused:
    """The first silence of a turn: it may have ended at ``end_ms``. ``audio``: the turn
    so far, with the tail the ASR is given. Only with speculation on, and only while the
    audio arrives live (`Ears._live`)."""

    item_id: str
    start_ms: int
    end_ms: int
    audio: Float32
    speech_end: float  # when the audio at end_ms arrived (monotonic)


@dataclass(frozen=True)
class Resumed:
    """Speech came back: the pause was not the end."""


@dataclass(frozen=True)
class Stopped:
    """The turn is over: it ended at ``end_ms`` (silence long enough, or ``cut`` short by
    the utterance limit). ``audio``: the whole utterance, with the tail the ASR is given."""

    item_id: str
    start_ms: int
    end_ms: int
    audio: Float32
    speech_end: float  # when the audio at end_ms arrived (monotonic)
    cut: bool = False
    judged: float | None = None  # the turn model's probability, where it ended the turn
    words: float | None = None  # and the text turn model's, where the words were read


@dataclass(frozen=True)
class Backchannel:
    """Speech over the playing answer that said only ``text``, backchannels: the answer
    plays on. Kept as what it was (``audio``, the item ``item_id``), not a turn."""

    item_id: str
    audio: Float32
    text: str


@dataclass(frozen=True)
class TimedOut:
    """Nobody spoke for `idle_timeout_ms` after an answer: the silence is a turn."""

    item_id: str
    start_ms: int
    end_ms: int
    audio: Float32


EarEvent = Started | Confirmed | Paused | Resumed | Stopped | Backchannel | TimedOut


class Host(Protocol):
    """What the ears need from their session."""

    @property
    def cfg(self) -> SessionConfig: ...
    @property
    def closed(self) -> bool: ...
    def quiet(self) -> bool:
        """Nothing is being answered or waits to be: the idle timeout may count."""
        ...
    def answering(self) -> bool:
        """An answer's audio is playing at the client now."""
        ...
    async def heard(self, event: EarEvent) -> None: ...


@dataclass
class Idle:
    """The wait for the user after an answer (turn detection's `idle_timeout_ms`), on the
    input audio's clock: it starts when the answer has finished playing."""

    since: float  # when the answer ended (monotonic); its audio may still be playing
    start_ms: int | None = None  # the input audio position when playback ended


class Ears:
    def __init__(self, owner: str, engines: SessionEngines, settings: Settings, clock: Clock,
                 echo: EchoReference, host: Host, transport_format: AudioFormat | None = None
                 ) -> None:
        self.owner, self.engines, self.settings, self.clock = owner, engines, settings, clock
        self.echo, self.host = echo, host
        # A door whose transport fixes the audio (WebRTC: Opus, decoded to 48 kHz pcm16)
        # sends it so, whatever the session's own input format says.
        self._transport_format = transport_format
        self.buffer = InputBuffer(settings.max_buffer_s)
        self._budget = AudioBudget(settings.audio_rate, settings.audio_burst_s)
        self._vad: VadStream = engines.vad.new_stream()
        self._semantic: Eagerness | None = None  # set by _new_detector for semantic_vad
        self._next_ask_ms = 0  # the pause length at which the turn model is asked next
        # semantic_vad, at the pause that may end the turn (keyed by where it began): the
        # turn model found it finished; and what the words say (`words`), once read.
        self._sounds_done: tuple[int, float] | None = None
        self._words: tuple[int, float | None] | None = None
        self._paused_at: int | None = None  # the pause a speculation transcribes (words come)
        self._detector = self._new_detector(host.cfg.turn_detection)
        self._resampler = audio_codec.StreamResampler(self.input_format(host.cfg).rate, RATE)
        # The session's noise suppressor, made on demand in the VAD lane; one replaced (a new
        # format, a new type, turned off) gives back what it still holds first, so that the
        # buffer stays sample for sample with what the client sent.
        self._denoise: Denoiser | None = None
        self._retired: Denoiser | None = None
        # The session's echo canceller, the same way; it runs before the suppressor, whose
        # gains, changing from frame to frame, would hide the echo's path from it.
        self._aec: EchoStream | None = None
        self._aec_retired: EchoStream | None = None
        self._far = FarEnd(echo)
        self._path = EchoPath()  # whether the canceller's output or the raw audio is heard
        self._raw_held: Float32 = np.zeros(0, np.float32)  # raw input the canceller holds
        self._raw_tail: Float32 = np.zeros(0, np.float32)  # the raw microphone, judged
        self._held = 0  # 16 kHz samples the canceller and suppressor hold back (their delay)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)
        self._mic_tail: Float32 = np.zeros(0, np.float32)
        self.speaking: str | None = None  # the item of the turn being heard
        self._overlap: Overlap | None = None  # speech over the answer, not yet a turn
        self._backchannels = phrases(settings.backchannel_words)
        self._start_ms = 0  # where that turn's utterance starts
        self._idle: Idle | None = None  # armed after an answer when idle_timeout_ms is set

    # ------------------------------------------------------------------ settings

    def configure(self, new: SessionConfig) -> bool:
        """The session is about to take ``new``: a new input format starts the audio over
        (resampler, VAD stream and turn detector); new turn detection, the detector. Says
        whether the turn detector started over (any turn being heard is dropped)."""
        old = self.host.cfg
        fmt = self.input_format(new)
        same_format = fmt == self.input_format(old)
        if not same_format or new.noise_reduction != old.noise_reduction:
            self._retired = self._retired or self._denoise
            self._denoise = None
        if not same_format or new.echo_cancellation != old.echo_cancellation:
            self._aec_retired = self._aec_retired or self._aec
            self._aec = None
        if not same_format:
            self._resampler = audio_codec.StreamResampler(fmt.rate, RATE)
            self._vad = self.engines.vad.new_stream()
        if same_format and new.turn_detection == old.turn_detection:
            return False
        self._detector = self._new_detector(new.turn_detection)
        self.speaking = self._overlap = None
        return True

    def input_format(self, cfg: SessionConfig) -> AudioFormat:
        """The format the input audio arrives in: the transport's, else the session's."""
        return self._transport_format or cfg.input_format

    def _new_detector(self, td: TurnDetection | None) -> TurnDetector:
        td = td or TurnDetection()
        s = self.settings
        semantic = td.type == "semantic_vad" and self.engines.turn is not None
        self._semantic = eagerness(td.eagerness) if semantic else None
        # semantic_vad: silence alone ends the turn only past the longest wait
        silence_ms = self._semantic.max_wait_ms if self._semantic else td.silence_duration_ms
        return TurnDetector(window_ms=self._vad.window_ms, threshold=td.threshold,
                            silence_ms=silence_ms,
                            prefix_padding_ms=td.prefix_padding_ms,
                            min_speech_ms=s.min_speech_ms, confirm_ms=s.barge_in_ms,
                            start_ms=self.buffer.total_ms)

    # ------------------------------------------------------------------ the client's buffer

    def clear(self) -> None:
        """`input_audio_buffer.clear`: the audio held and the turn being heard are dropped."""
        self.buffer.clear()
        self._detector.reset()
        self.speaking = self._overlap = None

    async def drain(self) -> None:
        """Bring in what the echo canceller and the noise suppressor still hold (their last
        few ms), as before a commit: the buffer then holds all the audio the client sent."""
        if self._held:
            await self._ingest(b"", drain=True)

    def commit(self) -> tuple[str, Float32]:
        """`input_audio_buffer.commit`: the item and audio of the turn the client ends
        (raises ProtocolError when too little audio is held)."""
        if self.buffer.held_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                f"buffer too small: {self.buffer.held_ms} ms held, at least {MIN_COMMIT_MS} ms "
                "needed", code="input_audio_buffer_commit_empty")
        utterance = self.buffer.slice_ms(self.buffer.base_ms)
        self.buffer.clear()
        self._detector.reset()
        item_id = self.speaking or (self._overlap.item_id if self._overlap else p.new_id("item"))
        self.speaking = self._overlap = None
        return item_id, utterance

    def answered(self) -> None:
        """An answer ended now: the idle timeout counts from the end of its playback."""
        self._idle = Idle(self.clock.monotonic())

    # ------------------------------------------------------------------ audio in

    async def append(self, pcm: bytes) -> None:
        """One `input_audio_buffer.append`'s audio, in the session's input format."""
        fmt = self.input_format(self.host.cfg)
        per_ms = audio_codec.bytes_per_ms(fmt.type, fmt.rate)
        seconds = len(pcm) / per_ms / 1000
        limit = self.settings.max_append_s
        if seconds > limit:
            raise LimitError(f"one append holds {seconds:.1f} s of audio; at most {limit:g} s "
                             "per append (send it in smaller chunks)", code="append_too_large")
        if fmt.type == "audio/pcm" and len(pcm) % 2:
            audio_codec.decode(pcm, fmt.type)  # raises: an odd byte count
        wait = self._budget.take(seconds, self.clock.monotonic())
        if wait > 0:  # faster than real time past the burst: slowed down, not refused
            await self.clock.sleep(wait)
        # At most a second of audio per lane job: the VAD lane takes one job from each
        # session in turn, so nobody's 20 ms chunk waits behind a long append.
        step = int(per_ms * 1000) // 2 * 2 or 2
        for at in range(0, len(pcm), step):
            await self._ingest(pcm[at:at + step])
            if self.host.closed:
                return

    @property
    def hearing_speech(self) -> bool:
        """In a turn, and its last window was voiced (not a pause that may end it)."""
        return self.speaking is not None and self._detector.hearing_speech

    def so_far(self) -> Float32:
        """The turn being heard, up to now."""
        return self.buffer.slice_ms(self._start_ms)

    async def _ingest(self, raw: bytes, drain: bool = False) -> None:
        cfg = self.host.cfg
        fmt = self.input_format(cfg)
        vad = self._vad if cfg.turn_detection is not None else None
        resampler = self._resampler
        seconds = len(raw) / audio_codec.bytes_per_ms(fmt.type, fmt.rate) / 1000
        cancel = cfg.echo_cancellation and self.engines.echo_canceller is not None
        now = self.clock.monotonic()
        far = self._far.take(seconds, now) if cancel else None
        played = self._played(seconds) if vad is not None or cancel else None
        guard, tail, raw_tail = self.settings.echo_guard, self._mic_tail, self._raw_tail
        use_cancelled = self._path.cancel(now)

        def ingest() -> tuple[Float32, list[float], int, float | None, Float32]:
            taken = resampler(audio_codec.decode(raw, fmt.type))
            path = None
            if far is not None and played is not None:  # is there an echo to take out?
                recent_raw = np.concatenate([raw_tail, taken])[-ECHO_WINDOW:]
                path = echo_likeness(recent_raw, played)
            cancelled = self._cancelled(taken, far, drain, use_cancelled)
            samples = self._denoised(cancelled, cfg, drain)
            probs = vad.probabilities(samples) if vad is not None else []
            if played is not None and vad is not None and guard > 0:
                # Judge the last quarter second, not just this chunk: steadier evidence.
                recent = np.concatenate([tail, samples])[-ECHO_WINDOW:]
                likeness = echo_likeness(recent, played)
                log.debug("echo likeness %.2f", likeness)
                if likeness >= guard:
                    probs = [0.0] * len(probs)  # the assistant's own voice: not the user
            return samples, probs, len(taken), path, taken

        samples, probs, taken, path, heard = await self.engines.vad_lane.run(
            ingest, owner=self.owner)
        if cancel:
            self._path.observe(path, now)
            self._raw_tail = np.concatenate([raw_tail, heard])[-ECHO_WINDOW:]
        self._held += taken - len(samples)
        self._mic_tail = np.concatenate([self._mic_tail, samples])[-ECHO_WINDOW:]
        self.buffer.append(samples)
        # By where the client's audio has reached, not the suppressor's output: the time a
        # turn's end arrived does not include the suppressor's delay.
        self._arrivals.append(((self.buffer.total + self._held) * 1000 // RATE,
                               self.clock.monotonic()))
        for prob in probs:  # window by window: the utterance limit holds inside an append
            for turn_event in self._detector.feed([prob]):
                await self._on_turn_event(turn_event)
            await self._judge_pause()
            await self._enforce_utterance_limit()
        await self._judge_overlap()
        await self._check_idle()
        td = self.host.cfg.turn_detection
        if td is not None and self.speaking is None and self._overlap is None:
            # Nobody speaks: keep only what a turn starting now would reach back for.
            keep_ms = td.prefix_padding_ms + self.settings.min_speech_ms + IDLE_KEEP_MS
            self.buffer.drop_before_ms(self.buffer.total_ms - keep_ms)

    def _cancelled(self, samples: Float32, far: Float32 | None, drain: bool,
                   use: bool = True) -> Float32:
        """``samples`` with the echo of ``far`` (what the client played meanwhile) taken out,
        when the session asks (``far`` is then given; run in the VAD lane). The canceller
        always runs, to stay converged; unless ``use``, what comes out is the raw input,
        frame for frame (`EchoPath`)."""
        parts = []
        if self._aec_retired is not None:
            parts.append(self._aec_retired.flush())
            self._aec_retired = None
        canceller = self.engines.echo_canceller
        if far is None or canceller is None:
            return np.concatenate([*parts, samples]) if parts else samples
        if self._aec is None:
            self._aec = canceller.new_stream()
            self._raw_held = np.zeros(0, np.float32)
        self._aec.far(far)
        out = self._aec.near(samples)
        if drain:
            out = np.concatenate([out, self._aec.flush()])
        raw = np.concatenate([self._raw_held, samples])
        self._raw_held = raw[len(out):]
        parts.append(out if use else raw[:len(out)])
        return np.concatenate(parts)

    def _denoised(self, samples: Float32, cfg: SessionConfig, drain: bool) -> Float32:
        """``samples`` through the session's noise suppressor, when it asks for one (run in
        the VAD lane: making a stream and running it are CPU work)."""
        parts = []
        if self._retired is not None:
            parts.append(self._retired.flush())
            self._retired = None
        suppressor = self.engines.denoiser
        if cfg.noise_reduction is None or suppressor is None:
            return np.concatenate([*parts, samples]) if parts else samples
        if self._denoise is None:
            s = self.settings
            limit = s.denoise_near_db if cfg.noise_reduction == "near_field" else s.denoise_far_db
            self._denoise = suppressor.new_stream(limit)
        parts.append(self._denoise.process(samples))
        if drain:
            parts.append(self._denoise.flush())
        return np.concatenate(parts)

    def _played(self, seconds: float) -> Float32 | None:
        """The reference audio a chunk arriving now may echo, if anything was playing."""
        now = self.clock.monotonic()
        start = now - seconds - ECHO_WINDOW / RATE - MAX_LAG_S
        if not self.echo.playing_between(start, now):
            return None
        return self.echo.window(start, now)

    def _wall_time_of(self, ms: int) -> float:
        for end_ms, t in self._arrivals:
            if end_ms >= ms:
                return t
        return self.clock.monotonic()

    # ------------------------------------------------------------------ turns

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if self.host.cfg.turn_detection is None:
            return
        if self._overlap is not None:
            await self._overlapping(event)
        elif isinstance(event, SpeechStarted):
            item_id = p.new_id("item")
            self._idle = None
            if self._backchannels and self.host.cfg.backchannels and self.host.answering():
                self._overlap = Overlap(item_id, event.audio_start_ms, event.onset_ms,
                                        self.clock.monotonic())
                return  # not a turn yet: the words decide (`_judge_overlap`)
            await self._start(item_id, event.audio_start_ms, event.onset_ms)
        elif isinstance(event, SpeechConfirmed):
            await self.host.heard(Confirmed())
        elif isinstance(event, SpeechPaused):
            self._next_ask_ms = self._semantic.min_silence_ms if self._semantic else 0
            if self.settings.speculate and self._live():
                self._paused_at = event.audio_end_ms
                await self._paused(event.audio_end_ms)
        elif isinstance(event, SpeechResumed):
            await self.host.heard(Resumed())
        elif isinstance(event, SpeechStopped) and self.speaking is not None:
            await self._end_of_speech(event.audio_end_ms)

    async def _start(self, item_id: str, audio_start_ms: int, onset_ms: int) -> None:
        self.speaking = item_id
        self._start_ms = max(audio_start_ms, self.buffer.base_ms)
        await self.host.heard(Started(item_id, audio_start_ms, onset_ms))

    # ------------------------------------------------------------------ over the answer

    async def _overlapping(self, event: TurnEvent) -> None:
        """A turn event while the user speaks over the answer: when the speech pauses, what
        it said so far decides; then the event goes on as any other, if it was a turn."""
        overlap = self._overlap
        if overlap is None or not isinstance(event, SpeechPaused | SpeechStopped):
            return  # confirmed by length alone: not yet, the words decide
        text = await self._look(overlap, event.audio_end_ms)
        if text is not None and not tokens(text):
            # No words: a sound, not speech, when shorter than speech must last to interrupt
            # (`barge_in_ms`); longer, it may be words the transcriber missed, and a missed
            # "stop" costs more than a cough that stops the answer.
            if event.audio_end_ms - overlap.onset_ms < self.settings.barge_in_ms:
                self._let_play()
                log.info("a sound over the answer, no words: it plays on")
                return
        elif text is not None and is_backchannel(text, self._backchannels):
            self._let_play()
            audio = self.buffer.slice_ms(max(overlap.audio_start_ms, self.buffer.base_ms),
                                         event.audio_end_ms + ASR_TAIL_MS)
            self.buffer.drop_before_ms(event.audio_end_ms)
            log.info("backchannel over the answer: %r", text)
            await self.host.heard(Backchannel(overlap.item_id, audio, text))
            return
        await self._interrupt(overlap, text)
        await self._on_turn_event(event)

    def _let_play(self) -> None:
        """The speech over the answer was not an interruption: listen afresh."""
        self._overlap = None
        self._detector.reset()

    async def _judge_overlap(self) -> None:
        """While the user speaks over the answer: a short transcription every
        `LOOK_EVERY_MS`; a word that is not a backchannel interrupts, and so does speech
        longer than any backchannel, or an answer that stopped playing meanwhile."""
        overlap = self._overlap
        if overlap is None or not self._detector.hearing_speech:
            return
        heard_ms = self._detector.position_ms - overlap.onset_ms
        if heard_ms >= LONGEST_MS or not self.host.answering():
            await self._interrupt(overlap, None)
        elif heard_ms >= overlap.next_look_ms:
            overlap.next_look_ms = heard_ms + LOOK_EVERY_MS
            text = await self._look(overlap, self._detector.position_ms)
            if text is None or not is_backchannel(text, self._backchannels):
                await self._interrupt(overlap, text)

    async def _look(self, overlap: Overlap, end_ms: int) -> str | None:
        """A short transcription of the speech over the answer (None: it failed)."""
        audio = self.buffer.slice_ms(max(overlap.audio_start_ms, self.buffer.base_ms),
                                     end_ms)
        asr = self.engines.asr
        try:
            # The final path, not a partial's: on under a second of audio the partial's
            # own-length window mostly hears nothing (measured: "Okay.", "Uh-huh.", "Stop.").
            result = await self.engines.asr_lane.run(lambda: asr.transcribe(audio),
                                                     owner=self.owner)
        except Exception:  # undecided: an interruption, as without backchannels
            log.warning("transcribing speech over the answer failed", exc_info=True)
            return None
        return result.text

    async def _interrupt(self, overlap: Overlap, text: str | None) -> None:
        """The speech over the answer is a turn: it starts (the client stops playing) and
        is confirmed (the answer is cancelled) at once."""
        self._overlap = None
        log.info("interruption %.0f ms after the speech began: %r",
                 (self.clock.monotonic() - overlap.began) * 1000, text)
        await self._start(overlap.item_id, overlap.audio_start_ms, overlap.onset_ms)
        await self.host.heard(Confirmed())

    async def _paused(self, end_ms: int) -> None:
        await self.host.heard(Paused(
            self.speaking or "", self._start_ms, end_ms,
            self.buffer.slice_ms(self._start_ms, end_ms + ASR_TAIL_MS),
            self._wall_time_of(end_ms)))

    @property
    def reads_words(self) -> bool:
        """Whether the words of a pause's transcript take part in ending the turn."""
        return self._semantic is not None and self.engines.turn_text is not None

    async def words(self, pause_ms: int, text: str | None) -> None:
        """The transcript of the turn up to the pause that began at ``pause_ms`` (None or
        empty: none), from the speculation: the text turn model reads it, in the turn lane.
        Where the audio has already found the turn finished and the words agree, it ends
        here (more audio may never come: a client that stops sending when its speech
        ends); otherwise the next window's judgement (`_judge_pause`) weighs them."""
        reader = self.engines.turn_text
        if reader is None or self._detector.pause_start_ms != pause_ms:
            return
        probability: float | None = None
        if text and text.strip():
            try:
                probability = await self.engines.turn_lane.run(
                    lambda: reader.complete(text), owner=self.owner)
            except Exception:  # no opinion: the audio decides, as without words
                log.warning("the text turn model failed", exc_info=True)
            else:
                log.debug("text turn model: %.3f for %r", probability, text)
        if self._detector.pause_start_ms != pause_ms:
            return
        self._words = (pause_ms, probability)
        done = self._sounds_done
        if (done is not None and done[0] == pause_ms and self.speaking is not None
                and self._words_agree(pause_ms, self._detector.position_ms)):
            await self._judged_end(pause_ms, done[1])

    async def _judge_pause(self) -> None:
        """semantic_vad: once a pause has lasted the eagerness's minimum silence, and again
        every `turn_recheck_ms` while it lasts (a longer silence makes an end likelier), ask
        the turn model about the turn so far, silence included. A probability at the
        eagerness's threshold ends the turn where the speech stopped, unless the words say
        otherwise (`_words_agree`)."""
        model, pause_start = self.engines.turn, self._detector.pause_start_ms
        if (self._semantic is None or model is None or pause_start is None
                or self.speaking is None):
            return
        now_ms = self._detector.position_ms
        if self._sounds_done is not None and self._sounds_done[0] == pause_start:
            if self._words_agree(pause_start, now_ms):  # they were all that was missing
                await self._judged_end(pause_start, self._sounds_done[1])
            return
        if now_ms - pause_start < self._next_ask_ms:
            return
        self._next_ask_ms = now_ms - pause_start + self.settings.turn_recheck_ms
        probability = await self._ask(model, now_ms)
        log.debug("turn model: %.3f after %d ms of silence", probability, now_ms - pause_start)
        if (probability < self._semantic.threshold or self.speaking is None
                or self._detector.pause_start_ms != pause_start):
            return
        self._sounds_done = (pause_start, probability)
        if self._words_agree(pause_start, self._detector.position_ms):
            await self._judged_end(pause_start, probability)

    def _words_agree(self, pause_start: int, now_ms: int) -> bool:
        """The turn model found the turn finished: whether its words let it end now. They
        hold it while they read unfinished ("I would like to", "and then"), and until they
        are read; past the eagerness's `unfinished_ms` of silence the audio decides alone.
        No words (speculation off, audio faster than real time, nothing heard, no text
        model): the audio decides."""
        eager = self._semantic
        if eager is None or not self.reads_words or self._paused_at != pause_start:
            return True
        if now_ms - pause_start >= eager.unfinished_ms:
            return True
        words = self._words
        if words is None or words[0] != pause_start:
            return False  # not read yet
        return words[1] is None or words[1] >= eager.text_threshold

    async def _judged_end(self, pause_start: int, probability: float) -> None:
        self._detector.reset()
        words = self._words[1] if self._words and self._words[0] == pause_start else None
        await self._end_of_speech(pause_start, judged=probability, words=words)

    async def _ask(self, model: TurnModel, now_ms: int) -> float:
        audio = self.buffer.slice_ms(max(self._start_ms, now_ms - TURN_MODEL_S * 1000), now_ms)
        return await self.engines.turn_lane.run(lambda: model.complete(audio),
                                                owner=self.owner)

    def _live(self) -> bool:
        """Whether audio arrives as it is spoken. Speculation buys a live speaker time; audio
        sent faster than real time reaches its next pause before the work would be of use,
        so its pauses start nothing (they still end turns as usual)."""
        return self._budget.level >= self._budget.burst - AHEAD_S

    async def _end_of_speech(self, end_ms: int, cut: bool = False,
                             judged: float | None = None, words: float | None = None
                             ) -> None:
        item_id, self.speaking = self.speaking or p.new_id("item"), None
        utterance = self.buffer.slice_ms(self._start_ms, end_ms + ASR_TAIL_MS)
        self.buffer.drop_before_ms(end_ms)
        await self.host.heard(Stopped(item_id, self._start_ms, end_ms, utterance,
                                      self._wall_time_of(end_ms), cut, judged, words))

    async def _enforce_utterance_limit(self) -> None:
        if self.speaking is None:
            return
        at_ms = self._detector.position_ms
        if at_ms - self._start_ms >= self.settings.max_utterance_s * 1000:
            self._detector.reset()
            await self._end_of_speech(at_ms, cut=True)

    async def _check_idle(self) -> None:
        """After an answer has played, `idle_timeout_ms` of input audio with no speech
        starts a turn of its own (as OpenAI's server VAD does)."""
        cfg, idle = self.host.cfg, self._idle
        td = cfg.turn_detection
        if (idle is None or td is None or td.idle_timeout_ms is None
                or cfg.type != "realtime" or self.speaking is not None
                or self._overlap is not None
                or not self.host.quiet()):
            return
        if idle.start_ms is None:
            played = max(idle.since, self.echo.play_end)
            if self.clock.monotonic() < played:
                return  # still playing
            idle.start_ms = next((ms for ms, t in self._arrivals if t >= played),
                                 self.buffer.total_ms)
        end_ms = self.buffer.total_ms
        if end_ms - idle.start_ms < td.idle_timeout_ms:
            return
        self._idle = None
        audio = self.buffer.slice_ms(max(idle.start_ms, self.buffer.base_ms), end_ms)
        self.buffer.drop_before_ms(end_ms)
        await self.host.heard(TimedOut(p.new_id("item"), idle.start_ms, end_ms, audio))
