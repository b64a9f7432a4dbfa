"""What third-party Realtime clients send, over a real server: explicit nulls for every
unset field, per-response tools and tool choice, out-of-band responses, voices and
metadata, the idle timeout, transcription-only sessions, and items retrieved with audio.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from websockets.asyncio.client import ClientConnection, connect

from client.realtime import from_pcm16, pcm16, send_audio, silence
from server.edge.app import App
from server.runtime.engines import Engines
from tests.conftest import TEST_SETTINGS, padded, words
from tests.e2e.test_e2e import RATE, Speak, events_until, ga, spoken_turn, types
from tests.stages.test_backends import LIGHTS, backend, serving
from tests.support.fakes import FakeProvider, Reply

SILENCE_200MS = base64.b64encode(pcm16(silence(200, RATE))).decode()
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "default": None}}, "required": ["city"]}}


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def beta(url: str) -> Any:
    ws_url = url.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", websocket_base_url=ws_url)
    return client.beta.realtime.connect(model="voxwire")


async def send_raw(conn: Any, event: dict[str, Any]) -> None:
    """Send an event exactly as written (the SDK's beta connection has no send_raw)."""
    if hasattr(conn, "send_raw"):
        await conn.send_raw(json.dumps(event))
    else:
        await conn._connection.send(json.dumps(event))


async def until(conn: Any, kind: str, seconds: float = 60) -> list[Any]:
    """Events up to the first of type ``kind``; an error event on the way fails the test."""
    events = await events_until(conn, lambda e: e.type in (kind, "error"), seconds)
    assert events[-1].type == kind, events[-1]
    return events


def done(events: list[Any]) -> Any:
    return next(e for e in events if e.type == "response.done").response


# ---------------------------------------------------------------------- nulls

def _ga_table() -> list[tuple[dict[str, Any], str | None]]:
    return [
        ({"type": "session.update", "event_id": None, "session": {
            "type": "realtime", "model": None, "instructions": None, "output_modalities": None,
            "tools": None, "tool_choice": None, "max_output_tokens": None, "tracing": None,
            "prompt": None, "include": None, "truncation": None, "temperature": None,
            "voxwire": None,
            "audio": {"input": {"format": None, "transcription": None, "noise_reduction": None,
                                "turn_detection": None},
                      "output": {"format": None, "voice": None, "speed": None}}}},
         "session.updated"),
        ({"type": "input_audio_buffer.append", "event_id": None, "audio": SILENCE_200MS}, None),
        ({"type": "input_audio_buffer.commit", "event_id": None}, "input_audio_buffer.committed"),
        ({"type": "input_audio_buffer.append", "event_id": None, "audio": SILENCE_200MS}, None),
        ({"type": "input_audio_buffer.clear", "event_id": None}, "input_audio_buffer.cleared"),
        ({"type": "conversation.item.create", "event_id": None, "previous_item_id": None,
          "item": {"id": "u1", "type": "message", "role": "user", "object": None, "status": None,
                   "content": [{"type": "input_text", "text": "Hello.", "transcript": None}]}},
         "conversation.item.added"),
        ({"type": "conversation.item.create", "event_id": None, "previous_item_id": None,
          "item": {"id": None, "type": "message", "role": "assistant", "status": None,
                   "content": [{"type": "output_text", "text": "Hi there."}]}},
         "conversation.item.added"),
        ({"type": "conversation.item.truncate", "event_id": None, "item_id": "u1",
          "content_index": None, "audio_end_ms": 0}, "error"),  # a user item: refused as such
        ({"type": "conversation.item.retrieve", "event_id": None, "item_id": "u1"},
         "conversation.item.retrieved"),
        ({"type": "response.create", "event_id": None, "response": {
            "instructions": None, "tools": None, "tool_choice": None, "conversation": None,
            "metadata": None, "input": None, "max_output_tokens": None, "prompt": None,
            "output_modalities": None, "audio": {"output": {"voice": None, "format": None}}}},
         "response.created"),
        ({"type": "response.cancel", "event_id": None, "response_id": None}, "response.done"),
        ({"type": "conversation.item.delete", "event_id": None, "item_id": "u1"},
         "conversation.item.deleted"),
    ]


def _beta_table() -> list[tuple[dict[str, Any], str | None]]:
    return [
        ({"type": "session.update", "event_id": None, "session": {
            "modalities": None, "instructions": None, "voice": None, "input_audio_format": None,
            "output_audio_format": None, "input_audio_transcription": None,
            "turn_detection": None, "tools": None, "tool_choice": None, "temperature": None,
            "max_response_output_tokens": None, "model": None,
            "input_audio_noise_reduction": None}}, "session.updated"),
        ({"type": "input_audio_buffer.append", "event_id": None, "audio": SILENCE_200MS}, None),
        ({"type": "input_audio_buffer.commit", "event_id": None}, "input_audio_buffer.committed"),
        ({"type": "input_audio_buffer.clear", "event_id": None}, "input_audio_buffer.cleared"),
        ({"type": "conversation.item.create", "event_id": None, "previous_item_id": None,
          "item": {"id": "u1", "type": "message", "role": "user", "object": None,
                   "status": None, "content": [{"type": "input_text", "text": "Hello.",
                                                "audio": None, "transcript": None}]}},
         "conversation.item.created"),
        ({"type": "conversation.item.retrieve", "event_id": None, "item_id": "u1"},
         "conversation.item.retrieved"),
        ({"type": "response.create", "event_id": None, "response": {
            "modalities": None, "instructions": None, "voice": None,
            "output_audio_format": None, "tools": None, "tool_choice": None,
            "temperature": None, "max_response_output_tokens": None, "conversation": None,
            "metadata": None, "input": None}}, "response.created"),
        ({"type": "response.cancel", "event_id": None, "response_id": None}, "response.done"),
        ({"type": "conversation.item.delete", "event_id": None, "item_id": "u1"},
         "conversation.item.deleted"),
        ({"type": "transcription_session.update", "event_id": None, "session": {
            "input_audio_format": None, "input_audio_transcription": None,
            "turn_detection": None, "input_audio_noise_reduction": None, "include": None}},
         "transcription_session.updated"),
    ]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_every_client_event_takes_null_for_every_optional_field(
        engines: Engines, fake: FakeProvider, dialect: str) -> None:
    # A slow answer, so that response.cancel finds it running.
    fake.script(Reply(text="One two three four five six seven eight nine ten.",
                      delay_between_s=0.3))
    table = _ga_table() if dialect == "ga" else _beta_table()
    async with serving(engines, **backend("openai", fake.url)) as url, \
            (ga(url) if dialect == "ga" else beta(url)) as conn:
        await until(conn, "session.created")
        for event, reply in table:
            await send_raw(conn, event)  # as written, nulls and all
            if reply is None:
                continue
            got = await events_until(conn, lambda e, r=reply: e.type in (r, "error"))
            assert got[-1].type == reply, (event["type"], got[-1])
            if event["type"] == "session.update":
                session = got[-1].session
                td = (session.audio.input.turn_detection if dialect == "ga"
                      else session.turn_detection)
                assert td is None  # null turn detection: off, as OpenAI defines it
                assert session.instructions == TEST_SETTINGS.instructions  # null: unchanged
            if reply == "error":
                assert got[-1].error.param == "item_id"  # not about a null
            if event["type"] == "response.cancel":
                assert got[-1].response.status == "cancelled"
        await send_raw(conn, {"type": "conversation.item.retrieve", "item_id": "u1"})
        gone = await events_until(conn, lambda e: e.type == "error")
        assert gone[-1].error.code == "item_not_found"


# ---------------------------------------------------------------------- tools


async def test_per_response_tools_and_tool_choice_reach_openai_over_the_sdk(
        engines: Engines, fake: FakeProvider) -> None:
    """LiveKit's sequence: a named tool for one response, the tool's result, then a reply
    with `tool_choice: "none"` and every unset field null."""
    fake.script(Reply(tool_calls=[("call_7", "get_weather", {"city": "Oslo"})]),
                Reply(text="It is sunny in Oslo."))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime", "tools": [LIGHTS]})
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Weather in Oslo?"}]})
        await conn.response.create(response={
            "output_modalities": ["text"], "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"}})
        first = await until(conn, "response.done")
        call = done(first).output[0]
        assert (call.type, call.name, call.call_id) == ("function_call", "get_weather", "call_7")
        await conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": "call_7", "output": "sunny"})
        await conn.send_raw(json.dumps({"type": "response.create", "response": {
            "instructions": None, "tools": None, "tool_choice": "none", "metadata": None,
            "output_modalities": ["text"], "conversation": None, "input": None}}))
        second = await until(conn, "response.done")
    assert done(second).status == "completed"
    assert done(second).output[0].content[0].text == "It is sunny in Oslo."
    asked, answered = fake.requests[0].body, fake.requests[1].body
    assert [t["function"]["name"] for t in asked["tools"]] == ["get_weather"]
    assert asked["tools"][0]["function"]["parameters"] == WEATHER["parameters"]  # null kept
    assert asked["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    # "none": the session's tools are still declared (the history holds a call), none is made
    assert [t["function"]["name"] for t in answered["tools"]] == ["set_lights"]
    assert answered["tool_choice"] == "none"
    assert answered["messages"][-1] == {"role": "tool", "tool_call_id": "call_7",
                                        "content": "sunny"}


@pytest.mark.parametrize("choice, wire", [
    ("required", {"type": "any"}), ("none", {"type": "none"}), ("auto", {"type": "auto"}),
    ({"type": "function", "name": "set_lights"}, {"type": "tool", "name": "set_lights"})])
async def test_tool_choice_reaches_anthropic_in_its_own_form(
        engines: Engines, fake: FakeProvider, choice: Any, wire: dict[str, Any]) -> None:
    async with serving(engines, **backend("anthropic", fake.url)) as url, ga(url) as conn:
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Lights?"}]})
        await conn.send_raw(json.dumps({"type": "response.create", "response": {
            "output_modalities": ["text"], "tools": [LIGHTS], "tool_choice": choice}}))
        await until(conn, "response.done")
    body = fake.requests[-1].body
    assert body["tool_choice"] == wire
    assert body["tools"][0]["name"] == "set_lights"


async def test_tool_choices_that_cannot_be_honoured_are_refused_clearly(
        server_url: str) -> None:
    """The embedded model calls no tools: a response that must call one is refused, not
    answered in words as if it had. MCP, which the server has not, is refused by name."""
    async with ga(server_url) as conn:
        await until(conn, "session.created")
        cases = [({"tools": [LIGHTS], "tool_choice": "required"}, "invalid_value"),
                 ({"tools": [LIGHTS], "tool_choice": {"type": "function", "name": "set_lights"}},
                  "invalid_value"),
                 ({"tools": [LIGHTS], "tool_choice": {"type": "function", "name": "nope"}},
                  "invalid_value"),
                 ({"tool_choice": {"type": "mcp", "server_label": "x"}}, "mcp_not_supported"),
                 ({"tools": [{"type": "mcp", "server_label": "x"}]}, "mcp_not_supported")]
        for response, code in cases:
            await conn.send_raw(json.dumps({"type": "response.create", "event_id": "ev_1",
                                            "response": response}))
            got = await events_until(conn, lambda e: e.type in ("error", "response.created"))
            assert got[-1].type == "error" and got[-1].error.code == code, (response, got[-1])
            assert got[-1].error.event_id == "ev_1"


# ---------------------------------------------------------------------- out of band


async def test_an_out_of_band_answer_stays_out_of_the_conversation(
        engines: Engines, fake: FakeProvider) -> None:
    fake.script(Reply(text="The user sounds happy."), Reply(text="Fine, thanks."))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.conversation.item.create(item={
            "id": "q1", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "I love this day!"}]})
        await until(conn, "conversation.item.done")
        await conn.send_raw(json.dumps({"type": "response.create", "response": {
            "conversation": "none", "output_modalities": ["text"],
            "metadata": {"topic": "mood"}, "instructions": "Classify the mood.",
            "input": [{"type": "item_reference", "id": "q1"},
                      {"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "What is the mood?"}]}]}}))
        events = await until(conn, "response.done")
        created = next(e for e in events if e.type == "response.created").response
        answer = done(events)
        assert created.conversation_id is None and answer.conversation_id is None
        assert created.metadata == {"topic": "mood"} and answer.metadata == {"topic": "mood"}
        assert answer.output[0].content[0].text == "The user sounds happy."
        assert "conversation.item.added" not in types(events)
        assert "conversation.item.done" not in types(events)
        await conn.conversation.item.retrieve(item_id=answer.output[0].id)
        missing = await events_until(conn, lambda e: e.type == "error")
        assert missing[-1].error.code == "item_not_found"
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "How are you?"}]})
        await conn.response.create(response={"output_modalities": ["text"]})
        after = await until(conn, "response.done")
    assert done(after).conversation_id is not None
    oob, next_turn = fake.requests[0].body["messages"], fake.requests[1].body["messages"]
    assert oob == [{"role": "system", "content": "Classify the mood."},
                   {"role": "user", "content": "I love this day!"},
                   {"role": "user", "content": "What is the mood?"}]
    assert all("happy" not in str(m["content"]) for m in next_turn)
    assert [m["content"] for m in next_turn if m["role"] == "user"] == [
        "I love this day!", "How are you?"]


async def test_an_empty_input_answers_without_the_conversation(
        engines: Engines, fake: FakeProvider) -> None:
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Secret words."}]})
        await conn.send_raw(json.dumps({"type": "response.create", "response": {
            "conversation": "none", "input": [], "instructions": "Say hi.",
            "output_modalities": ["text"]}}))
        await until(conn, "response.done")
    assert fake.requests[0].body["messages"] == [{"role": "system", "content": "Say hi."}]


# ---------------------------------------------------------------------- voice


async def test_a_voice_the_server_lacks_is_taken_and_its_own_speaks(
        engines: Engines, fake: FakeProvider) -> None:
    fake.script(Reply(text="Hello."), Reply(text="Hello again."))
    own = engines.voice
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime",
                                           "audio": {"output": {"voice": "alloy"}}})
        updated = await until(conn, "session.updated")
        assert updated[-1].session.audio.output.voice == own  # what is in effect
        for voice in ("marin", own):
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hi."}]})
            await conn.send_raw(json.dumps({"type": "response.create", "response": {
                "audio": {"output": {"voice": voice}}}}))
            events = await until(conn, "response.done")
            assert "error" not in types(events)
            assert done(events).audio.output.voice == own
            assert "response.output_audio.delta" in types(events)


