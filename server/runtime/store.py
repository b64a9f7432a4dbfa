"""Conversation history: every finished turn, stored before its `response.done` is sent.

SQLite by default (WAL mode: a committed turn survives the process being killed), or
PostgreSQL (`--store postgresql://user:pass@host/db`). Writes run in the store's own worker
thread; the event loop only awaits them. Audio is kept only with `--record`: one WAV per
turn and role, written in the turn's transaction.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import time
import wave
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from realtime import Json
from server.audio import RATE, to_pcm16
from server.errors import ConfigError, LimitError, StoreError, StoreQuotaError, StoreUnavailable
from server.response.record import TurnRecord, When
from server.runtime.lanes import Lane

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = dict[str, Any]
Statement = tuple[str, Sequence[Any]]

# One schema for both databases; only the column types differ.
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dialect TEXT NOT NULL,
    started_at {real} NOT NULL,
    ended_at {real},
    key_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS turns (
    response_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    user_item_id TEXT,
    user_text TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    status TEXT NOT NULL,
    interrupted {bool} NOT NULL,
    backend TEXT NOT NULL,
    metrics {json} NOT NULL,
    started_at {real} NOT NULL,
    finished_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns(session_id, finished_at);
CREATE TABLE IF NOT EXISTS recordings (
    response_id TEXT NOT NULL REFERENCES turns(response_id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    sample_rate INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    wav {blob} NOT NULL,
    PRIMARY KEY (response_id, role)
);
"""
# What replicas share through PostgreSQL: browser tokens, and the sessions open on each live
# replica (leases), counted per key. Times are the database's clock (Unix seconds).
SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    session JSONB NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_by_key ON tokens(key_id);
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    session_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    replica TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_key ON leases(key_id);
"""
NOW = "EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION"

# Columns added since the first schema: (table, column, definition), added where missing.
ADDED_COLUMNS = [("sessions", "key_id", "TEXT NOT NULL DEFAULT ''")]
SQLITE_TYPES = {"real": "REAL", "bool": "INTEGER", "json": "TEXT", "blob": "BLOB"}
POSTGRES_TYPES = {"real": "DOUBLE PRECISION", "bool": "BOOLEAN", "json": "JSONB",
                  "blob": "BYTEA"}


@dataclass(frozen=True)
class Turn:
    response_id: str
    session_id: str
    user_item_id: str | None
    user_text: str
    assistant_text: str
    status: str  # completed, incomplete (cut at max tokens), cancelled or failed
    interrupted: bool
    backend: str
    metrics: dict[str, Any]
    started_at: float  # wall clock (Unix seconds)
    finished_at: float


@dataclass(frozen=True)
class Recording:
    role: str  # "user" or "assistant"
    sample_rate: int
    pcm16: bytes  # mono little-endian int16

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise StoreError(f"a recording's role is user or assistant, not {self.role!r}")
        if self.sample_rate <= 0 or len(self.pcm16) % 2:
            raise StoreError("a recording is mono int16 samples at a positive sample rate")

    def wav(self) -> bytes:
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.sample_rate)
            w.writeframes(self.pcm16)
        return out.getvalue()


@dataclass(frozen=True)
class Resumable:
    """A stored session that a client may go on with: who owns it, when it was last used,
    and its turns, oldest first."""

    session_id: str
    key_id: str  # fingerprint of the key (or the key that minted the token) that opened it
    model: str
    dialect: str
    last_active: float  # wall clock (Unix seconds): its last turn, its start or its end
    turns: tuple[Row, ...]  # response_id, user_item_id, user_text, assistant_text, status


class Store(Protocol):
    async def open_session(self, session_id: str, model: str, dialect: str,
                           key_id: str = "") -> None: ...

    async def close_session(self, session_id: str) -> None: ...

    async def record(self, turn: Turn, recordings: Sequence[Recording] = ()) -> None: ...

    def close(self) -> None: ...


class NullStore:
    """`--store none`: nothing is kept."""

    async def open_session(self, session_id: str, model: str, dialect: str,
                           key_id: str = "") -> None:
        return None

    async def close_session(self, session_id: str) -> None:
        return None

    async def record(self, turn: Turn, recordings: Sequence[Recording] = ()) -> None:
        return None

    def close(self) -> None:
        return None


_COLUMNS = [f.name for f in fields(Turn)]
# A session opened again (resumed) is no longer ended.
_ADD_SESSION = ("INSERT INTO sessions (id, model, dialect, started_at, key_id) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET ended_at = NULL")
_RESUMABLE = ("SELECT s.id, s.key_id, s.model, s.dialect, s.started_at, s.ended_at, "
              "MAX(t.finished_at) AS last_turn FROM sessions s "
              "LEFT JOIN turns t ON t.session_id = s.id WHERE s.id = %s "
              "GROUP BY s.id, s.key_id, s.model, s.dialect, s.started_at, s.ended_at")
_RESUMED_TURNS = ("SELECT response_id, user_item_id, user_text, assistant_text, status "
                  "FROM turns WHERE session_id = %s ORDER BY finished_at")
_END_SESSION = "UPDATE sessions SET ended_at = %s WHERE id = %s"
_ADD_TURN = (f"INSERT INTO turns ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * 11)}) "
             "ON CONFLICT (response_id) DO UPDATE SET "
             + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:]))
_ADD_RECORDING = ("INSERT INTO recordings (response_id, role, sample_rate, samples, wav) "
                  "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (response_id, role) DO UPDATE SET "
                  "sample_rate = excluded.sample_rate, samples = excluded.samples, "
                  "wav = excluded.wav")
_SESSIONS = ("SELECT s.id, s.model, s.dialect, s.started_at, s.ended_at, "
             "COUNT(t.response_id) AS turns FROM sessions s "
             "LEFT JOIN turns t ON t.session_id = s.id GROUP BY s.id ORDER BY s.started_at")
_TURNS = f"SELECT {', '.join(_COLUMNS)} FROM turns WHERE session_id = %s ORDER BY finished_at"
_OF_SESSION = "FROM recordings r JOIN turns t ON t.response_id = r.response_id " \
              "WHERE t.session_id = %s ORDER BY t.finished_at, r.role DESC"  # user first
_RECORDINGS = f"SELECT r.response_id, r.role, r.sample_rate, r.samples {_OF_SESSION}"
_AUDIO = f"SELECT r.response_id, r.role, r.wav {_OF_SESSION}"
_PURGE = "DELETE FROM sessions WHERE COALESCE(ended_at, started_at) < %s"


class SqlStore:
    """What SQLite and PostgreSQL share: the tables, the queries and the worker thread.

    Writes run in the worker thread, one transaction each, committed before they return.
    Reads (`voxwire history`, tests) and `purge` run in the caller's thread.
    """

    def __init__(self) -> None:
        self._lane = Lane("store")

    # Where the two databases differ.

    def _write(self, statements: Sequence[Statement]) -> int:
        """Run ``statements`` in one committed transaction; the last one's row count."""
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def _json(self, value: Any) -> Any:
        """A JSON value as a query parameter."""
        return json.dumps(value)

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _size(self) -> int:
        """Bytes the history takes on disk."""
        raise NotImplementedError

    async def used_bytes(self) -> int:
        return await self._lane.run(self._size)

    # Writing, per session and per turn.

    async def open_session(self, session_id: str, model: str, dialect: str,
                           key_id: str = "") -> None:
        await self._lane.run(lambda: self._write(
            [(_ADD_SESSION, (session_id, model, dialect, time.time(), key_id))]))

    async def resumable(self, session_id: str) -> Resumable | None:
        """The stored session ``session_id`` with its turns, or None if there is none."""
        def read() -> Resumable | None:
            found = self._read(_RESUMABLE, (session_id,))
            if not found:
                return None
            row = found[0]
            last = max(x for x in (row["started_at"], row["ended_at"], row["last_turn"])
                       if x is not None)
            return Resumable(row["id"], row["key_id"], row["model"], row["dialect"],
                             float(last), tuple(self._read(_RESUMED_TURNS, (session_id,))))

        return await self._lane.run(read)

    async def close_session(self, session_id: str) -> None:
        await self._lane.run(lambda: self._write([(_END_SESSION, (time.time(), session_id))]))

    async def record(self, turn: Turn, recordings: Sequence[Recording] = ()) -> None:
        def statements() -> list[Statement]:
            row = list(astuple(turn))
            row[_COLUMNS.index("metrics")] = self._json(turn.metrics)
            return [(_ADD_TURN, row)] + [
                (_ADD_RECORDING, (turn.response_id, r.role, r.sample_rate, len(r.pcm16) // 2,
                                  r.wav())) for r in recordings]

        await self._lane.run(lambda: self._write(statements()))

    # Reading and housekeeping: `voxwire history`, and expiry at start-up.

    def sessions(self) -> list[Row]:
        return self._read(_SESSIONS)

    def turns(self, session_id: str) -> list[Row]:
        """The session's turns, each listing its recordings (without their audio)."""
        kept: dict[str, list[Row]] = {}
        for r in self._read(_RECORDINGS, (session_id,)):
            kept.setdefault(r["response_id"], []).append({
                "role": r["role"], "sample_rate": r["sample_rate"],
                "duration_s": round(r["samples"] / r["sample_rate"], 3)})
        out = self._read(_TURNS, (session_id,))
        for row in out:
            if isinstance(row["metrics"], str):
                row["metrics"] = json.loads(row["metrics"])
            row["interrupted"] = bool(row["interrupted"])
            row["recordings"] = kept.get(row["response_id"], [])
        return out

    def audio(self, session_id: str) -> list[tuple[str, str, bytes]]:
        """(response_id, role, WAV bytes) of each recording of the session."""
        return [(r["response_id"], r["role"], bytes(r["wav"]))
                for r in self._read(_AUDIO, (session_id,))]

    async def expire(self, older_than_days: float) -> int:
        """Delete sessions that ended more than ``older_than_days`` ago (in the store's thread)."""
        return await self._lane.run(lambda: self.purge(older_than_days))

    def purge(self, older_than_days: float) -> int:
        return self._write([(_PURGE, (time.time() - older_than_days * 86400,))])

    def close(self) -> None:
        self._lane.close()
        self._disconnect()


