"""`python -m bench.noise`: noisy speech, and what the noise suppressors do to it.

The noises are made here, from seeded generators and espeak-ng, never downloaded:

- babble: six espeak-ng voices (men and women, three accents) talking over each other;
- fan: brown and pink noise with a 50 Hz mains hum and its harmonics, and the slow beat
  of the blades;
- street: traffic rumble (brown noise) swelling as cars pass, broadband tyre hiss, and a
  few short horn-like tones.

Sentences spoken by piper and espeak-ng are mixed with each at 0, 5 and 10 dB SNR (the
speech's RMS over the noise's). For every suppressor (`--denoise-engine` names) and the
attenuation limit of each `noise_reduction` type, on 1 thread, it reports: the SNR gain
(the output's error against the clean speech, next to the input's), the noise left when
there is no speech, Whisper's word error rate on the noisy and on the denoised speech,
and the CPU each second of audio costs a session (real-time factor).

Hallucinated turns: each noise alone (no speech), 20 s at the level it has at 0, 5 and
10 dB SNR against the sentences, through each mode, then the server's VAD and turn
detector with their defaults: the turns it starts, and how many of them Whisper writes
words for (a turn the assistant would answer). Babble is speech, far off; the fan and the
street should give none.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.fixtures import VOICES, shaped_noise, trim
from client.realtime import Float32, read_wav, silence
from server.audio import RATE
from server.stages import Denoiser
from server.stages.asr import WhisperTranscriber

NOISES = ("babble", "fan", "street")
SNRS_DB = (0, 5, 10)
SENTENCES = [
    "Set a timer for fifteen minutes.",
    "Add two cartons of milk to my shopping list.",
    "What will the weather be like this weekend?",
    "Call my sister and tell her that dinner is ready.",
    "Turn the heating down to eighteen degrees.",
    "What time does the pharmacy close today?",
    "Book a table for four people on Friday night.",
    "How far is it to the nearest train station?",
]
BABBLE = [  # espeak-ng voice, words a minute, pitch, what it says
    ("en-us+m1", 170, 40, "The meeting has been moved to the second floor after lunch today."),
    ("en-gb+f2", 150, 70, "I told him the parcel would arrive on Tuesday but it never came."),
    ("en-us+m4", 185, 30, "We should really think about painting the kitchen a brighter colour."),
    ("en-gb-scotland+f3", 160, 65, "Have you seen the new bakery that opened near the market?"),
    ("en-us+f4", 175, 80, "They said the train was late again because of the signal problems."),
    ("en-gb+m3", 145, 45, "My brother is coming to visit us with his children next month."),
]
LEAD_MS, TAIL_MS = 500, 500


# ---------------------------------------------------------------------- noise


def _espeak(voice: str, wpm: int, pitch: int, text: str) -> Float32:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "talk.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w",
                        str(wav), text], check=True)
        return read_wav(wav, RATE)


@functools.cache
def _babble_voices() -> tuple[Float32, ...]:
    return tuple(trim(_espeak(*b), RATE) for b in BABBLE)


def at_unit_rms(noise: Float32) -> Float32:
    out: Float32 = (noise / np.sqrt(np.mean(np.square(noise, dtype=np.float64)))).astype(
        np.float32)
    return out


def babble(seconds: float, seed: int = 3) -> Float32:
    """Six voices talking at once, each looped from its own random start."""
    rng, n = np.random.default_rng(seed), int(seconds * RATE)
    out = np.zeros(n, np.float32)
    for talk in _babble_voices():
        loop = np.tile(np.concatenate([talk, silence(150, RATE)]), n // len(talk) + 2)
        start = int(rng.integers(0, len(talk)))
        out += at_unit_rms(loop[start:start + n]) * rng.uniform(0.6, 1.0)
    return at_unit_rms(out)


def fan(seconds: float, seed: int = 4) -> Float32:
    """Brown plus pink noise, a 50 Hz hum with harmonics, the blades beating at 7 Hz."""
    t = np.arange(int(seconds * RATE)) / RATE
    brown = shaped_noise(seconds, lambda f: 1.0 / np.maximum(f, 30.0), seed, RATE)
    pink = shaped_noise(seconds, lambda f: 1.0 / np.sqrt(np.maximum(f, 30.0)), seed + 1, RATE)
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 2, 3, 4))
    beat = 1.0 + 0.25 * np.sin(2 * np.pi * 7 * t)
    return at_unit_rms(((brown + 0.5 * pink) * beat + 0.3 * hum).astype(np.float32))


def street(seconds: float, seed: int = 5) -> Float32:
    """Rumble that swells as cars pass, tyre hiss, and two short horn-like tones."""
    rng, n = np.random.default_rng(seed), int(seconds * RATE)
    t = np.arange(n) / RATE
    rumble = shaped_noise(seconds, lambda f: 1.0 / np.maximum(f, 20.0), seed, RATE)
    hiss = shaped_noise(seconds, lambda f: ((f > 1000) & (f < 6000)).astype(np.float64),
                        seed + 1, RATE)
    swell = 0.4 + sum(np.exp(-((t - c) / 0.9) ** 2) for c in rng.uniform(0, seconds, 3))
    horns = np.zeros(n)
    for at in rng.uniform(0, max(seconds - 0.4, 0.1), 2):
        inside = (t >= at) & (t < at + 0.3)
        horns[inside] = np.sign(np.sin(2 * np.pi * 420 * t[inside])) * 0.6
    return at_unit_rms((rumble * swell + 0.3 * hiss * swell + horns).astype(np.float32))


NOISE_MAKERS: dict[str, Callable[[float], Float32]] = {"babble": babble, "fan": fan,
                                                       "street": street}


def mix(speech: Float32, noise: Float32, snr_db: float) -> tuple[Float32, Float32]:
    """``speech`` and ``speech`` plus ``noise`` at ``snr_db`` below its RMS (over the speech
    itself, not the silence around it); both scaled down alike if the mix would clip."""
    loud = trim(speech, RATE)
    level = np.sqrt(np.mean(np.square(loud, dtype=np.float64)))
    out = speech + at_unit_rms(noise[:len(speech)]) * level * 10 ** (-snr_db / 20)
    gain = min(1.0, 0.95 / float(np.abs(out).max()))
    return (speech * gain).astype(np.float32), (out * gain).astype(np.float32)


def noisy_speech(text: str, voice: str, noise: str, snr_db: float) -> tuple[Float32, Float32]:
    """The clean speech (16 kHz, with silence around it) and the same mixed with noise."""
    speech = np.concatenate([silence(LEAD_MS, RATE), trim(VOICES[voice](text, RATE), RATE),
                             silence(TAIL_MS, RATE)])
    return mix(speech, NOISE_MAKERS[noise](len(speech) / RATE), snr_db)


# ---------------------------------------------------------------------- measures


def snr_db(clean: Float32, other: Float32) -> float:
    err = other[:len(clean)] - clean[:len(other)]
    return float(10 * np.log10(np.sum(np.square(clean, dtype=np.float64))
                               / max(np.sum(np.square(err, dtype=np.float64)), 1e-12)))


def denoised(stream: Denoiser, audio: Float32, chunk_ms: int = 20) -> tuple[Float32, float]:
    """``audio`` through ``stream`` in ``chunk_ms`` pieces, as a session feeds it, and the
    CPU time it took (this thread's)."""
    step, parts = RATE * chunk_ms // 1000, []
    t0 = time.thread_time()
    for at in range(0, len(audio), step):
        parts.append(stream.process(audio[at:at + step]))
    parts.append(stream.flush())
    return np.concatenate(parts), time.thread_time() - t0


@dataclass
class Clip:
    text: str
    voice: str
    noise: str
    snr_db: int
    clean: Float32
    noisy: Float32


def clips(sentences: list[str]) -> list[Clip]:
    return [Clip(text, voice, noise, snr, *noisy_speech(text, voice, noise, snr))
            for voice in VOICES for noise in NOISES for snr in SNRS_DB for text in sentences]


def measure(modes: dict[str, Callable[[], Denoiser]], sentences: list[str],
            asr: WhisperTranscriber) -> dict[str, Any]:
    """Every mode on every clip: SNR, noise left in the lead-in, WER, CPU."""
    from bench.evaluate import edit_distance, normalise

    items = clips(sentences)
    lead = RATE * LEAD_MS // 1000
    rows: list[dict[str, Any]] = []
    for mode, make in {"off": None, **modes}.items():
        for c in items:
            cpu = 0.0
            out = c.noisy
            if make is not None:
                out, cpu = denoised(make(), c.noisy)
            text = asr.transcribe(out).text
            ref = normalise(c.text)
            noise_in = float(np.sqrt(np.mean(np.square(c.noisy[:lead], dtype=np.float64))))
            noise_out = float(np.sqrt(np.mean(np.square(out[:lead], dtype=np.float64))))
            rows.append({"mode": mode, "voice": c.voice, "noise": c.noise, "snr_db": c.snr_db,
                         "text": c.text, "heard": text,
                         "edits": edit_distance(ref, normalise(text)), "words": len(ref),
                         "snr_out_db": round(snr_db(c.clean, out), 2),
                         "snr_in_db": round(snr_db(c.clean, c.noisy), 2),
                         "noise_cut_db": round(20 * np.log10(noise_in / max(noise_out, 1e-9)),
                                               1),
                         "cpu_s": cpu, "audio_s": len(c.noisy) / RATE})
    return {"rows": rows, "summary": summarise(rows)}


HALLUCINATION_S = 20.0
SPEECH_DBFS = -20.0  # about the sentences' level: the noise sits this far under it, by SNR


def turns_in(audio: Float32, vad: Any) -> list[tuple[int, int]]:
    """The turns the server's VAD and turn detector (default settings) find in ``audio``:
    (start ms, end ms) each."""
    from server.runtime.config import Settings
    from server.stages.turns import SpeechStarted, SpeechStopped, TurnDetector

    s = Settings()
    stream = vad.new_stream()
    detector = TurnDetector(window_ms=stream.window_ms, threshold=s.vad_threshold,
                            silence_ms=s.silence_duration_ms,
                            prefix_padding_ms=s.prefix_padding_ms, min_speech_ms=s.min_speech_ms,
                            confirm_ms=s.barge_in_ms, start_ms=0)
    turns, start = [], None
    tail = np.zeros(RATE * s.silence_duration_ms // 1000 + RATE // 2, np.float32)
    for event in detector.feed(stream.probabilities(np.concatenate([audio, tail]))):
        if isinstance(event, SpeechStarted):
            start = event.audio_start_ms
        elif isinstance(event, SpeechStopped) and start is not None:
            turns.append((start, event.audio_end_ms))
            start = None
    return turns


def hallucinations(modes: dict[str, Callable[[], Denoiser]], asr: WhisperTranscriber,
                   vad: Any) -> list[dict[str, Any]]:
    """Noise alone through each mode: the turns the VAD starts and those Whisper hears words in."""
    rows = []
    for noise in NOISES:
        unit = at_unit_rms(NOISE_MAKERS[noise](HALLUCINATION_S))
        for snr in SNRS_DB:
            audio = (unit * 10 ** ((SPEECH_DBFS - snr) / 20)).astype(np.float32)
            for mode, make in {"off": None, **modes}.items():
                out = audio if make is None else denoised(make(), audio)[0]
                found = turns_in(out, vad)
                heard = [asr.transcribe(out[a * RATE // 1000:(b + 200) * RATE // 1000]).text
                         for a, b in found]
                rows.append({"noise": noise, "snr_db": snr, "mode": mode, "turns": len(found),
                             "hallucinated": sum(bool(h.strip()) for h in heard),
                             "heard": [h for h in heard if h.strip()]})
    return rows


def _scores(group: list[dict[str, Any]]) -> dict[str, Any]:
    return {"wer": round(100 * sum(r["edits"] for r in group)
                         / sum(r["words"] for r in group), 1),
            "snr_gain_db": round(float(np.mean([r["snr_out_db"] - r["snr_in_db"]
                                                for r in group])), 1),
            "noise_cut_db": round(float(np.mean([r["noise_cut_db"] for r in group])), 1),
            "rtf": round(sum(r["cpu_s"] for r in group) / sum(r["audio_s"] for r in group), 3)}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scores by noise, SNR and mode; then by mode over everything."""
    keys = sorted({(r["mode"], r["noise"], r["snr_db"]) for r in rows},
                  key=lambda k: (k[1], k[2], k[0]))
    out = [{"mode": mode, "noise": noise, "snr_db": snr,
            **_scores([r for r in rows if (r["mode"], r["noise"], r["snr_db"])
                       == (mode, noise, snr)])} for mode, noise, snr in keys]
    out += [{"mode": mode, "noise": "all", "snr_db": "all",
             **_scores([r for r in rows if r["mode"] == mode])}
            for mode in dict.fromkeys(r["mode"] for r in rows)]
    return out


def render(summary: list[dict[str, Any]]) -> str:
    lines = ["| noise | SNR dB | mode | WER % | SNR gain dB | noise cut dB | CPU s per s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['noise']} | {s['snr_db']} | {s['mode']} | {s['wer']} | {s['snr_gain_db']} "
              f"| {s['noise_cut_db']} | {s['rtf']} |" for s in summary]
    return "\n".join(lines)


def render_hallucinations(rows: list[dict[str, Any]]) -> str:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    lines = ["| noise | level (SNR dB) | " + " | ".join(modes) + " |",
             "|---|---|" + "---|" * len(modes)]
    for noise in NOISES:
        for snr in SNRS_DB:
            cells = [next(f"{r['hallucinated']} of {r['turns']}" for r in rows
                          if (r["noise"], r["snr_db"], r["mode"]) == (noise, snr, m))
                     for m in modes]
            lines.append(f"| {noise} | {snr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from models import locate
    from server.runtime.config import Settings
    from server.stages import registry

    ap = argparse.ArgumentParser(prog="python -m bench.noise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=",".join(registry.DENOISE.names))
    ap.add_argument("--limits", default="", help="attenuation limits in dB, comma-separated "
                    "(default: those of near_field and far_field)")
    ap.add_argument("--sentences", type=int, default=len(SENTENCES))
    ap.add_argument("--asr", default="tiny.en")
    ap.add_argument("--hallucinations-only", action="store_true",
                    help="only the noise-alone check, added to the last report at --out")
    ap.add_argument("--out", type=Path, default=Path("bench/results/noise.json"))
    args = ap.parse_args(argv)
    settings = Settings()
    modes: dict[str, Callable[[], Denoiser]] = {}
    for engine in args.engines.split(","):
        suppressor = registry.DENOISE.loader(engine)(settings)
        limits = ([float(x) for x in args.limits.split(",")] if args.limits else
                  [settings.denoise_near_db, settings.denoise_far_db])
        for limit in limits:
            modes[f"{engine} {limit:g} dB"] = functools.partial(suppressor.new_stream, limit)
    asr = WhisperTranscriber(locate(args.asr, "asr"), threads=1)
    if args.hallucinations_only and args.out.is_file():  # added to the last full run
        report = json.loads(args.out.read_text())
    else:
        results = measure(modes, SENTENCES[:args.sentences], asr)
        report = {"cpu": os.cpu_count(), "engines": args.engines, "asr": args.asr,
                  "sentences": args.sentences, **results}
        print(render(results["summary"]))
    vad = registry.VAD.loader("silero")(settings)
    report["hallucinations"] = hallucinations(modes, asr, vad)
    print(render_hallucinations(report["hallucinations"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