# ---------------------------------------------------------------------- idle timeout


async def test_the_idle_timeout_asks_again_after_silence(
        engines: Engines, fake: FakeProvider, speak: Speak) -> None:
    fake.script(Reply(text="Hello."), Reply(text="Are you still there?"))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "idle_timeout_ms": 1500}}}})
        updated = await until(conn, "session.updated")
        assert updated[-1].session.audio.input.turn_detection.idle_timeout_ms == 1500
        first = await spoken_turn(conn, speak("Good morning.", rate=RATE))
        assert done([e for e in first if e.type == "response.done"]).status == "completed"
        # The microphone stays open: silence, streamed as it is "heard".
        sender = asyncio.create_task(send_audio(conn, silence(6000, RATE), RATE))
        try:
            events = await events_until(conn, lambda e: e.type == "response.done", 30)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    names = types(events)
    assert "input_audio_buffer.speech_started" not in names
    timeout = next(e for e in events if e.type == "input_audio_buffer.timeout_triggered")
    assert timeout.audio_end_ms - timeout.audio_start_ms >= 1500
    stopped = next(e for e in first if e.type == "input_audio_buffer.speech_stopped")
    assert timeout.audio_start_ms > stopped.audio_end_ms  # after the answer, not the question
    committed = next(e for e in events if e.type == "input_audio_buffer.committed")
    assert committed.item_id == timeout.item_id
    assert names.index("input_audio_buffer.timeout_triggered") < names.index("response.created")
    assert done(events).output[0].content[0].transcript == "Are you still there?"
    assert len(fake.requests) == 2