def _rows(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Row]:
    return [dict(zip(names, r, strict=True)) for r in rows]


class SQLiteStore(SqlStore):
    def __init__(self, path: Path, *, create: bool = True) -> None:
        super().__init__()
        self.path = path
        self.create = create  # False: a missing file is an error, not a new empty history
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """The connection, opened on first use; sqlite3 errors become StoreErrors."""
        try:
            if self._db is None:
                if not self.create and not self.path.is_file():
                    raise StoreError(f"no history at {self.path}")
                _private_folder(self.path.parent)
                # created private (SQLite gives its -wal and -shm files the same mode)
                with suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
                db.execute("PRAGMA foreign_keys=ON")
                db.executescript(SCHEMA.format(**SQLITE_TYPES))
                for table, column, definition in ADDED_COLUMNS:
                    have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                self._db = db
                _private_files(self.path)
            yield self._db
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"history database {self.path}: {exc}") from exc

    def _write(self, statements: Sequence[Statement]) -> int:
        rows = 0
        with self._conn() as db, db:  # commits, or rolls back on an exception
            db.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                rows = db.execute(sql.replace("%s", "?"), params).rowcount
        return rows

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._conn() as db:
            cur = db.execute(sql.replace("%s", "?"), params)
            return _rows([d[0] for d in cur.description], cur.fetchall())

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _size(self) -> int:
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.is_file())


