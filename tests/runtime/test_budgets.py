"""Sessions cannot leak into or starve each other: conversation items, the outbox, image
decoding and the history store each have a budget, and the server's memory stays within
what docs/memory-budget.md promises."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.protocol import State as ClientState
from websockets.uri import parse_uri

from client.realtime import Float32
from server.edge.app import App
from server.runtime.engines import Engines, make_responder
from server.runtime.store import SQLiteStore, SqlStore, Store, open_store
from server.session.images import ImageLane
from tests.conftest import TEST_SETTINGS, padded
from tests.runtime.test_store import free_port
from tests.runtime.test_store_pg import Postgres, postgres  # noqa: F401  (a fixture)
from tests.support.fakes import FakeProvider, Reply

Event = dict[str, Any]
MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def serving(engines: Engines, *, fake: FakeProvider | None = None,
                  image_lane: ImageLane | None = None, store: Store | None = None,
                  **changes: Any) -> AsyncIterator[tuple[str, App]]:
    """A real server on loopback; answers from ``fake`` when given (quick and predictable)."""
    settings = TEST_SETTINGS.replace(max_events_per_s=10_000.0, max_bytes_per_s=1e9, **changes)
    if fake is not None:
        settings = settings.replace(llm_backend="openai", llm_model="m",
                                    llm_base_url=f"{fake.url}/v1", llm_api_key="k")
        engines = dataclasses.replace(
            engines, responder=make_responder(settings, None, engines.llm_lane))
    if image_lane is not None:
        engines = dataclasses.replace(engines, image_lane=image_lane)
    app = App(settings, engines=engines, store=store)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"ws://{host}:{port}/v1/realtime", app


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    provider = FakeProvider()
    await provider.start()
    yield provider
    await provider.stop()


def opened(url: str, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[ClientConnection]:
    return connect(url, max_size=None, **kwargs)


class NotReading:
    """A client that opens a session, then only writes: it never reads a byte after the
    handshake, from a socket with a small receive buffer, so what the server sends backs
    up in the server. Blocking I/O, in a thread of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sent = 0

    def open(self) -> None:
        parts = urlsplit(self.url)
        self.sock.connect((parts.hostname or "", parts.port or 0))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.state is not ClientState.OPEN:
            self.protocol.receive_data(self.sock.recv(65536))
            assert self.protocol.handshake_exc is None, self.protocol.handshake_exc

    def send(self, events: list[Event]) -> None:
        with contextlib.suppress(OSError):  # closed under it, by `close`
            for event in events:
                self.protocol.send_text(json.dumps(event).encode())
                self._flush()
                self.sent += 1

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


async def send(ws: ClientConnection, event: Event) -> None:
    await ws.send(json.dumps(event))


async def until(ws: ClientConnection, stop: Callable[[Event], bool],
                seconds: float = 60) -> list[Event]:
    """Events up to and including the first for which ``stop`` is true."""
    seen: list[Event] = []

    async def read() -> None:
        async for message in ws:
            seen.append(json.loads(message))
            if stop(seen[-1]):
                return
        raise AssertionError(f"closed before the awaited event; saw {kinds(seen)[-8:]}")

    await asyncio.wait_for(read(), seconds)
    return seen


def kinds(events: list[Event]) -> list[str]:
    return [e["error"]["code"] if e["type"] == "error" else e["type"] for e in events]


def text_item(text: str, **more: Any) -> Event:
    return {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}],
        **more}}


def is_done(event: Event) -> bool:
    return bool(event["type"] == "response.done")


async def answering(ws: ClientConnection, modalities: tuple[str, ...] = ("text",)
                    ) -> list[Event]:
    """Ask for a response; every event up to its `response.done`."""
    await send(ws, {"type": "response.create",
                    "response": {"output_modalities": list(modalities)}})
    return await until(ws, is_done)


