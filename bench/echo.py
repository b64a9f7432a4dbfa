"""`python -m bench.echo`: the assistant's voice coming back through a room, and what the
echo canceller and the echo guard make of it.

The rooms are made here: the speaker's output reaches the microphone after a delay (40,
100 or 200 ms), with a few reflections and a short diffuse tail, at a gain, over a quiet
noise floor. The speech is piper (the assistant) and espeak-ng (the user).

- ERLE: how much of the echo the canceller takes off (dB), over each answer and over its
  second half (once the canceller has converged);
- double talk: the user speaking over the echo, Whisper's word error rate on the
  microphone as the canceller leaves it, on the microphone as it is (what the VAD and the
  ASR get with the echo guard only: the guard changes no audio), and on the clean speech;
- self-interruptions: `voxwire talk --duplex full` against a real server, its speaker
  output fed back into its microphone through each room, with the canceller on (guard on
  top, and alone), with the echo guard only, and with nothing: how many times the server
  took the assistant's own voice for the user (speech_started while the answer played);
- CPU: what each second of audio costs a session's canceller (this thread's time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.fixtures import speak_espeak, speak_piper, trim
from client.audio_io import WavIO
from client.realtime import Float32, from_pcm16, pcm16, silence, write_wav
from server.audio import RATE
from server.stages import EchoStream

ANSWERS = [
    "Paris is the capital of France. It lies on the river Seine and is known for its "
    "museums, its cafes and the tower built for the world fair.",
    "A good night's sleep helps the body recover. Most adults need seven to nine hours, "
    "and a regular bedtime makes it easier to fall asleep.",
]
USER = [
    "Stop, what time is it now?",
    "Set a timer for fifteen minutes.",
    "Turn the heating down to eighteen degrees.",
]
FLOOR = 3e-4  # the microphone's own noise (about -70 dBFS)


@dataclass(frozen=True)
class Room:
    """Speaker to microphone: the direct path after ``delay_ms`` at ``gain``, reflections
    after it, and a diffuse tail."""

    delay_ms: int
    gain: float = 0.5
    reflections: tuple[tuple[float, float], ...] = ((7, 0.5), (19, -0.3), (41, 0.2))
    tail_ms: float = 60.0
    seed: int = 7

    def response(self, rate: int) -> tuple[int, Float32]:
        """The delay in samples, and the impulse response from there on."""
        h = np.zeros(int(rate * self.tail_ms / 1000) + 1, np.float32)
        h[0] = 1.0
        for ms, g in self.reflections:
            h[int(rate * ms / 1000)] += g
        rng = np.random.default_rng(self.seed)
        n = np.arange(len(h))
        h += (0.05 * rng.normal(0, 1, len(h)) * np.exp(-n / (rate * 0.015))).astype(np.float32)
        return int(rate * self.delay_ms / 1000), (h * self.gain).astype(np.float32)

    def echo(self, played: Float32, rate: int = RATE) -> Float32:
        """What the microphone picks up of ``played`` (same length)."""
        delay, h = self.response(rate)
        out = np.zeros(len(played), np.float32)
        wet = np.convolve(played, h)[:max(len(played) - delay, 0)]
        out[delay:delay + len(wet)] = wet
        return out


ROOMS = (Room(40), Room(100), Room(200, gain=0.6))


class RoomIO(WavIO):
    """`WavIO` in a room: what the speaker plays comes back into the microphone through
    ``room``, tick by tick, on one clock (the speaker and the microphone of one device)."""

    def __init__(self, source: Path, room: Room, rate: int, **kwargs: Any) -> None:
        super().__init__(source, rate, **kwargs)
        self._delay, self._h = room.response(rate)
        self._history = np.zeros(self._delay + len(self._h) + self._block, np.float32)
        self.captured: list[Float32] = []  # what the microphone sent, echo included

    def start(self, on_input: Any) -> None:
        def tick() -> None:
            start = time.monotonic()
            rng = np.random.default_rng(1)
            for n, i in enumerate(range(0, len(self._audio), self._block)):
                if self._stop.is_set():
                    return
                out = self._playback.pull(self._block)
                self.heard += out
                self._history = np.concatenate([self._history[self._block:], from_pcm16(out)])
                past = self._history[:len(self._history) - self._delay]
                echo = np.convolve(past, self._h, "valid")[-self._block:]
                mic = self._audio[i:i + self._block]
                mic = mic + echo[:len(mic)] + rng.normal(0, FLOOR, len(mic)).astype(np.float32)
                self.captured.append(mic)
                on_input(pcm16(mic))
                time.sleep(max(0.0, start + (n + 1) * self._block_s - time.monotonic()))
            self.finished.set()

        thread = threading.Thread(target=tick, daemon=True, name="roomio")
        thread.start()
        self._threads.append(thread)


# ---------------------------------------------------------------------- the canceller alone


def cancelled(stream: EchoStream, far: Float32, mic: Float32,
              chunk_ms: int = 20) -> tuple[Float32, float]:
    """``mic`` through ``stream`` in ``chunk_ms`` pieces, each after the far end played
    meanwhile (as a session feeds it), and the CPU time it took (this thread's)."""
    step, parts = RATE * chunk_ms // 1000, []
    t0 = time.thread_time()
    for at in range(0, len(mic), step):
        stream.far(far[at:at + step])
        parts.append(stream.near(mic[at:at + step]))
    parts.append(stream.flush())
    return np.concatenate(parts), time.thread_time() - t0


def level_db(samples: Float32) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-12))


def erle_db(echo: Float32, out: Float32) -> float:
    """Echo return loss enhancement: the echo's level over what is left of it."""
    return level_db(echo) - level_db(out[:len(echo)])


