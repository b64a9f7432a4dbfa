"""History in PostgreSQL (a real server from Debian's `postgresql` package) and SQLite alike:
turns, recordings, `voxwire history`, reconnecting after a restart, and hidden passwords."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from openai import AsyncOpenAI

from client.realtime import Float32, send_audio
from server.errors import ConfigError, StoreError
from server.runtime.config import Settings
from server.runtime.store import PostgresStore, Recording, SqlStore, open_store
from tests.conftest import ANSWERED, padded, words
from tests.runtime.test_store import free_port, turn, wait_healthy

INITDB = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
RATE = 24000
SECRET = "s3cret-pw"


@dataclass
class Postgres:
    """A PostgreSQL server of its own in a temporary folder, on 127.0.0.1:port."""

    bin: Path
    folder: Path
    port: int
    as_user: list[str]
    databases = count()

    def ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"),
                        "-l", str(self.folder / "log"), "-w", *args], check=True,
                       capture_output=True, timeout=60)

    def new_database(self) -> str:
        """A fresh empty database; its URL carries a password (trust auth ignores it)."""
        name = f"voxwire_{next(self.databases)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name, SECRET)

    def url(self, database: str, password: str = "") -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not INITDB:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                    "`make sysdeps` installs Debian's postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="voxwire-pg-"))
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    pg = Postgres(INITDB[-1].parent, folder, free_port(), as_user)
    try:
        subprocess.run([*as_user, str(INITDB[-1]), "-D", str(folder / "data"), "-U", "postgres",
                        "-A", "trust", "--no-sync"], check=True, capture_output=True, timeout=120)
        pg.ctl("-o", f"-p {pg.port} -c listen_addresses=127.0.0.1 "
                     f"-c unix_socket_directories={folder}", "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        log = (folder / "log").read_text() if (folder / "log").is_file() else ""
        shutil.rmtree(folder, ignore_errors=True)
        stderr = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"PostgreSQL could not start: {exc} {stderr.decode()[-500:]} {log[-500:]}")
    try:
        yield pg
    finally:
        pg.ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


def tone(seconds: float, rate: int, hz: float) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


def opened(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


async def test_turns_and_recordings_round_trip_and_purge(store_url: str) -> None:
    store = opened(store_url)
    user, said = tone(1.5, 16000, 440), tone(0.75, 24000, 220)
    try:
        await store.open_session("s1", "voxwire", "ga")
        await store.record(turn("s1", 1), [Recording("user", 16000, user),
                                           Recording("assistant", 24000, said)])
        await store.record(turn("s1", 2))
        await store.record(turn("s1", 2))  # the same turn again replaces it
        await store.close_session("s1")
        sessions = await asyncio.to_thread(store.sessions)
        assert [(s["id"], s["turns"]) for s in sessions] == [("s1", 2)]
        assert sessions[0]["ended_at"] >= sessions[0]["started_at"]
        turns = await asyncio.to_thread(store.turns, "s1")
        assert [t["assistant_text"] for t in turns] == ["answer 1", "answer 2"]
        assert turns[0]["metrics"] == {"stages_ms": {"asr": 1.0}}
        assert turns[0]["interrupted"] is False
        assert turns[0]["recordings"] == [
            {"role": "user", "sample_rate": 16000, "duration_s": 1.5},
            {"role": "assistant", "sample_rate": 24000, "duration_s": 0.75}]
        assert turns[1]["recordings"] == []
        audio = await asyncio.to_thread(store.audio, "s1")
        assert [(a[0], a[1]) for a in audio] == [("resp_1", "user"), ("resp_1", "assistant")]
        with wave.open(io.BytesIO(audio[0][2])) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
            assert w.readframes(w.getnframes()) == user
        assert await asyncio.to_thread(store.purge, 1.0) == 0  # a fresh session is kept
        assert await asyncio.to_thread(store.purge, -1.0) == 1  # older than "tomorrow"
        left = await asyncio.to_thread(store._read, "SELECT COUNT(*) AS n FROM recordings")
        assert left == [{"n": 0}]  # the turns' recordings went with them
    finally:
        store.close()


def test_a_bad_recording_is_refused() -> None:
    with pytest.raises(StoreError, match="role"):
        Recording("system", 16000, b"")
    with pytest.raises(StoreError, match="int16"):
        Recording("user", 16000, b"\x00")


def history(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", "history", "--store", url, *args],
                          capture_output=True, text=True, timeout=60)


async def test_history_exports_recordings_as_wav_files(store_url: str, tmp_path: Path) -> None:
    store = opened(store_url)
    try:
        await store.open_session("s1", "voxwire", "ga")
        await store.record(turn("s1", 1), [Recording("user", 16000, tone(0.5, 16000, 300))])
        await store.record(turn("s1", 2))
    finally:
        store.close()
    out = await asyncio.to_thread(history, store_url, "--session", "s1", "--audio",
                                  str(tmp_path / "audio"))
    assert out.returncode == 0, out.stderr
    turns = json.loads(out.stdout)[0]["turns"]
    wav = tmp_path / "audio" / "s1" / "resp_1-user.wav"
    assert turns[0]["recordings"] == [{"role": "user", "sample_rate": 16000, "duration_s": 0.5,
                                       "file": str(wav)}]
    assert turns[1]["recordings"] == []
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnframes()) == (16000, 8000)
    assert sorted(p.name for p in (tmp_path / "audio").rglob("*")) == ["resp_1-user.wav", "s1"]
    refused = await asyncio.to_thread(history, store_url, "--audio", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--audio needs" in refused.stderr


def test_history_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    out = history(f"sqlite:///{tmp_path}/none.db")
    assert out.returncode == 2 and "no history at" in out.stderr
    assert not (tmp_path / "none.db").exists()


async def test_a_postgres_restart_between_turns_loses_nothing(
        postgres: Postgres, caplog: pytest.LogCaptureFixture) -> None:
    store = opened(postgres.new_database())
    try:
        await store.open_session("s1", "voxwire", "ga")
        await store.record(turn("s1", 1))
        await asyncio.to_thread(postgres.ctl, "-m", "fast", "restart")
        with caplog.at_level(logging.WARNING, "server.runtime.store"):
            await store.record(turn("s1", 2))  # the old connection is gone: connect again
        assert "connecting again" in caplog.text and SECRET not in caplog.text
        turns = await asyncio.to_thread(store.turns, "s1")
        assert [t["response_id"] for t in turns] == ["resp_1", "resp_2"]
    finally:
        store.close()


async def test_the_password_is_never_shown(postgres: Postgres,
                                           caplog: pytest.LogCaptureFixture) -> None:
    for url in (f"postgresql://voxwire:{SECRET}@127.0.0.1:{free_port()}/voxwire",  # no server
                postgres.url("no_such_database", SECRET)):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        assert SECRET not in repr(store) and ":***@" in repr(store)
        with caplog.at_level(logging.WARNING, "server.runtime.store"), \
                pytest.raises(StoreError) as failed:
            await store.open_session("s1", "voxwire", "ga")
        store.close()
        assert SECRET not in str(failed.value) and ":***@" in str(failed.value)
        assert SECRET not in caplog.text
    with pytest.raises(ConfigError) as refused:
        open_store(f"mysql://voxwire:{SECRET}@127.0.0.1/voxwire")
    assert SECRET not in str(refused.value)
    assert SECRET not in repr(Settings(store=postgres.url("x", SECRET)))
    out = await asyncio.to_thread(history, postgres.url("no_such_database", SECRET))
    assert out.returncode == 2 and "no_such_database" in out.stderr
    assert SECRET not in out.stderr


async def until_done(conn: Any) -> str:
    async for ev in conn:
        if ev.type == "response.done":
            return str(ev.response.id)
    raise AssertionError("the connection closed before response.done")


@pytest.fixture
def pg_server(postgres: Postgres, tmp_path: Path
              ) -> Iterator[tuple[int, subprocess.Popen[bytes], str, Path]]:
    """`voxwire serve` in its own process, storing history in a fresh PostgreSQL database."""
    url, port, log = postgres.new_database(), free_port(), tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--store", url,
             "--max-output-tokens", "20"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc)
        yield port, proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_server_on_postgres_keeps_every_announced_turn(
        pg_server: tuple[int, subprocess.Popen[bytes], str, Path], postgres: Postgres,
        speak: Callable[..., Float32]) -> None:
    """A spoken turn, a PostgreSQL restart, a typed turn, then `kill -9`: both are stored."""
    port, proc, url, log = pg_server
    client = AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1")
    question = speak("What is the weather like in London today?", rate=RATE)
    async with client.realtime.connect(model="voxwire") as conn:
        sending = asyncio.create_task(
            send_audio(conn, padded(question, RATE, 300, 1200), RATE))
        done = [await asyncio.wait_for(until_done(conn), 120)]
        await sending
        await asyncio.to_thread(postgres.ctl, "-m", "fast", "restart")
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Thank you."}]})
        await conn.response.create(response={"output_modalities": ["text"]})
        done.append(await asyncio.wait_for(until_done(conn), 120))
        os.kill(proc.pid, signal.SIGKILL)  # no chance to flush anything more
    out = await asyncio.to_thread(history, url, "--all")
    assert out.returncode == 0, out.stderr
    turns = json.loads(out.stdout)[0]["turns"]
    assert [t["response_id"] for t in turns] == done
    assert {"weather", "london"} <= set(words(turns[0]["user_text"]))
    assert turns[1]["user_text"] == "Thank you."
    assert all(t["assistant_text"] and t["status"] in ANSWERED for t in turns)
    assert "connecting again" in log.read_text() and SECRET not in log.read_text()