# ---------------------------------------------------------------------- transcription


async def _no_response_within(conn: Any, seconds: float) -> list[Any]:
    got: list[Any] = []
    with contextlib.suppress(TimeoutError):
        got = await events_until(conn, lambda e: e.type.startswith("response."), seconds)
    assert not any(e.type.startswith("response.") for e in got), types(got)
    return got


async def test_a_transcription_session_by_session_type_gives_transcripts_only(
        server_url: str, speak: Speak) -> None:
    said = "Please write down the shopping list."
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "turn_detection": {"type": "server_vad"}, "transcription": {"model": "whisper"}}}})
        updated = await until(conn, "session.updated")
        assert updated[-1].session.type == "transcription"
        sender = asyncio.create_task(send_audio(conn, padded(speak(said, rate=RATE), RATE),
                                                RATE))
        events = await until(conn, "conversation.item.input_audio_transcription.completed")
        await sender
        events += await _no_response_within(conn, 3)
        await conn.response.create()
        refused = await events_until(conn, lambda e: e.type == "error")
    completed = next(e for e in events if e.type.endswith("transcription.completed"))
    assert words(completed.transcript) == words(said)
    assert "input_audio_buffer.committed" in types(events)
    assert "conversation.item.added" not in types(events)
    assert "transcription session" in refused[-1].error.message


