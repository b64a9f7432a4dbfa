"""The `asr_paths` check of `voxwire eval`: Whisper's paths on the same clips, called
directly (no server), scored per path, per clip length and per voice.

Two sets of clips, spoken at run time (no audio is stored):

- sentences: the evaluation's sentences and the latency questions, in the two fixture
  voices (piper and espeak-ng `en-us+m3`);
- short questions: one to about three seconds of speech each, in piper and three
  espeak-ng variants, where a slipped word changes the answer most.

Each clip is the trimmed speech with 300 ms of silence before and 200 ms after (what the
server hands Whisper: the VAD's prefix padding and its tail). The paths:

- padded: faster-whisper's standard transcription (a 30 s window, greedy, temperature
  fallback): `--asr-mode padded`;
- short: the short mel window, greedy (`--asr-beam-size 1`): the previous default final;
- final: the server's final transcript as configured by default (the short window, beam
  search);
- partial: the previews while the user speaks (the utterance's own length, greedy).

Lengths are bucketed by the speech alone, without the silence around it.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.fixtures import RATE, speak_espeak, speak_piper, trim
from client.realtime import Float32, resample, silence
from server.audio import RATE as SERVER_RATE

SHORT_QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Spain?",
    "Who wrote Hamlet?",
    "How tall is Mount Everest?",
    "What day is it today?",
    "Is it going to rain?",
    "What's the time?",
    "How old is the sun?",
    "Where is Brazil?",
    "Who painted the Mona Lisa?",
    "What is two plus two?",
    "How many legs does a spider have?",
    "What is the largest ocean?",
    "Can you spell necessary?",
    "What does a koala eat?",
    "When was the Eiffel Tower built?",
    "Is a tomato a fruit?",
    "What language do they speak in Brazil?",
    "How far away is the moon?",
    "Who invented the telephone?",
    "What is the speed of light?",
    "Which planet is closest to the sun?",
    "How do you say hello in German?",
    "What's the weather tomorrow?",
    "Play the next song.",
    "Stop the music.",
    "What is a black hole?",
    "How many ounces in a pound?",
    "What is the boiling point of water?",
    "Who is the president of Mexico?",
    "Where do penguins live?",
    "What rhymes with orange?",
    "How long is a marathon?",
    "What is the population of Canada?",
    "Translate thank you into Italian.",
    "What's the capital of Australia?",
    "What is the difference between a frog and a toad?",
    "How many kilometres are there in a mile?",
    "What should I cook for dinner tonight?",
    "How do I get to the nearest post office?",
    "Can you tell me a joke about cats?",
    "Which country has the most people in the world?",
    "What is the best way to learn to play the guitar?",
    "Can you remind me to buy bread on the way home?",
    "How many hours of sleep does a teenager need?",
    "What was the name of the first person on the moon?",
]
ESPEAK_VARIANTS = ("en-us+m3", "en-us+f3", "en+m1")
LEAD_MS, TAIL_MS = 300, 200
# Upper bounds of the length buckets, in seconds of speech; the last is open.
BUCKETS = (1.25, 1.5, 2.0)
PATHS = ("padded", "short", "final", "partial")

Speaker = Callable[[str, int], Float32]


def espeak(variant: str) -> Speaker:
    return functools.partial(speak_espeak, voice=variant)


def question_voices() -> dict[str, Speaker]:
    """The short questions' voices: piper and each espeak-ng variant."""
    return {"piper": speak_piper} | {f"espeak {v}": espeak(v) for v in ESPEAK_VARIANTS}


def sentence_voices() -> dict[str, Speaker]:
    """The sentences' voices: the fixture voices (bench.fixtures.VOICES)."""
    return {"piper": speak_piper, "espeak en-us+m3": espeak("en-us+m3")}


@dataclass(frozen=True)
class Clip:
    set: str
    voice: str
    text: str
    seconds: float  # the speech alone
    audio: Float32  # at the server's rate, with the silence around it


def make_clip(kind: str, voice: str, speak: Speaker, text: str) -> Clip:
    speech = trim(speak(text, RATE), RATE)
    audio = np.concatenate([silence(LEAD_MS, RATE), speech, silence(TAIL_MS, RATE)])
    return Clip(kind, voice, text, round(len(speech) / RATE, 2),
                resample(audio, RATE, SERVER_RATE))


def make_clips(sentences: list[str], questions: list[str],
               sentence_speakers: dict[str, Speaker],
               question_speakers: dict[str, Speaker]) -> list[Clip]:
    return ([make_clip("sentences", v, speak, t) for v, speak in sentence_speakers.items()
             for t in sentences]
            + [make_clip("short questions", v, speak, t)
               for v, speak in question_speakers.items() for t in questions])


def bucket(seconds: float) -> str:
    """The length bucket's label: "under 1.25 s", "1.25-1.5 s", ..., "2 s and more"."""
    low = 0.0
    for high in BUCKETS:
        if seconds < high:
            return f"under {high:g} s" if low == 0 else f"{low:g}-{high:g} s"
        low = high
    return f"{low:g} s and more"


def bucket_labels() -> list[str]:
    return [bucket(b - 0.01) for b in BUCKETS] + [bucket(BUCKETS[-1])]


