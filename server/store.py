"""Conversation history: every finished turn, stored before its `response.done` is sent.

SQLite by default (WAL mode: a committed turn survives the process being killed). All
database work runs in one worker thread; the event loop only awaits it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from server.errors import ConfigError
from server.lanes import Lane

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dialect TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS turns (
    response_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    user_item_id TEXT,
    user_text TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    status TEXT NOT NULL,
    interrupted INTEGER NOT NULL,
    backend TEXT NOT NULL,
    metrics TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns(session_id, finished_at);
"""


@dataclass(frozen=True)
class Turn:
    response_id: str
    session_id: str
    user_item_id: str | None
    user_text: str
    assistant_text: str
    status: str  # completed, cancelled or failed
    interrupted: bool
    backend: str
    metrics: dict[str, Any]
    started_at: float  # wall clock (Unix seconds)
    finished_at: float


class Store(Protocol):
    async def open_session(self, session_id: str, model: str, dialect: str) -> None: ...

    async def close_session(self, session_id: str) -> None: ...

    async def record(self, turn: Turn) -> None: ...

    def close(self) -> None: ...


class NullStore:
    """`--store none`: nothing is kept."""

    async def open_session(self, session_id: str, model: str, dialect: str) -> None:
        return None

    async def close_session(self, session_id: str) -> None:
        return None

    async def record(self, turn: Turn) -> None:
        return None

    def close(self) -> None:
        return None


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lane = Lane("store")
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        """The connection, opened in (and only used from) the store's own thread."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    async def open_session(self, session_id: str, model: str, dialect: str) -> None:
        await self._lane.run(lambda: self._conn().execute(
            "INSERT OR IGNORE INTO sessions (id, model, dialect, started_at) VALUES (?,?,?,?)",
            (session_id, model, dialect, time.time())))

    async def close_session(self, session_id: str) -> None:
        await self._lane.run(lambda: self._conn().execute(
            "UPDATE sessions SET ended_at=? WHERE id=?", (time.time(), session_id)))

    async def record(self, turn: Turn) -> None:
        row = asdict(turn)
        row["metrics"] = json.dumps(turn.metrics)
        row["interrupted"] = int(turn.interrupted)
        await self._lane.run(lambda: self._conn().execute(
            "INSERT OR REPLACE INTO turns (response_id, session_id, user_item_id, user_text, "
            "assistant_text, status, interrupted, backend, metrics, started_at, finished_at) "
            "VALUES (:response_id, :session_id, :user_item_id, :user_text, :assistant_text, "
            ":status, :interrupted, :backend, :metrics, :started_at, :finished_at)", row))

    # Reading and housekeeping: used by `voxwire history` and at start-up, not per turn.

    def sessions(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT s.id, s.model, s.dialect, s.started_at, s.ended_at, COUNT(t.response_id) "
            "FROM sessions s LEFT JOIN turns t ON t.session_id = s.id GROUP BY s.id "
            "ORDER BY s.started_at").fetchall()
        keys = ("id", "model", "dialect", "started_at", "ended_at", "turns")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def turns(self, session_id: str) -> list[dict[str, Any]]:
        cur = self._conn().execute(
            "SELECT * FROM turns WHERE session_id=? ORDER BY finished_at", (session_id,))
        names = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            row = dict(zip(names, r, strict=True))
            row["metrics"] = json.loads(row["metrics"])
            row["interrupted"] = bool(row["interrupted"])
            out.append(row)
        return out

    async def expire(self, older_than_days: float) -> int:
        """Delete sessions that ended more than ``older_than_days`` ago (in the store's thread)."""
        return await self._lane.run(lambda: self.purge(older_than_days))

    def purge(self, older_than_days: float) -> int:
        cutoff = time.time() - older_than_days * 86400
        cur = self._conn().execute(
            "DELETE FROM sessions WHERE COALESCE(ended_at, started_at) < ?", (cutoff,))
        return cur.rowcount

    def close(self) -> None:
        self._lane.close()
        if self._db is not None:
            self._db.close()
            self._db = None


def open_store(url: str) -> SQLiteStore | NullStore:
    """`sqlite:///path/to/file.db` (or a bare path), or `none`."""
    if url in ("", "none"):
        return NullStore()
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")).expanduser())
    if "://" not in url:
        return SQLiteStore(Path(url).expanduser())
    raise ConfigError(f"unsupported --store {url!r}: use sqlite:///path.db or none")
