"""Resuming a session (the `voxwire_resume` extension) with the real `openai` SDK: the
conversation goes on after the connection (or the server) was lost, for the key that
opened it only, within --resume-ttl-s."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from server.edge.app import App
from server.runtime.engines import Engines
from server.runtime.store import SqlStore
from tests.conftest import ANSWERED, TEST_SETTINGS, words
from tests.e2e.test_e2e import RecordingResponder, Speak, events_until, spoken_turn

KEY, OTHER = "sk-voxwire-resume-a", "sk-voxwire-resume-b"
RATE = 24000


@asynccontextmanager
async def serving(engines: Engines, tmp_path: Path, **changes: Any
                  ) -> AsyncIterator[tuple[App, str, RecordingResponder]]:
    llm = RecordingResponder(engines.responder)
    settings = dataclasses.replace(TEST_SETTINGS, store=f"sqlite:///{tmp_path}/h.db",
                                   api_keys=f"{KEY},{OTHER}", **changes)
    app = App(settings, engines=dataclasses.replace(engines, responder=llm))
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        try:
            yield app, f"http://{host}:{port}", llm
        finally:
            if app.store is not None:
                app.store.close()


def connect(url: str, key: str = KEY, resume: str | None = None) -> Any:
    query = {"voxwire_metrics": "1", **({"voxwire_resume": resume} if resume else {})}
    return AsyncOpenAI(api_key=key, base_url=f"{url}/v1").realtime.connect(
        model="voxwire", extra_query=query)


async def refusal(url: str, key: str, resume: str) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, key, resume) as conn:
            await conn.recv()
    reply = refused.value.response
    return reply.status_code, reply.body


async def test_a_resumed_session_goes_on_with_its_conversation(
        engines: Engines, speak: Speak, tmp_path: Path) -> None:
    async with serving(engines, tmp_path) as (app, url, llm):
        async with connect(url) as conn:
            created = await conn.recv()
            session_id = created.session.id
            await conn.session.update(session={"type": "realtime", "temperature": 0.0,
                                               "output_modalities": ["text"]})
            first = await spoken_turn(conn, speak("My name is Alice.", rate=RATE))
        done = next(e for e in first if e.type == "response.done")
        assert done.response.status in ANSWERED
        said = done.response.output[0].content[0].text
        # The connection is gone; a new one goes on with the same session.
        async with connect(url, resume=session_id) as conn:
            created = await conn.recv()
            assert created.type == "session.created" and created.session.id == session_id
            restored = [await conn.recv() for _ in range(4)]
            await conn.session.update(session={"type": "realtime", "temperature": 0.0,
                                               "output_modalities": ["text"]})
            second = await spoken_turn(conn, speak("What is my name?", rate=RATE))
        assert next(e for e in second if e.type == "response.done").response.status in ANSWERED
        assert isinstance(app.store, SqlStore)
        sessions = app.store.sessions()
    # The client was told what the session holds: the turn before, as words.
    assert [e.type for e in restored] == ["conversation.item.added", "conversation.item.done"] * 2
    items = [e.item for e in restored[1::2]]
    assert [(i.role, i.content[0].type) for i in items] == [("user", "input_text"),
                                                            ("assistant", "output_text")]
    assert words(items[0].content[0].text) == words("My name is Alice.")
    assert items[1].content[0].text == said
    # The model saw the first turn in the second's prompt.
    prompt = [(m.role, m.content) for m in llm.prompts[-1]]
    assert [role for role, _ in prompt] == ["system", "user", "assistant", "user"]
    assert words(str(prompt[1][1])) == words("My name is Alice.")
    assert words(str(prompt[3][1])) == words("What is my name?")
    # One session in the history, with both turns.
    assert [(s["id"], s["turns"]) for s in sessions] == [(session_id, 2)]


async def test_only_its_key_may_resume_a_session_and_only_for_a_while(
        engines: Engines, tmp_path: Path) -> None:
    async with serving(engines, tmp_path, resume_ttl_s=30.0) as (app, url, _):
        async with connect(url) as conn:
            session_id = (await conn.recv()).session.id
            # Still open here (its client lost it before the server noticed): a new
            # connection takes the session over, and the old one is closed.
            async with connect(url, resume=session_id) as again:
                assert (await again.recv()).session.id == session_id
                with pytest.raises(ConnectionClosedOK):
                    await conn.recv()
                assert [s.id for s in app.sessions] == [session_id]
        for key, resume in ((OTHER, session_id), (KEY, "sess_none")):
            status, body = await refusal(url, key, resume)
            assert status == 404 and b"session_not_found" in body, (key, resume)
        app.settings = dataclasses.replace(app.settings, resume_ttl_s=0.0)
        status, body = await refusal(url, KEY, session_id)
        assert status == 410 and b"session_expired" in body
        # A token minted by the session's key resumes it too.
        app.settings = dataclasses.replace(app.settings, resume_ttl_s=30.0)
        backend = AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1")
        token = (await backend.realtime.client_secrets.create(
            session={"type": "realtime"})).value
        await backend.close()
        async with connect(url, token, session_id) as conn:
            assert (await conn.recv()).session.id == session_id
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hello"}]})
            await events_until(conn, lambda e: e.type == "conversation.item.done")


async def test_without_a_history_nothing_can_be_resumed(engines: Engines) -> None:
    app = App(TEST_SETTINGS, engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        status, body = await refusal(f"http://{host}:{port}", "unused", "sess_x")
    assert status == 400 and b"resume_unavailable" in body
