"""Voice-to-voice latency through the real server, driven by the `openai` SDK.

For each Whisper model: start `voxwire serve` in its own process, stream spoken
questions at real-time pace (one fresh session each, so every prompt is the same as
in the direct run), and collect the server's per-turn metrics plus the client's own
clock. The same questions go over WebRTC too (`bench.webrtc`, which says what its clock
measures), alternating with the WebSocket question by question, and the server's CPU per
call is measured for each transport. Then call the same models directly, without the
server, on the same audio and prompts: the difference between the two is the server's own
overhead.

On the WebSocket, `client_v2v_ms` runs from the moment the end of the speech was spoken,
on the sender's pacing clock (the first chunk's send time plus the speech's end in the
fixture), to the arrival of the first `response.output_audio.delta`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata as md
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from bench.fixtures import RATE, VOICES, speech_end
from client.realtime import Float32, resample, send_audio, silence
from server.audio import RATE as SERVER_RATE

# A turn answered in full: `incomplete` is an answer the token cap (max_output_tokens) ended.
ANSWERED = ("completed", "incomplete")
QUESTIONS = [
    "What is the capital of France?",
    "Could you tell me what the weather is like in London today?",
    "How many days are there in a week?",
    "Set a timer for ten minutes.",
    "What is your favourite colour?",
    "Tell me something interesting about the moon.",
    "Turn on the kitchen lights please.",
    "How do I make a cup of tea?",
    "What time is it in Tokyo right now?",
    "Can you recommend a good book to read?",
    "Remind me to call my mother tomorrow.",
    "Why is the sky blue?",
]
VOICE_ORDER = ("piper", "espeak")  # every question in each voice: 24 turns
SILENCE_MS = 500  # the server's default end-of-turn silence
METRICS = {"voxwire_metrics": "1"}  # the query that asks for `voxwire.turn.metrics` events
LEAD_MS, TAIL_MS = 400, 1500


@dataclass
class Fixture:
    text: str
    audio: Float32  # 24 kHz, lead-in silence + speech + trailing silence
    speech_end_s: float  # where speech really ends, seconds from the start of `audio`


def make_fixtures(questions: list[str], voice: str = "piper") -> list[Fixture]:
    """Each text spoken by `voice` ("piper" or "espeak"), with silence before and after."""
    out = []
    for text in questions:
        speech = VOICES[voice](text, RATE)
        audio = np.concatenate([silence(LEAD_MS, RATE), speech, silence(TAIL_MS, RATE)])
        out.append(Fixture(text, audio, LEAD_MS / 1000 + speech_end(speech, RATE)))
    return out


# ---------------------------------------------------------------------- through the server


async def one_turn(url: str, fx: Fixture, metrics_event: str = "voxwire.turn.metrics"
                   ) -> dict[str, Any]:
    """One spoken question in a fresh session; the turn ends with the server's `metrics_event`
    (its own stage breakdown: `stages_ms`, `status`)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="bench", base_url=f"{url}/v1")
    async with client.realtime.connect(model="voxwire", extra_query=METRICS) as typed_conn:
        conn: Any = typed_conn  # our extension events are not in the SDK's event union
        await conn.session.update(session={"type": "realtime", "temperature": 0.0})
        return await turn_on(conn, fx, metrics_event)


