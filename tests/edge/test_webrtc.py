"""The WebRTC door, with a real aiortc client over loopback: the offer and answer, a spoken
turn heard back through Opus, barge-in, tokens and refusals, and a call whose ICE never
completes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioice.ice
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from bench import rtc_client
from bench.rtc_client import FRAME, RATE, Client, Reply, peer, voiced
from client.realtime import Float32, resample
from server.edge.app import App
from server.edge.webrtc import MIC_PREFETCH, TAIL_FRAMES, Clip, Playback, candidate_addresses
from server.runtime.engines import Engines
from tests.conftest import ANSWERED, TEST_SETTINGS, padded, words
from tests.support import wire_check

KEY = "sk-voxwire-rtc"
Speak = Callable[..., Float32]


@contextlib.asynccontextmanager
async def serving(engines: Engines, **changes: Any) -> AsyncIterator[tuple[App, str]]:
    app = App(TEST_SETTINGS.replace(**{"api_keys": KEY, **changes}), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        try:
            yield app, f"http://{host}:{port}"
        finally:
            await app.webrtc.close_all()


async def post(url: str, body: bytes, key: str | None = KEY,
               content_type: str = "application/sdp") -> Reply:
    return await rtc_client.post(url, body, key, content_type)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def offer(pc: RTCPeerConnection) -> str:
    """The offer, its candidates on 127.0.0.1 as the server's (aioice leaves loopback out)."""
    sdp = await rtc_client.offer(pc)
    assert "a=candidate:" in sdp and " 127.0.0.1 " in sdp
    return sdp


async def connect(base: str, key: str | None = KEY, session: dict[str, Any] | None = None,
                  path: str = "/v1/realtime/calls") -> tuple[Client, Reply]:
    """Call the server: the offer posted, the answer applied, the data channel open; every
    event checked against the SDK's models of the dialect."""
    def check(data: str | bytes) -> list[str]:
        return wire_check.problems(data, "beta" if "?" in path else "ga", extensions=True)

    return await rtc_client.connect(base, key, session, path, check)


def webrtc_sessions(engines: Engines) -> int:
    """The `/metrics` count of sessions opened by WebRTC calls (the engines are shared)."""
    for line in engines.registry.render().splitlines():
        if line.startswith("voxwire_sessions_webrtc_total "):
            return int(float(line.split()[1]))
    return 0


def answer_span(client: Client, since: float, until: float) -> float:
    """Milliseconds from the first voiced frame heard to the last, between two times."""
    times = [t for t, s in client.heard if since <= t < until and voiced(s)]
    if not times:
        return 0.0
    first = min(times)
    return sum(len(s) for t, s in client.heard if first <= t <= max(times)) * 1000 / RATE


# ---------------------------------------------------------------------------- the tests


async def test_a_spoken_turn_over_webrtc(engines: Engines, speak: Speak) -> None:
    question = "Could you tell me what the weather is like in London today?"
    calls_before = webrtc_sessions(engines)
    async with serving(engines) as (app, base):
        client, (status, headers, answer) = await connect(base)
        try:
            assert status == 201 and headers["Content-Type"] == "application/sdp"
            # The server listens on 127.0.0.1: it offers media there only.
            candidates = [line for line in answer.decode().splitlines()
                          if line.startswith("a=candidate:")]
            assert candidates and all(" 127.0.0.1 " in line for line in candidates)
            call_id = headers["Location"].removeprefix("/v1/realtime/calls/")
            assert call_id in app.webrtc.calls
            # The microphone's packets are not held back for smooth playout.
            receiver = app.webrtc.calls[call_id].pc.getTransceivers()[0].receiver
            assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == MIC_PREFETCH
            client.send({"type": "session.update", "session": {
                "type": "realtime", "temperature": 0.0, "voxwire": {"metrics": True}}})
            client.mic.say(padded(speak(question, rate=RATE), RATE, 300, 1200))
            events = await client.until(lambda e: e["type"] == "output_audio_buffer.stopped")
            await client.until(lambda e: e["type"] == "voxwire.turn.metrics", 10)
        finally:
            await client.close()
        await asyncio.sleep(0.5)
        assert not app.sessions and not app.webrtc.calls  # the peer left: all closed
    names = types(client.events)
    order = ["session.created", "input_audio_buffer.speech_started",
             "input_audio_buffer.speech_stopped",
             "conversation.item.input_audio_transcription.completed", "response.created",
             "output_audio_buffer.started", "response.output_audio.done", "response.done",
             "output_audio_buffer.stopped"]
    positions = [names.index(n) for n in order]
    assert positions == sorted(positions), names
    assert "response.output_audio.delta" not in names  # audio goes on the track only
    assert client.problems == []
    final = next(e for e in events
                 if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert words(final["transcript"]) == words(question)
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] in ANSWERED
    said = done["response"]["output"][0]["content"][0]["transcript"]
    # The answer came through Opus and Whisper hears the answer's words in it.
    started = next(t for t, s in client.heard if voiced(s))
    answer = client.audio(since=started)
    assert len(answer) > RATE // 2
    heard = engines.asr.transcribe(resample(answer, RATE, 16000)).text
    overlap = len(set(words(heard)) & set(words(said))) / max(len(set(words(said))), 1)
    assert overlap >= 0.5, (heard, said)
    metrics = next(e for e in client.events if e["type"] == "voxwire.turn.metrics")
    assert metrics["transport"] == "webrtc"
    assert metrics["stages_ms"]["voice_to_voice"] >= metrics["stages_ms"]["endpoint"] > 0
    assert webrtc_sessions(engines) == calls_before + 1