def answer(text: str) -> Float32:
    return np.concatenate([trim(speak_piper(text, RATE), RATE), silence(300, RATE)])


def double_talk(far: Float32, user: Float32, room: Room, at_s: float = 1.5
                ) -> tuple[Float32, Float32]:
    """The user's speech starting ``at_s`` into the answer: (the clean user speech, the
    microphone: echo and user), both as long as the answer or the speech, whichever is
    longer."""
    start = int(at_s * RATE)
    n = max(len(far), start + len(user))
    clean = np.zeros(n, np.float32)
    clean[start:start + len(user)] = user
    played = np.concatenate([far, np.zeros(n - len(far), np.float32)])
    mic = clean + room.echo(played) + np.random.default_rng(2).normal(0, FLOOR, n)
    return clean, mic.astype(np.float32)


def measure_canceller(make: Any, asr: Any) -> dict[str, Any]:
    from bench.evaluate import edit_distance, normalise

    rows: list[dict[str, Any]] = []
    for room in ROOMS:
        for text in ANSWERS:
            far = answer(text)
            echo = room.echo(far)
            mic = (echo + np.random.default_rng(3).normal(0, FLOOR, len(far))).astype(np.float32)
            out, cpu = cancelled(make(), far, mic)
            half = len(far) // 2
            rows.append({"room_ms": room.delay_ms, "erle_db": round(erle_db(echo, out), 1),
                         "erle_late_db": round(erle_db(echo[half:], out[half:]), 1),
                         "cpu_ms_per_s": round(1000 * cpu / (len(far) / RATE), 2)})
    talk: list[dict[str, Any]] = []
    for room in ROOMS:
        for text, said in zip(ANSWERS * 2, USER, strict=False):
            far = answer(text)
            clean, mic = double_talk(far, trim(speak_espeak(said, RATE), RATE), room)
            out, _ = cancelled(make(), np.concatenate([far, np.zeros(len(mic) - len(far),
                                                                     np.float32)]), mic)
            ref = normalise(said)
            for mode, audio in (("aec", out), ("guard only", mic), ("clean", clean)):
                heard = asr.transcribe(audio).text
                talk.append({"room_ms": room.delay_ms, "mode": mode, "said": said,
                             "heard": heard, "edits": edit_distance(ref, normalise(heard)),
                             "words": len(ref)})
    wer = {mode: round(100 * sum(r["edits"] for r in talk if r["mode"] == mode)
                       / sum(r["words"] for r in talk if r["mode"] == mode), 1)
           for mode in ("aec", "guard only", "clean")}
    return {"erle": rows, "double_talk": talk, "wer": wer}


# ---------------------------------------------------------------------- through the server


MODES = {  # session field, server's echo guard
    "aec + guard": (True, None),
    "aec": (True, 0.0),
    "guard only": (False, None),
    "nothing": (False, 0.0),
}


async def self_interruptions(engines: Any, settings: Any, room: Room, aec: bool,
                             question: Path, rate: int) -> dict[str, Any]:
    """One question, its answer played through ``room``, nobody speaking after: the turns
    the server heard beyond the question."""
    from client.talk import TalkClient
    from server.edge.app import App

    app = App(settings, engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        audio = RoomIO(question, room, rate, tail_ms=12000)
        lines: list[str] = []
        client = TalkClient(f"ws://{host}:{port}/v1/realtime", audio, duplex="full",
                            echo_cancellation=aec, out=lines.append,
                            instructions="Answer in three or four sentences.")
        talking = asyncio.create_task(client.run(attempts=1, drain=False))
        await asyncio.to_thread(audio.finished.wait, 120)
        talking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await talking
    said = [line[5:] for line in lines if line.startswith("you: ")]
    return {"turns": len(said), "self_interruptions": max(len(said) - 1, 0),
            "cancelled": sum(line.endswith("[cancelled]") for line in lines), "heard": said}


def measure_sessions(rooms: tuple[Room, ...]) -> list[dict[str, Any]]:
    from server.runtime.config import Settings
    from server.runtime.engines import Engines

    base = Settings(port=0, store="none", max_output_tokens=90)
    engines = Engines.load(base)
    rate = 24000
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            question = write_wav(Path(folder) / "q.wav", np.concatenate([
                silence(300, rate), speak_piper("Tell me about Paris.", rate)]), rate)
            for room in rooms:
                for mode, (aec, guard) in MODES.items():
                    settings = base if guard is None else dataclasses.replace(
                        base, echo_guard=guard)
                    row = asyncio.run(self_interruptions(engines, settings, room, aec,
                                                         question, rate))
                    rows.append({"room_ms": room.delay_ms, "mode": mode, **row})
                    print(rows[-1], flush=True)
    finally:
        engines.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    from models import locate
    from server.runtime.config import Settings
    from server.stages import registry
    from server.stages.asr import WhisperTranscriber

    ap = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="webrtc", choices=registry.AEC.names)
    ap.add_argument("--asr", default="tiny.en")
    ap.add_argument("--no-sessions", action="store_true",
                    help="the canceller alone (no server runs)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/echo.json"))
    args = ap.parse_args(argv)
    canceller = registry.AEC.loader(args.engine)(Settings())
    asr = WhisperTranscriber(locate(args.asr, "asr"), threads=1)
    report: dict[str, Any] = {"cpu": os.cpu_count(), "engine": args.engine, "asr": args.asr,
                              **measure_canceller(canceller.new_stream, asr)}
    print(json.dumps({k: report[k] for k in ("erle", "wer")}, indent=1), flush=True)
    if not args.no_sessions:
        report["sessions"] = measure_sessions(ROOMS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
