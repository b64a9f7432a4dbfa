"""What strict Realtime clients check: usage, status details, and extensions only on request.

Every event these tests receive is also validated against the `openai` SDK's models by the
autouse fixture in conftest.py (tests/support/wire_check.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import realtime as p
from client.realtime import pcm16
from server.runtime.engines import Engines
from tests.conftest import padded
from tests.e2e.test_e2e import RATE, ga, spoken_turn
from tests.stages.test_backends import Speak, backend, fake, serving  # noqa: F401  (fixture)
from tests.support.fakes import FakeProvider, Reply
from tests.support.wire_check import problems

TRANSCRIBED = "conversation.item.input_audio_transcription.completed"


def ws_url(url: str, query: str = "") -> str:
    return url.replace("http://", "ws://") + "/v1/realtime" + query


async def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != kind:
        events.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
    return events


async def ask_text(ws: ClientConnection, text: str, max_tokens: int = 8) -> list[dict[str, Any]]:
    """A typed question answered in text, up to its `response.done`."""
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await ws.send(json.dumps({"type": "response.create", "response": {
        "output_modalities": ["text"], "max_output_tokens": max_tokens}}))
    return await until(ws, "response.done")


# ---------------------------------------------------------------------- the harness


def test_the_check_rejects_what_strict_clients_reject() -> None:
    base = {"event_id": "e", "item_id": "i", "content_index": 0}
    no_usage = json.dumps({"type": TRANSCRIBED, **base, "transcript": "hi"})
    assert problems(no_usage, "ga") == [f"{TRANSCRIBED}: usage: Field required"]
    assert problems(no_usage, "beta") == [f"{TRANSCRIBED}: usage: Field required"]
    usage = {"type": "duration", "seconds": 1.5}
    assert problems(json.dumps({"type": TRANSCRIBED, **base, "transcript": "hi",
                                "usage": usage}), "ga") == []
    part = {"type": "response.content_part.added", **base, "output_index": 0,
            "response_id": "r", "part": {"type": "output_audio", "transcript": ""}}
    assert problems(json.dumps(part), "ga") == [
        "response.content_part.added: part.type: Input should be 'text' or 'audio'"]
    metrics = json.dumps({"type": "voxwire.turn.metrics", "event_id": "e"})
    assert problems(metrics, "ga") and problems(metrics, "beta")
    assert problems(metrics, "ga", extensions=True) == []
    beta_session = json.dumps({"type": "session.created", "event_id": "e",
                               "session": {"model": "voxwire"}})
    assert "session.model" in problems(beta_session, "beta")[0]


def test_content_part_events_say_audio_or_text_in_both_dialects() -> None:
    for dialect in ("ga", "beta"):
        for inner, outer in (("output_audio", "audio"), ("output_text", "text")):
            event = {"type": "response.content_part.done", "response_id": "r",
                     "item_id": "i", "output_index": 0, "content_index": 0,
                     "part": {"type": inner, "transcript": ""}}
            text = p.encode(event, dialect)
            assert text is not None and json.loads(text)["part"]["type"] == outer
            assert problems(text, dialect) == []
    item = {"type": "conversation.item.added", "item": {"type": "message", "content": [
        {"type": "output_audio", "transcript": ""}]}}
    added = p.encode(item, "ga")
    assert added is not None and json.loads(added)["item"]["content"][0]["type"] == "output_audio"


# ---------------------------------------------------------------------- usage


async def test_usage_of_a_spoken_turn(server_url: str, speak: Speak) -> None:
    speech = speak("What is the capital of France?", rate=RATE)
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0.0})
        events = await spoken_turn(conn, speech)
    heard = next(e for e in events if e.type == TRANSCRIBED)
    assert heard.usage.type == "duration"
    # What Whisper heard: the speech, the prefix padding before it and a short tail.
    spoken_s = len(speech) / RATE
    assert spoken_s - 0.1 <= heard.usage.seconds <= spoken_s + 1.2, (heard.usage, spoken_s)
    usage = next(e for e in events if e.type == "response.done").response.usage
    assert usage is not None and usage.input_tokens > 20 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_token_details.text_tokens == usage.output_tokens
    assert usage.output_token_details.audio_tokens == 0
    cached = usage.input_token_details.cached_tokens
    assert usage.input_token_details.text_tokens == usage.input_tokens
    assert 0 <= cached < usage.input_tokens


async def test_the_embedded_model_counts_its_tokens_and_a_capped_answer_is_incomplete(
        server_url: str) -> None:
    async with connect(ws_url(server_url)) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"temperature": 0.0}}))
        short = (await ask_text(ws, "Say yes.", max_tokens=200))[-1]["response"]
        capped = (await ask_text(ws, "Tell me a long story about a dragon.", max_tokens=5)
                  )[-1]["response"]
    assert short["status"] == "completed" and short["status_details"] is None
    assert 0 < short["usage"]["output_tokens"] < 200
    assert capped["status"] == "incomplete"
    assert capped["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert capped["usage"]["output_tokens"] == 5
    assert capped["output"][0]["status"] == "incomplete" and capped["output"][0]["content"][0][
        "text"]
    # The second question's prompt starts with the first one's: the cache held it.
    assert capped["usage"]["input_tokens"] > short["usage"]["input_tokens"]
    assert capped["usage"]["input_token_details"]["cached_tokens"] > 0


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_cloud_backends_report_usage_and_their_cap(
        engines: Engines, fake: FakeProvider, kind: str) -> None:  # noqa: F811
    fake.script(Reply(text="Paris is the capital of France."),
                Reply(text="Once upon a", cut_short=True))
    async with serving(engines, **backend(kind, fake.url)) as url, connect(ws_url(url)) as ws:
        whole = (await ask_text(ws, "What is the capital of France?"))[-1]["response"]
        cut = (await ask_text(ws, "Tell me a story."))[-1]["response"]
    sent = fake.requests[0].body
    if kind == "openai":
        assert sent["stream_options"] == {"include_usage": True}
    assert whole["status"] == "completed"
    assert whole["usage"]["input_tokens"] > 0 and whole["usage"]["output_tokens"] > 1
    assert whole["usage"]["total_tokens"] == (whole["usage"]["input_tokens"]
                                              + whole["usage"]["output_tokens"])
    assert cut["status"] == "incomplete" and cut["status_details"]["reason"] == "max_output_tokens"


# ---------------------------------------------------------------------- extensions


async def turn_events(url: str, update: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every event of a session that asks one short question, up to a probe answered after
    the turn's metrics would have been sent."""
    async with connect(url) as ws:
        if update is not None:
            await ws.send(json.dumps({"type": "session.update", "session": update}))
        events = await ask_text(ws, "Say yes.")
        await asyncio.sleep(0.3)
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        return events + await until(ws, "input_audio_buffer.cleared")