async def test_barge_in_stops_the_track_and_truncates_to_what_was_played(
        engines: Engines, speak: Speak) -> None:
    async with serving(engines) as (_, base):
        client, (status, _, _) = await connect(base)
        try:
            assert status == 201
            client.send({"type": "session.update", "session": {
                "type": "realtime", "instructions": "Tell very long, detailed stories."}})
            client.mic.say(padded(speak("Tell me a long story about a brave dragon.",
                                        rate=RATE), RATE, 300, 600))
            await client.until(lambda e: e["type"] == "output_audio_buffer.started")
            await asyncio.sleep(1.5)  # some of the answer is played
            played = client.mic.say(padded(speak("Stop, stop. What time is it?", rate=RATE),
                                            RATE, 0, 1200))
            start = len(client.events)
            rest = await client.until(lambda e: e["type"] == "output_audio_buffer.cleared",
                                      start=start)
            cleared_at = client.times[start + len(rest) - 1]
            truncated = await client.until(
                lambda e: e["type"] == "conversation.item.truncated", 10, start)
            await asyncio.sleep(max(played, 0.5))
            await client.until(lambda e: e["type"] == "response.done"
                               and e["response"]["status"] in ANSWERED, 60, start)
        finally:
            await client.close()
    # The answer was cancelled if it was still being made when the speech came; a fast
    # machine may have made all of it by then, and only its playback is left to cut.
    cancelled = next(e for e in client.events if e["type"] == "response.done")
    assert (cancelled["response"]["status"] == "cancelled"
            or client.events.index(cancelled) < start + len(rest)), cancelled["response"]
    second = next((client.times[i] for i in range(start, len(client.events))
                   if client.events[i]["type"] == "output_audio_buffer.started"
                   and client.events[i]["response_id"] != cancelled["response"]["id"]),
                  time.monotonic())
    assert "input_audio_buffer.speech_started" in types(rest)
    item = cancelled["response"]["output"][0]["id"]
    cut = truncated[-1]
    assert cut["item_id"] == item
    # The truncation is what the client received of the answer (frames in flight at the
    # cut included), give or take the gaps where the answer's speech was not ready yet.
    received = answer_span(client, 0, second)
    assert received > 1000
    assert abs(cut["audio_end_ms"] - received) <= 200, (cut["audio_end_ms"], received)
    # The track stopped at once: nothing voiced came after, until the next answer started.
    assert answer_span(client, cleared_at + 0.2, second) == 0.0
    assert client.problems == []


async def test_the_clients_clear_cuts_the_answer_off(engines: Engines) -> None:
    async with serving(engines) as (_, base):
        client, (status, _, _) = await connect(base)
        try:
            assert status == 201
            client.send({"type": "session.update", "session": {
                "type": "realtime", "instructions": "Tell very long, detailed stories."}})
            client.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Tell me a long story."}]}})
            client.send({"type": "response.create"})
            started = await client.until(lambda e: e["type"] == "output_audio_buffer.started")
            await asyncio.sleep(1.2)
            client.send({"type": "response.cancel"})
            client.send({"type": "output_audio_buffer.clear"})
            start = len(started)
            rest = await client.until(lambda e: e["type"] == "output_audio_buffer.cleared",
                                      start=start)
            cleared_at = client.times[start + len(rest) - 1]
            truncated = await client.until(
                lambda e: e["type"] == "conversation.item.truncated", 10, start)
            await asyncio.sleep(1.5)
        finally:
            await client.close()
    done = next(e for e in client.events if e["type"] == "response.done")
    assert done["response"]["status"] == "cancelled"
    assert truncated[-1]["item_id"] == done["response"]["output"][0]["id"]
    received = answer_span(client, 0, float("inf"))
    assert received > 800
    assert abs(truncated[-1]["audio_end_ms"] - received) <= 200, (truncated[-1], received)
    assert answer_span(client, cleared_at + 0.2, float("inf")) == 0.0  # the track stopped
    assert "output_audio_buffer.stopped" not in types(client.events)
    assert client.problems == []


