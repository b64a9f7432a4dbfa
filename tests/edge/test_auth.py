"""Keys and origins at the WebSocket edge, with the real SDK and a raw browser-style client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.edge.app import App
from server.errors import ConfigError
from server.runtime.config import Settings
from server.runtime.engines import Engines
from tests.conftest import TEST_SETTINGS

KEYS = "sk-voxwire-one,sk-voxwire-two"


@contextlib.asynccontextmanager
async def guarded(engines: Engines, **changes: Any) -> AsyncIterator[str]:
    app = App(TEST_SETTINGS.replace(**changes), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"{host}:{port}"


async def test_the_sdk_needs_a_valid_key(engines: Engines) -> None:
    async with guarded(engines, api_keys=KEYS) as hostport:
        good = AsyncOpenAI(api_key="sk-voxwire-two", base_url=f"http://{hostport}/v1")
        async with good.realtime.connect(model="voxwire") as conn:
            assert (await conn.recv()).type == "session.created"
        bad = AsyncOpenAI(api_key="sk-voxwire-three", base_url=f"http://{hostport}/v1")
        with pytest.raises(InvalidStatus) as info:
            async with bad.realtime.connect(model="voxwire") as conn:
                await conn.recv()
        assert info.value.response.status_code == 401
        assert b"invalid API key" in info.value.response.body
        with pytest.raises(InvalidStatus):  # and no key at all
            async with connect(f"ws://{hostport}/v1/realtime"):
                pass


async def test_browsers_pass_the_key_as_a_subprotocol(engines: Engines) -> None:
    async with guarded(engines, api_keys=KEYS) as hostport, connect(
            f"ws://{hostport}/v1/realtime",
            subprotocols=["realtime", "openai-insecure-api-key.sk-voxwire-one"],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "realtime"
        assert '"session.created"' in str(await ws.recv())


async def test_origins_are_checked_for_browsers(engines: Engines) -> None:
    async with guarded(engines, allowed_origins="http://kiosk.local") as hostport:
        url = f"ws://{hostport}/v1/realtime"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        async with connect(url, origin="http://kiosk.local") as ws:  # type: ignore[arg-type]
            assert '"session.created"' in str(await ws.recv())
        async with connect(url) as ws:  # not a browser: no Origin header
            assert '"session.created"' in str(await ws.recv())


def test_no_public_listening_without_keys(engines: Engines) -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        App(Settings(host="0.0.0.0", store="none"), engines=engines)
    App(Settings(host="0.0.0.0", store="none", insecure_public=True), engines=engines)
    App(Settings(host="0.0.0.0", store="none", api_keys=KEYS), engines=engines)
    assert "sk-voxwire" not in repr(Settings(api_keys=KEYS))


async def test_sessions_per_key_are_limited(engines: Engines) -> None:
    async with guarded(engines, api_keys=KEYS, max_sessions_per_key=1) as hostport:
        url = f"ws://{hostport}/v1/realtime"
        one = {"Authorization": "Bearer sk-voxwire-one"}
        async with connect(url, additional_headers=one) as first:
            assert '"session.created"' in str(await first.recv())
            async with connect(url, additional_headers=one) as second:
                with pytest.raises(ConnectionClosed):
                    await second.recv()
                assert second.close_code == 1013
            other = {"Authorization": "Bearer sk-voxwire-two"}
            async with connect(url, additional_headers=other) as third:
                assert '"session.created"' in str(await third.recv())
        async with connect(url, additional_headers=one) as again:  # the first one left
            assert '"session.created"' in str(await again.recv())