async def test_turn_metrics_only_for_sessions_that_ask(server_url: str) -> None:
    plain = await turn_events(ws_url(server_url), None)
    by_url = await turn_events(ws_url(server_url, "?voxwire_metrics=1"), None)
    by_update = await turn_events(ws_url(server_url), {"voxwire": {"metrics": True}})
    other = await turn_events(ws_url(server_url), {"instructions": "Be brief."})

    for events in (plain, other):
        assert not [e for e in events if e["type"].startswith("voxwire.")]
        assert not [e for e in events if "voxwire" in e.get("session", {})]
    for events in (by_url, by_update):
        metrics = [e for e in events if e["type"] == "voxwire.turn.metrics"]
        assert len(metrics) == 1 and metrics[0]["stages_ms"]
        echoed = [e["session"].get("voxwire") for e in events if "session" in e]
        assert echoed[-1] == {"attach_latest_frame": False, "backchannels": True,
                              "echo_cancellation": False, "metrics": True}
    assert "voxwire" in by_url[0]["session"]  # session.created already says so
    # Asking, then taking it back.
    off = await turn_events(ws_url(server_url, "?voxwire_metrics=1"),
                            {"voxwire": {"metrics": False}})
    assert not [e for e in off if e["type"].startswith("voxwire.")]


async def test_a_beta_session_names_no_model_openai_does_not_have(server_url: str) -> None:
    headers = {"OpenAI-Beta": "realtime=v1"}
    async with connect(ws_url(server_url, "?model=gpt-realtime"),
                       additional_headers=headers) as ws:
        named = json.loads(await ws.recv())["session"]["model"]
    async with connect(ws_url(server_url, "?model=voxwire"), additional_headers=headers) as ws:
        ours = json.loads(await ws.recv())["session"]["model"]
    async with connect(ws_url(server_url, "?model=voxwire")) as ws:
        ga_model = json.loads(await ws.recv())["session"]["model"]
    assert (named, ours, ga_model) == ("gpt-realtime", None, "voxwire")


async def test_a_spoken_turn_heard_whole(server_url: str, speak: Speak) -> None:
    """A spoken turn over a raw socket, checked field by field by the harness, with no
    extension asked for: nothing but OpenAI's events arrives."""
    audio = padded(speak("Hello there.", rate=RATE), RATE, 300, 1200)
    async with connect(ws_url(server_url)) as ws:
        step = RATE // 10
        for i in range(0, len(audio), step):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm16(audio[i:i + step])
                                                                ).decode()}))
        events = await until(ws, "response.done")
    names = {e["type"] for e in events}
    assert TRANSCRIBED in names and "response.content_part.added" in names
    assert not [n for n in names if n.startswith("voxwire.")]
