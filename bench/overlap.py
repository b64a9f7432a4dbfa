"""`python -m bench.overlap`: speech over a playing answer. Backchannels should leave it
playing; real interruptions should stop it, and soon.

Each fixture is one session against a real server (the embedded models): a question, a
long answer, and, 2.5 s after the question ends (the answer is playing by then), the
user's overlap: a backchannel ("mm-hm", "I see", two coughs) or an interruption ("Wait,
what time is it?"), in the piper and espeak-ng voices by turns. The client sends its
microphone in real time (20 ms chunks) and plays nothing; the server's model of the
playback is what decides that the answer is playing.

- backchannels: how many cancelled the answer (goal 0), with backchannels on and off;
- interruptions: how many stopped it (goal all), and the decision latency: from the moment
  the chunk holding the speech's first sound was sent to the `speech_started` that tells
  the client to stop, and to the `response.done` that says the answer was cancelled (the
  client's clock). Without backchannels `speech_started` comes at the speech's onset and
  the cancel after `--barge-in-ms` of it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.fixtures import VOICES, cough, trim
from client.realtime import Float32, pcm16, silence

RATE = 24000
CHUNK_MS = 20
QUESTION = "Tell me a long story about a brave dragon."
BACKCHANNELS = ["Mm-hmm.", "Uh-huh.", "Yeah.", "Right.", "Okay.", "I see.", "Oh, really?",
                "Sure.", "Got it.", "Yeah, yeah.", "All right."]
INTERRUPTIONS = ["Stop.", "Wait, what time is it?", "Hold on, I have a question.",
                 "No, that is wrong.", "Can you speak more slowly?",
                 "Tell me about the weather instead.", "Stop, what time is it now?",
                 "Actually, never mind.", "Set a timer for five minutes.",
                 "What did you just say?"]


def fixture(index: int, text: str | None) -> Float32:
    """The overlap: ``text`` in a voice by turns, or (None) two coughs."""
    if text is None:
        return cough(rate=RATE)
    voice = ("piper", "espeak")[index % 2]
    return trim(VOICES[voice](text, RATE), RATE)


async def one_session(url: str, question: Float32, overlap: Float32, backchannels: bool
                      ) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    gap = silence(2500, RATE)
    audio = np.concatenate([silence(300, RATE), question, gap, overlap, silence(3000, RATE)])
    onset_at = len(silence(300, RATE)) + len(question) + len(gap)
    pcm = pcm16(audio)
    step = RATE * CHUNK_MS // 1000 * 2
    sent_onset: float | None = None
    events: list[tuple[float, dict[str, Any]]] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Tell very long, detailed stories.",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}},
                      "output": {"format": {"type": "audio/pcm", "rate": RATE}}},
            "voxwire": {"backchannels": backchannels}}}))

        async def receive() -> None:
            async for message in ws:
                events.append((time.monotonic(), json.loads(message)))

        receiving = asyncio.create_task(receive())
        start = time.monotonic()
        for n, at in enumerate(range(0, len(pcm), step)):
            if sent_onset is None and at // 2 + step // 2 > onset_at:
                sent_onset = time.monotonic()
            chunk = base64.b64encode(pcm[at:at + step]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await asyncio.sleep(max(0.0, start + (n + 1) * CHUNK_MS / 1000 - time.monotonic()))
        await asyncio.sleep(1.0)
        receiving.cancel()
    assert sent_onset is not None
    started = [t for t, e in events if e["type"] == "input_audio_buffer.speech_started"]
    done = [e["response"]["status"] for _, e in events if e["type"] == "response.done"]
    later = [t - sent_onset for t in started if t > sent_onset - 0.3]
    heard = [e["transcript"] for _, e in events
             if e["type"] == "conversation.item.input_audio_transcription.completed"]
    cancelled = [t - sent_onset for t, e in events if e["type"] == "response.done"
                 and e["response"]["status"] == "cancelled"]
    return {"interrupted": bool(later), "latency_ms": round(later[0] * 1000) if later else None,
            "cancel_ms": round(cancelled[0] * 1000) if cancelled else None,
            "first_answer": done[0] if done else None, "heard": heard}


def cases() -> list[tuple[str, str | None, bool]]:
    """(kind, text or None for the coughs, backchannels on)."""
    return ([("backchannel", t, on) for on in (True, False) for t in [*BACKCHANNELS, None]]
            + [("interruption", t, True) for t in INTERRUPTIONS])


async def measure(url: str, rows: list[dict[str, Any]]) -> None:
    """Every fixture against the server at ``url`` (ws://HOST:PORT/v1/realtime)."""
    question = trim(VOICES["piper"](QUESTION, RATE), RATE)
    for i, (kind, text, on) in enumerate(cases()):
        row = {"kind": kind, "text": text or "(two coughs)", "backchannels": on,
               **await one_session(url, question, fixture(i, text), on)}
        rows.append(row)
        print(row, flush=True)


async def run(rows: list[dict[str, Any]]) -> None:
    from server.edge.app import App
    from server.runtime.config import Settings
    from server.runtime.engines import Engines

    settings = Settings(port=0, store="none", max_output_tokens=200)
    engines = Engines.load(settings)
    try:
        app = App(settings, engines=engines)
        async with app.start_server() as server:
            host, port = server.sockets[0].getsockname()[:2]
            await measure(f"ws://{host}:{port}/v1/realtime", rows)
    finally:
        engines.close()


def _median(values: list[Any]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for on in (True, False):
        backs = [r for r in rows if r["kind"] == "backchannel" and r["backchannels"] is on]
        out[f"backchannels_{'on' if on else 'off'}"] = {
            "fixtures": len(backs), "interrupted": sum(r["interrupted"] for r in backs)}
    real = [r for r in rows if r["kind"] == "interruption"]
    latencies = [r["latency_ms"] for r in real if r["latency_ms"] is not None]
    out["interruptions"] = {
        "fixtures": len(real), "detected": len(latencies),
        "latency_ms_p50": _median(latencies),
        "latency_ms_max": max(latencies) if latencies else None,
        "cancel_ms_p50": _median([r.get("cancel_ms") for r in real])}
    # Backchannels off: the plain barge-in, on the same speech.
    plain = [r for r in rows if r["kind"] == "backchannel" and r["backchannels"] is False]
    out["plain_barge_in"] = {
        "speech_started_ms_p50": _median([r.get("latency_ms") for r in plain]),
        "cancel_ms_p50": _median([r.get("cancel_ms") for r in plain])}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results/overlap.json"))
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    asyncio.run(run(rows))
    report = {"cpu": os.cpu_count(), "summary": summary(rows), "rows": rows}
    print(json.dumps(report["summary"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
