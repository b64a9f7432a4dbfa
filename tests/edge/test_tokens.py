"""Short-lived browser tokens: minted over plain HTTP with a real key, used where a key goes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client.realtime import silence, write_wav
from server.edge.app import App
from server.edge.tokens import Tokens
from server.runtime.engines import Engines
from tests.conftest import TEST_SETTINGS
from tests.support.browser_helpers import (
    chromium,
    chromium_args,
    in_browser_thread,
    other_site,
)

KEYS = "sk-voxwire-one,sk-voxwire-two"
Reply = tuple[int, dict[str, str], Any]


@contextlib.asynccontextmanager
async def serving(engines: Engines, **changes: Any) -> AsyncIterator[tuple[App, str]]:
    app = App(TEST_SETTINGS.replace(**{"api_keys": KEYS, **changes}), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield app, f"{host}:{port}"


# Keeps the session.created the widget got, from a page on another origin.
WIDGET_PAGE = """<!doctype html><html><head><link rel="icon" href="data:,"></head><body>
<script>document.addEventListener("voxwire-event", (e) => {{
  if (e.detail.type === "session.created") window.created = e.detail.session; }});</script>
<script src="http://{hostport}/voxwire.js"></script>
<voxwire-widget key="{token}"></voxwire-widget></body></html>"""


def _http(hostport: str, path: str, body: bytes | None, key: str | None,
          method: str = "POST") -> Reply:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"http://{hostport}{path}", data=body, headers=headers,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


async def post(hostport: str, path: str, payload: Any = None, key: str | None = "sk-voxwire-one",
               body: bytes | None = None, method: str = "POST") -> Reply:
    """A plain HTTP request from another thread (urllib blocks; the server shares this loop)."""
    data = body if body is not None else json.dumps(payload or {}).encode()
    if method == "GET":
        data = None
    return await asyncio.to_thread(_http, hostport, path, data, key, method)


async def raw(hostport: str, data: bytes, eof: bool = True) -> bytes:
    """Bytes as they are to the port; everything the server answers until it closes."""
    host, port = hostport.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def as_browser(hostport: str, token: str) -> Any:
    return connect(f"ws://{hostport}/v1/realtime",
                   subprotocols=["realtime", f"openai-insecure-api-key.{token}"])  # type: ignore[list-item]


async def created(ws: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.recv())
    assert event["type"] == "session.created", event
    return event["session"]  # type: ignore[no-any-return]


async def test_a_browser_connects_once_with_a_minted_token(engines: Engines) -> None:
    async with serving(engines) as (_, hostport):
        asked = {"model": "voxwire", "instructions": "Answer like a pirate.", "voice": "amy",
                 "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}
        status, headers, minted = await post(hostport, "/v1/realtime/sessions", asked)
        assert status == 200, minted
        assert headers["Connection"] == "close" and headers["Cache-Control"] == "no-store"
        token = minted["client_secret"]["value"]
        assert token.startswith("ek_") and len(token) > 40
        assert abs(minted["client_secret"]["expires_at"] - (time.time() + 60)) < 5
        # A voice the server does not have is taken; the one in effect is shown.
        assert minted["instructions"] == "Answer like a pirate."
        assert minted["voice"] == engines.voice
        async with as_browser(hostport, token) as ws:
            assert ws.subprotocol == "realtime"
            session = await created(ws)
            assert session["instructions"] == "Answer like a pirate."
            assert session["audio"]["output"]["voice"] == engines.voice
            assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 700
        with pytest.raises(InvalidStatus) as info:  # single use
            async with as_browser(hostport, token):
                pass
        assert info.value.response.status_code == 401


async def test_the_sdk_mints_and_connects_with_a_client_secret(engines: Engines) -> None:
    async with serving(engines) as (_, hostport):
        backend = AsyncOpenAI(api_key="sk-voxwire-two", base_url=f"http://{hostport}/v1")
        secret = await backend.realtime.client_secrets.create(
            session={"type": "realtime", "instructions": "Be brief.",
                     "audio": {"output": {"voice": "amy"}}},
            expires_after={"anchor": "created_at", "seconds": 600})
        assert secret.value.startswith("ek_")
        assert abs(secret.expires_at - (time.time() + 600)) < 5
        assert secret.session.type == "realtime"
        assert secret.session.instructions == "Be brief."
        browser = AsyncOpenAI(api_key=secret.value, base_url=f"http://{hostport}/v1")
        async with browser.realtime.connect(model="voxwire") as conn:
            event = await conn.recv()
            assert event.type == "session.created"
            assert event.session.instructions == "Be brief."
        with pytest.raises(InvalidStatus) as info:  # used up
            async with browser.realtime.connect(model="voxwire") as conn:
                await conn.recv()
        assert info.value.response.status_code == 401


async def test_minting_needs_a_real_key(engines: Engines) -> None:
    async with serving(engines) as (_, hostport):
        for key in (None, "sk-voxwire-three"):
            status, _, reply = await post(hostport, "/v1/realtime/client_secrets", key=key)
            assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        status, _, reply = await post(hostport, "/v1/realtime/client_secrets")
        token = reply["value"]
        status, _, _ = await post(hostport, "/v1/realtime/client_secrets", key=token)
        assert status == 401  # a token mints nothing
        async with as_browser(hostport, token) as ws:  # and was not used up by trying
            await created(ws)
    async with serving(engines, api_keys="") as (_, hostport):
        status, _, reply = await post(hostport, "/v1/realtime/sessions")
        assert status == 404 and reply["error"]["code"] == "tokens_disabled"


async def test_an_expired_token_is_refused(engines: Engines) -> None:
    async with serving(engines, token_ttl_s=1.0) as (app, hostport):
        first = (await post(hostport, "/v1/realtime/sessions"))[2]["client_secret"]["value"]
        await post(hostport, "/v1/realtime/sessions")
        await asyncio.sleep(1.2)
        with pytest.raises(InvalidStatus) as info:
            async with as_browser(hostport, first):
                pass
        assert info.value.response.status_code == 401
        await post(hostport, "/v1/realtime/sessions")
        assert len(app.tokens) == 1  # the expired ones were swept


async def test_token_sessions_count_against_the_minting_key(engines: Engines) -> None:
    async with serving(engines, max_sessions_per_key=1) as (_, hostport):
        token = (await post(hostport, "/v1/realtime/client_secrets"))[2]["value"]
        async with connect(f"ws://{hostport}/v1/realtime",
                           additional_headers={"Authorization": "Bearer sk-voxwire-one"}) as ws:
            await created(ws)
            async with as_browser(hostport, token) as second:
                with pytest.raises(ConnectionClosed):
                    await second.recv()
                assert second.close_code == 1013


async def test_live_tokens_are_capped(engines: Engines) -> None:
    async with serving(engines) as (app, hostport):
        app.tokens = Tokens(max_live=2)
        for _ in range(2):
            assert (await post(hostport, "/v1/realtime/client_secrets"))[0] == 200
        status, _, reply = await post(hostport, "/v1/realtime/client_secrets")
        assert status == 429 and reply["error"]["code"] == "too_many_tokens"


BAD_CONFIGS: list[tuple[str, Any, str]] = [
    ("/v1/realtime/sessions", {"temperature": 9}, "session.temperature"),
    ("/v1/realtime/sessions", {"turn_detection": "loud"}, "session.turn_detection"),
    ("/v1/realtime/sessions", [1, 2], "JSON object"),
    ("/v1/realtime/client_secrets", {"session": {"type": "translation"}}, "session.type"),
    ("/v1/realtime/client_secrets", {"session": {"instructions": 7}}, "session.instructions"),
    ("/v1/realtime/client_secrets", {"expires_after": {"seconds": 5}}, "expires_after.seconds"),
    ("/v1/realtime/client_secrets", {"expires_after": {"seconds": 99999}}, "expires_after"),
    ("/v1/realtime/client_secrets", {"expires_after": {"anchor": "now"}}, "expires_after"),
]


async def test_bad_session_config_is_a_clear_400(engines: Engines) -> None:
    async with serving(engines) as (app, hostport):
        for path, payload, says in BAD_CONFIGS:
            status, _, reply = await post(hostport, path, payload)
            assert status == 400 and says in reply["error"]["message"], (payload, reply)
        assert len(app.tokens) == 0


HEAD = b"POST /v1/realtime/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-voxwire-one\r\n"
MALFORMED: list[tuple[bytes, bool, int]] = [  # request, half-close after it, status
    (HEAD + b"\r\n", True, 411),  # no Content-Length
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", True, 411),
    (HEAD + b"Content-Length: 100000\r\n\r\n", False, 413),
    (HEAD + b"Content-Length: 12\r\n\r\n{not json!!}", False, 400),
    (HEAD + b"Content-Length: 20000\r\n\r\n" + b"[" * 20000, False, 400),  # deep nesting
    (HEAD + b"Content-Length: 3\r\n\r\n\xff\xfe{", False, 400),
    (HEAD + b"Content-Length: 5, 5\r\n\r\n{}   ", False, 400),
    (HEAD + b"Content-Length: 50\r\n\r\n{}", True, 400),  # ends before its body
    (HEAD + b"X-Long: " + b"a" * 9000 + b"\r\n\r\n", False, 431),
    (HEAD + b"Bad Header\r\nContent-Length: 2\r\n\r\n{}", False, 400),
    (b"POST /v1/realtime/nothing HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", False, 404),
    (b"OPTIONS /v1/realtime/sessions HTTP/1.1\r\nOrigin: http://a.example\r\n\r\n", False, 405),
    (b"DELETE /v1/realtime/sessions HTTP/1.1\r\n\r\n", False, 405),
    (b"POST\x00 / HTTP/1.1\r\n\r\n", False, 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", True, 400),  # a TLS hello
    (b"PO", True, 400),
]


async def test_malformed_http_gets_a_clean_4xx(engines: Engines) -> None:
    async with serving(engines) as (app, hostport):
        for request, eof, status in MALFORMED:
            reply = await raw(hostport, request, eof)
            assert reply.startswith(f"HTTP/1.1 {status} ".encode()), (request[:60], reply)
            assert b"Connection: close" in reply and b'"error"' in reply
            assert b"Access-Control-Allow" not in reply  # no CORS: minting is for backends
        assert b"Allow: POST" in await raw(hostport, MALFORMED[11][0], False)
        big = await post(hostport, "/v1/realtime/sessions", body=b" " * 5_000_000)
        assert big[0] == 413  # the whole oversized body sent, the answer still read
        status, headers, _ = await post(hostport, "/v1/realtime/sessions", method="GET")
        assert status == 405 and headers["Allow"] == "POST"
        assert len(app.tokens) == 0
        async with connect(f"ws://{hostport}/v1/realtime",
                           additional_headers={"Authorization": "Bearer sk-voxwire-one"}) as ws:
            await created(ws)  # WebSockets still work
        assert (await post(hostport, "/v1/realtime/sessions"))[0] == 200  # and so does minting


async def test_the_widget_connects_with_a_minted_token(engines: Engines, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "mic.wav", silence(500, 48000), 48000)
    async with serving(engines) as (app, hostport):
        asked = {"session": {"type": "realtime", "instructions": "Answer like a pirate."}}
        token = (await post(hostport, "/v1/realtime/client_secrets", asked))[2]["value"]

        async def run() -> tuple[dict[str, Any], list[str]]:
            with other_site(WIDGET_PAGE.format(hostport=hostport, token=token)) as site:
                async with chromium(chromium_args(wav)) as browser:
                    await browser.page.goto(site)
                    await browser.page.locator("voxwire-widget button.start").click()
                    await browser.wait_for("state.connected", 20)
                    await browser.page.wait_for_function("() => window.created", timeout=10000)
                    return await browser.page.evaluate("() => window.created"), browser.problems

        session, problems = await in_browser_thread(run)
        assert not problems
        assert session["instructions"] == "Answer like a pirate."
        assert len(app.tokens) == 0


async def test_one_key_cannot_fill_the_token_table(engines: Engines) -> None:
    async with serving(engines, max_tokens_per_key=3) as (app, hostport):
        for _ in range(3):
            assert (await post(hostport, "/v1/realtime/client_secrets"))[0] == 200
        status, _, reply = await post(hostport, "/v1/realtime/client_secrets")
        assert status == 429 and reply["error"]["code"] == "too_many_tokens_for_key"
        status, _, reply = await post(hostport, "/v1/realtime/client_secrets",
                                      key="sk-voxwire-two")
        assert status == 200  # another key is not locked out
        async with as_browser(hostport, reply["value"]) as ws:
            await created(ws)
        assert (await post(hostport, "/v1/realtime/client_secrets", key="sk-voxwire-two"))[0] \
            == 200
        assert len(app.tokens) == 4
    async with serving(engines, max_tokens_per_key=1) as (app, hostport):
        token = (await post(hostport, "/v1/realtime/client_secrets"))[2]["value"]
        async with as_browser(hostport, token) as ws:  # a used token frees its place
            await created(ws)
        assert (await post(hostport, "/v1/realtime/client_secrets"))[0] == 200


async def test_minting_is_rate_limited_per_key(engines: Engines) -> None:
    async with serving(engines, token_mints_per_s=1.0) as (_, hostport):
        codes = []
        for _ in range(3):  # a burst of two seconds' worth, then refused
            status, _, reply = await post(hostport, "/v1/realtime/client_secrets")
            codes.append(status if status == 200 else reply["error"]["code"])
        assert codes == [200, 200, "token_rate_limited"]
        status, _, _ = await post(hostport, "/v1/realtime/client_secrets", key="sk-voxwire-two")
        assert status == 200
        await asyncio.sleep(1.1)
        assert (await post(hostport, "/v1/realtime/client_secrets"))[0] == 200