async def test_limits_hold_on_the_data_channel(engines: Engines) -> None:
    async with serving(engines, max_events_per_s=5.0, max_event_bytes=2000) as (_, base):
        client, (status, _, _) = await connect(base)
        try:
            assert status == 201
            for _ in range(40):
                client.send({"type": "input_audio_buffer.clear"})
            await client.until(lambda e: e["type"] == "error"
                               and e["error"]["code"] == "rate_limited", 10)
            await asyncio.sleep(2.5)  # the bucket fills again
            client.send({"type": "session.update",
                         "session": {"type": "realtime", "instructions": "x" * 3000}})
            await client.until(lambda e: e["type"] == "error"
                               and e["error"]["code"] == "message_too_large", 10)
            # Audio comes on the track: an append over the data channel is refused.
            client.send({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "a1"})
            refused = await client.until(lambda e: e["type"] == "error"
                                         and e["error"]["event_id"] == "a1", 10)
        finally:
            await client.close()
    assert types(client.events).count("input_audio_buffer.cleared") < 40
    assert refused[-1]["error"]["code"] == "unsupported_event"
    assert client.problems == []


async def test_a_token_opens_a_call_once_and_the_form_configures_it(engines: Engines) -> None:
    async with serving(engines) as (_, base):
        status, _, body = await post(base + "/v1/realtime/client_secrets", json.dumps(
            {"session": {"type": "realtime", "instructions": "Answer like a pirate."}}).encode(),
            content_type="application/json")
        assert status == 200
        token = json.loads(body)["value"]
        client, (status, _, _) = await connect(
            base, key=token, session={"type": "realtime", "audio": {"output": {"voice": "joe"}}})
        try:
            assert status == 201
            created = client.events[0]["session"]
            assert created["instructions"] == "Answer like a pirate."
        finally:
            await client.close()
        again, (status, _, body) = await connect(base, key=token)
        await again.close()
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"


async def test_refusals(engines: Engines) -> None:
    async with serving(engines) as (app, base):
        pc = peer()
        pc.addTransceiver("audio")
        sdp = await offer(pc)
        await pc.close()
        status, _, body = await post(base + "/v1/realtime/calls", sdp.encode(), "sk-wrong")
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        status, _, body = await post(base + "/v1/realtime/calls", b"hello, this is no SDP")
        error = json.loads(body)["error"]
        assert status == 400 and error["code"] == "invalid_sdp"
        assert "not an SDP offer" in error["message"]
        video_only = sdp.replace("m=audio", "m=video")
        status, _, body = await post(base + "/v1/realtime/calls", video_only.encode())
        assert status == 400 and "no audio" in json.loads(body)["error"]["message"]
        status, _, body = await post(base + "/v1/realtime/calls", b"{}",
                                     content_type="application/json")
        assert status == 415
        assert not app.sessions and not app.webrtc.calls


async def test_a_key_at_its_session_limit_gets_429(engines: Engines) -> None:
    async with serving(engines, max_sessions_per_key=1, webrtc_connect_timeout_s=1.0) as (
            app, base):
        pc = peer()
        pc.addTransceiver("audio")
        sdp = await offer(pc)
        await pc.close()
        first, _, _ = await post(base + "/v1/realtime/calls", sdp.encode())
        second, _, body = await post(base + "/v1/realtime/calls", sdp.encode())
        assert (first, second) == (201, 429)
        assert json.loads(body)["error"]["code"] == "too_many_sessions"
        for _ in range(60):  # the first call never connects, and its session is given back
            await asyncio.sleep(0.1)
            if not app.sessions:
                break
        assert not app.sessions


async def test_a_call_whose_ice_never_completes_is_closed(engines: Engines) -> None:
    async with serving(engines, webrtc_connect_timeout_s=1.0) as (app, base):
        before = engines.registry.counters.get("webrtc_connect_timeouts_total", 0)
        pc = peer()
        pc.addTransceiver("audio")
        pc.createDataChannel("oai-events")
        sdp = await offer(pc)
        await pc.close()  # the caller goes away before any connectivity check
        status, headers, _ = await post(base + "/v1/realtime/calls", sdp.encode())
        assert status == 201
        call_id = headers["Location"].rsplit("/", 1)[1]
        assert len(app.sessions) == 1 and app.per_key
        for _ in range(60):
            await asyncio.sleep(0.1)
            if not app.webrtc.calls and not app.sessions:
                break
        assert call_id not in app.webrtc.calls and not app.sessions
        assert all(n == 0 for n in app.per_key.values())
        assert engines.registry.counters["webrtc_connect_timeouts_total"] == before + 1
        leftover = [t for t in asyncio.all_tasks() if call_id in t.get_name()]
        assert leftover == []


