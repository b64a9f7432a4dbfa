"""`python -m bench.evaluate`: accuracy and robustness through the real server.

Every check drives the server with the official `openai` SDK, one fresh session per item:

- wer: sentences spoken by piper and by espeak-ng, streamed through server VAD; the final
  transcripts' word error rate, next to offline faster-whisper on the same audio.
- hallucination: silence, room noise, chords and a cough; no turn should get a transcript.
- turns: sentences with 250-350 ms pauses (and an "um"); each should be one turn.
- echo: the assistant's answer played back into the microphone at -15 dB while the
  client keeps streaming; the assistant should not interrupt itself.
- overlap: backchannels ("mm-hm", two coughs) and interruptions spoken over a long answer
  (`bench/overlap.py`): backchannels that cancelled it (goal 0), interruptions detected
  (goal all) and how soon the client was told to stop.
- pauses: utterances with hesitations and 300-1500 ms pauses, and finished questions, in
  each turn-detection mode (`bench/pauses.py`): the cut-off rate, and how soon each mode
  ends a finished turn.
- vision: printed labels sent as images; the share of fields read back exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import overlap
from bench.fixtures import (
    RATE,
    VOICES,
    chords,
    cough,
    dbfs,
    joined,
    peak_dbfs,
    room_noise,
)
from bench.fixtures import speak_piper as piper
from bench.latency import (
    LEAD_MS,
    QUESTIONS,
    TAIL_MS,
    Fixture,
    machine,
    make_fixtures,
    server,
)
from client.realtime import Float32, from_pcm16, pcm16, resample, send_audio, silence
from server.audio import RATE as SERVER_RATE
from server.runtime.config import Settings

CHECKS = ("wer", "asr_paths", "hallucination", "turns", "pauses", "echo", "overlap", "vision")
SENTENCES = [
    "Set a timer for fifteen minutes.",
    "Wake me up at seven tomorrow morning.",
    "Add two cartons of milk to my shopping list.",
    "What will the weather be like this weekend?",
    "Call my sister and tell her that dinner is ready.",
    "Play some relaxing music in the living room.",
    "How many minutes are there in three hours?",
    "Remind me to water the plants on Sunday.",
    "Turn the heating down to eighteen degrees.",
    "What time does the pharmacy close today?",
    "Read me the latest news headlines.",
    "Book a table for four people on Friday night.",
    "How far is it to the nearest train station?",
    "Switch off all the lights upstairs.",
    "What is twelve times eight?",
]
PAUSED: list[tuple[list[str], list[int]]] = [  # clips, and the silence between them
    (["I would like to order", "a large pizza with mushrooms."], [300]),
    (["Remind me tomorrow morning", "to call the dentist", "about my appointment."], [250, 350]),
    (["Um,", "can you set an alarm for six?"], [350]),
    (["Can you tell me", "um,", "how long it takes to boil an egg?"], [300, 300]),
    (["Please send a message to Tom", "saying that I am running late."], [350]),
    (["My phone number is", "five five five,", "two one four."], [250, 300]),
]
ECHO_QUESTIONS = [
    "Tell me something interesting about the moon.",
    "How do I make a cup of tea?",
    "What can you tell me about the ocean?",
]
LABELS = [
    {"product": "Organic Apple Juice", "price": "3.49", "date": "2024-05-12", "code": "AJ-4821"},
    {"product": "Wireless Mouse", "price": "19.99", "date": "2023-11-02", "code": "WM-1180"},
    {"product": "Green Tea", "price": "5.25", "date": "2025-01-30", "code": "GT-0375"},
    {"product": "Dark Chocolate", "price": "2.80", "date": "2024-09-18", "code": "DC-7702"},
    {"product": "Paper Towels", "price": "7.15", "date": "2025-03-04", "code": "PT-5519"},
]
VISION_QUESTION = ('Read the label in this image. Answer with only a JSON object with the keys '
                   '"product", "price", "date" and "code", each value copied exactly as printed.')
CANNOT_SEE = "I can't see images"  # how the server's notice for a text-only model begins
TEXT_ONLY = {"output_modalities": ["text"], "max_output_tokens": 8, "temperature": 0.0}
ECHO_GAIN_DB, ECHO_DELAY_MS, MIC_NOISE_DBFS, ECHO_MAX_S = -15.0, 60, -60.0, 25.0
CHUNK_MS = 40
COMPLETED = "conversation.item.input_audio_transcription.completed"
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]


# ---------------------------------------------------------------------- scoring


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation; 0-20 spelled out, whether written as digits or not."""
    words = re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("\u2019", ""))
    return [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) <= 20 else w for w in words]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance: substitutions, deletions and insertions."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def wer(pairs: list[tuple[str, str]]) -> float:
    """Corpus word error rate of (reference, hypothesis) pairs: all edits over all words."""
    edits = sum(edit_distance(normalise(r), normalise(h)) for r, h in pairs)
    words = sum(len(normalise(r)) for r, _ in pairs)
    return edits / words if words else 0.0


