"""The voice widget and the kiosk page in real headless Chromium, against a real server.

Chromium's fake microphone plays a WAV spoken by piper (once, from when capture starts);
its fake camera shows a solid-colour Y4M. Playwright drives it from a worker thread so the
server keeps the test's event loop to itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http.client
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from client.realtime import Float32, silence, write_wav
from server.edge.app import App
from server.runtime.engines import Engines
from tests.conftest import ANSWERED, TEST_SETTINGS, words
from tests.e2e.test_e2e import RecordingResponder
from tests.support.browser_helpers import (
    chromium,
    chromium_args,
    in_browser_thread,
    other_site,
    write_y4m,
)

Speak = Callable[..., Float32]
MIC_RATE = 48000
START = "voxwire-widget button.start"


def mic_file(path: Path, speak: Speak, *parts: str | float) -> Path:
    """A fake microphone recording: spoken text and pauses (in seconds), in order."""
    pieces = [silence(int(p * 1000), MIC_RATE) if isinstance(p, float)
              else speak(p, rate=MIC_RATE) for p in parts]
    return write_wav(path, np.concatenate(pieces), MIC_RATE)


def fetch(url: str, path: str, headers: dict[str, str] | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    """GET a raw path (sent as is, no normalisation)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def event_types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def ms(value: float) -> str:
    """Milliseconds as the widget shows them (JavaScript's Math.round)."""
    return f"{math.floor(value + 0.5)} ms"


async def test_static_files_have_types_etags_and_no_traversal(server_url: str) -> None:
    html, js = "text/html; charset=utf-8", "text/javascript; charset=utf-8"
    for path, kind in [("/", html), ("/index.html", html), ("/kiosk", html),
                       ("/voxwire.js", js), ("/voxwire-worklet.js", js)]:
        status, headers, body = await asyncio.to_thread(fetch, server_url, path)
        assert (status, headers["Content-Type"]) == (200, kind), path
        assert headers["Cache-Control"] == "no-cache"
        assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
        assert int(headers["Content-Length"]) == len(body)
        again = await asyncio.to_thread(fetch, server_url, path,
                                        {"If-None-Match": headers["ETag"]})
        assert (again[0], again[2], again[1]["ETag"]) == (304, b"", headers["ETag"])
        stale = await asyncio.to_thread(fetch, server_url, path, {"If-None-Match": '"old"'})
        assert (stale[0], stale[2]) == (200, body)
    page = (await asyncio.to_thread(fetch, server_url, "/"))[2].decode()
    assert "/v1/realtime" in page and '<script src="/voxwire.js"></script>' in page
    for path in ("/../server/app.py", "/%2e%2e/app.py", "/static/voxwire.js",
                 "/..%2fapp.py", "/__init__.py", "/nope.js"):
        status, _, _ = await asyncio.to_thread(fetch, server_url, path)
        assert status == 404, path


async def test_the_embedded_widget_answers_a_spoken_question(
        server_url: str, speak: Speak, tmp_path: Path) -> None:
    question = "Could you tell me what the weather is like in London today?"
    wav = mic_file(tmp_path / "mic.wav", speak, 1.0, question, 3.0)
    # Any site can embed the widget: here a page from another origin, with the one-line snippet.
    snippet = (f'<!doctype html><html><head><link rel="icon" href="data:,"></head><body>'
               f'<h1>A shop</h1><script src="{server_url}/voxwire.js"></script>'
               f"<voxwire-widget></voxwire-widget></body></html>")

    async def run() -> tuple[dict[str, Any], str, str, str, list[str]]:
        with other_site(snippet) as site:
            async with chromium(chromium_args(wav)) as browser:
                page = browser.page
                await page.goto(site)
                assert await page.locator("voxwire-widget button.mute").is_disabled()
                await page.locator(START).click()
                await browser.wait_for("state.metrics !== null", 45)
                await browser.wait_for("state.playedSeconds > 1", 20)
                await page.screenshot(path=tmp_path / "widget.png")
                state = await browser.state()
                mute = page.locator("voxwire-widget button.mute")
                await mute.click()
                muted = (await browser.state())["muted"], await mute.get_attribute("aria-pressed")
                await mute.click()
                assert muted == (True, "true") and not (await browser.state())["muted"]
                log = await browser.shadow_text(".log")
                latency = await browser.shadow_text(".latency")
                # The server's own page embeds the same widget.
                await page.goto(f"{server_url}/")
                index = await browser.shadow_text(".card")
                await page.screenshot(path=tmp_path / "index.png")
                return state, log, latency, index, browser.problems

    state, log, latency, index, problems = await in_browser_thread(run)
    assert not problems
    assert not state["errors"] and state["connected"]
    # WebRTC by default, across origins (the offer's CORS), and the panel says so.
    assert (state["transport"], state["fallback"]) == ("webrtc", None)
    assert state["metrics"]["transport"] == "webrtc"
    assert re.search(r"Transport\s+WebRTC", latency), latency
    assert [words(t) for t in state["transcripts"]] == [words(question)]
    assert state["transcripts"][0] in log  # the page showed what it heard
    answer = state["answers"][0]
    assert words(answer) and answer in log  # ... and the answer's text
    assert state["playedSeconds"] > 1  # it played the answer
    assert state["contextTime"] > state["playedSeconds"]
    stages = state["metrics"]["stages_ms"]
    assert stages["voice_to_voice"] > stages["endpoint"] > 0
    assert re.search(rf"\b{ms(stages['voice_to_voice'])}\s+voice-to-voice", latency), latency
    for stage in ("asr", "llm_first_token", "tts_first_audio"):
        assert ms(stages[stage]) in latency, (stage, latency)
    assert "Start" in index


