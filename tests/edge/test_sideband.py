"""The sideband: a server-side WebSocket attached to a live WebRTC call by its id
(`/v1/realtime?call_id=...`), with a real aiortc caller and a real WebSocket client over
loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.edge.webrtc import MAX_SIDEBANDS, SIDEBAND_AHEAD, Sideband
from server.runtime.engines import Engines
from tests.edge.test_webrtc import KEY, Client, connect, post, serving, types

Event = dict[str, Any]


def ws_url(base: str, call_id: str) -> str:
    return base.replace("http://", "ws://") + f"/v1/realtime?call_id={call_id}"


def call_id_of(headers: dict[str, str]) -> str:
    return headers["Location"].rsplit("/", 1)[1]


async def called(base: str) -> tuple[Client, str]:
    """A WebRTC caller on the line, and its call's id."""
    client, (status, headers, _) = await connect(base)
    if status != 201:
        await client.close()
        pytest.fail(f"the call was refused: {status}")
    return client, call_id_of(headers)


async def attach(base: str, call_id: str, key: str = KEY) -> ClientConnection:
    return await ws_connect(ws_url(base, call_id),
                            additional_headers={"Authorization": f"Bearer {key}"})


async def until(ws: ClientConnection, got: list[Event], stop: Callable[[Event], bool],
                seconds: float = 30) -> list[Event]:
    """Read the sideband into ``got`` up to the first event ``stop`` takes."""
    deadline = time.monotonic() + seconds
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        got.append(event)
        if stop(event):
            return got


def updated_with(instructions: str) -> Callable[[Event], bool]:
    return lambda e: (e["type"] == "session.updated"
                      and e["session"]["instructions"] == instructions)


async def test_a_sideband_watches_and_drives_the_call(engines: Engines) -> None:
    async with serving(engines) as (app, base):
        client, call_id = await called(base)
        try:
            ws = await attach(base, call_id)
            got: list[Event] = []
            try:
                await ws.send(json.dumps({"type": "session.update", "session": {
                    "type": "realtime", "instructions": "Answer like a pirate."}}))
                await until(ws, got, updated_with("Answer like a pirate."))
                # the call's own data channel sees the change too
                await client.until(updated_with("Answer like a pirate."), 10)
                mark = len(client.events)
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello."}]}}))
                await ws.send(json.dumps({"type": "response.create",
                                          "response": {"output_modalities": ["text"]}}))
                await until(ws, got, lambda e: e["type"] == "response.done")
                await client.until(lambda e: e["type"] == "response.done", 10, mark)
                assert app.webrtc.calls[call_id].sidebands
            finally:
                await ws.close()
            # the call goes on without its sideband
            for _ in range(50):
                if not app.webrtc.calls[call_id].sidebands:
                    break
                await asyncio.sleep(0.02)
            assert not app.webrtc.calls[call_id].sidebands
            client.send({"type": "session.update",
                         "session": {"type": "realtime", "instructions": "Be brief."}})
            await client.until(updated_with("Be brief."), 10)
            assert call_id in app.webrtc.calls and len(app.sessions) == 1
        finally:
            await client.close()
    kinds = types(got)
    assert "session.created" not in kinds  # the events from the moment it attached
    assert kinds.index("session.updated") < kinds.index("response.created")
    assert "conversation.item.added" in kinds and "response.output_text.done" in kinds
    # it ran to its end ("incomplete": the test settings' token cap ended a long answer)
    assert got[-1]["response"]["status"] in ("completed", "incomplete")
    assert not any("audio.delta" in kind for kind in kinds)
    assert client.problems == []


async def refused(base: str, call_id: str, key: str = KEY) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as caught:
        await attach(base, call_id, key)
    reply = caught.value.response
    return reply.status_code, json.loads(reply.body or b"{}")["error"]["code"]


async def test_sidebands_refused(engines: Engines) -> None:
    async with serving(engines) as (_, base):
        assert await refused(base, "rtc_unknown") == (404, "call_not_found")
        client, call_id = await called(base)
        attached: list[ClientConnection] = []
        try:
            assert await refused(base, call_id, "sk-wrong") == (401, "invalid_api_key")
            # a browser token opens calls, but attaches to none
            status, _, body = await post(base + "/v1/realtime/client_secrets", b"{}",
                                         content_type="application/json")
            assert status == 200
            token = json.loads(body)["value"]
            assert await refused(base, call_id, token) == (401, "invalid_api_key")
            for _ in range(MAX_SIDEBANDS):
                attached.append(await attach(base, call_id))
            assert await refused(base, call_id) == (429, "too_many_sidebands")
        finally:
            for ws in attached:
                await ws.close()
            await client.close()


async def test_the_sideband_is_closed_when_the_call_ends(engines: Engines) -> None:
    async with serving(engines) as (app, base):
        client, call_id = await called(base)
        try:
            ws = await attach(base, call_id)
        finally:
            await client.close()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 40)
        assert ws.close_code == 1000 and ws.close_reason == "call_ended"
        assert call_id not in app.webrtc.calls
        assert await refused(base, call_id) == (404, "call_not_found")


async def test_a_sideband_that_falls_behind_is_dropped() -> None:
    feed = Sideband()
    for n in range(SIDEBAND_AHEAD):
        feed.put({"type": "x", "n": n})
    assert not feed.behind
    assert await feed.get() == {"type": "x", "n": 0}
    feed.put({"type": "x", "n": SIDEBAND_AHEAD})  # room for one again
    assert not feed.behind
    feed.put({"type": "x"})  # one too many: dropped, and nothing more comes after
    feed.put({"type": "x"})
    assert feed.behind
    taken = [await feed.get() for _ in range(SIDEBAND_AHEAD + 1)]
    assert taken[-1] is None and all(e is not None for e in taken[:-1])