async def test_a_transcription_session_by_intent_speaks_beta(
        server_url: str, speak: Speak) -> None:
    said = "The meeting starts at nine."
    ws_url = server_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    async with connect(ws_url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "transcription_session.created", created
        assert created["session"]["object"] == "realtime.transcription_session"
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            "input_audio_noise_reduction": None, "include": None}}))
        assert json.loads(await ws.recv())["type"] == "transcription_session.updated"
        audio = padded(speak(said, rate=RATE), RATE)
        sender = asyncio.create_task(_send_raw_audio(ws, audio))
        seen = await _read_until(ws, "conversation.item.input_audio_transcription.completed")
        await sender
        with contextlib.suppress(TimeoutError):
            seen += await _read_until(ws, "response.created", 3)
    kinds = [e["type"] for e in seen]
    assert "input_audio_buffer.committed" in kinds
    assert not any(k.startswith("response.") for k in kinds), kinds
    done_event = next(e for e in seen if e["type"].endswith("transcription.completed"))
    assert words(done_event["transcript"]) == words(said)


async def _send_raw_audio(ws: ClientConnection, samples: Any) -> None:
    step = RATE * 40 // 1000
    for i in range(0, len(samples), step):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(
            pcm16(samples[i:i + step])).decode()}))
        await asyncio.sleep(0.04)


