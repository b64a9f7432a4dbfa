"""Conversation history: stored before `response.done`, surviving a killed server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from server.runtime.store import SQLiteStore, Turn, open_store
from tests.conftest import ANSWERED


def turn(session: str, n: int) -> Turn:
    return Turn(f"resp_{n}", session, f"item_{n}", f"question {n}", f"answer {n}", "completed",
                False, "local", {"stages_ms": {"asr": 1.0}}, time.time(), time.time())


async def test_sqlite_store_records_lists_and_purges(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/h.db")
    assert isinstance(store, SQLiteStore)
    await store.open_session("s1", "voxwire", "ga")
    await store.record(turn("s1", 1))
    await store.record(turn("s1", 2))
    await store.close_session("s1")
    sessions = await asyncio.to_thread(store.sessions)
    assert [(s["id"], s["turns"]) for s in sessions] == [("s1", 2)]
    turns = await asyncio.to_thread(store.turns, "s1")
    assert [t["assistant_text"] for t in turns] == ["answer 1", "answer 2"]
    assert turns[0]["metrics"] == {"stages_ms": {"asr": 1.0}}
    assert await asyncio.to_thread(store.purge, 1.0) == 0  # a fresh session is kept
    assert await asyncio.to_thread(store.purge, -1.0) == 1  # everything older than "tomorrow"
    assert await asyncio.to_thread(store.turns, "s1") == []  # its turns went with it
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def killable_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    """`voxwire serve` in its own process, storing history in a fresh SQLite file."""
    db, port = tmp_path / "history.db", free_port()
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
             "--store", f"sqlite:///{db}", "--max-output-tokens", "20"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, proc)
            yield port, proc, db
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def export(db: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "server.cli", "history", "--store",
                          f"sqlite:///{db}", "--all"], capture_output=True, text=True,
                         check=True)
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


async def test_kill_9_loses_no_announced_turn(
        killable_server: tuple[int, subprocess.Popen[bytes], Path]) -> None:
    port, proc, db = killable_server
    client = AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1")
    done_ids = []
    async with client.realtime.connect(model="voxwire") as conn:
        for text in ("Hello there.", "How are you?"):
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": text}]})
            await conn.response.create(response={"output_modalities": ["text"]})
            async for ev in conn:
                if ev.type == "response.done":
                    done_ids.append(ev.response.id)
                    break
        os.kill(proc.pid, signal.SIGKILL)  # no chance to flush anything more
    exported = await asyncio.to_thread(export, db)
    turns = exported[0]["turns"]
    assert [t["response_id"] for t in turns] == done_ids
    assert [t["user_text"] for t in turns] == ["Hello there.", "How are you?"]
    assert all(t["assistant_text"] and t["status"] in ANSWERED for t in turns)


def wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("server did not become healthy")


async def test_sigterm_lets_the_answer_finish_saves_it_and_exits_0(
        killable_server: tuple[int, subprocess.Popen[bytes], Path]) -> None:
    port, proc, db = killable_server
    client = AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1")
    async with client.realtime.connect(model="voxwire") as conn:
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Tell me about the sea."}]})
        await conn.response.create()  # audio: a few seconds of work
        async for ev in conn:
            if ev.type == "response.output_audio.delta":
                break
        os.kill(proc.pid, signal.SIGTERM)
        final = None
        async for ev in conn:
            if ev.type == "response.done":
                final = ev.response
                break
    assert await asyncio.to_thread(proc.wait, 20) == 0
    assert final is not None and final.status in ANSWERED  # finished within the grace
    turns = (await asyncio.to_thread(export, db))[0]["turns"]
    assert [t["response_id"] for t in turns] == [final.id]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_history_database_is_private(tmp_path: Path) -> None:
    made = tmp_path / "made" / "voxwire"  # folders the store creates: this user's only
    store = open_store(f"sqlite:///{made}/history.db")
    await store.open_session("s1", "voxwire", "ga")
    await store.record(turn("s1", 1))
    assert mode(made) == mode(made.parent) == 0o700
    assert (made / "history.db-wal").exists()
    for name in ("history.db", "history.db-wal", "history.db-shm"):
        if (made / name).exists():
            assert mode(made / name) == 0o600, name
    store.close()
    chosen = tmp_path / "chosen"  # a folder the user made keeps its mode
    chosen.mkdir()
    chosen.chmod(0o755)
    (chosen / "old.db").touch(mode=0o644)  # and an old history becomes private
    store = open_store(f"sqlite:///{chosen}/old.db")
    await store.open_session("s1", "voxwire", "ga")
    assert mode(chosen) == 0o755 and mode(chosen / "old.db") == 0o600
    store.close()
