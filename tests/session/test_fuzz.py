"""Bad input never hurts anyone: a table of malformed events over a real socket, and
Hypothesis fuzzing the codec and a live session (bounded budgets)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

import realtime as p
from realtime import client_events
from server.errors import ProtocolError
from server.runtime.engines import Engines
from server.session.core import Session
from tests.conftest import ANSWERED, TEST_SETTINGS

B64 = base64.b64encode
MALFORMED: list[Any] = [
    "", " ", "{", "}", "[]", "null", "42", '"text"', "true", "{}", '{"type": null}',
    '{"type": 5}', '{"type": ""}', '{"type": "nope"}', '{"type": "session.update"}',
    {"type": "session.update", "session": "x"},
    {"type": "session.update", "session": {"temperature": "warm"}},
    {"type": "session.update", "session": {"temperature": 9}},
    {"type": "session.update", "session": {"output_modalities": []}},
    {"type": "session.update", "session": {"output_modalities": ["smell"]}},
    {"type": "session.update", "session": {"audio": {"input": {"format": {"rate": 1}}}}},
    {"type": "session.update", "session": {"audio": {"input": {"format": "pcm"}}}},
    {"type": "session.update", "session": {"turn_detection": {"type": "magic"}}},
    {"type": "session.update", "session": {"turn_detection": {"silence_duration_ms": -1}}},
    {"type": "session.update", "session": {"tools": [{"type": "function"}]}},
    {"type": "session.update", "session": {"tools": "all"}},
    {"type": "session.update", "session": {"tool_choice": "sometimes"}},
    {"type": "session.update", "session": {"voxwire": {"attach_latest_frame": "yes"}}},
    {"type": "session.update", "session": {"max_output_tokens": 0}},
    {"type": "input_audio_buffer.append"},
    {"type": "input_audio_buffer.append", "audio": None},
    {"type": "input_audio_buffer.append", "audio": "not base64!"},
    {"type": "input_audio_buffer.append", "audio": B64(b"\x01\x02\x03").decode()},
    {"type": "input_audio_buffer.commit"},
    {"type": "conversation.item.create"},
    {"type": "conversation.item.create", "item": []},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "robot",
                                                  "content": [{"type": "input_text"}]}},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                  "content": []}},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                  "content": [{"type": "output_audio"}]}},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                  "content": [{"type": "input_image"}]}},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "http://example.com/cat.png"}]}},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}},
    {"type": "conversation.item.create", "item": {"type": "function_call_output"}},
    {"type": "conversation.item.create", "item": {"type": "mcp_call"}},
    {"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": 10},
    {"type": "conversation.item.truncate", "item_id": 3, "audio_end_ms": 10},
    {"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": "10"},
    {"type": "conversation.item.delete", "item_id": "missing"},
    {"type": "conversation.item.delete"},
    {"type": "conversation.item.retrieve", "item_id": "missing"},
    {"type": "response.cancel"},
    {"type": "response.create", "response": "now"},
    {"type": "response.create", "response": {"output_modalities": "audio"}},
    {"type": "response.create", "response": {"instructions": 7}},
    {"type": "response.create", "response": {"temperature": "hot"}},
    {"type": "voxwire.input_image.append"},
    {"type": "voxwire.input_image.append", "image_url": "data:image/gif;base64,R0lG"},
    '{"type": "session.update", "session": {"instructions": "' + "x" * 200_000 + '"}}',
    "[" * 100_000 + "]" * 100_000,
]


async def test_every_malformed_event_gets_an_error_and_the_session_goes_on(
        server_url: str) -> None:
    assert len(MALFORMED) >= 40
    client = AsyncOpenAI(api_key="x", base_url=f"{server_url}/v1")
    async with client.realtime.connect(model="voxwire") as conn:
        await conn.recv()  # session.created
        for n, bad in enumerate(MALFORMED):
            raw = bad if isinstance(bad, str) else json.dumps({**bad, "event_id": f"e{n}"})
            await conn.send_raw(raw)
            event = await asyncio.wait_for(_next_error_or_done(conn), 10)
            assert event.type == "error", (n, raw[:80], event.type)
            assert event.error.code and event.error.message, raw[:80]
            if not isinstance(bad, str):
                assert event.error.event_id == f"e{n}", raw[:80]
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Still there?"}]})
        await conn.response.create(response={"output_modalities": ["text"]})
        done = await asyncio.wait_for(_next_error_or_done(conn), 30)
    assert done.type == "response.done" and done.response.status in ANSWERED


async def _next_error_or_done(conn: Any) -> Any:
    async for ev in conn:
        if ev.type in ("error", "response.done"):
            return ev
    raise AssertionError("connection closed")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20)
event_types = st.sampled_from([*client_events._PARSERS, "nope"])
events = st.builds(lambda kind, body: {**body, "type": kind}, event_types,
                   st.dictionaries(st.sampled_from(
                       ["session", "audio", "item", "item_id", "audio_end_ms", "response",
                        "content_index", "image_url", "response_id", "event_id"]),
                       json_values, max_size=4))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), events.map(json.dumps)))
def test_the_codec_raises_only_protocol_errors(message: str) -> None:
    try:
        event = p.parse_client_event(message)
    except ProtocolError as exc:
        assert exc.code and str(exc)
        return
    if isinstance(event, p.SessionUpdate):
        with contextlib.suppress(ProtocolError):
            p.apply_session_update(p.SessionConfig(), event.session, "ga")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(events.map(json.dumps), min_size=1, max_size=8))
def test_a_session_survives_any_sequence_of_events(engines: Engines, batch: list[str]) -> None:
    async def run() -> None:
        session = Session(engines, TEST_SETTINGS)
        await session.start()
        for message in batch:
            try:
                event = p.parse_client_event(message)
            except ProtocolError:
                continue
            await session.handle(event)  # must not raise
        await session.close()
        while len(session.outbox):  # everything it said is a valid event
            event, _ = await session.outbox.get()
            assert p.encode(event, "ga")

    asyncio.run(run())