async def barge_in(server_url: str, wav: Path, transport: str, screenshot: Path | None = None
                   ) -> tuple[dict[str, Any], bool, list[dict[str, Any]], list[str]]:
    """The widget on ``transport`` asking for a long story and speaking over it: its state,
    whether it was still playing once it saw the cut, the events it saw, its problems."""
    async with chromium(chromium_args(wav)) as browser:
        page = browser.page
        await page.goto(f"{server_url}/")
        await page.locator("voxwire-widget").evaluate(
            "(el, transport) => { el.setAttribute('instructions', 'Tell very long, detailed "
            "stories.'); el.setAttribute('transport', transport); }", transport)
        await page.locator(START).click()
        await browser.wait_for("state.interruptions.length > 0", 45)
        playing = bool(await page.evaluate("document.querySelector('voxwire-widget').playing"))
        await browser.wait_for("state.transcripts.length >= 2", 30)
        await browser.wait_for("state.answers.length >= 2", 30)
        if screenshot is not None:
            await page.screenshot(path=screenshot)
        return await browser.state(), playing, await browser.events(), browser.problems


async def test_speaking_over_the_answer_stops_it_and_truncates_over_the_websocket(
        server_url: str, speak: Speak, tmp_path: Path) -> None:
    story = "Tell me a long story about a dragon."
    wav = mic_file(tmp_path / "mic.wav", speak, 1.0, story, 4.0, "Stop, stop. What time is it?",
                   3.0)

    state, playing_after_cut, events, problems = await in_browser_thread(
        lambda: barge_in(server_url, wav, "websocket", tmp_path / "barge-in.png"))
    assert not problems and not state["errors"]
    names = event_types(events)
    first_item = next(e["item_id"] for e in events if e["type"] == "response.output_audio.delta")
    cut = state["interruptions"][0]
    assert cut["itemId"] == first_item
    assert not playing_after_cut  # the speakers went quiet at once
    # The listener heard part of the story, not all of it.
    first_metrics = next(e for e in events if e["type"] == "voxwire.turn.metrics")
    assert 0 < cut["audioEndMs"] < first_metrics["audio_ms"]
    # Speech over the answer: the server cancelled it if it was still going once the
    # speech was confirmed (barge_in_ms of it); an answer whose last audio was already
    # sent in that window completes, and the truncate below cuts what was not heard.
    second_speech = [i for i, n in enumerate(names)
                     if n == "input_audio_buffer.speech_started"][1]
    first_done = names.index("response.done")
    if first_done > second_speech and events[first_done]["status"] != "cancelled":
        assert events[first_done]["status"] in ANSWERED
        assert events[first_done]["at"] - events[second_speech]["at"] < 2000
    # The widget told the server how much was heard; the item now holds only that.
    truncated = [e for e in events if e["type"] == "conversation.item.truncated"]
    assert [(e["item_id"], e["audio_end_ms"]) for e in truncated] == \
        [(first_item, cut["audioEndMs"])]
    sent = next(e["transcript"] for e in events
                if e["type"] == "response.output_audio_transcript.done")
    heard = state["answers"][0]
    assert len(words(heard)) < len(words(sent)) and sent.startswith(heard)
    assert "time" in words(state["transcripts"][1])  # then the new question got its answer
    assert state["answers"][1]
    assert state["transport"] == "websocket"