async def store_codes_of_turn(ws: ClientConnection, text: str) -> list[str]:
    """One typed question answered in full; the store's error codes it brought."""
    await send(ws, text_item(text))
    events = [*await until(ws, lambda e: e["type"] == "conversation.item.done"),
              *await answering(ws)]
    assert events[-1]["response"]["status"] == "completed"
    return [c for c in kinds(events) if c.startswith("store")]


async def answer(ws: ClientConnection, modalities: tuple[str, ...] = ("text",)) -> Event:
    return (await answering(ws, modalities))[-1]


def peak_kib() -> int:
    """The process's peak resident memory since `reset_peak`, in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return peak_kib()


def png(width: int, height: int) -> str:
    """A data URI of a single-colour PNG: tiny to send, ``width * height`` pixels to decode."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def bomb() -> str:
    """36 MP in about a hundred KB: under the old 40 MP ceiling, over today's 16 MP."""
    return png(6000, 6000)


@pytest.fixture(scope="module")
def big_image() -> str:
    """12 MP, a photo's worth: allowed, and a decode that takes a while."""
    return png(4000, 3000)


# ---------------------------------------------------------------- item ids (finding 13)


async def test_a_bad_item_id_is_refused_and_later_answers_still_work(
        engines: Engines, fake: FakeProvider) -> None:
    async with serving(engines, fake=fake) as (url, _), opened(url) as ws:
        await until(ws, lambda e: e["type"] == "session.created")
        for bad in (42, {"a": 1}, "", "x" * 65, "caf\u00e9", "tab\there"):
            await send(ws, {**text_item("Hi."), "event_id": "bad"} | {
                "item": {**text_item("Hi.")["item"], "id": bad}})
            refused = (await until(ws, lambda e: e["type"] == "error"))[-1]["error"]
            assert (refused["code"], refused["param"], refused["event_id"]) == (
                "invalid_value", "item.id", "bad"), bad
        await send(ws, text_item("Hello.", id="mine"))
        await until(ws, lambda e: e["type"] == "conversation.item.done")
        await send(ws, text_item("Again.", id="mine"))
        refused = (await until(ws, lambda e: e["type"] == "error"))[-1]["error"]
        assert refused["code"] == "item_id_duplicate"
        for _ in range(2):
            done = await answer(ws)
            assert done["response"]["status"] == "completed", done


# ---------------------------------------------------------------- conversation items


async def test_an_item_with_too_much_text_is_refused(engines: Engines) -> None:
    async with serving(engines) as (url, app), opened(url) as ws:
        await send(ws, {**text_item("word " * 7000), "event_id": "huge"})
        refused = (await until(ws, lambda e: e["type"] == "error"))[-1]["error"]
        await send(ws, text_item("Small."))
        await until(ws, lambda e: e["type"] == "conversation.item.done")
        session = next(iter(app.sessions))
        assert [item["content"][0]["text"] for item in session.conv.items] == ["Small."]
    assert (refused["code"], refused["event_id"]) == ("item_too_large", "huge")
    assert "at most 32768" in refused["message"]


async def test_client_items_are_bounded_by_count_and_bytes(engines: Engines) -> None:
    """1,000 items at most; 16 MiB at most: beyond, `conversation_full`, until the client
    deletes some."""
    async with serving(engines) as (url, _), opened(url) as ws:
        await until(ws, lambda e: e["type"] == "session.created")
        for n in range(1001):
            await send(ws, text_item(f"item {n}", id=f"i{n}"))
        seen = await until(ws, lambda e: e["type"] == "error")
        assert seen[-1]["error"]["code"] == "conversation_full"
        assert kinds(seen).count("conversation.item.added") == 1000
        await send(ws, {"type": "conversation.item.delete", "item_id": "i0"})
        await send(ws, text_item("room again"))
        await until(ws, lambda e: e["type"] == "conversation.item.added")

    async with serving(engines) as (url, app), opened(url) as ws:
        await until(ws, lambda e: e["type"] == "session.created")
        piece = "word " * 6000  # 30 KB, under the 32 KiB an item may hold
        # Read while sending: each item comes back twice, uncompressed.
        reading = asyncio.create_task(until(ws, lambda e: e["type"] == "error", 120))
        for n in range(600):  # 18 MB
            if reading.done():
                break
            await send(ws, text_item(piece, id=f"i{n}"))
        seen = await reading
        assert seen[-1]["error"]["code"] == "conversation_full"
        session = next(iter(app.sessions))
        assert 500 < len(session.conv.items) < 600
        assert session.conv.bytes <= 16 * MiB