async def _read_until(ws: ClientConnection, kind: str, seconds: float = 60
                      ) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def read() -> None:
        while True:
            event = json.loads(await ws.recv())
            got.append(event)
            if event["type"] in (kind, "error"):
                return

    await asyncio.wait_for(read(), seconds)
    return got


# ---------------------------------------------------------------------- retrieve


async def test_retrieve_returns_the_items_audio_when_recorded(
        engines: Engines, fake: FakeProvider, speak: Speak) -> None:
    fake.script(Reply(text="Noted."))
    question = "Remember the milk."
    settings = dataclasses.replace(TEST_SETTINGS, **backend("openai", fake.url), record=True)
    app = App(settings, engines=dataclasses.replace(engines, responder=_responder(settings,
                                                                                  engines)))
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        async with ga(f"http://{host}:{port}") as conn:
            events = await spoken_turn(conn, speak(question, rate=RATE))
            user_id = next(e for e in events if e.type == "input_audio_buffer.committed").item_id
            await conn.conversation.item.retrieve(item_id=user_id)
            user = (await until(conn, "conversation.item.retrieved"))[-1].item
            answer_id = done(events).output[0].id
            await conn.conversation.item.retrieve(item_id=answer_id)
            answer = (await until(conn, "conversation.item.retrieved"))[-1].item
    heard = from_pcm16(base64.b64decode(user.content[0].audio))
    assert words(engines.asr.transcribe(_to_16k(heard)).text) == words(question)
    spoken = from_pcm16(base64.b64decode(answer.content[0].audio))
    sent = np.concatenate([from_pcm16(base64.b64decode(e.delta)) for e in events
                           if e.type == "response.output_audio.delta"])
    assert abs(len(spoken) - len(sent)) / RATE < 0.05


def _responder(settings: Any, engines: Engines) -> Any:
    from server.runtime.engines import make_responder

    return make_responder(settings, engines.llm, engines.llm_lane)


def _to_16k(samples: Any) -> Any:
    from client.realtime import resample

    return resample(samples, RATE, 16000)


async def test_retrieve_has_no_audio_without_record(
        engines: Engines, fake: FakeProvider, speak: Speak) -> None:
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        events = await spoken_turn(conn, speak("Remember the milk.", rate=RATE))
        user_id = next(e for e in events if e.type == "input_audio_buffer.committed").item_id
        await conn.conversation.item.retrieve(item_id=user_id)
        user = (await until(conn, "conversation.item.retrieved"))[-1].item
    assert getattr(user.content[0], "audio", None) is None


# ---------------------------------------------------------------------- tokens


async def test_tokens_are_minted_for_transcription_sessions(engines: Engines) -> None:
    from tests.edge.test_tokens import post
    from tests.edge.test_tokens import serving as serving_keys

    async with serving_keys(engines) as (_, hostport):
        status, _, ga_minted = await post(hostport, "/v1/realtime/client_secrets", {
            "session": {"type": "transcription", "audio": {"input": {
                "transcription": {"model": "whisper", "language": None}}}},
            "expires_after": None})
        assert status == 200, ga_minted
        assert ga_minted["session"]["type"] == "transcription"
        status, _, beta_minted = await post(hostport, "/v1/realtime/transcription_sessions",
                                            {"input_audio_format": "pcm16"})
        assert status == 200, beta_minted
        assert beta_minted["object"] == "realtime.transcription_session"
        browser = AsyncOpenAI(api_key=ga_minted["value"], base_url=f"http://{hostport}/v1")
        async with browser.realtime.connect(model="voxwire") as conn:
            created = await conn.recv()
            assert created.type == "session.created"
            assert created.session.type == "transcription"