async def test_over_webrtc_the_server_cuts_the_answer_off_and_truncates_it(
        server_url: str, speak: Speak, tmp_path: Path) -> None:
    story = "Tell me a long story about a dragon."
    # The interruption in another voice than the question's, 1.5 s into the answer.
    wav = write_wav(tmp_path / "mic.wav", np.concatenate([
        silence(1000, MIC_RATE), speak(story, rate=MIC_RATE), silence(2500, MIC_RATE),
        speak("Stop, stop. What time is it?", voice="espeak", rate=MIC_RATE),
        silence(3000, MIC_RATE)]), MIC_RATE)

    state, playing_after_cut, events, problems = await in_browser_thread(
        lambda: barge_in(server_url, wav, "webrtc"))
    assert not problems and not state["errors"]
    assert state["transport"] == "webrtc"
    names = event_types(events)
    assert "response.output_audio.delta" not in names  # the answer came on the track
    started = names.index("output_audio_buffer.started")
    cleared = names.index("output_audio_buffer.cleared")
    assert started < names.index("input_audio_buffer.speech_started", started) < cleared
    assert not playing_after_cut
    # The server truncated the item to what its track had played; the widget showed that.
    truncated = [e for e in events if e["type"] == "conversation.item.truncated"]
    assert len(truncated) == 1 and names.index("conversation.item.truncated") > cleared
    cut = state["interruptions"][0]
    assert (cut["itemId"], cut["audioEndMs"]) == (truncated[0]["item_id"],
                                                  truncated[0]["audio_end_ms"])
    first_metrics = next(e for e in events if e["type"] == "voxwire.turn.metrics")
    assert 0 < cut["audioEndMs"] < first_metrics["audio_ms"]
    # What the widget counted as played is what the server says was played, give or take
    # the events' trip and the jitter buffer.
    assert abs(state["playedSeconds"] - cut["audioEndMs"] / 1000) < 0.5, state["playedSeconds"]
    sent = next(e["transcript"] for e in events
                if e["type"] == "response.output_audio_transcript.done")
    heard = state["answers"][0]
    assert len(words(heard)) < len(words(sent)) and sent.startswith(heard)
    assert "time" in words(state["transcripts"][1])
    assert state["answers"][1]