async def test_a_spoken_turn_makes_room_by_dropping_the_oldest_items(
        engines: Engines, fake: FakeProvider, speak: Callable[..., Float32]) -> None:
    """A full conversation never breaks a voice conversation: the server's own items (the
    user's words, the answer) push the oldest items out, each with its `item.deleted`."""
    async with serving(engines, fake=fake) as (url, app), opened(url) as ws:
        await send(ws, {"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": None}}}})
        for n in range(1000):
            await send(ws, text_item(f"item {n}", id=f"i{n}"))
        await until(ws, lambda e: e.get("item", {}).get("id") == "i999"
                    and e["type"] == "conversation.item.done")
        speech = padded(speak("What time is it?", rate=24000), 24000, 200, 300)
        pcm = (speech * 32767).astype("<i2").tobytes()
        await send(ws, {"type": "input_audio_buffer.append",
                        "audio": base64.b64encode(pcm).decode()})
        await send(ws, {"type": "input_audio_buffer.commit"})
        seen = await until(ws, lambda e: e["type"].endswith("transcription.completed"))
        done = await answer(ws, ("text",))
        session = next(iter(app.sessions))
        ids = [item["id"] for item in session.conv.items]
    deleted = [e["item_id"] for e in seen if e["type"] == "conversation.item.deleted"]
    assert deleted == ["i0"]
    assert "error" not in kinds(seen)
    assert done["response"]["status"] == "completed"
    assert ids[0] == "i2" and len(ids) == 1000  # the answer pushed out i1
    assert ids[-1] == done["response"]["output"][0]["id"]


# ---------------------------------------------------------------- the outbox


async def test_a_client_that_stops_reading_holds_a_bounded_outbox(engines: Engines) -> None:
    """Items of 1 MB echoed back (twice each) to a client that reads nothing: the server
    holds at most `max_outbox_bytes` of them, not `send_queue` of them."""
    budget: dict[str, Any] = {"max_item_bytes": 2 * MiB, "max_conversation_bytes": 64 * MiB,
                              "max_outbox_bytes": 2 * MiB, "input_queue": 2,
                              "max_event_bytes": 4 * MiB}
    piece = "x" * MiB
    async with serving(engines, **budget) as (url, app):
        client = NotReading(url)
        await asyncio.to_thread(client.open)
        flood: list[Event] = []
        for n in range(60):
            flood += [text_item(piece, id=f"i{n}"),
                      {"type": "conversation.item.delete", "item_id": f"i{n}"}]
        sender = asyncio.create_task(asyncio.to_thread(client.send, flood))
        session = next(iter(app.sessions))
        most = 0
        for _ in range(40):  # 8 s, less than the edge waits before it drops the client
            most = max(most, sum(len(json.dumps(event)) for event, _ in _queued(session.outbox)))
            await asyncio.sleep(0.2)
        client.close()
        await sender
    print(f"the outbox held at most {most / MiB:.1f} MiB; the client sent {client.sent} events")
    assert client.sent < len(flood)  # the server stopped taking them in
    assert most > MiB  # after its outbox filled up
    assert most <= 2 * MiB + 4096  # to its budget: an event that would cross it waits


def _queued(outbox: Any) -> list[tuple[Event, Any]]:
    """What waits in an outbox, measured here rather than by its own estimate."""
    return [(event, on_sent) for event, on_sent, _ in outbox._events]


