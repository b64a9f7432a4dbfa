"""Per-turn latency records and their Prometheus export. Metrics are data."""

from __future__ import annotations

import bisect
import json
import logging
import threading
from dataclasses import dataclass, field

from server.response.record import Timings, TurnRecord, When
from server.runtime.clock import SYSTEM, Clock

turn_log = logging.getLogger("voxwire.turns")

# Marks on a turn's clock, in the order they happen.
MARKS = ("speech_end", "speech_stopped", "asr_done", "llm_first_token", "first_sentence",
         "tts_first_audio", "released", "first_audio_sent", "response_done")
# Stage name -> (from mark, to mark). Their sum from speech_end is voice-to-voice. In a
# speculative turn ASR, LLM and TTS run during the end-of-turn wait: a stage that ended
# before its predecessor counts 0, and `held` is how long ready audio waited for the turn
# to be confirmed.
STAGES = {
    "endpoint": ("speech_end", "speech_stopped"),
    "asr": ("speech_stopped", "asr_done"),
    "llm_first_token": ("asr_done", "llm_first_token"),
    "first_sentence": ("llm_first_token", "first_sentence"),
    "tts_first_audio": ("first_sentence", "tts_first_audio"),
    "held": ("tts_first_audio", "released"),
    "send": ("released", "first_audio_sent"),
    "voice_to_voice": ("speech_end", "first_audio_sent"),
    "total": ("speech_end", "response_done"),
}


@dataclass
class TurnClock:
    """Monotonic timestamps of one turn's marks (on ``clock``), plus compute-only durations."""

    marks: dict[str, float] = field(default_factory=dict)
    compute_ms: dict[str, float] = field(default_factory=dict)
    clock: Clock = field(default=SYSTEM, repr=False, compare=False)

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, self.clock.monotonic() if at is None else at)

    def compute_once(self, name: str, started: float) -> None:
        """Record a model call's own duration, measured in its worker thread (first call)."""
        self.compute_ms.setdefault(name, round((self.clock.monotonic() - started) * 1000, 1))

    def overhead_ms(self) -> float | None:
        """Time on the path to first audio spent outside the models: thread hand-offs,
        queueing, encoding, the socket. Voice-to-voice minus the end-of-turn wait and
        minus model compute (ASR, LLM to first token and on to the first clause, TTS).
        In a speculative turn the models ran during the wait: what is left is the time
        from the later of (turn confirmed, first audio ready) to the audio being sent."""
        m = self.marks
        if self.compute_ms.get("speculative"):
            if not all(k in m for k in ("speech_stopped", "tts_first_audio",
                                        "first_audio_sent")):
                return None
            ready = max(m["speech_stopped"], m["tts_first_audio"])
            return round((m["first_audio_sent"] - ready) * 1000, 1)
        stages = self.stages_ms()
        needed = ("voice_to_voice", "endpoint", "first_sentence")
        if not all(k in stages for k in needed) or not all(
                k in self.compute_ms for k in ("asr", "llm_first_token", "tts_first_audio")):
            return None
        models = (self.compute_ms["asr"] + self.compute_ms["llm_first_token"]
                  + stages["first_sentence"] + self.compute_ms["tts_first_audio"])
        return round(stages["voice_to_voice"] - stages["endpoint"] - models, 1)

    def stages_ms(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, (a, b) in STAGES.items():
            if a in self.marks and b in self.marks:
                out[stage] = round(max(0.0, self.marks[b] - self.marks[a]) * 1000, 1)
        return out

    def marks_ms(self) -> dict[str, float]:
        origin = self.marks.get("speech_end", self.marks.get("speech_stopped"))
        if origin is None:
            return {}
        return {k: round((v - origin) * 1000, 1) for k, v in self.marks.items()}

    def timings(self) -> Timings:
        """The clock as it reads now."""
        return Timings(self.stages_ms(), self.overhead_ms(), self.marks_ms(),
                       dict(self.compute_ms))


_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.n += 1


class Registry:
    """Thread-safe counters, gauges and stage histograms, rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stages: dict[str, Histogram] = {s: Histogram() for s in STAGES}
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}

    def observe_turn(self, stages_ms: dict[str, float]) -> None:
        with self._lock:
            for stage, ms in stages_ms.items():
                self.stages[stage].observe(ms / 1000)

    def inc(self, name: str, by: float = 1.0) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0.0) + by

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            lines += ["# HELP voxwire_stage_seconds Per-turn latency of each stage.",
                      "# TYPE voxwire_stage_seconds histogram"]
            for stage, h in self.stages.items():
                acc = 0
                for bound, count in zip((*_BUCKETS, float("inf")), h.counts, strict=True):
                    acc += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'voxwire_stage_seconds_bucket{{stage="{stage}",le="{le}"}} {acc}')
                lines.append(f'voxwire_stage_seconds_sum{{stage="{stage}"}} {h.sum:.6f}')
                lines.append(f'voxwire_stage_seconds_count{{stage="{stage}"}} {h.n}')
            for name, value in sorted(self.counters.items()):
                lines += [f"# TYPE voxwire_{name} counter", f"voxwire_{name} {value:g}"]
            for name, value in sorted(self.gauges.items()):
                lines += [f"# TYPE voxwire_{name} gauge", f"voxwire_{name} {value:g}"]
        return "\n".join(lines) + "\n"


class TurnMetrics:
    """The turn sink for the server's figures: its counters and stage histograms in
    ``registry``, and one JSON line per turn in the `voxwire.turns` log."""

    when: When = "sent"  # the figures are whole once the first audio has left

    def __init__(self, registry: Registry, transport: str = "websocket") -> None:
        self.registry, self.transport = registry, transport

    async def take(self, turn: TurnRecord) -> None:
        self.registry.inc("turns_total")
        self.registry.inc(f"turns_{self.transport}_total")
        self.registry.inc(f"responses_{turn.status}_total")
        if turn.answered:
            self.registry.observe_turn(turn.timings.stages_ms)
        turn_log.info(json.dumps({"session": turn.session_id, **turn.metrics()}))