def first_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`, if any."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        with contextlib.suppress(ValueError):
            value, _ = decoder.raw_decode(text, match.start())
            if isinstance(value, dict):
                return value
    return None


def same_field(expected: str, got: object) -> bool:
    """Equal once reduced to lower-case letters and digits ("$3.49" reads as "3.49")."""
    def key(value: object) -> str:
        return re.sub(r"[^a-z0-9]", "", str(value).lower())

    return got is not None and key(expected) == key(got)


def score_fields(expected: dict[str, str], answer: str) -> dict[str, Any]:
    parsed = first_json(answer) or {}
    right = [k for k, v in expected.items() if same_field(v, parsed.get(k))]
    return {"parsed": parsed or None, "right": right, "score": len(right) / len(expected)}


# ---------------------------------------------------------------------- one session


@dataclass
class Heard:
    """Every server event of one session, as sent, with its arrival time (time.monotonic)."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    last: float = field(default_factory=time.monotonic)
    settled: bool = False

    async def read(self, conn: Any) -> None:
        while True:
            event = json.loads(await conn.recv_bytes())
            self.last = time.monotonic()
            self.events.append((self.last, event))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def count(self, kind: str) -> int:
        return sum(e["type"] == kind for _, e in self.events)

    def balanced(self) -> bool:
        """No turn, transcription or response still in progress."""
        n = self.count
        return (n("input_audio_buffer.speech_started") == n("input_audio_buffer.speech_stopped")
                and n("input_audio_buffer.committed") == n(COMPLETED) + n(
                    "conversation.item.input_audio_transcription.failed")
                and n("response.created") == n("response.done"))

    async def until(self, ready: Callable[[], bool], timeout_s: float, quiet_s: float = 0.0
                    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready() and time.monotonic() - self.last >= quiet_s:
                return True
            await asyncio.sleep(0.05)
        return False

    def transcripts(self) -> list[str]:
        return [e["transcript"] for e in self.of(COMPLETED)]

    def errors(self) -> list[str]:
        return [e["error"].get("code") or e["error"]["message"] for e in self.of("error")]


Sender = Callable[[Any, Heard], Awaitable[None]]


async def converse(url: str, send: Sender, session: dict[str, Any] | None = None,
                   timeout_s: float = 90.0) -> Heard:
    """One fresh session: configure it, run `send`, then wait until every turn is answered."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="eval", base_url=f"{url}/v1")
    heard = Heard()
    async with client.realtime.connect(model="voxwire") as conn:
        reader = asyncio.create_task(heard.read(conn))
        try:
            config: Any = {"type": "realtime", **TEXT_ONLY, **(session or {})}
            await conn.session.update(session=config)
            await send(conn, heard)
            # A session handles its events in order: once this update is answered, all the
            # audio sent before it has been heard and its turn events are out.
            await conn.session.update(session={"type": "realtime"})
            heard.settled = await heard.until(
                lambda: heard.count("session.updated") >= 2 and heard.balanced(), timeout_s,
                quiet_s=0.7)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return heard


def streamed(audio: Float32, realtime: bool) -> Sender:
    async def send(conn: Any, heard: Heard) -> None:
        await send_audio(conn, audio, RATE, chunk_ms=CHUNK_MS, realtime=realtime)

    return send


def answer_text(done: dict[str, Any]) -> str:
    parts = [c.get("text") or c.get("transcript") or "" for item in done["response"]["output"]
             for c in item.get("content", [])]
    return "".join(parts)


# ---------------------------------------------------------------------- 1. word error rate


async def transcribe_item(url: str, voice: str, fx: Fixture) -> dict[str, Any]:
    """Stream a spoken sentence faster than real time; the session's final transcripts."""
    heard = await converse(url, streamed(fx.audio, realtime=False))
    return {"voice": voice, "reference": fx.text, "streaming": " ".join(heard.transcripts()),
            "turns": heard.count("input_audio_buffer.committed"), "settled": heard.settled,
            "errors": heard.errors()}


def offline_transcripts(asr: str, audios: list[Float32]) -> list[str]:
    """faster-whisper's standard transcribe() on the same audio, with the same model."""
    from faster_whisper import WhisperModel

    from models import locate

    path = Path(asr) if Path(asr).is_dir() else locate(asr, "asr")
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)
    out = []
    for audio in audios:
        segments, _ = model.transcribe(resample(audio, RATE, SERVER_RATE), beam_size=1,
                                       language="en")
        out.append("".join(s.text for s in segments).strip())
    return out


def wer_scores(items: list[dict[str, Any]]) -> dict[str, Any]:
    streaming = wer([(i["reference"], i["streaming"]) for i in items]) * 100
    offline = wer([(i["reference"], i["offline"]) for i in items]) * 100
    return {"sentences": len(items), "words": sum(len(normalise(i["reference"])) for i in items),
            "streaming_wer": round(streaming, 2), "offline_wer": round(offline, 2),
            "difference_points": round(streaming - offline, 2)}


def check_wer(url: str, asr: str) -> dict[str, Any]:
    fixtures = [(v, fx) for v in VOICES for fx in make_fixtures(SENTENCES, v)]

    async def all_items() -> list[dict[str, Any]]:
        return [await transcribe_item(url, v, fx) for v, fx in fixtures]

    items = asyncio.run(all_items())
    for item, text in zip(items, offline_transcripts(asr, [fx.audio for _, fx in fixtures]),
                          strict=True):
        item["offline"] = text
        ref = normalise(item["reference"])
        item["edits"] = {"streaming": edit_distance(ref, normalise(item["streaming"])),
                         "offline": edit_distance(ref, normalise(text))}
    summary = {"overall": wer_scores(items)}
    summary |= {v: wer_scores([i for i in items if i["voice"] == v]) for v in VOICES}
    summary["goal_met"] = summary["overall"]["difference_points"] <= 0.5
    return {"summary": summary, "items": items}


def check_asr_paths(asr: str, window_s: float) -> dict[str, Any]:
    """Whisper's paths on the same clips, called directly (`bench/asr_paths.py`): the
    evaluation's sentences and short questions in several voices; WER per path, per clip
    length and per voice, and compute time per clip."""
    from bench import asr_paths  # it builds on this module's scoring

    return asr_paths.check(asr, window_s, list(dict.fromkeys(SENTENCES + QUESTIONS)))


# ---------------------------------------------------------------------- 2. hallucination


def non_speech() -> dict[str, Float32]:
    return {"silence": silence(5000, RATE), "room noise": room_noise(5.0), "music": chords(),
            "cough": cough()}


async def listen_item(url: str, name: str, sound: Float32) -> dict[str, Any]:
    """Stream a non-speech sound in real time, then 2 s of silence; count what it caused."""
    audio = np.concatenate([sound, silence(2000, RATE)])
    heard = await converse(url, streamed(audio, realtime=True))
    said = [t for t in heard.transcripts() if t.strip()]
    return {"sound": name, "seconds": round(len(sound) / RATE, 2),
            "rms_dbfs": round(dbfs(sound), 1) if sound.any() else None,
            "peak_dbfs": round(peak_dbfs(sound), 1) if sound.any() else None,
            "speech_started": heard.count("input_audio_buffer.speech_started"),
            "turns": heard.count("input_audio_buffer.committed"), "transcripts": said,
            "responses": heard.count("response.created"), "settled": heard.settled,
            "errors": heard.errors()}


def check_hallucination(url: str) -> dict[str, Any]:
    async def all_items() -> list[dict[str, Any]]:
        return [await listen_item(url, name, sound) for name, sound in non_speech().items()]

    items = asyncio.run(all_items())
    said = sum(len(i["transcripts"]) for i in items)
    responses = sum(i["responses"] for i in items)
    return {"summary": {"sounds": len(items), "nonempty_transcripts": said,
                        "responses": responses, "goal_met": said == 0 and responses == 0},
            "items": items}


# ---------------------------------------------------------------------- 3a. pauses in a turn


def paused_fixture(clips: list[str], gaps_ms: list[int]) -> Fixture:
    speech = joined([piper(c) for c in clips], gaps_ms)
    audio = np.concatenate([silence(LEAD_MS, RATE), speech, silence(TAIL_MS, RATE)])
    return Fixture(" ".join(clips), audio, LEAD_MS / 1000 + len(speech) / RATE)


async def paused_item(url: str, fx: Fixture, gaps_ms: list[int]) -> dict[str, Any]:
    # Spoken answers: the server prepares them speculatively in every pause; none of that
    # may reach the client before the turn really ends.
    heard = await converse(url, streamed(fx.audio, realtime=True),
                           session={"output_modalities": ["audio"]})
    stopped = heard.count("input_audio_buffer.speech_stopped")
    names = [e["type"] for _, e in heard.events]
    end = max((i for i, n in enumerate(names) if n == "input_audio_buffer.speech_stopped"),
              default=len(names))
    early = [n for n in names[:end] if n.startswith("response.")]
    return {"text": fx.text, "pauses_ms": gaps_ms, "speech_stopped": stopped,
            "turns": heard.count("input_audio_buffer.committed"),
            "false_turn_ends": max(0, stopped - 1), "transcripts": heard.transcripts(),
            "early_response_events": len(early),
            "early_audio_deltas": early.count("response.output_audio.delta"),
            "answered": heard.count("response.output_audio.delta") > 0,
            "settled": heard.settled, "errors": heard.errors()}


def check_turns(url: str) -> dict[str, Any]:
    fixtures = [(paused_fixture(clips, gaps), gaps) for clips, gaps in PAUSED]

    async def all_items() -> list[dict[str, Any]]:
        return [await paused_item(url, fx, gaps) for fx, gaps in fixtures]

    items = asyncio.run(all_items())
    false_ends = sum(i["false_turn_ends"] for i in items)
    return {"summary": {"utterances": len(items),
                        "one_turn": sum(i["speech_stopped"] == 1 for i in items),
                        "false_turn_ends": false_ends,
                        "missed": sum(i["speech_stopped"] == 0 for i in items),
                        "early_response_events": sum(i["early_response_events"] for i in items),
                        "early_audio_deltas": sum(i["early_audio_deltas"] for i in items),
                        "answered": sum(i["answered"] for i in items),
                        "goal_met": all(i["speech_stopped"] == 1 and not i["early_response_events"]
                                        for i in items)},
            "items": items}


# ---------------------------------------------------------------------- 3b. echo


class Speaker:
    """The loudspeaker next to the microphone: plays answer audio in real time and leaks it
    back into the microphone, delayed and attenuated."""

    def __init__(self, gain_db: float = ECHO_GAIN_DB, delay_ms: int = ECHO_DELAY_MS) -> None:
        self.gain = 10 ** (gain_db / 20)
        self.queued = np.zeros(0, np.float32)
        self.line = silence(delay_ms, RATE)  # sound on its way from the speaker to the mic
        self.played = 0  # samples

    def feed(self, samples: Float32) -> None:
        self.queued = np.concatenate([self.queued, samples])

    def stop(self) -> None:
        self.queued = self.queued[:0]

    def play(self, n: int) -> Float32:
        """The next `n` samples as the microphone picks them up."""
        out, self.queued = self.queued[:n], self.queued[n:]
        self.played += len(out)
        line = np.concatenate([self.line, out, np.zeros(n - len(out), np.float32)])
        heard, self.line = line[:n], line[n:]
        return (heard * self.gain).astype(np.float32)

    @property
    def busy(self) -> bool:
        return bool(len(self.queued)) or bool(np.any(self.line))


async def echo_item(url: str, fx: Fixture, gain_db: float = ECHO_GAIN_DB) -> dict[str, Any]:
    """Ask a spoken question and keep the microphone open while the answer plays."""
    step = RATE * CHUNK_MS // 1000
    speaker = Speaker(gain_db)
    noise = room_noise(ECHO_MAX_S, MIC_NOISE_DBFS, seed=3)
    leaked: list[Float32] = []
    started = 0.0

    async def send(conn: Any, heard: Heard) -> None:
        nonlocal started
        started, seen, quiet = time.monotonic(), 0, 0
        for n in range(int(ECHO_MAX_S * 1000 / CHUNK_MS)):
            for _, ev in heard.events[seen:]:
                if ev["type"] == "response.output_audio.delta":
                    speaker.feed(from_pcm16(base64.b64decode(ev["delta"])))
                elif ev["type"] == "input_audio_buffer.speech_started" or (
                        ev["type"] == "response.done"
                        and ev["response"]["status"] == "cancelled"):
                    speaker.stop()  # barge-in, as `voxwire talk` does it
            seen = len(heard.events)
            echo = speaker.play(step)
            voice = fx.audio[n * step:(n + 1) * step]
            mic = np.pad(voice, (0, step - len(voice))) + noise[n * step:(n + 1) * step] + echo
            leaked.append(echo)
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm16(mic)).decode())
            answered = heard.count("response.done") > 0 and heard.balanced()
            spoken = (n + 1) * step >= len(fx.audio)
            quiet = quiet + 1 if answered and spoken and not speaker.busy else 0
            if quiet * CHUNK_MS >= 1500:
                return
            await asyncio.sleep(max(0.0, started + (n + 1) * CHUNK_MS / 1000 - time.monotonic()))
        await send_audio(conn, silence(1000, RATE), RATE, realtime=False)  # end an open turn

    heard = await converse(url, send, {"output_modalities": ["audio"], "max_output_tokens": 40})
    loud = np.concatenate([e for e in leaked if e.any()] or [np.zeros(0, np.float32)])
    prefix = heard.of("session.created")[0]["session"]["audio"]["input"]["turn_detection"][
        "prefix_padding_ms"]
    user_end_ms = fx.speech_end_s * 1000
    false_starts = [e for e in heard.of("input_audio_buffer.speech_started")
                    if e["audio_start_ms"] + prefix > user_end_ms]
    silent_from = started + fx.speech_end_s + 0.3  # the user has stopped talking by then
    self_cut = [e for t, e in heard.events if t > silent_from and e["type"] == "response.done"
                and e["response"]["status"] == "cancelled"
                and (e["response"].get("status_details") or {}).get("reason") == "turn_detected"]
    dones = heard.of("response.done")
    return {"question": fx.text, "answer": answer_text(dones[0]) if dones else "",
            "played_s": round(speaker.played / RATE, 1),
            "speech_dbfs": round(dbfs(fx.audio[fx.audio != 0]), 1),
            "echo_dbfs": round(dbfs(loud), 1) if len(loud) else None,
            "false_speech_starts": len(false_starts),
            "echo_turns": max(0, heard.count("input_audio_buffer.committed") - 1),
            "echo_transcripts": heard.transcripts()[1:],
            "echo_responses": max(0, heard.count("response.created") - 1),
            "self_interruptions": len(self_cut),
            "statuses": [d["response"]["status"] for d in dones], "settled": heard.settled,
            "errors": heard.errors()}


def check_echo(url: str) -> dict[str, Any]:
    fixtures = make_fixtures(ECHO_QUESTIONS)

    async def all_items() -> list[dict[str, Any]]:
        return [await echo_item(url, fx) for fx in fixtures]

    items = asyncio.run(all_items())
    cuts = sum(i["self_interruptions"] for i in items)
    return {"summary": {"questions": len(items), "self_interruptions": cuts,
                        "false_speech_starts": sum(i["false_speech_starts"] for i in items),
                        "echo_turns": sum(i["echo_turns"] for i in items),
                        "echo_responses": sum(i["echo_responses"] for i in items),
                        "goal_met": cuts == 0},
            "items": items}


# ---------------------------------------------------------------------- 4. vision


def label_png(fields: dict[str, str]) -> str:
    """A 640x400 product label as a PNG data URI."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (640, 400), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=34)
    draw.rectangle((8, 8, 631, 391), outline="black", width=4)
    lines = [f"Product: {fields['product']}", f"Price: ${fields['price']}",
             f"Date: {fields['date']}", f"Code: {fields['code']}"]
    for n, line in enumerate(lines):
        draw.text((36, 44 + n * 84), line, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def vision_item(url: str, fields: dict[str, str]) -> dict[str, Any]:
    image = await asyncio.to_thread(label_png, fields)

    async def send(conn: Any, heard: Heard) -> None:
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": VISION_QUESTION},
                        {"type": "input_image", "image_url": image}]})
        await conn.response.create(response={"output_modalities": ["text"],
                                             "max_output_tokens": 120})
        await heard.until(lambda: heard.count("response.done") > 0, 120)

    heard = await converse(url, send)
    dones = heard.of("response.done")
    answer = answer_text(dones[0]) if dones else ""
    return {"expected": fields, "answer": answer, **score_fields(fields, answer),
            "can_see": not answer.startswith(CANNOT_SEE), "settled": heard.settled,
            "errors": heard.errors()}


def check_pauses(url: str) -> dict[str, Any]:
    from bench import pauses  # it builds on this module

    return pauses.check(url)


def check_overlap(url: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    asyncio.run(overlap.measure(re.sub(r"^http", "ws", url) + "/v1/realtime", rows))
    return {"summary": overlap.summary(rows), "items": rows}


def check_vision(url: str) -> dict[str, Any]:
    async def all_items() -> list[dict[str, Any]]:
        return [await vision_item(url, fields) for fields in LABELS]

    items = asyncio.run(all_items())
    right = sum(len(i["right"]) for i in items)
    total = sum(len(i["expected"]) for i in items)
    return {"summary": {"images": len(items), "fields": total, "fields_right": right,
                        "accuracy": round(100 * right / total, 1),
                        "can_see": all(i["can_see"] for i in items)},
            "items": items}


# ---------------------------------------------------------------------- report


def render(results: dict[str, Any]) -> str:
    m, checks = results["machine"], results["checks"]
    out = [f"# Voxwire evaluation: {m['cpu']}, {m['cores']} cores, "
           f"ASR {results['settings']['asr']}, {results['seconds']:.0f} s"]
    if "wer" in checks:
        s = checks["wer"]["summary"]
        out += ["", "## Transcription: word error rate (%)", "",
                "| voice | sentences | words | streaming | offline | difference (points) |",
                "|---|---|---|---|---|---|"]
        for name in (*VOICES, "overall"):
            v = s[name]
            out.append(f"| {name} | {v['sentences']} | {v['words']} | {v['streaming_wer']:.2f} "
                       f"| {v['offline_wer']:.2f} | {v['difference_points']:+.2f} |")
        out.append(f"\nGoal (streaming within 0.5 points of offline): "
                   f"{'met' if s['goal_met'] else 'NOT met'}.")
    if "asr_paths" in checks:
        from bench import asr_paths  # it builds on this module's scoring

        if "paths" in checks["asr_paths"]:
            out += asr_paths.section(checks["asr_paths"])
        else:  # a result from before the check compared every path
            out += ["", "## Whisper's paths", "", "Stored in an earlier format: "
                    "`voxwire eval --only asr_paths` measures it again."]
    if "hallucination" in checks:
        c = checks["hallucination"]
        out += ["", "## Hallucination on non-speech", "",
                "| sound | seconds | RMS dBFS | speech starts | turns | transcripts | responses |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {i['sound']} | {i['seconds']} | {i['rms_dbfs'] or '-'} | "
                f"{i['speech_started']} | "
                f"{i['turns']} | {len(i['transcripts'])} {i['transcripts'] or ''} | "
                f"{i['responses']} |" for i in c["items"]]
        out.append(f"\nGoal (zero): {c['summary']['nonempty_transcripts']} transcripts, "
                   f"{c['summary']['responses']} responses.")
    if "turns" in checks:
        c = checks["turns"]
        out += ["", "## Turn-taking: pauses inside a sentence", "",
                "| utterance | pauses ms | turn ends | false turn ends |", "|---|---|---|---|"]
        out += [f"| {i['text']} | {', '.join(map(str, i['pauses_ms']))} | {i['speech_stopped']} "
                f"| {i['false_turn_ends']} |" for i in c["items"]]
        s = c["summary"]
        out.append(f"\n{s['one_turn']}/{s['utterances']} utterances were one turn; "
                   f"{s['false_turn_ends']} false turn ends, {s['missed']} missed; "
                   f"{s.get('answered', '-')} answered aloud; response events before the turn "
                   f"ended (speculative work leaking out): {s.get('early_response_events', '-')}"
                   f", of them audio deltas: {s.get('early_audio_deltas', '-')}.")
    if "pauses" in checks:
        from bench import pauses  # it builds on this module

        out += pauses.section(checks["pauses"])
    if "echo" in checks:
        c = checks["echo"]
        out += ["", f"## Echo: the answer played back at {ECHO_GAIN_DB:g} dB, "
                f"{ECHO_DELAY_MS} ms late", "",
                "| question | played s | speech dBFS | echo dBFS | false speech starts | "
                "echo turns | echo responses | self-interruptions |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {i['question']} | {i['played_s']} | {i['speech_dbfs']} | "
                f"{i['echo_dbfs']} | {i['false_speech_starts']} | {i['echo_turns']} | "
                f"{i['echo_responses']} | {i['self_interruptions']} |" for i in c["items"]]
        s = c["summary"]
        out.append(f"\nGoal (zero): {s['self_interruptions']} self-interruptions (answers "
                   f"cancelled by their own echo); the echo also started {s['false_speech_starts']}"
                   f" turns (each stops playback in the client), {s['echo_turns']} of them "
                   f"committed, {s['echo_responses']} answered.")
    if "overlap" in checks:
        s = checks["overlap"]["summary"]
        on, off, real = s["backchannels_on"], s["backchannels_off"], s["interruptions"]
        out += ["", "## Speech over the answer: backchannels and interruptions", "",
                "| fixtures | answers cancelled | goal |", "|---|---|---|",
                f"| {on['fixtures']} backchannels (and coughs) | {on['interrupted']} | 0 |",
                f"| the same, backchannels off | {off['interrupted']} | (any speech "
                "interrupts) |",
                f"| {real['fixtures']} interruptions | {real['detected']} | all |",
                f"\nFrom the speech's first chunk sent to `speech_started`: median "
                f"{real['latency_ms_p50']} ms, at most {real['latency_ms_max']} ms."]
    if "vision" in checks:
        s = checks["vision"]["summary"]
        out += ["", "## Vision: label fields read back", "",
                f"{s['fields_right']}/{s['fields']} fields right ({s['accuracy']:.1f} %) over "
                f"{s['images']} images; the model {'can' if s['can_see'] else 'cannot'} see."]
    return "\n".join(out)


def http_url(url: str) -> str:
    """http://HOST:PORT from either that or ws://HOST:PORT/v1/realtime."""
    url = re.sub(r"/v1(/realtime)?/?$", "", url.rstrip("/"))
    return re.sub(r"^ws", "http", url)


def run_checks(url: str, checks: list[str], asr: str) -> dict[str, Any]:
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "wer": lambda: check_wer(url, asr),
        "asr_paths": lambda: check_asr_paths(asr, Settings.asr_window_s),
        "hallucination": lambda: check_hallucination(url),
        "turns": lambda: check_turns(url), "pauses": lambda: check_pauses(url),
        "echo": lambda: check_echo(url),
        "overlap": lambda: check_overlap(url), "vision": lambda: check_vision(url)}
    return {name: runners[name]() for name in checks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use a running server (http://HOST:PORT or ws://.../v1/realtime)")
    ap.add_argument("--asr", default="tiny.en", help="Whisper model (the server's, and offline)")
    ap.add_argument("--only", choices=CHECKS, help="run one check")
    ap.add_argument("--vision-only", action="store_true", help="the same as --only vision")
    ap.add_argument("--out", type=Path, default=Path("bench/results/eval.json"))
    ap.add_argument("--port", type=int, default=8798)
    args = ap.parse_args(argv)
    checks = ["vision"] if args.vision_only else [args.only] if args.only else list(CHECKS)
    started = time.monotonic()
    if args.url:
        results = run_checks(http_url(args.url), checks, args.asr)
    else:
        with server(args.port, ["--asr-model", args.asr, "--log-level", "WARNING"]) as url:
            results = run_checks(url, checks, args.asr)
    report = {"machine": machine(), "seconds": round(time.monotonic() - started, 1),
              "settings": {"asr": args.asr, "url": args.url or "started here",
                           "checks": checks, "echo": {"gain_db": ECHO_GAIN_DB,
                                                      "delay_ms": ECHO_DELAY_MS,
                                                      "mic_noise_dbfs": MIC_NOISE_DBFS},
                           "session": TEXT_ONLY, "chunk_ms": CHUNK_MS},
              "checks": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
