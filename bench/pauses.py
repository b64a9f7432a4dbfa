"""`python -m bench.pauses` (the `pauses` check of `voxwire eval`): pauses inside a turn.

Two sets of fixtures, each spoken by piper and by espeak-ng, streamed in real time (40 ms
chunks) to a real server, one fresh session per item, once per turn-detection mode
(`server_vad` with its default silence, `semantic_vad` at each eagerness):

- hesitations: utterances with mid-sentence hesitations ("um", "and then", "so I was
  thinking") and 300-1500 ms of silence between their parts. An utterance is cut off when
  a turn ended inside it: a `speech_stopped` before its last part began (then more than one
  turn is committed). The cut-off rate is over utterances; each cut is also counted against
  the pause it fell in, by the pause's length.
- finished questions: how long after the end of speech (the client's clock: when the audio
  holding it was due to leave, as a microphone sends it) `input_audio_buffer.speech_stopped`
  arrives.

After the speech the client keeps sending silence until the turn has ended (or for the
mode's longest wait and a second more), as a microphone would. Sessions ask for no responses
(`create_response: false`): where a turn ends depends only on the audio (the VAD and the
turn model are fed window by window on the audio's own timeline), so answers would change
none of the decisions, only how busy the machine is (`--respond` measures with text answers).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.evaluate import CHUNK_MS, Heard, converse, http_url
from bench.fixtures import RATE, VOICES, speech_end, trim
from bench.latency import LEAD_MS, QUESTIONS, machine, server
from client.realtime import Float32, pcm16, silence
from server.stages.turns import EAGERNESS
from server.stages.turns import eagerness as eagerness_of

# (the parts, the silence after each part but the last, in ms)
HESITATIONS: list[tuple[list[str], list[int]]] = [
    (["So I was thinking", "um", "maybe we could order pizza tonight."], [600, 900]),
    (["I went to the shop", "and then", "I forgot my wallet at home."], [500, 1200]),
    (["Um", "can you remind me to call the dentist?"], [1000]),
    (["So I was thinking", "we should leave a bit earlier tomorrow."], [1500]),
    (["Set an alarm for", "um", "half past six."], [400, 1100]),
    (["First preheat the oven", "and then", "put the bread in for twenty minutes."],
     [800, 700]),
    (["What was the name of", "um", "that film we watched last week?"], [300, 1300]),
    (["I need to buy milk", "and eggs", "and then", "some bread for the weekend."],
     [450, 650, 1000]),
    (["Um", "so I was thinking", "about getting a new phone."], [700, 1400]),
    (["Book a table for four", "um", "on Friday at eight."], [1200, 500]),
    (["Play something relaxing", "and then", "turn the lights down a little."], [1000, 350]),
    (["My flight leaves at", "um", "seven in the morning."], [900, 1500]),
    (["Can you add", "um", "tomatoes to the shopping list?"], [550, 800]),
    (["I called my sister", "and then", "she told me about her new job."], [1400, 600]),
    (["What is the weather like", "um", "in London this weekend?"], [750, 1250]),
    (["So I was thinking", "um", "we could paint the kitchen blue."], [350, 1000]),
    (["Turn off the lights", "and then", "lock the front door."], [1100, 900]),
    (["How many", "um", "how many cups are in a litre?"], [650, 1150]),
    (["So I was thinking", "maybe", "we could visit grandma on Sunday."], [850, 1350]),
    (["Send a message to Anna", "saying", "um", "that I will be late."], [400, 750, 1050]),
    (["I would like to", "um", "cancel my appointment for Tuesday."], [1300, 450]),
    (["We could go to the park", "and then", "have lunch by the river."], [1500, 550]),
]
FINISHED = QUESTIONS[:10]
MODES: dict[str, dict[str, Any]] = {
    "server_vad": {"type": "server_vad"},
    **{f"semantic_vad {e}": {"type": "semantic_vad", "eagerness": e}
       for e in ("low", "medium", "high")},
}
BUCKETS = ((300, 600), (650, 1000), (1050, 1500))  # pause lengths, ms, both ends included
SERVER_VAD_WAIT_MS = 500  # server_vad's default silence_duration_ms
AFTER_MS = 1000  # silence sent past a mode's longest wait before giving up on the turn's end
STOPPED = "input_audio_buffer.speech_stopped"


@dataclass(frozen=True)
class Spoken:
    """One fixture in one voice: the audio (lead-in silence, then speech, nothing after),
    where each part starts and ends (ms from the start), and the words."""

    text: str
    voice: str
    audio: Float32
    parts_ms: list[tuple[int, int]]
    speech_end_s: float

    @property
    def pauses_ms(self) -> list[tuple[int, int]]:
        return [(a[1], b[0]) for a, b in zip(self.parts_ms, self.parts_ms[1:], strict=False)]

    @property
    def last_part_ms(self) -> int:
        return self.parts_ms[-1][0]


def spoken(clips: list[str], gaps_ms: list[int], voice: str) -> Spoken:
    """``clips`` spoken by ``voice``, trimmed, with exactly ``gaps_ms`` of silence between."""
    lead = silence(LEAD_MS, RATE)
    parts, spans, at = [lead], [], len(lead)
    for n, clip in enumerate(clips):
        if n:
            parts.append(silence(gaps_ms[n - 1], RATE))
            at += len(parts[-1])
        speech = trim(VOICES[voice](clip, RATE), RATE)
        parts.append(speech)
        spans.append((at * 1000 // RATE, (at + len(speech)) * 1000 // RATE))
        at += len(speech)
    audio = np.concatenate(parts)
    return Spoken(" ".join(clips), voice, audio, spans, speech_end(audio, RATE))


def hesitations(count: int | None = None, voices: tuple[str, ...] = tuple(VOICES)
                ) -> list[tuple[Spoken, list[int]]]:
    return [(spoken(clips, gaps, v), gaps) for v in voices
            for clips, gaps in HESITATIONS[:count]]


def finished(count: int | None = None, voices: tuple[str, ...] = tuple(VOICES)
             ) -> list[Spoken]:
    return [spoken([q], [], v) for v in voices for q in FINISHED[:count]]


def longest_wait_ms(td: dict[str, Any]) -> int:
    if td["type"] == "semantic_vad":
        return eagerness_of(td.get("eagerness", "auto")).max_wait_ms
    return int(td.get("silence_duration_ms", SERVER_VAD_WAIT_MS))


# ---------------------------------------------------------------------- one item


async def speak_until_the_turn_ends(conn: Any, heard: Heard, fx: Spoken, wait_ms: int
                                    ) -> float:
    """Stream ``fx`` as a microphone would, then silence until a turn ends after the
    speech's last part began (or ``wait_ms`` past the speech's end); returns when the
    first chunk was sent (monotonic)."""
    step = RATE * CHUNK_MS // 1000
    quiet = silence(CHUNK_MS, RATE)
    most = len(fx.audio) + (wait_ms + AFTER_MS) * RATE // 1000
    start = time.monotonic()
    for n, at in enumerate(range(0, most, step)):
        chunk = fx.audio[at:at + step] if at < len(fx.audio) else quiet
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm16(chunk)).decode())
        if at >= len(fx.audio) and _ended(heard, fx):
            break
        await asyncio.sleep(max(0.0, start + (n + 1) * CHUNK_MS / 1000 - time.monotonic()))
    return start


def _ended(heard: Heard, fx: Spoken) -> bool:
    stops = heard.of(STOPPED)
    return (bool(stops) and stops[-1]["audio_end_ms"] >= fx.last_part_ms
            and len(stops) == heard.count("input_audio_buffer.speech_started"))


async def one_item(url: str, fx: Spoken, td: dict[str, Any], respond: bool = False
                   ) -> dict[str, Any]:
    """``fx`` in a fresh session with turn detection ``td``: where its turns ended."""
    started = 0.0

    async def send(conn: Any, heard: Heard) -> None:
        nonlocal started
        started = await speak_until_the_turn_ends(conn, heard, fx, longest_wait_ms(td))

    session = {"audio": {"input": {"turn_detection": {**td, "create_response": respond}}}}
    heard = await converse(url, send, session, timeout_s=60)
    spoken_end = started + fx.speech_end_s
    stops = [(t, e) for t, e in heard.events if e["type"] == STOPPED]
    early = [e["audio_end_ms"] for _, e in stops if e["audio_end_ms"] < fx.last_part_ms]
    last = next((t for t, e in stops if e["audio_end_ms"] >= fx.last_part_ms), None)
    return {"text": fx.text, "voice": fx.voice,
            "pauses_ms": [b - a for a, b in fx.pauses_ms],
            "turns": heard.count("input_audio_buffer.committed"),
            "speech_stopped": len(stops), "cut_off": bool(early),
            "cut_in_pauses_ms": [_pause_of(fx, ms) for ms in early],
            "end_delay_ms": round((last - spoken_end) * 1000) if last is not None else None,
            "transcripts": heard.transcripts(),
            "responses": heard.count("response.created"),
            "settled": heard.settled, "errors": heard.errors()}


def _pause_of(fx: Spoken, end_ms: int) -> int | None:
    """The length of the pause a turn that ended at ``end_ms`` ended in (None: in speech)."""
    for a, b in fx.pauses_ms:
        if a - 150 <= end_ms < b:  # the VAD's windows may end a little either side
            return b - a
    return None


# ---------------------------------------------------------------------- a mode, the check


async def measure_mode(url: str, td: dict[str, Any],
                       paused: list[tuple[Spoken, list[int]]], questions: list[Spoken],
                       respond: bool = False) -> dict[str, Any]:
    items = [await one_item(url, fx, td, respond) for fx, _ in paused]
    ends = [await one_item(url, fx, td, respond) for fx in questions]
    return {"turn_detection": td, "longest_wait_ms": longest_wait_ms(td),
            "summary": summary(items, ends), "hesitations": items,
            "finished": ends}


def _pct(values: list[int], q: float) -> float | None:
    return round(float(np.percentile(values, q))) if values else None


def summary(items: list[dict[str, Any]], ends: list[dict[str, Any]]) -> dict[str, Any]:
    cut = sum(i["cut_off"] for i in items)
    pauses = [p for i in items for p in i["pauses_ms"]]
    cuts = [p for i in items for p in i["cut_in_pauses_ms"] if p is not None]
    buckets = {f"{lo}-{hi}": {"pauses": sum(lo <= p <= hi for p in pauses),
                              "cut": sum(lo <= p <= hi for p in cuts)} for lo, hi in BUCKETS}
    delays = [e["end_delay_ms"] for e in ends if e["end_delay_ms"] is not None]
    return {"utterances": len(items), "cut_off": cut,
            "cut_off_rate": round(cut / len(items), 3) if items else None,
            "pauses": len(pauses), "pauses_cut": len(cuts), "by_pause_ms": buckets,
            "questions": len(ends), "questions_ended": len(delays),
            "end_ms_p50": round(statistics.median(delays)) if delays else None,
            "end_ms_p95": _pct(delays, 95),
            "end_ms_max": max(delays) if delays else None,
            "unsettled": sum(not i["settled"] for i in [*items, *ends]),
            "errors": sum(len(i["errors"]) for i in [*items, *ends])}


def check(url: str, modes: list[str] | None = None, count: int | None = None,
          respond: bool = False, words: bool | None = None) -> dict[str, Any]:
    """Every mode (`MODES`) against the server at ``url`` (http://HOST:PORT); ``words``:
    whether that server reads the words of a pause (None: not known)."""
    paused, questions = hesitations(count), finished(count)
    out: dict[str, Any] = {"utterances": len(paused), "questions": len(questions),
                           "respond": respond, "words": words, "modes": {},
                           "eagerness": {k: dataclasses.asdict(e) for k, e in EAGERNESS.items()}}
    for name in modes or list(MODES):
        out["modes"][name] = asyncio.run(measure_mode(url, MODES[name], paused, questions,
                                                      respond))
        print(name, json.dumps(out["modes"][name]["summary"]), flush=True)
    return out


def section(c: dict[str, Any]) -> list[str]:
    """The check's tables, in Markdown."""
    out = ["", f"## Pauses inside a turn: {c['utterances']} utterances with hesitations, "
           f"{c['questions']} finished questions", "",
           "| mode | longest wait | utterances cut off | rate | pauses cut: "
           + " | ".join(f"{lo}-{hi} ms" for lo, hi in BUCKETS)
           + " | questions: end of speech to speech_stopped, median | p95 |",
           "|---|---|---|---|" + "---|" * len(BUCKETS) + "---|---|"]
    for name, m in c["modes"].items():
        s = m["summary"]
        buckets = " | ".join(f"{b['cut']}/{b['pauses']}" for b in s["by_pause_ms"].values())
        out.append(f"| {name} | {m['longest_wait_ms']} ms | {s['cut_off']}/{s['utterances']} | "
                   f"{100 * (s['cut_off_rate'] or 0):.0f} % | {buckets} | {s['end_ms_p50']} ms "
                   f"| {s['end_ms_p95']} ms |")
    out.append("\nsemantic_vad's eagerness as measured: " + "; ".join(
        f"{name}: first asked after {e['min_silence_ms']} ms of silence, ends the turn at "
        f"{e['threshold']:g}"
        + (f", words under {e['text_threshold']:g} hold it until {e['unfinished_ms']} ms"
           if c.get("words") else "")
        for name, e in c["eagerness"].items()) + ".")
    if c.get("words") is not None:
        out.append(f"The words of each pause read by the text turn model: "
                   f"{'yes' if c['words'] else 'no (--turn-text-engine none)'}.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pauses", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use a running server (http://HOST:PORT)")
    ap.add_argument("--asr", default="tiny.en", help="the server's Whisper model")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: "
                    + ", ".join(MODES))
    ap.add_argument("--count", type=int, help="only the first COUNT fixtures of each set")
    ap.add_argument("--respond", action="store_true", help="answer each turn (text)")
    ap.add_argument("--no-words", action="store_true",
                    help="the server started here runs without the text turn model")
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--out", type=Path, default=Path("bench/results/pauses.json"))
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    started = time.monotonic()
    if args.url:
        result = check(http_url(args.url), modes, args.count, args.respond)
    else:
        flags = ["--asr-model", args.asr, "--log-level", "WARNING"]
        flags += ["--turn-text-engine", "none"] if args.no_words else []
        with server(args.port, flags) as url:
            result = check(url, modes, args.count, args.respond, not args.no_words)
    report = {"machine": machine(), "seconds": round(time.monotonic() - started, 1),
              "asr": args.asr, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(section(report)))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