def _private_folder(folder: Path) -> None:
    """Make the folders that are missing, readable by this user only; leave those that
    exist (a folder the user chose keeps its mode)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is cut by the umask


def _private_files(db: Path) -> None:
    """The history is conversations: the database and its WAL files are this user's only."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with suppress(FileNotFoundError, PermissionError):  # another user's, read only
            path.chmod(0o600)


def _schema_in_place(db: psycopg.Connection[tuple[Any, ...]]) -> bool:
    """Whether every table, index and added column is there already."""
    names = re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA + SHARED_SCHEMA)
    found = db.execute("SELECT COUNT(to_regclass(name)) FROM unnest(%s::text[]) AS name",
                       (names,)).fetchone()
    if found is None or found[0] != len(names):
        return False
    columns = db.execute(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND (table_name, column_name) IN (SELECT * FROM unnest(%s::text[], "
        "%s::text[]))", ([t for t, _, _ in ADDED_COLUMNS], [c for _, c, _ in ADDED_COLUMNS])
    ).fetchone()
    return columns is not None and columns[0] == len(ADDED_COLUMNS)


class PostgresStore(SqlStore):
    """PostgreSQL through psycopg. A dropped connection (a restarted server) is opened again
    and the work retried once; the password never appears in errors, logs or repr."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self.url = redact(url)
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    def _conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        if self._db is None or self._db.closed:
            self._db = None
            db = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            # Replicas starting together would race on CREATE TABLE IF NOT EXISTS (which
            # is not atomic in PostgreSQL): one at a time.
            # A schema already in place is left alone: even CREATE INDEX IF NOT EXISTS locks
            # its table (SHARE), which deadlocked with other replicas' heartbeats.
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(hashtext('voxwire schema'))")
                if not _schema_in_place(db):
                    db.execute(SCHEMA.format(**POSTGRES_TYPES))
                    db.execute(SHARED_SCHEMA)
                    for table, column, definition in ADDED_COLUMNS:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} "
                                   f"{definition}")
            self._db = db
        return self._db

    def _run(self, work: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        import psycopg

        connected = self._db is not None
        try:
            return work(self._conn())
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._disconnect()  # say, a restarted server: connect again and retry once
            if not connected:
                raise self._failure(exc) from None
            log.warning("PostgreSQL at %s: %s; connecting again", self.url,
                        redact(str(exc), self._url).strip())
        except psycopg.Error as exc:
            raise self._failure(exc) from None
        try:
            return work(self._conn())
        except psycopg.Error as exc:
            self._disconnect()
            raise self._failure(exc) from None

    def _failure(self, exc: Exception) -> StoreError:
        return StoreError(redact(f"PostgreSQL at {self.url}: {exc}".strip(), self._url))

    def _write(self, statements: Sequence[Statement]) -> int:
        def work(db: psycopg.Connection[tuple[Any, ...]]) -> int:
            rows = 0
            with db.transaction():  # committed when the block ends
                for sql, params in statements:
                    rows = db.execute(sql, params).rowcount
            return rows

        return self._run(work)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        def work(db: psycopg.Connection[tuple[Any, ...]]) -> list[Row]:
            cur = db.execute(sql, params)
            return _rows([d.name for d in cur.description or ()], cur.fetchall())

        return self._run(work)

    async def _transact(self, work: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """``work`` in one transaction, in the store's thread."""
        def run(db: psycopg.Connection[tuple[Any, ...]]) -> T:
            with db.transaction():
                return work(db)

        return await self._lane.run(lambda: self._run(run))

    # Browser tokens, minted on any replica and redeemed once on any.

    async def put_token(self, digest: str, key_id: str, session: Json, ttl_s: float,
                        per_key: int, max_live: int) -> float:
        """Keep a new token's grant; when it expires. LimitError when the key holds
        ``per_key`` live tokens, or all keys ``max_live``."""
        def work(db: psycopg.Connection[tuple[Any, ...]]) -> float:
            db.execute("SELECT pg_advisory_xact_lock(hashtext('voxwire tokens'))")
            db.execute(f"DELETE FROM tokens WHERE expires_at <= {NOW}")
            row = db.execute("SELECT COUNT(*), COUNT(*) FILTER (WHERE key_id = %s) "
                             "FROM tokens", (key_id,)).fetchone()
            live, of_key = row if row is not None else (0, 0)
            if of_key >= per_key:
                raise LimitError(f"this key holds {per_key} live tokens; wait for some to be "
                                 "used or to expire", code="too_many_tokens_for_key")
            if live >= max_live:
                raise LimitError(f"{max_live} tokens are live; wait for some to expire",
                                 code="too_many_tokens")
            found = db.execute(f"INSERT INTO tokens VALUES (%s, %s, %s, {NOW} + %s) "
                               "RETURNING expires_at",
                               (digest, key_id, self._json(session), ttl_s)).fetchone()
            return float(found[0]) if found is not None else time.time() + ttl_s

        return await self._transact(work)

    async def take_token(self, digest: str) -> tuple[str, Json, float] | None:
        """A live token's key, session and seconds left, removed: it is used up."""
        def work(db: psycopg.Connection[tuple[Any, ...]]) -> tuple[str, Json, float] | None:
            row = db.execute(f"DELETE FROM tokens WHERE digest = %s RETURNING key_id, session, "
                             f"expires_at - {NOW}", (digest,)).fetchone()
            if row is None or row[2] <= 0:
                return None
            return str(row[0]), dict(row[1]), float(row[2])

        return await self._transact(work)

    # Leases: the sessions open on each replica, counted per key while the replica lives.

    async def take_lease(self, replica: str, key_id: str, session_id: str, limit: int,
                         ttl_s: float) -> bool:
        """Count ``session_id`` against ``key_id`` on ``replica``, unless the key already
        has ``limit`` sessions on replicas seen within ``ttl_s``. A lease the session held
        before (on a replica that died) is taken over."""
        def work(db: psycopg.Connection[tuple[Any, ...]]) -> bool:
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key_id,))
            row = db.execute(f"SELECT COUNT(*) FROM leases l JOIN replicas r ON r.id = l.replica "
                             f"WHERE l.key_id = %s AND l.session_id <> %s "
                             f"AND r.seen_at > {NOW} - %s", (key_id, session_id, ttl_s)
                             ).fetchone()
            if row is not None and row[0] >= limit:
                return False
            db.execute("INSERT INTO leases VALUES (%s, %s, %s) ON CONFLICT (session_id) "
                       "DO UPDATE SET key_id = excluded.key_id, replica = excluded.replica",
                       (session_id, key_id, replica))
            return True

        return await self._transact(work)

    async def drop_lease(self, replica: str, session_id: str) -> None:
        await self._transact(lambda db: db.execute(
            "DELETE FROM leases WHERE session_id = %s AND replica = %s", (session_id, replica)))

    async def beat(self, replica: str, forget_s: float) -> None:
        """``replica`` is alive; replicas not seen for ``forget_s`` are forgotten, with
        their leases, and so are expired tokens."""
        def work(db: psycopg.Connection[tuple[Any, ...]]) -> None:
            # one replica's housekeeping at a time: their deletes never cross
            db.execute("SELECT pg_advisory_xact_lock(hashtext('voxwire heartbeat'))")
            db.execute(f"INSERT INTO replicas VALUES (%s, {NOW}) ON CONFLICT (id) "
                       "DO UPDATE SET seen_at = excluded.seen_at", (replica,))
            db.execute(f"DELETE FROM leases WHERE replica IN (SELECT id FROM replicas "
                       f"WHERE seen_at < {NOW} - %s)", (forget_s,))
            db.execute(f"DELETE FROM replicas WHERE seen_at < {NOW} - %s", (forget_s,))
            db.execute(f"DELETE FROM tokens WHERE expires_at <= {NOW}")

        await self._transact(work)

    async def leave(self, replica: str) -> None:
        """``replica`` stops: its leases go at once."""
        def work(db: psycopg.Connection[tuple[Any, ...]]) -> None:
            db.execute("DELETE FROM leases WHERE replica = %s", (replica,))
            db.execute("DELETE FROM replicas WHERE id = %s", (replica,))

        await self._transact(work)

    def _size(self) -> int:
        rows = self._read("SELECT pg_database_size(current_database()) AS n")
        return int(rows[0]["n"])

    def _json(self, value: Any) -> Any:
        from psycopg.types.json import Jsonb

        return Jsonb(value)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


