"""Sessions must not leak into or starve each other: limits and checks at the edge, over a
real server on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client.realtime import silence, write_wav
from server.edge.app import App
from server.errors import ConfigError
from server.runtime.config import Settings
from server.runtime.engines import Engines
from tests.conftest import TEST_SETTINGS
from tests.runtime.test_store import free_port, wait_healthy
from tests.support.browser_helpers import chromium, chromium_args, in_browser_thread

KEY = "sk-voxwire-edge"
CLEAR = json.dumps({"type": "input_audio_buffer.clear"})


@contextlib.asynccontextmanager
async def edge(engines: Engines, **changes: Any) -> AsyncIterator[tuple[App, str]]:
    """A real server with these settings: the app and its host:port."""
    app = App(TEST_SETTINGS.replace(**changes), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield app, f"{host}:{port}"


async def raw(hostport: str, data: bytes, *, source: str | None = None,
              wait_s: float = 10) -> bytes:
    """Send bytes as they are; everything the server answers until it closes."""
    host, port = hostport.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(
        host, int(port), local_addr=(source, 0) if source else None)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()


def status_of(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


async def next_of(ws: ClientConnection, *kinds: str) -> dict[str, Any]:
    """The next event of one of these types, or the next error."""
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if event["type"] in (*kinds, "error"):
            return event


def error_code(event: dict[str, Any]) -> str | None:
    return event["error"]["code"] if event["type"] == "error" else None


async def still_serving(ws: ClientConnection) -> None:
    """The session goes on: it still answers an event."""
    await ws.send(CLEAR)
    assert (await next_of(ws, "input_audio_buffer.cleared"))["type"] == \
        "input_audio_buffer.cleared"


# ---------------------------------------------------------------- 4: big JSON, bytes


async def test_a_large_event_without_an_image_is_refused_and_the_session_goes_on(
        engines: Engines) -> None:
    async with edge(engines) as (_, hostport), connect(f"ws://{hostport}/v1/realtime") as ws:
        await next_of(ws, "session.created")
        padding = "x" * (1024 * 1024 + 10)
        await ws.send(json.dumps({"type": "input_audio_buffer.clear", "pad": padding}))
        assert error_code(await next_of(ws, "input_audio_buffer.cleared")) == \
            "message_too_large"
        # mentions input_image, but is no image event: refused once parsed
        await ws.send(json.dumps({"type": "input_audio_buffer.clear", "event_id": "big",
                                  "note": "input_image", "pad": padding}))
        event = await next_of(ws, "input_audio_buffer.cleared")
        assert error_code(event) == "message_too_large" and event["error"]["event_id"] == "big"
        await still_serving(ws)


def noise_png(width: int, height: int) -> str:
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def test_image_events_keep_the_larger_limit(engines: Engines) -> None:
    image = noise_png(900, 600)  # about 2 MiB of base64
    assert 1024 * 1024 < len(image) < 4 * 1024 * 1024
    async with edge(engines, max_bytes_per_s=1e8) as (_, hostport), connect(
            f"ws://{hostport}/v1/realtime") as ws:
        await next_of(ws, "session.created")
        await ws.send(json.dumps({"type": "voxwire.input_image.append", "image_url": image}))
        await still_serving(ws)  # no error came first
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": image}]}}))
        added = await next_of(ws, "conversation.item.added")
        assert added["type"] == "conversation.item.added", added


async def test_a_message_of_many_small_values_does_not_stall_the_server(
        engines: Engines) -> None:
    """Parsing costs by the value: 11 MB of small keys is half a second of one core, and a
    worker thread would not help (json's parser holds the GIL). With the loop in debug mode,
    a callback over 100 ms is reported and fails the test (conftest)."""
    asyncio.get_running_loop().set_debug(True)
    keys = ",".join(f'"k{n}":{n}' for n in range(700_000))
    message = '{"type":"voxwire.input_image.append","image_url":"data:,",' + keys + "}"
    async with edge(engines, max_message_bytes=16 * 1024 * 1024, max_bytes_per_s=1e9) as (
            _, hostport), connect(f"ws://{hostport}/v1/realtime", max_size=None) as ws:
        await next_of(ws, "session.created")
        await ws.send(message)
        assert error_code(await next_of(ws, "input_audio_buffer.cleared")) == \
            "message_too_complex"
        await still_serving(ws)


async def test_a_byte_flood_is_throttled_and_the_session_goes_on(engines: Engines) -> None:
    padding = "x" * 100_000
    async with edge(engines, max_bytes_per_s=32 * 1024, max_message_bytes=256 * 1024,
                    max_event_bytes=128 * 1024) as (_, hostport), connect(
            f"ws://{hostport}/v1/realtime") as ws:
        await next_of(ws, "session.created")
        for _ in range(10):  # 1 MB at once: ten events, well under the event rate
            await ws.send(json.dumps({"type": "input_audio_buffer.clear", "pad": padding}))
        codes = []
        for _ in range(10):
            with contextlib.suppress(TimeoutError):
                event = await asyncio.wait_for(next_of(ws, "input_audio_buffer.cleared"), 2)
                codes.append(error_code(event) or event["type"])
        assert "rate_limited" in codes
        assert codes.count("input_audio_buffer.cleared") < 10
        await asyncio.sleep(1.0)
        await still_serving(ws)


async def test_no_compression_and_a_short_read_ahead(engines: Engines) -> None:
    assert Settings().input_queue == 4
    async with edge(engines) as (_, hostport), connect(
            f"ws://{hostport}/v1/realtime", compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await next_of(ws, "session.created")


# ---------------------------------------------------------------- 7 and 12: the HTTP edge

TRICKLER = """
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
head = (b"POST /v1/realtime/sessions HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"
        + b"".join(b"X-Pad-%d: %s\\r\\n" % (n, b"p" * 60) for n in range(110))
        + b"Content-Length: 60000\\r\\n\\r\\n")
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(head)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for s in socks:
        s.send(b" ")
    sent += 1
    time.sleep(0.0002)
print(sent)
"""


async def trickled(port: str) -> tuple[float, int]:
    """The CPU-seconds this process used while TRICKLER sent to ``port``, and the bytes it
    sent on each connection."""
    before = time.process_time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TRICKLER, port, "3", stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    return time.process_time() - before, int(out)


async def test_a_trickled_post_costs_little_cpu(engines: Engines) -> None:
    """Two POSTs with a 7 KB head, their bodies a byte at a time (a few KB a second, over
    the minimum rate): the server used to parse the whole head again for every byte. Its
    cost is held to a few times that of a bare asyncio server reading the same bytes on
    the same machine (a fixed number of CPU-seconds failed on a slow one)."""

    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    floor = await asyncio.start_server(bare, "127.0.0.1", 0)
    async with floor:
        base, base_sent = await trickled(str(floor.sockets[0].getsockname()[1]))
    async with edge(engines, api_keys=KEY) as (_, hostport):
        used, sent = await trickled(hostport.rsplit(":", 1)[1])
    assert sent > 2000 and base_sent > 2000, (sent, base_sent)  # thousands of reads each
    per_byte, base_per_byte = used / sent, base / base_sent
    print(f"{used:.2f} CPU-seconds for {2 * sent} bytes; a bare reader {base:.2f} for "
          f"{2 * base_sent}")
    assert per_byte < 2.5 * base_per_byte, f"{used:.2f} CPU-s; a bare reader {base:.2f}"


async def test_a_stalled_or_crawling_body_gets_408(engines: Engines) -> None:
    head = (b"POST /v1/realtime/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
    async with edge(engines, api_keys=KEY) as (_, hostport):
        started = time.monotonic()
        reply = await raw(hostport, head)  # and then nothing
        assert status_of(reply)[0] == 408, reply
        assert status_of(reply)[1]["error"]["code"] == "request_timeout"
        assert time.monotonic() - started < 8  # before the 10 s opening timeout

        host, port = hostport.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head.replace(b"100", b"60000"))
        started = time.monotonic()

        async def crawl() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b" " * 100)  # 500 bytes a second: under the minimum rate
                    await asyncio.sleep(0.2)

        crawling = asyncio.create_task(crawl())
        reply = await asyncio.wait_for(reader.read(), 10)
        crawling.cancel()
        writer.close()
        assert status_of(reply)[0] == 408, reply
        assert time.monotonic() - started < 8


async def open_idle(hostport: str, count: int, source: str | None = None
                    ) -> list[asyncio.StreamWriter]:
    host, port = hostport.rsplit(":", 1)
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection(
            host, int(port), local_addr=(source, 0) if source else None)
        writers.append(writer)
    return writers


async def refused_at_once(hostport: str, source: str | None = None) -> bool:
    """Whether a new connection is closed without a word within a second."""
    try:
        reply = await raw(hostport, b"G", source=source, wait_s=1.0)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return reply == b""


async def test_connections_per_address_are_capped(engines: Engines) -> None:
    async with edge(engines, max_connections_per_ip=3) as (_, hostport), connect(
            f"ws://{hostport}/v1/realtime") as ws:
        await next_of(ws, "session.created")
        idle = await open_idle(hostport, 2)
        await asyncio.sleep(0.1)
        assert await refused_at_once(hostport)  # a session and two idle: full
        assert not await refused_at_once(hostport, source="127.0.0.2")  # another address
        await still_serving(ws)
        for writer in idle:
            writer.close()
        await asyncio.sleep(0.2)
        reply = await raw(hostport, get("/healthz", "Host: 127.0.0.1"))
        assert status_of(reply)[0] == 200  # room again


async def test_a_trusted_proxy_is_held_to_the_total_only(engines: Engines) -> None:
    async with edge(engines, max_connections_per_ip=2, max_pending_handshakes_per_ip=1,
                    trusted_proxies="127.0.0.0/30, ::1") as (_, hostport):
        idle = await open_idle(hostport, 4)  # a balancer's users, all from its address
        await asyncio.sleep(0.1)
        assert not await refused_at_once(hostport)
        idle += await open_idle(hostport, 2, source="127.0.0.5")  # not a proxy: capped
        await asyncio.sleep(0.1)
        assert await refused_at_once(hostport, source="127.0.0.5")
        for writer in idle:
            writer.close()
    with pytest.raises(ConfigError, match="--trusted-proxies: 'nginx'"):
        Settings(trusted_proxies="10.0.0.1,nginx")


async def test_unfinished_handshakes_are_capped(engines: Engines) -> None:
    async with edge(engines, max_pending_handshakes_per_ip=2, max_pending_handshakes=3) as (
            _, hostport):
        url = f"ws://{hostport}/v1/realtime"
        async with connect(url) as one, connect(url) as two:  # done: they do not count
            await next_of(one, "session.created")
            await next_of(two, "session.created")
            idle = await open_idle(hostport, 2)  # half-sent handshakes
            await asyncio.sleep(0.1)
            assert await refused_at_once(hostport)
            idle += await open_idle(hostport, 1, source="127.0.0.2")
            await asyncio.sleep(0.1)
            assert await refused_at_once(hostport, source="127.0.0.3")  # 3 in all
            await still_serving(one)
            for writer in idle:
                writer.close()
            await asyncio.sleep(0.2)
            async with connect(url) as three:
                await next_of(three, "session.created")


async def test_a_handshake_head_is_bounded(engines: Engines) -> None:
    """websockets would hold up to 128 headers of 8 KiB (1 MiB) per unfinished handshake."""
    pads = [f"X-Pad-{n}: {'p' * 7000}" for n in range(6)]
    async with edge(engines) as (_, hostport):
        status, body = status_of(await raw(hostport, get("/healthz", *pads)))
        assert status == 431 and body["error"]["code"] == "head_too_large"
        assert status_of(await raw(hostport, get("/healthz", *pads[:3])))[0] == 200


# ---------------------------------------------------------------- 8: origins and hosts


async def test_a_keyless_server_takes_only_its_own_and_local_origins(engines: Engines) -> None:
    async with edge(engines) as (_, hostport):
        url = f"ws://{hostport}/v1/realtime"
        port = hostport.rsplit(":", 1)[1]
        for origin in ("http://evil.example", "https://evil.example:8765", "null",
                       f"http://evil.example:{port}", "http://127.0.0.1.evil.example"):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, origin=origin):  # type: ignore[arg-type]
                    pass
            assert info.value.response.status_code == 403, origin
        for origin in (f"http://{hostport}", "http://localhost:3000", "http://127.0.0.1:9",
                       "http://[::1]:5173", "http://localhost"):
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                await next_of(ws, "session.created")
        async with connect(url) as ws:  # no Origin: the SDK, the CLI
            await next_of(ws, "session.created")
    async with edge(engines, api_keys=KEY) as (_, hostport), connect(  # a key is needed
            f"ws://{hostport}/v1/realtime", origin="http://shop.example",  # type: ignore[arg-type]
            additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await next_of(ws, "session.created")


async def test_a_keyless_server_checks_the_host_header(engines: Engines) -> None:
    async with edge(engines, allowed_hosts="voxwire.lan") as (_, hostport):
        for host in ("evil.example", f"evil.example:{hostport.rsplit(':', 1)[1]}",
                     "127.0.0.1.nip.io"):
            status, body = status_of(await raw(hostport, get("/healthz", f"Host: {host}")))
            assert status == 403 and body["error"]["code"] == "host_not_allowed", host
            status, _ = status_of(await raw(hostport, get("/v1/realtime", f"Host: {host}")))
            assert status == 403
        for host in (hostport, "localhost:8765", "127.0.0.1", "[::1]:80", "10.1.2.3:8765",
                     "voxwire.lan:8765", "VOXWIRE.LAN", "app.localhost"):
            reply = await raw(hostport, get("/healthz", f"Host: {host}"))
            assert status_of(reply)[0] == 200, host
    async with edge(engines, api_keys=KEY) as (_, hostport):  # keys: any name will do
        assert status_of(await raw(hostport, get("/healthz", "Host: voxwire.example")))[0] \
            == 200


# ---------------------------------------------------------------- 13: error paths


async def test_a_repeated_header_is_a_clear_400(engines: Engines) -> None:
    async with edge(engines, api_keys=KEY) as (_, hostport):
        for twice in (f"Authorization: Bearer {KEY}", "Origin: http://localhost"):
            request = get("/v1/realtime", f"Host: {hostport}", twice, twice,
                          "Upgrade: websocket", "Connection: Upgrade",
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                          "Sec-WebSocket-Version: 13")
            status, body = status_of(await raw(hostport, request))
            assert status == 400 and body["error"]["code"] == "duplicate_header", twice
        post = (f"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: {hostport}\r\n"
                f"Authorization: Bearer {KEY}\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Length: 2\r\n\r\n{}").encode()
        status, body = status_of(await raw(hostport, post))
        assert status == 400 and body["error"]["code"] == "duplicate_header"


async def test_huge_numbers_and_bad_indexes_are_clean_errors(engines: Engines) -> None:
    async with edge(engines) as (_, hostport), connect(f"ws://{hostport}/v1/realtime") as ws:
        await next_of(ws, "session.created")
        await ws.send('{"type": "input_audio_buffer.clear", "n": ' + "7" * 5000 + "}")
        assert error_code(await next_of(ws, "input_audio_buffer.cleared")) == "invalid_json"
        for index in ('"first"', "[0]", "1.5", "-1"):
            await ws.send('{"type": "conversation.item.truncate", "item_id": "x", '
                          f'"audio_end_ms": 0, "content_index": {index}, "event_id": "t"}}')
            event = await next_of(ws, "conversation.item.truncated")
            assert error_code(event) == "invalid_value", index
            assert event["error"]["param"] == "content_index"
        await still_serving(ws)


async def test_a_lone_surrogate_is_echoed_as_valid_utf8(engines: Engines) -> None:
    async with edge(engines) as (_, hostport), connect(f"ws://{hostport}/v1/realtime") as ws:
        await next_of(ws, "session.created")
        await ws.send('{"type": "conversation.item.create", "item": {"type": "message", '
                      '"role": "user", "content": [{"type": "input_text", '
                      '"text": "caf\\u00e9 \\ud800"}]}}')
        added = await next_of(ws, "conversation.item.added")
        assert added["item"]["content"][0]["text"] == "café \ud800"
        await ws.send('{"type": "session.update", "session": {"instructions": "\\udfff"}}')
        updated = await next_of(ws, "session.updated")
        assert updated["session"]["instructions"] == "\udfff"
        await still_serving(ws)


# ---------------------------------------------------------------- 14: defaults


async def test_metrics_need_a_key_on_a_keyed_server(engines: Engines) -> None:
    async with edge(engines, api_keys=KEY) as (_, hostport):
        status, body = status_of(await raw(hostport, get("/metrics")))
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        status, _ = status_of(await raw(hostport, get("/metrics", "Authorization: Bearer no")))
        assert status == 401
        reply = await raw(hostport, get("/metrics", f"Authorization: Bearer {KEY}"))
        assert status_of(reply)[0] == 200 and b"voxwire_" in reply
    async with edge(engines, api_keys=KEY, metrics_public=True) as (_, hostport):
        assert status_of(await raw(hostport, get("/metrics")))[0] == 200
    async with edge(engines) as (_, hostport):  # no keys: unchanged
        assert status_of(await raw(hostport, get("/metrics")))[0] == 200


async def test_healthz_does_not_show_why_loading_failed() -> None:
    app = App(TEST_SETTINGS.replace(asr_model="/nowhere/secret-folder/whisper"))
    async with app.start_server() as server:
        hostport = "{}:{}".format(*server.sockets[0].getsockname()[:2])
        with pytest.raises(Exception):  # noqa: B017 - whatever the engine raised
            await app.load()
        for path in ("/healthz", "/v1/realtime"):
            reply = await raw(hostport, get(path))
            assert reply.startswith(b"HTTP/1.1 503 "), reply
            assert b"model loading failed" in reply
            assert b"secret-folder" not in reply and b"Error" not in reply


@pytest.mark.parametrize("name", ["key", "api_key", "token"])
async def test_keys_in_the_query_string_are_refused(engines: Engines, name: str) -> None:
    async with edge(engines, api_keys=KEY) as (app, hostport):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{hostport}/v1/realtime?model=x&{name}={KEY}",
                               additional_headers={"Authorization": f"Bearer {KEY}"}):
                pass
        reply = info.value.response
        assert reply.status_code == 400
        assert json.loads(reply.body or b"")["error"]["code"] == "key_in_query"
        assert not app.sessions


def test_no_page_or_client_puts_a_key_in_a_url() -> None:
    root = Path(__file__).parents[2]
    in_url = re.compile(r"[?&](key|api_key|token|access_token)=")
    from_query = re.compile(r"""(query|search\w*)\.(get|has)\(["'](key|api_key|token)""")
    names = ["idle", "instructions", "url", "transport"]  # what the kiosk takes from its query
    for path in [*(root / "server" / "edge" / "static").iterdir(), *(root / "client").glob("*.py")]:
        text = path.read_text()
        assert not in_url.search(text) and not from_query.search(text), path
        if path.name == "kiosk.html":
            assert f"for (const name of {json.dumps(names)})" in text


# ---------------------------------------------------------------- 15: going away


async def test_drain_closes_connected_clients(engines: Engines) -> None:
    app = App(TEST_SETTINGS.replace(shutdown_grace_s=1.0), engines=engines)
    async with app.start_server() as server:
        hostport = "{}:{}".format(*server.sockets[0].getsockname()[:2])
        async with connect(f"ws://{hostport}/v1/realtime") as ws:
            await next_of(ws, "session.created")
            half = await open_idle(hostport, 1)
            started = time.monotonic()
            await asyncio.wait_for(app.drain(server), 5)
            assert time.monotonic() - started < 4
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1012
            half[0].close()


async def test_livez_and_readyz_tell_a_balancer_where_to_send_new_users(
        engines: Engines) -> None:
    async with edge(engines, max_sessions=1) as (app, hostport):
        host = f"Host: {hostport}"

        async def status(path: str) -> tuple[int, bytes]:
            reply = await raw(hostport, get(path, host))
            return int(reply.split(b" ", 2)[1]), reply.partition(b"\r\n\r\n")[2]

        assert await status("/livez") == (200, b"ok\n")
        assert await status("/readyz") == (200, b"ready\n")
        async with connect(f"ws://{hostport}/v1/realtime") as ws:
            await next_of(ws, "session.created")
            code, why = await status("/readyz")  # full: new users go elsewhere
            assert code == 503 and b"session limit" in why
            assert (await status("/livez"))[0] == 200
        for _ in range(50):  # the session closes once its client has gone
            if not app.sessions:
                break
            await asyncio.sleep(0.1)
        assert (await status("/readyz"))[0] == 200
        app.draining = True
        code, why = await status("/readyz")
        assert code == 503 and b"shutting down" in why
        assert (await status("/livez"))[0] == 200
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://{hostport}/v1/realtime"):
                pass
        assert refused.value.response.status_code == 503
        assert b"server_draining" in refused.value.response.body
    loading = App(TEST_SETTINGS, engines=None)
    async with loading.start_server() as server:
        hostport = "{}:{}".format(*server.sockets[0].getsockname()[:2])
        reply = await raw(hostport, get("/readyz", f"Host: {hostport}"))
        assert reply.startswith(b"HTTP/1.1 503") and b"loading" in reply
        assert (await raw(hostport, get("/livez", f"Host: {hostport}"))).startswith(
            b"HTTP/1.1 200")


GRACE_S = 2.0


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`voxwire serve` in its own process, healthy."""
    port = free_port()
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--store",
             "none", "--shutdown-grace-s", str(GRACE_S)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, proc)
            yield port, proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


async def test_sigterm_closes_connected_clients_and_exits_0(
        server_process: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, proc = server_process
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime") as ws:
        await next_of(ws, "session.created")
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), GRACE_S + 10)
    code = await asyncio.to_thread(proc.wait, GRACE_S + 10)
    assert ws.close_code == 1012
    assert code == 0
    assert time.monotonic() - started < GRACE_S + 5


# ---------------------------------------------------------------- 14: the kiosk's server

KIOSK_REFUSED = "talks only to the server it was loaded from"


async def test_the_kiosk_talks_only_to_its_own_server(engines: Engines, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "mic.wav", silence(500, 48000), 48000)

    async def visit(page_url: str) -> tuple[str, list[str]]:
        async with chromium(chromium_args(wav)) as browser:
            await browser.page.goto(page_url)
            await browser.page.wait_for_function(
                "() => document.querySelector('voxwire-widget')?.state?.connected"
                f" || document.body.innerText.includes({json.dumps(KIOSK_REFUSED)})",
                timeout=20000)
            return await browser.page.evaluate("() => document.body.innerText"), \
                browser.problems

    other = App(TEST_SETTINGS, engines=engines)
    opened: list[object] = []
    serve_session = other.handle

    async def counting(ws: Any) -> None:
        opened.append(ws)
        await serve_session(ws)

    other.handle = counting  # type: ignore[method-assign]
    async with other.start_server() as server:
        target = "ws://{}:{}/v1/realtime".format(*server.sockets[0].getsockname()[:2])
        async with edge(engines) as (_, hostport):
            text, problems = await in_browser_thread(
                lambda: visit(f"http://{hostport}/kiosk?url={target}"))
            assert KIOSK_REFUSED in text and not problems
            assert not opened and not other.webrtc.calls
            own = f"ws://{hostport}/v1/realtime"
            text, problems = await in_browser_thread(
                lambda: visit(f"http://{hostport}/kiosk?url={own}"))
            assert KIOSK_REFUSED not in text and not problems
        async with edge(engines, kiosk_any_server=True) as (_, hostport):
            text, problems = await in_browser_thread(
                lambda: visit(f"http://{hostport}/kiosk?url={target}"))
            assert KIOSK_REFUSED not in text and not problems
            assert len(opened) + len(other.webrtc.calls) == 1  # a call, or a WebSocket
        async with edge(engines, api_keys=KEY) as (_, hostport):  # the key after "#"
            text, problems = await in_browser_thread(
                lambda: visit(f"http://{hostport}/kiosk#key={KEY}"))
            assert KIOSK_REFUSED not in text and not problems


@pytest.mark.parametrize("name", ["max_event_bytes", "max_bytes_per_s", "max_connections_per_ip",
                                  "max_pending_handshakes_per_ip", "max_pending_handshakes",
                                  "max_tokens_per_key", "token_mints_per_s"])
def test_edge_limits_are_validated(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings(store="none", **{name: 0})


# ---------------------------------------------------------------- CORS for WebRTC offers


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *headers, f"Content-Length: {len(body)}",
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


def headers_of(reply: bytes) -> dict[str, str]:
    head = reply.partition(b"\r\n\r\n")[0].decode()
    return {k.lower(): v.strip() for k, _, v in
            (line.partition(":") for line in head.split("\r\n")[1:])}


async def test_a_page_on_an_allowed_origin_may_post_an_offer_and_read_the_answer(
        engines: Engines) -> None:
    shop, evil = "https://shop.example", "https://evil.example"
    async with edge(engines, api_keys=KEY, allowed_origins=shop) as (_, hostport):
        host = f"Host: {hostport}"
        asks = ("Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: authorization,content-type")
        reply = await raw(hostport, request("OPTIONS", "/v1/realtime/calls", host,
                                            f"Origin: {shop}", *asks))
        seen = headers_of(reply)
        assert status_of(reply)[0] == 204
        assert seen["access-control-allow-origin"] == shop
        assert seen["access-control-allow-methods"] == "POST"
        allowed = {h.strip().lower() for h in seen["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-openai-agents-sdk"} <= allowed
        status, body = status_of(await raw(hostport, request(
            "OPTIONS", "/v1/realtime/calls", host, f"Origin: {evil}", *asks)))
        assert status == 403 and body["error"]["code"] == "origin_not_allowed"
        # The offer's answer, an error here, is readable by the allowed page only.
        for origin, readable in ((shop, True), (evil, False)):
            reply = await raw(hostport, request(
                "POST", "/v1/realtime/calls", host, f"Origin: {origin}",
                f"Authorization: Bearer {KEY}", "Content-Type: application/sdp",
                body=b"not sdp"))
            seen = headers_of(reply)
            assert ("access-control-allow-origin" in seen) == readable, origin
            if readable:
                assert seen["access-control-expose-headers"] == "Location"
                assert status_of(reply)[0] == 400
            else:
                assert status_of(reply)[0] == 403


async def test_no_webrtc_refuses_offers_without_using_up_a_token(engines: Engines) -> None:
    async with edge(engines, api_keys=KEY, no_webrtc=True) as (app, hostport):
        token, _ = app.tokens.mint("k", {}, 60)
        status, body = status_of(await raw(hostport, request(
            "POST", "/v1/realtime/calls", f"Host: {hostport}", f"Authorization: Bearer {token}",
            "Content-Type: application/sdp", body=b"v=0\r\n")))
        assert status == 404 and body["error"]["code"] == "webrtc_disabled"
        assert app.tokens.redeem(token) is not None  # still good for the WebSocket