async def turn_on(conn: Any, fx: Fixture, metrics_event: str = "voxwire.turn.metrics"
                  ) -> dict[str, Any]:
    """One spoken question on an open SDK connection (`conn`), as in `one_turn`."""
    start = time.monotonic()
    sender = asyncio.create_task(send_audio(conn, fx.audio, RATE))
    first_audio: float | None = None
    stopped: float | None = None
    metrics: dict[str, Any] = {}
    transcript = ""
    try:
        async for ev in conn:
            if ev.type == "input_audio_buffer.speech_stopped" and stopped is None:
                stopped = time.monotonic()
            elif ev.type == "response.output_audio.delta" and first_audio is None:
                first_audio = time.monotonic()
            elif ev.type == "conversation.item.input_audio_transcription.completed":
                transcript = ev.transcript
            elif ev.type == metrics_event:
                metrics = ev.model_dump()
                break
        await sender
    finally:  # a turn cut short (cancelled, the connection lost) stops sending too
        sender.cancel()
    # Pacing is anchored at `start`, so the speech end left the client at this moment.
    spoken_end = start + fx.speech_end_s
    return {"question": fx.text, "transcript": transcript, "status": metrics.get("status"),
            "client_v2v_ms": round((first_audio - spoken_end) * 1000, 1) if first_audio else None,
            "stages_ms": metrics.get("stages_ms", {}), "compute_ms": metrics.get("compute_ms", {}),
            "overhead_ms": metrics.get("overhead_ms"),
            "endpoint_ms": round((stopped - spoken_end) * 1000, 1) if stopped else None,
            # How much later than the configured silence the server declared the turn over.
            "endpoint_lag_ms": round((stopped - spoken_end) * 1000 - SILENCE_MS, 1)
            if stopped else None}


def wait_healthy(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{url}/healthz", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError("server did not become healthy")


@contextlib.contextmanager
def server(port: int, args: list[str]) -> Iterator[str]:
    with server_process(port, args) as (url, _pid):
        yield url


@contextlib.contextmanager
def server_process(port: int, args: list[str]) -> Iterator[tuple[str, int]]:
    """`voxwire serve` in its own process (no history kept); its URL and process id."""
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--store", "none",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def through_server(url: str, fixtures: list[Fixture], warmup: int = 1,
                         transports: tuple[str, ...] = ("websocket",)
                         ) -> dict[str, list[dict[str, Any]]]:
    """Every fixture over each transport, one fresh session (or call) each, the transports
    taking turns question by question, so that a machine that drifts moves both rows."""
    from bench import webrtc

    doors = {"websocket": one_turn, "webrtc": webrtc.turn}
    for fx in fixtures[:warmup]:
        for transport in transports:
            await doors[transport](url, fx)
    turns: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    for fx in fixtures:
        for transport in transports:
            turns[transport].append(await doors[transport](url, fx))
    return turns


# ---------------------------------------------------------------------- models alone


def direct(fixtures: list[Fixture], asr_model: str, asr_mode: str, device: str
           ) -> list[dict[str, float]]:
    """The same models, the same audio and prompts, no server: compute time only."""
    from server.response.text import SentenceSplitter
    from server.runtime.config import Settings
    from server.runtime.engines import Engines
    from server.stages import ChatMessage

    settings = Settings(asr_model=asr_model, asr_mode=cast(Any, asr_mode),
                        device=cast(Any, device))
    eng = Engines.load(settings)
    assert eng.llm is not None, "the direct run measures the embedded model"
    out = []
    try:
        for n, fx in enumerate([fixtures[0], *fixtures]):  # the first one warms up
            cut = int((fx.speech_end_s + 0.2) * RATE)
            start = int((LEAD_MS - 300) / 1000 * RATE)
            utterance = resample(fx.audio[start:cut], RATE, SERVER_RATE)
            t0 = time.perf_counter()
            text = eng.asr.transcribe(utterance).text
            t1 = time.perf_counter()
            messages = [ChatMessage("system", settings.instructions), ChatMessage("user", text)]
            splitter = SentenceSplitter(first_clause_words=settings.first_clause_words,
                                        first_max_words=settings.first_max_words)
            first_token = first_piece = None
            piece = ""
            stop = threading.Event()
            for delta in eng.llm.stream(messages, temperature=0.0,
                                        max_tokens=settings.max_output_tokens, stop=stop):
                first_token = first_token or time.perf_counter()
                pieces = splitter.feed(delta)
                if pieces:
                    first_piece, piece = time.perf_counter(), pieces[0]
                    break
            if first_piece is None:
                first_piece, piece = time.perf_counter(), " ".join(splitter.flush())
            t3 = time.perf_counter()
            next(iter(eng.tts.synthesize(piece, eng.voice, threading.Event())))
            t4 = time.perf_counter()
            if n:
                out.append({"asr": (t1 - t0) * 1000,
                            "llm_first_token": ((first_token or t3) - t1) * 1000,
                            "first_sentence": (first_piece - (first_token or t3)) * 1000,
                            "tts_first_audio": (t4 - t3) * 1000,
                            # After the turn: its time to first token with llama.cpp's
                            # cache emptied, and holding the system prompt only.
                            "llm_ttft_cold": first_token_ms(eng.llm, settings, fx.text, True),
                            "llm_ttft_warm": first_token_ms(eng.llm, settings, fx.text, False)})
    finally:
        eng.close()
    return out