TRUNCATED = " [truncated]"


def capped(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, marked when it was cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    keep = max_bytes - len(TRUNCATED)
    return data[:keep].decode(errors="ignore") + TRUNCATED


def turn_bytes(turn: Turn, recordings: Sequence[Recording] = ()) -> int:
    """About what a turn takes in the store: its text, metrics and audio, plus row overhead."""
    return (len(turn.user_text.encode()) + len(turn.assistant_text.encode())
            + len(json.dumps(turn.metrics)) + sum(len(r.pcm16) + 44 for r in recordings) + 256)


class SessionHistory:
    """One session's door to the shared store, with its budgets: each text field of a turn
    is cut to ``max_text`` bytes, the session writes at most ``max_bytes`` in all, and
    nothing is written while the whole store holds ``max_total`` bytes or more (0: no
    limit).

    A store that is down, or a budget that is spent, never stops the session: the turn goes
    unsaved, the log says why, and ``tell`` (the session's error events) tells the client
    once; a store that fails again after working again is told again.
    """

    def __init__(self, store: Store, tell: Callable[[StoreError], Awaitable[None]], *,
                 max_text: int, max_bytes: int, max_total: int = 0) -> None:
        self.store, self.tell = store, tell
        self.max_text, self.max_bytes, self.max_total = max_text, max_bytes, max_total
        self.written = 0
        self._session: tuple[str, str, str, str] | None = None
        self._opened = False
        self._told_unavailable = False
        self._told_quota = False

    async def open_session(self, session_id: str, model: str, dialect: str,
                           key_id: str = "") -> None:
        self._session = (session_id, model, dialect, key_id)
        await self._open()

    async def _open(self) -> bool:
        if self._session is None:
            return False
        try:
            await self.store.open_session(*self._session)
        except Exception as exc:
            await self._unavailable(exc)
            return False
        self._opened = True
        return True

    async def record(self, turn: Turn, recordings: Sequence[Recording] = ()) -> None:
        if isinstance(self.store, NullStore):
            return
        turn = replace(turn, user_text=capped(turn.user_text, self.max_text),
                       assistant_text=capped(turn.assistant_text, self.max_text))
        size = turn_bytes(turn, recordings)
        try:
            full = self.written + size > self.max_bytes or await self._store_full()
        except Exception as exc:
            await self._unavailable(exc)
            return
        if full:
            await self._over_quota(turn.session_id)
            return
        if not self._opened and not await self._open():
            return
        try:
            await self.store.record(turn, recordings)
        except Exception as exc:
            self._opened = False  # a store that comes back may have lost the session's row
            await self._unavailable(exc)
            return
        self.written += size
        self._told_unavailable = False

    async def _store_full(self) -> bool:
        if self.max_total <= 0 or not isinstance(self.store, SqlStore):
            return False
        return await self.store.used_bytes() >= self.max_total

    async def _over_quota(self, session_id: str) -> None:
        if self._told_quota:
            return
        self._told_quota = True
        log.warning("session %s: history budget spent (%d bytes written, at most %d; the whole "
                    "store at most %d); its later turns are not saved", session_id,
                    self.written, self.max_bytes, self.max_total)
        await self.tell(StoreQuotaError(
            "this session's history is full: later turns are not saved; the conversation "
            "goes on"))

    async def _unavailable(self, exc: Exception) -> None:
        log.warning("history store unavailable: %s; the session goes on without saving",
                    exc if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}")
        if self._told_unavailable:
            return
        self._told_unavailable = True
        await self.tell(StoreUnavailable(
            "the history store is unavailable: turns are not being saved; the conversation "
            "goes on"))

    async def close_session(self, session_id: str) -> None:
        if self._opened:
            with suppress(Exception):
                await self.store.close_session(session_id)

    def close(self) -> None:
        return None  # the shared store is closed by whoever opened it


class TurnStore:
    """The turn sink for the history: each turn (and, where recorded, its audio) written to
    ``store`` before `response.done` announces it."""

    when: When = "ended"

    def __init__(self, store: Store | SessionHistory) -> None:
        self.store = store

    async def take(self, turn: TurnRecord) -> None:
        row = Turn(turn.response_id, turn.session_id, turn.user_item_id, turn.user_text,
                   turn.said, turn.status, turn.status == "cancelled", turn.backend,
                   {"stages_ms": turn.timings.stages_ms, "tools": list(turn.tools)},
                   turn.started_at, turn.finished_at)
        try:
            recordings = [Recording(role, RATE, to_pcm16(audio).tobytes())
                          for role, audio in (("user", turn.user_audio),
                                              ("assistant", turn.answer_audio))
                          if audio is not None and len(audio)]
            await self.store.record(row, recordings)
        except Exception as exc:
            raise StoreError(f"the turn could not be saved: {exc}") from exc


def redact(text: str, url: str | None = None) -> str:
    """``text`` with the password of ``url`` (by default ``text`` itself) replaced by ***."""
    try:
        parts = urlsplit(url if url is not None else text)
        secrets = {parts.password or ""} | set(parse_qs(parts.query).get("password", []))
    except ValueError:  # not even a URL: hide whatever follows "user:" up to "@"
        return re.sub(r"(://[^/@]*?:)[^@]*@", r"\1***@", text)
    for secret in sorted(secrets | {unquote(s) for s in secrets}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def open_store(url: str, *, create: bool = True) -> SqlStore | NullStore:
    """`sqlite:///path/to/file.db` (or a bare path), `postgresql://user:pass@host/db`, or
    `none`. ``create=False``: reading an existing history only, never making a new one."""
    if url in ("", "none"):
        return NullStore()
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")).expanduser(), create=create)
    if "://" not in url:
        return SQLiteStore(Path(url).expanduser(), create=create)
    raise ConfigError(f"unsupported --store {redact(url)!r}: use sqlite:///path.db, "
                      "postgresql://user:pass@host/db or none")