# ---------------------------------------------------------------- images


async def test_image_bombs_are_refused_before_a_pixel_is_decoded(engines: Engines,
                                                                  bomb: str) -> None:
    async with serving(engines) as (url, _):
        async def one(n: int) -> str:
            async with opened(url) as ws:
                await send(ws, {"type": "voxwire.input_image.append", "event_id": f"b{n}",
                                "image_url": bomb})
                refused = (await until(ws, lambda e: e["type"] == "error", 5))[-1]
                return str(refused["error"]["code"])

        before = reset_peak()
        codes = await asyncio.gather(*(one(n) for n in range(3)))
        grown_mib = (peak_kib() - before) / 1024
    assert codes == ["image_too_large"] * 3
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"


async def test_images_decode_in_one_lane_shared_by_all_sessions(
        engines: Engines, big_image: str) -> None:
    """Six sessions send a 12 MP image at once; one thread decodes, two images may wait:
    the rest are refused at once with `server_busy`, and the sessions go on."""
    lane = ImageLane(workers=1, max_jobs=2)
    async with serving(engines, image_lane=lane) as (url, _):
        async def one(n: int) -> str:
            async with opened(url) as ws:
                await until(ws, lambda e: e["type"] == "session.created")
                item = {"type": "message", "role": "user", "content": [
                    {"type": "input_image", "image_url": big_image}]}
                await send(ws, {"type": "conversation.item.create", "item": item})
                seen = await until(ws, lambda e: e["type"] in ("error",
                                                                "conversation.item.added"))
                return kinds(seen)[-1]

        before = reset_peak()
        results = await asyncio.gather(*(one(n) for n in range(6)))
        grown_mib = (peak_kib() - before) / 1024
    assert results.count("conversation.item.added") >= 2
    assert "server_busy" in results
    assert set(results) <= {"conversation.item.added", "server_busy"}
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"
    assert lane.jobs == 0
    lane.close()


# ---------------------------------------------------------------- the history store