def first_token_ms(llm: Any, settings: Any, question: str, cold: bool) -> float:
    """Time to the first token of an answer to `question` after the system prompt, with
    llama.cpp's prefix cache emptied first (cold) or holding the system prompt (warm)."""
    from server.stages import ChatMessage

    if cold:
        llm.llm.reset()
    else:  # put the system prompt (and nothing of this question) in the cache first
        list(llm.stream([ChatMessage("system", settings.instructions),
                         ChatMessage("user", "Hello.")], temperature=0.0, max_tokens=1,
                        stop=threading.Event()))
    t0 = time.perf_counter()
    stream = llm.stream([ChatMessage("system", settings.instructions),
                         ChatMessage("user", question)], temperature=0.0, max_tokens=2,
                        stop=threading.Event())
    next(iter(stream), None)
    ms = (time.perf_counter() - t0) * 1000
    for _ in stream:
        pass
    return ms


# ---------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(turns: list[dict[str, Any]], alone: list[dict[str, float]]) -> dict[str, Any]:
    stages = ["endpoint", "asr", "llm_first_token", "first_sentence", "tts_first_audio", "held",
              "send", "voice_to_voice"]
    table: dict[str, Any] = {}
    for stage in stages:
        vals = [t["stages_ms"][stage] for t in turns if stage in t["stages_ms"]]
        table[stage] = {"p50": pct(vals, 50), "p95": pct(vals, 95), "max": max(vals, default=0)}
    client = [t["client_v2v_ms"] for t in turns if t["client_v2v_ms"] is not None]
    table["client_voice_to_voice"] = {"p50": pct(client, 50), "p95": pct(client, 95),
                                      "max": max(client, default=0)}
    compute = {k: statistics.median(a[k] for a in alone) for k in alone[0]} if alone else {}
    # Time after the end of turn that the server spends beyond the models called alone:
    after_turn = [t["stages_ms"]["voice_to_voice"] - t["stages_ms"]["endpoint"] for t in turns
                  if "voice_to_voice" in t["stages_ms"]]
    chain = ("asr", "llm_first_token", "first_sentence", "tts_first_audio")
    beyond_alone = (statistics.median(after_turn) - sum(compute[k] for k in chain)
                    if compute else None)
    # ... of which the server's own software (hand-offs, queues, encoding, socket) is:
    own = [t["overhead_ms"] for t in turns if t.get("overhead_ms") is not None]
    started = [t["started_ms"] for t in turns if t.get("started_ms") is not None]
    if started:  # over WebRTC: the server's output_audio_buffer.started, on the client's clock
        table["client_buffer_started"] = {"p50": pct(started, 50), "p95": pct(started, 95),
                                          "max": max(started)}
    return {"stages_ms": table, "direct_compute_ms": compute,
            "beyond_alone_ms": beyond_alone,
            "server_overhead_ms": statistics.median(own) if own else None,
            "server_overhead_p95_ms": pct(own, 95) if own else None,
            "turns": len(turns), "completed": sum(t["status"] in ANSWERED for t in turns)}


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {p: md.version(p) for p in ("ctranslate2", "faster-whisper", "llama-cpp-python",
                                           "piper-tts", "onnxruntime", "openai")}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def render(results: dict[str, Any]) -> str:
    lines = []
    for name, res in results["runs"].items():
        lines.append(f"\n## {name}: {res['completed']}/{res['turns']} turns completed")
        lines.append(f"{'stage':24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'alone ms':>9}")
        for stage, v in res["stages_ms"].items():
            alone = res["direct_compute_ms"].get(stage)
            alone_s = f"{alone:9.0f}" if alone is not None else f"{'':9}"
            lines.append(f"{stage:24} {v['p50']:8.0f} {v['p95']:8.0f} {v['max']:8.0f} {alone_s}")
        if res["beyond_alone_ms"] is not None:
            lines.append(f"end of turn to first audio, beyond the models alone (median): "
                         f"{res['beyond_alone_ms']:.0f} ms")
        if res["server_overhead_ms"] is not None:
            lines.append(f"of which outside any model call (hand-offs, queues, encoding, socket):"
                         f" p50 {res['server_overhead_ms']:.1f} ms,"
                         f" p95 {res['server_overhead_p95_ms']:.1f} ms")
    for name, cost in results.get("cpu_per_call", {}).items():
        rates = cost["cpu_s_per_s"]
        lines.append(f"\n## {name}: server CPU seconds per second of call "
                     f"({cost['window_s']:g} s windows, nobody connected: "
                     f"{cost['nobody_cpu_s_per_s']:.3f} subtracted)")
        for state in ("idle", "talking"):
            lines.append(f"{state:8} websocket {rates[f'websocket_{state}']:.3f}  webrtc "
                         f"{rates[f'webrtc_{state}']:.3f}  webrtc - websocket "
                         f"{cost['webrtc_over_websocket'][state]:+.3f}")
    return "\n".join(lines)