def score(rows: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """WER (%), words and median compute ms of ``rows`` on ``path``."""
    from bench.evaluate import normalise, wer

    return {"clips": len(rows), "words": sum(len(normalise(r["text"])) for r in rows),
            "wer": round(wer([(r["text"], r["texts"][path]) for r in rows]) * 100, 2)
            if rows else None,
            "median_ms": round(statistics.median(r["ms"][path] for r in rows), 1)
            if rows else None}


def check(asr: str, window_s: float, sentences: list[str], *,
          questions: list[str] | None = None,
          sentence_speakers: dict[str, Speaker] | None = None,
          question_speakers: dict[str, Speaker] | None = None) -> dict[str, Any]:
    """Every path on every clip; WER per path overall, per set, per length bucket and per
    voice, median compute ms per clip, and how often a short-window path fell back to
    the padded one."""
    from models import locate
    from server.runtime.config import Settings
    from server.stages.asr import PADDED, WhisperTranscriber

    clips = make_clips(sentences, SHORT_QUESTIONS if questions is None else questions,
                       sentence_speakers or sentence_voices(),
                       question_speakers or question_voices())
    path = Path(asr) if Path(asr).is_dir() else locate(asr, "asr")

    def model(mode: str, beam: int) -> WhisperTranscriber:
        return WhisperTranscriber(path, mode=mode, device="cpu", threads=2, window_s=window_s,
                                  beam_size=beam)

    beam = Settings.asr_beam_size
    models = {"padded": (model("padded", 1), False), "short": (model("short", 1), False),
              "final": (model("short", beam), False), "partial": (model("short", 1), True)}
    rows: list[dict[str, Any]] = [
        {"set": c.set, "voice": c.voice, "text": c.text, "seconds": c.seconds,
         "bucket": bucket(c.seconds), "texts": {}, "ms": {}, "fell_back": {}}
        for c in clips]
    for name, (transcriber, partial) in models.items():
        for clip, row in zip(clips, rows, strict=True):
            t0 = time.perf_counter()
            result = transcriber.transcribe(clip.audio, partial=partial)
            row["ms"][name] = round((time.perf_counter() - t0) * 1000, 1)
            row["texts"][name] = result.text
            row["fell_back"][name] = name in ("short", "final") and result.details == PADDED
    sets = list(dict.fromkeys(r["set"] for r in rows))
    voices = list(dict.fromkeys(r["voice"] for r in rows))
    labels = [b for b in bucket_labels() if any(r["bucket"] == b for r in rows)]
    paths: dict[str, Any] = {}
    for name in PATHS:
        paths[name] = score(rows, name) | {
            "fallbacks": sum(r["fell_back"][name] for r in rows),
            "by_set": {s: score([r for r in rows if r["set"] == s], name) for s in sets},
            "by_bucket": {b: score([r for r in rows if r["bucket"] == b], name)
                          for b in labels},
            "by_voice": {v: score([r for r in rows if r["voice"] == v], name)
                         for v in voices}}
    final, padded = paths["final"], paths["padded"]
    behind = [b for b in labels
              if final["by_bucket"][b]["wer"] > padded["by_bucket"][b]["wer"]]
    return {"clips": len(rows), "words": score(rows, "final")["words"], "window_s": window_s,
            "beam_size": beam, "sets": sets, "voices": voices, "buckets": labels,
            "paths": paths, "difference_points": round(final["wer"] - padded["wer"], 2),
            "buckets_behind_padded": behind,
            "goal_met": final["wer"] <= padded["wer"] and not behind,
            "items": rows}


def section(c: dict[str, Any]) -> list[str]:
    """The check's part of the evaluation report (markdown lines)."""
    p = c["paths"]
    names = {"padded": "padded (30 s window, greedy)",
             "short": f"short ({c['window_s']:g} s window, greedy)",
             "final": f"final ({c['window_s']:g} s window, beam {c['beam_size']})",
             "partial": "partial (own length, greedy)"}
    out = ["", f"## Whisper's paths on the same {c['clips']} clips ({c['words']} words)", "",
           "| path | WER % | median ms per clip | fell back to padded | "
           + " | ".join(f"WER % {s}" for s in c["sets"]) + " |",
           "|---|---|---|---|" + "---|" * len(c["sets"])]
    for name in PATHS:
        v = p[name]
        fallbacks = v["fallbacks"] if name in ("short", "final") else "-"
        out.append(f"| {names[name]} | {v['wer']:.2f} | {v['median_ms']:.0f} | {fallbacks} | "
                   + " | ".join(f"{v['by_set'][s]['wer']:.2f}" for s in c["sets"]) + " |")
    for key, title in (("by_bucket", "length of speech"), ("by_voice", "voice")):
        groups = c["buckets"] if key == "by_bucket" else c["voices"]
        out += ["", f"By {title}: WER % (median ms per clip)", "",
                f"| {title} | clips | words | " + " | ".join(PATHS) + " |",
                "|---|---|---|" + "---|" * len(PATHS)]
        for g in groups:
            first = p["final"][key][g]
            out.append(f"| {g} | {first['clips']} | {first['words']} | " + " | ".join(
                f"{p[n][key][g]['wer']:.2f} ({p[n][key][g]['median_ms']:.0f})" for n in PATHS)
                + " |")
    behind = ", ".join(c["buckets_behind_padded"]) or "none"
    out.append(f"\nGoal (the final path at least as accurate as padded, overall and in every "
               f"length bucket): {'met' if c['goal_met'] else 'NOT met'} "
               f"({c['difference_points']:+.2f} points overall; buckets behind: {behind}).")
    return out