@pytest.fixture(params=["sqlite", "postgresql"])
def down_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that cannot be written: a SQLite file under a plain file, or a PostgreSQL
    server that is stopped (nothing listens on its port)."""
    if request.param == "sqlite":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("")
        return f"sqlite:///{blocker}/history.db"
    pytest.importorskip("psycopg")
    return f"postgresql://voxwire:pw@127.0.0.1:{free_port()}/voxwire"


async def test_sessions_run_while_the_store_is_down(
        engines: Engines, fake: FakeProvider, down_store: str,
        caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(down_store)
    try:
        async with serving(engines, fake=fake, store=store) as (url, _), opened(url) as ws:
            first = await until(ws, lambda e: e["type"] == "error", 30)
            seen: list[Event] = []
            for question in ("Hello?", "Still there?"):
                await send(ws, text_item(question))
                seen += [*await until(ws, lambda e: e["type"] == "conversation.item.done"),
                         *await answering(ws)]
    finally:
        store.close()
    assert kinds(first) == ["session.created", "store_unavailable"]
    assert "error" not in [e["type"] for e in seen]  # told once, not every turn
    assert [e["response"]["status"] for e in seen if is_done(e)] == ["completed"] * 2
    assert "history store unavailable" in caplog.text


async def test_a_store_lost_mid_session_is_reported_once_and_found_again(
        engines: Engines, fake: FakeProvider, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    store = SQLiteStore(db)
    try:
        async with serving(engines, fake=fake, store=store) as (url, _), opened(url) as ws:
            codes: list[str] = []
            for n in range(5):
                if n == 1:  # the database goes away: a folder now stands where it was
                    await store._lane.run(store._disconnect)
                    for path in db.parent.glob("history.db*"):
                        path.unlink()
                    db.mkdir()
                if n == 3:  # and comes back
                    db.rmdir()
                codes += await store_codes_of_turn(ws, f"Question {n}.")
        turns = await asyncio.to_thread(lambda: store.turns(store.sessions()[0]["id"]))
    finally:
        store.close()
    assert codes == ["store_unavailable"]
    assert [t["user_text"] for t in turns] == ["Question 3.", "Question 4."]


async def test_a_postgres_stopped_mid_session_is_reported_once_and_found_again(
        engines: Engines, fake: FakeProvider, postgres: Postgres) -> None:  # noqa: F811
    store = open_store(postgres.new_database())
    assert isinstance(store, SqlStore)
    start = ("-o", f"-p {postgres.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={postgres.folder}", "start")
    codes: list[str] = []
    try:
        async with serving(engines, fake=fake, store=store) as (url, _), opened(url) as ws:
            for n in range(4):
                if n == 1:
                    await asyncio.to_thread(postgres.ctl, "-m", "fast", "stop")
                if n == 2:
                    await asyncio.to_thread(postgres.ctl, *start)
                codes += await store_codes_of_turn(ws, f"Question {n}.")
        turns = await asyncio.to_thread(lambda: store.turns(store.sessions()[0]["id"]))
    finally:
        with contextlib.suppress(Exception):  # other tests need it running
            await asyncio.to_thread(postgres.ctl, *start)
        store.close()
    assert codes == ["store_unavailable"]
    assert [t["user_text"] for t in turns] == ["Question 0.", "Question 2.", "Question 3."]


async def test_history_is_capped_per_field_and_per_session(
        engines: Engines, fake: FakeProvider, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "history.db")
    long_text = "word " * 6000  # 30 KB: an item may hold it, the history keeps 16 KiB of it
    try:
        async with serving(engines, fake=fake, store=store,
                           max_store_bytes_per_session=64 * 1024) as (url, _), \
                opened(url) as ws:
            codes: list[str] = []
            for _ in range(6):
                codes += await store_codes_of_turn(ws, long_text)
        turns = await asyncio.to_thread(lambda: store.turns(store.sessions()[0]["id"]))
    finally:
        store.close()
    assert codes == ["store_quota_exceeded"]  # once, not on every later turn
    assert len(turns) == 3
    for turn in turns:
        assert len(turn["user_text"].encode()) <= 16 * 1024
        assert turn["user_text"].endswith(" [truncated]")


async def test_a_full_store_takes_no_more_turns(engines: Engines, fake: FakeProvider,
                                                tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "history.db")
    try:
        async with serving(engines, fake=fake, store=store, store_max_mb=0.001) as (url, _), \
                opened(url) as ws:
            codes: list[str] = []
            for question in ("One?", "Two?"):
                codes += await store_codes_of_turn(ws, question)
        turns = await asyncio.to_thread(lambda: store.turns(store.sessions()[0]["id"]))
    finally:
        store.close()
    assert codes == ["store_quota_exceeded"]
    assert turns == []


# ---------------------------------------------------------------- the whole budget


def session_budget(settings: Any) -> int:
    """What one session may hold, as docs/memory-budget.md adds it up."""
    return int(2 * settings.max_buffer_s * 16000 * 4  # input audio and the turns waiting
               + settings.max_conversation_bytes + settings.max_outbox_bytes
               + settings.input_queue * settings.max_message_bytes  # WebSocket read-ahead
               + 2 * settings.max_message_bytes)  # the message in hand, and its parsed JSON


def images_budget(settings: Any) -> int:
    """The image lane, server-wide: each thread decodes at most max_image_pixels, at about
    6 bytes a pixel (4 of RGBA, plus the downscaling's intermediate image)."""
    return int(settings.image_workers * settings.max_image_pixels * 6)


async def test_memory_stays_within_the_documented_budget(
        engines: Engines, fake: FakeProvider, bomb: str, big_image: str) -> None:
    """Five misbehaving sessions at once: one piles up 1 MB items, one asks for a long
    spoken answer and never reads, three send image bombs. The server's peak memory grows
    by less than the budget of five sessions plus the image lane's."""
    story = " ".join(f"This is sentence {n} of a long story." for n in range(80))
    fake.script(Reply(text="Ready."), *[Reply(text=story)] * 3)
    budget: dict[str, Any] = {"max_conversation_bytes": 2 * MiB, "max_outbox_bytes": 1 * MiB,
              "input_queue": 4, "max_message_bytes": 2 * MiB, "max_event_bytes": 2 * MiB}
    megabyte, piece = "x" * MiB, "word " * 6000

    async def hoarder(url: str) -> list[str]:
        async with opened(url) as ws:
            too_big = json.dumps(text_item(megabyte))  # encoded once: the client stays small
            for _ in range(150):
                await ws.send(too_big)
            for n in range(100):
                await send(ws, text_item(piece, id=f"small{n}"))
            await send(ws, text_item("last", id="last"))
            seen = await until(ws, lambda e: e.get("error", {}).get("event_id") == "last"
                               or e.get("item", {}).get("id") == "last", 60)
            return kinds(seen)

    async def never_reads(url: str) -> None:
        client = NotReading(url)
        await asyncio.to_thread(client.open)
        events = [{"type": "response.create", "response": {"output_modalities": ["audio"]}},
                  *(text_item(piece, id=f"echo{n}") for n in range(100))]
        sender = asyncio.create_task(asyncio.to_thread(client.send, events))
        await asyncio.sleep(6)
        client.close()
        await sender

    async def bomber(url: str, image: str) -> str:
        async with opened(url) as ws:
            await send(ws, {"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_image", "image_url": image}]}})
            seen = await until(ws, lambda e: e["type"] in ("error", "conversation.item.added"))
            return kinds(seen)[-1]

    async with serving(engines, fake=fake, **budget) as (url, app):
        async with opened(url) as ws:  # models allocate their working memory once, on first use
            await send(ws, text_item("Warm up."))
            await answer(ws, ("audio",))
        before = reset_peak()
        outcomes = await asyncio.gather(
            hoarder(url), asyncio.wait_for(never_reads(url), 30),
            bomber(url, bomb), bomber(url, bomb), bomber(url, big_image))
        grown = (peak_kib() - before) * 1024
        settings = app.settings
    hoarded = outcomes[0]
    assert hoarded.count("item_too_large") == 150
    assert "conversation_full" in hoarded
    assert list(outcomes[2:]) == ["image_too_large", "image_too_large", "conversation.item.added"]
    allowed = 5 * session_budget(settings) + images_budget(settings)
    print(f"peak grew {grown / MiB:.0f} MiB; budget {allowed / MiB:.0f} MiB")
    assert grown < allowed, f"peak memory grew {grown / MiB:.0f} MiB, budget {allowed / MiB:.0f}"


# ---------------------------------------------------------------- the estimates


def test_json_size_estimates_the_encoded_size_without_encoding() -> None:
    from realtime import encode, json_size

    event = {"type": "conversation.item.added", "item": {
        "id": "i1", "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "word " * 1000}, {"nested": [[[1, 2.5]]]}]}}
    encoded = len((encode(event, "ga") or "").encode())
    assert encoded * 0.9 <= json_size(event) <= encoded * 1.2
    accented = {"type": "x", "text": "\u00e9\u4e2d\U0001f600" * 100}
    assert json_size(accented) >= len((encode(accented, "ga") or "").encode())  # as sent
    deep: Any = []
    for _ in range(100_000):  # deeper than any recursion limit
        deep = [deep]
    assert json_size(deep) > 100_000


def test_stored_text_is_cut_at_a_character_boundary_and_marked() -> None:
    from server.runtime.store import TRUNCATED, capped

    assert capped("short", 100) == "short"
    cut = capped("\u00e9" * 1000, 101)
    assert cut.endswith(TRUNCATED) and len(cut.encode()) <= 101
    assert set(cut.removesuffix(TRUNCATED)) == {"\u00e9"}
