"""Replicas sharing one PostgreSQL (Debian's, a real server): browser tokens minted on one
and redeemed once on any, per-key session limits counted across them, and a dead replica's
sessions that stop counting once it stops beating."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import psycopg
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import server.edge.app as app_module
from server.edge import auth
from server.edge.app import App
from server.runtime.engines import Engines
from tests.conftest import TEST_SETTINGS
from tests.runtime.test_store_pg import Postgres, postgres  # noqa: F401  (a fixture)

KEY = "sk-voxwire-replicas"


@asynccontextmanager
async def replicas(engines: Engines, url: str, n: int, **changes: Any
                   ) -> AsyncIterator[list[tuple[App, str]]]:
    settings = dataclasses.replace(TEST_SETTINGS, store=url, api_keys=KEY, **changes)
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            app = App(settings, engines=engines)
            stack.callback(lambda a=app: a.store.close() if a.store is not None else None)
            server = await stack.enter_async_context(app.start_server())
            host, port = server.sockets[0].getsockname()[:2]
            out.append((app, f"{host}:{port}"))
        for _ in range(300):  # until each has said it lives
            with psycopg.connect(url, autocommit=True) as db:
                seen = db.execute("SELECT to_regclass('replicas') IS NOT NULL").fetchone()
                if seen and seen[0] and (row := db.execute(
                        "SELECT COUNT(*) FROM replicas").fetchone()) and row[0] >= n:
                    break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the replicas never wrote their heartbeat")
        yield out


async def mint(hostport: str) -> str:
    backend = AsyncOpenAI(api_key=KEY, base_url=f"http://{hostport}/v1")
    try:
        return (await backend.realtime.client_secrets.create(
            session={"type": "realtime", "instructions": "Be brief."})).value
    finally:
        await backend.close()


def opening(hostport: str, key: str = KEY) -> Any:
    return connect(f"ws://{hostport}/v1/realtime",
                   additional_headers={"Authorization": f"Bearer {key}"})


async def created(ws: Any) -> str:
    """The session id of session.created, or the close reason if the server refused."""
    try:
        return str(await asyncio.wait_for(ws.recv(), 10))
    except ConnectionClosed as exc:
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
        return f"closed {code}: {reason}"


async def test_a_token_minted_on_one_replica_opens_one_session_on_another(
        engines: Engines, postgres: Postgres) -> None:  # noqa: F811
    async with replicas(engines, postgres.new_database(), 3) as [(_, a), (_, b), (_, c)]:
        token = await mint(a)
        async with opening(b, token) as ws:
            first = await created(ws)
            assert '"session.created"' in first and "Be brief." in first
        for other in (c, b):  # used up, everywhere
            with pytest.raises(InvalidStatus) as refused:
                async with opening(other, token):
                    pass
            assert refused.value.response.status_code == 401


async def test_a_keys_session_limit_holds_across_replicas(
        engines: Engines, postgres: Postgres) -> None:  # noqa: F811
    async with replicas(engines, postgres.new_database(), 2,
                        max_sessions_per_key=2) as [(first, a), (_, b)]:
        async with opening(a) as one, opening(b) as two:
            assert "session.created" in await created(one)
            assert "session.created" in await created(two)
            async with opening(b) as three:  # the third, on either replica, is refused
                assert (await created(three)).startswith("closed 1013: this key is at its "
                                                         "session limit (across replicas)")
            async with opening(a) as three:
                assert (await created(three)).startswith("closed 1013")
        for _ in range(50):  # the leases go with the sessions
            if not first.sessions:
                break
            await asyncio.sleep(0.1)
        async with opening(a) as one, opening(b) as two:
            assert "session.created" in await created(one)
            assert "session.created" in await created(two)


async def test_a_dead_replicas_sessions_stop_counting(
        engines: Engines, postgres: Postgres,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.new_database()
    monkeypatch.setattr(app_module, "LEASE_TTL_S", 1.0)
    monkeypatch.setattr(app_module, "BEAT_S", 0.2)
    async with replicas(engines, url, 1, max_sessions_per_key=1) as [(_, a)]:
        # A replica that held this key's one session and died without a word: its lease
        # and its last beat are in the table, and nothing renews them.
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("INSERT INTO replicas VALUES ('replica_dead', "
                       "EXTRACT(EPOCH FROM clock_timestamp()))")
            db.execute("INSERT INTO leases VALUES ('sess_dead', %s, 'replica_dead')",
                       (auth.key_id(KEY),))
        async with opening(a) as ws:
            assert (await created(ws)).startswith("closed 1013")
        await asyncio.sleep(1.2)
        async with opening(a) as ws:
            assert "session.created" in await created(ws)
