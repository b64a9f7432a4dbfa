"""Limits at the edge and a client vanishing mid-answer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.edge.app import App
from server.runtime.engines import Engines, make_responder
from server.runtime.store import SQLiteStore, open_store
from tests.conftest import TEST_SETTINGS
from tests.support.fakes import FakeProvider, Reply


@contextlib.asynccontextmanager
async def limited(engines: Engines, **changes: Any) -> AsyncIterator[tuple[str, App]]:
    app = App(TEST_SETTINGS.replace(**changes), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"ws://{host}:{port}/v1/realtime", app


async def errors_until_closed(ws: Any) -> list[str]:
    codes = []
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    return codes


async def test_an_idle_client_is_told_and_closed(engines: Engines) -> None:
    async with limited(engines, idle_timeout_s=0.5) as (url, _), connect(url) as ws:
        codes = await asyncio.wait_for(errors_until_closed(ws), 10)
    assert codes == ["idle_timeout"]
    assert ws.close_code == 1000


async def test_sessions_end_at_their_maximum_length(engines: Engines) -> None:
    async with limited(engines, max_session_s=1.0) as (url, _), connect(url) as ws:
        async def keep_talking() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                    await asyncio.sleep(0.2)

        talker = asyncio.create_task(keep_talking())
        codes = await asyncio.wait_for(errors_until_closed(ws), 10)
        talker.cancel()
    assert codes == ["session_expired"]


async def test_a_flood_is_throttled_and_the_session_goes_on(engines: Engines) -> None:
    chunk = base64.b64encode(b"\x00\x00" * 480).decode()
    async with limited(engines, max_events_per_s=20) as (url, _), connect(url) as ws:
        for _ in range(200):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await asyncio.sleep(2.5)  # the bucket refills
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Hello?"}]}}))
        await ws.send(json.dumps({"type": "response.create",
                                  "response": {"output_modalities": ["text"]}}))
        seen: list[str] = []
        async for message in ws:
            event = json.loads(message)
            seen.append(event["error"]["code"] if event["type"] == "error" else event["type"])
            if event["type"] == "response.done":
                assert event["response"]["status"] == "completed"
                break
    assert "rate_limited" in seen
    assert seen.count("rate_limited") <= 3  # warned once a second, not once an event


async def test_a_client_vanishing_mid_answer_leaks_nothing(engines: Engines,
                                                           tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/h.db")
    assert isinstance(store, SQLiteStore)
    # A backend whose answer is surely long (the small embedded model may be brief).
    fake = FakeProvider()
    await fake.start()
    story = " ".join(f"This is sentence {n} of a long story." for n in range(60))
    fake.script(Reply(text="Short answer."), Reply(text=story, delay_between_s=0.03))
    settings = TEST_SETTINGS.replace(llm_backend="openai", llm_model="m",
                                     llm_base_url=f"{fake.url}/v1", llm_api_key="k")
    responder = make_responder(settings, None, engines.llm_lane)
    app = App(settings, engines=dataclasses.replace(engines, responder=responder),
              store=store)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        threads = 0
        for leave_early in (False, True):  # a whole answer first: every worker thread exists
            async with connect(f"ws://{host}:{port}/v1/realtime?voxwire_metrics=1") as ws:
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "Tell me a long story."}]}}))
                await ws.send(json.dumps({"type": "response.create", "response": {
                    "max_output_tokens": 200 if leave_early else 10}}))
                async for message in ws:
                    kind = json.loads(message)["type"]
                    if kind == "response.output_audio.delta" and leave_early:
                        break  # and leave while the answer is being spoken
                    if kind == "voxwire.turn.metrics":
                        break
            threads = threads or threading.active_count()
        for _ in range(100):
            if not app.sessions:
                break
            await asyncio.sleep(0.05)
    assert not app.sessions
    await asyncio.sleep(0.3)  # lanes finish the piece they were on
    assert threading.active_count() <= threads
    turns = await asyncio.to_thread(lambda: store.turns(store.sessions()[-1]["id"]))
    store.close()
    await fake.stop()
    assert [t["status"] for t in turns] == ["cancelled"]
    assert turns[0]["interrupted"]
    assert fake.disconnects == 1  # the backend's stream was closed too