async def test_the_widget_falls_back_to_the_websocket_when_webrtc_is_refused(
        engines: Engines, speak: Speak, tmp_path: Path) -> None:
    question = "What is the capital of Italy?"
    wav = mic_file(tmp_path / "mic.wav", speak, 1.0, question, 3.0)

    async def run(url: str) -> tuple[dict[str, Any], str, list[str]]:
        async with chromium(chromium_args(wav)) as browser:
            page = browser.page
            await page.goto(f"{url}/")
            await page.locator(START).click()
            await browser.wait_for("state.metrics !== null", 45)
            latency = await browser.shadow_text(".latency")
            return await browser.state(), latency, browser.problems

    app = App(dataclasses.replace(TEST_SETTINGS, no_webrtc=True), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        state, latency, problems = await in_browser_thread(lambda: run(f"http://{host}:{port}"))
    # Chromium logs the refused offer; nothing else goes wrong.
    refused = "console: Failed to load resource: the server responded with a status of 404"
    assert [p for p in problems if not p.startswith(refused)] == [], problems
    assert len(problems) == 1
    assert state["transport"] == "websocket" and not state["errors"]
    assert "404" in state["fallback"] and "--no-webrtc" in state["fallback"]
    assert [words(t) for t in state["transcripts"]] == [words(question)]
    assert state["metrics"]["transport"] == "websocket"
    assert re.search(r"Transport\s+WebSocket", latency), latency


async def test_the_kiosk_sees_hears_reconnects_and_idles(
        engines: Engines, speak: Speak, tmp_path: Path) -> None:
    question, later = "Can you describe what you see?", "Hello there."
    wav = mic_file(tmp_path / "mic.wav", speak, 1.0, question, 14.0, later, 3.0)
    y4m = write_y4m(tmp_path / "camera.y4m")
    llm = RecordingResponder(engines.responder)
    recording = dataclasses.replace(engines, responder=llm)
    first_turn = threading.Event()

    async def run(url: str) -> tuple[dict[str, Any], str, list[dict[str, Any]], list[str]]:
        try:
            return await kiosk(url)
        finally:
            first_turn.set()

    async def kiosk(url: str) -> tuple[dict[str, Any], str, list[dict[str, Any]], list[str]]:
        async with chromium(chromium_args(wav, y4m), width=1280, height=720) as browser:
            page = browser.page
            instructions = quote("Answer in one short sentence.")
            await page.goto(f"{url}/kiosk?idle=2&instructions={instructions}")
            await browser.wait_for("state.metrics !== null", 45)
            heard = await browser.shadow_text(".k-heard")
            await page.screenshot(path=tmp_path / "kiosk.png")
            first_turn.set()  # the server restarts now
            await browser.wait_for("state.idle", 40)
            await page.screenshot(path=tmp_path / "kiosk-idle.png")
            await browser.wait_for("!state.idle", 30)  # the next speech wakes it
            await browser.wait_for(
                "state.transcripts.length >= 2 && state.answers.length >= 2", 30)
            return await browser.state(), heard, await browser.events(), browser.problems

    history = dataclasses.replace(TEST_SETTINGS, store=f"sqlite:///{tmp_path}/history.db")
    app = App(history, engines=recording)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        browser = asyncio.create_task(in_browser_thread(lambda: run(f"http://{host}:{port}")))
        turn = asyncio.create_task(asyncio.to_thread(first_turn.wait, 60))
        await asyncio.wait({browser, turn}, return_when=asyncio.FIRST_COMPLETED)
    # The server went away mid-answer; a new one takes its place on the same port, with
    # the same history.
    again = App(dataclasses.replace(history, port=port), engines=recording)
    async with again.start_server():
        state, heard, events, problems = await browser
    await turn
    for each in (app, again):
        if each.store is not None:
            each.store.close()

    # Chromium logs each refused reconnection while the server is down; nothing else.
    refused = re.compile(r"console: (WebSocket connection to '\S+/v1/realtime' failed"
                         r"|Failed to load resource: net::ERR_CONNECTION_REFUSED)")
    assert not [p for p in problems if not refused.match(p)], problems
    assert not state["errors"]
    assert state["transport"] == "webrtc"  # frames went on the data channel
    assert [words(t) for t in state["transcripts"]] == [words(question), words(later)]
    assert words(heard) == words(question)
    assert state["framesSent"] >= 2
    # The camera frame reached the model with the spoken question: it says it cannot see.
    first = [m for m in llm.prompts[0] if m.role == "user"]
    assert words(first[-1].content) == words(question) and first[-1].images
    assert state["answers"][0].startswith("I can't see images")
    # Three sessions: the first, the same one again after the restart (the kiosk resumed
    # it), and a fresh one after the idle screen.
    assert event_types(events).count("session.created") == 3
    assert state["resumed"] == 1
    last = llm.prompts[-1]
    assert [m.role for m in last] == ["system", "user"] and last[-1].images
    assert words(last[-1].content) == words(later)


async def test_the_kiosk_asks_for_a_tap_when_sound_is_blocked(
        server_url: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "mic.wav", silence(500, MIC_RATE), MIC_RATE)
    args = [a for a in chromium_args(wav) if not a.startswith("--autoplay-policy")]
    audio_state = "document.querySelector('voxwire-widget').client.ctx.state"

    async def run() -> tuple[str, str, list[str]]:
        async with chromium(args) as browser:
            page = browser.page
            await page.goto(f"{server_url}/kiosk")
            tap = page.locator("voxwire-widget .tap")
            await tap.wait_for(state="visible", timeout=10000)
            before = await page.evaluate(audio_state)
            await tap.click()
            await tap.wait_for(state="hidden", timeout=5000)
            await browser.wait_for("state.connected", 10)
            return before, await page.evaluate(audio_state), browser.problems

    before, after, problems = await in_browser_thread(run)
    assert (before, after) == ("suspended", "running")
    assert not problems