def run(asr_models: list[str], asr_mode: str, device: str, questions: int, port: int,
        url: str | None, out: Path, transports: tuple[str, ...] = ("websocket", "webrtc"),
        cost_window_s: float = 15.0) -> dict[str, Any]:
    """Each model through one server, over each of ``transports``; then, with a server of
    its own (not ``url``) and WebRTC among them, the server's CPU per call
    (``cost_window_s`` a window; 0 leaves it out)."""
    from bench import webrtc

    fixtures = [fx for voice in VOICE_ORDER for fx in make_fixtures(QUESTIONS[:questions], voice)]
    results: dict[str, Any] = {"machine": machine(), "settings": {
        "asr_mode": asr_mode, "device": device, "questions": questions,
        "turns": len(fixtures), "voices": list(VOICE_ORDER), "transports": list(transports),
        "pacing": "real time, 40 ms chunks (WebSocket) or 20 ms Opus frames (WebRTC), one "
                  "fresh session per question"}, "runs": {}}
    for model in asr_models:
        args = ["--asr-model", model, "--asr-mode", asr_mode, "--device", device,
                "--log-level", "WARNING"]
        name = f"{model} ({asr_mode}, {device})"
        cost = None
        if url:
            by = asyncio.run(through_server(url, fixtures, transports=transports))
        else:
            with server_process(port, args) as (live, pid):
                by = asyncio.run(through_server(live, fixtures, transports=transports))
                if "webrtc" in transports and cost_window_s > 0:
                    cost = asyncio.run(webrtc.cpu_per_call(live, pid, fixtures[:4],
                                                           cost_window_s))
        alone = direct(fixtures, model, asr_mode, device)
        for transport, turns in by.items():
            summary = summarize(turns, alone)
            summary["transport"] = transport
            summary["raw"] = turns
            results["runs"][name if transport == "websocket" else f"{name} over WebRTC"] = summary
        if cost is not None:
            results.setdefault("cpu_per_call", {})[name] = cost
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results