async def test_a_peer_that_vanishes_ends_its_call(engines: Engines,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # ICE consent checks every 0.2 s instead of 5 s: a vanished peer is found in seconds.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    async with serving(engines) as (app, base):
        client, (status, headers, _) = await connect(base)
        assert status == 201 and len(app.sessions) == 1
        call_id = headers["Location"].rsplit("/", 1)[1]
        await asyncio.sleep(0.5)
        await client.vanish()  # its sockets closed, no DTLS close, no SCTP abort
        for _ in range(150):
            await asyncio.sleep(0.1)
            if not app.sessions:
                break
        assert not app.sessions and call_id not in app.webrtc.calls
        assert all(n == 0 for n in app.per_key.values())
        assert [t for t in asyncio.all_tasks() if call_id in t.get_name()] == []


async def test_shutdown_ends_every_call(engines: Engines) -> None:
    app = App(TEST_SETTINGS.replace(api_keys=KEY), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        client, (status, _, _) = await connect(f"http://{host}:{port}")
        try:
            assert status == 201 and len(app.sessions) == 1
            await asyncio.wait_for(app.drain(server), 10)
            assert not app.sessions and not app.webrtc.calls
            for _ in range(50):  # the caller hears the call end (DTLS close_notify)
                if client.pc.connectionState == "closed":
                    break
                await asyncio.sleep(0.1)
            assert client.pc.connectionState == "closed"
        finally:
            await client.close()


async def test_the_track_plays_answers_back_to_back_and_says_so() -> None:
    told: list[dict[str, Any]] = []
    sent: list[str] = []
    track = Playback(told.append)

    def clip(response: str, ms: int) -> Clip:
        samples = np.full(RATE * ms // 1000, 1000, np.int16)
        return Clip(response, "item_" + response, samples, lambda: sent.append(response))

    track.put(clip("r1", 30))
    track.put(clip("r2", 50))
    track.finish("r1")
    track.finish("r2")
    frames = [(await track.recv()).to_ndarray() for _ in range(5)]
    assert [int(np.abs(f).max()) > 0 for f in frames] == [True] * 4 + [False]
    assert sent == ["r1", "r2"]  # each delta counts as sent at its first sample
    assert [(e["type"], e["response_id"]) for e in told] == [
        ("output_audio_buffer.started", "r1"), ("output_audio_buffer.stopped", "r1"),
        ("output_audio_buffer.started", "r2"), ("output_audio_buffer.stopped", "r2")]
    track.put(clip("r3", 100))
    await track.recv()
    was = track.clear()
    assert was is not None and (was.response_id, was.sent) == ("r3", FRAME)
    track.put(clip("r3", 100))  # what the cut-off answer still sends is never played
    assert int(np.abs((await track.recv()).to_ndarray()).max()) == 0
    track.stop()


async def test_an_idle_track_sends_nothing_and_keeps_its_timeline() -> None:
    track = Playback(lambda _: None)
    track.put(Clip("r1", "item_r1", np.full(FRAME, 1000, np.int16), None))
    track.finish("r1")
    frames = [await track.recv() for _ in range(1 + TAIL_FRAMES)]
    assert [int(np.abs(f.to_ndarray()).max()) > 0 for f in frames] == \
        [True] + [False] * TAIL_FRAMES
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing to say: nothing sent
    track.put(Clip("r2", "item_r2", np.full(FRAME, 1000, np.int16), None))
    frame = await asyncio.wait_for(waiting, 1)
    assert int(np.abs(frame.to_ndarray()).max()) > 0
    assert frame.pts is not None and frames[-1].pts is not None
    gap = (frame.pts - frames[-1].pts) / RATE  # the pause, in the track's timeline
    assert 0.3 <= gap < 0.6, gap
    for _ in range(TAIL_FRAMES):
        await track.recv()
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0.05)
    track.stop()  # a call that ends wakes it
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 1)


@pytest.mark.parametrize(("host", "addresses"), [
    ("127.0.0.1", ("127.0.0.1",)), ("localhost", ("127.0.0.1",)), ("::1", ("::1",)),
    ("192.0.2.7", ("192.0.2.7",)), ("0.0.0.0", None), ("::", None), ("kiosk.local", None)])
def test_media_is_offered_where_the_server_listens(host: str,
                                                   addresses: tuple[str, ...] | None) -> None:
    assert candidate_addresses(host) == addresses


@pytest.mark.parametrize("path", ["/v1/realtime?model=voxwire"])
async def test_the_beta_form_answers_in_beta(engines: Engines, path: str) -> None:
    async with serving(engines) as (_, base):
        client, (status, _, _) = await connect(base, path=path)
        try:
            assert status == 201
            assert client.events[0]["type"] == "session.created"
            assert client.problems == []
        finally:
            await client.close()
