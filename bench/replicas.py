"""`python -m bench.replicas`: replicas behind nginx, losing one and draining another.

Several `voxwire serve` processes share one PostgreSQL (--store) behind nginx
(deploy/nginx/voxwire.conf, filled in with their ports). Clients of the real `openai` SDK
hold text conversations through nginx. One replica is killed (SIGKILL) while one of its
clients waits for an answer, and, later, another is stopped (SIGTERM) while one of its
clients waits for an answer. Their clients reconnect through nginx with
?voxwire_resume=<session id>, land on a replica still up, and go on with their conversation
restored. Measured: from the moment a client lost its connection to the first answer after
it resumed; counted: the answered turns missing from a restored conversation (turns lost),
error events and failed turns, and disconnects of clients whose replica stayed up.

tests/deploy/test_replicas_nginx.py runs the same harness, short, and checks it.

    python -m bench.replicas --store postgresql://postgres@127.0.0.1:5432/voxwire_bench \\
        --clients 24 --seconds 300

The database is written to (sessions, turns, tokens, leases): give it one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

SITE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "voxwire.conf"
KEY = "sk-voxwire-replicas"
ANSWERED = ("completed", "incomplete")  # incomplete: the token cap ended the answer
GRACE_S = 5.0  # --shutdown-grace-s of each replica, by default
# Light replicas: one ASR thread, short answers, and nginx (on loopback) trusted as the
# proxy it is. The last replica standing carries every client, each answer queued behind
# the others': allow a first token that long.
LIGHT = ("--asr-threads", "1", "--max-output-tokens", "16", "--first-token-timeout-s", "60",
         "--max-sessions-per-key", "512", "--trusted-proxies", "127.0.0.1")
INSTRUCTIONS = "Answer in one short sentence."
QUESTIONS = ("Name a colour.", "What is two plus two?", "Name a fruit.",
             "What day comes after Monday?", "Name an animal.", "What is the capital of Italy?",
             "Say hello.", "Name a river.")
ANSWER_WAIT_S = 90.0  # one answer, at the most, on a busy machine
RECONNECT_S = 60.0  # how long a client keeps trying to resume


class NginxMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# ---------------------------------------------------------------------- the processes


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    id: str = ""  # its id in the store's replicas table (found by identify())

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""


@dataclass
class Fleet:
    replicas: list[Replica]
    port: int  # nginx's
    store: str
    key: str
    folder: Path
    grace_s: float = GRACE_S
    nginx: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def by_id(self, replica_id: str) -> Replica | None:
        return next((r for r in self.replicas if r.id == replica_id), None)

    def logs(self) -> str:
        parts = [f"--- replica {r.hostport} ({r.id}, exit {r.proc.poll()})\n{r.tail()}"
                 for r in self.replicas]
        nginx_log = self.folder / "nginx.log"
        if nginx_log.is_file():
            parts.append(f"--- nginx\n{nginx_log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def start_replica(store: str, key: str, folder: Path, extra: Sequence[str] = ()) -> Replica:
    port = free_port()
    log = folder / f"replica-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--store", store, *LIGHT, *extra],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "VOXWIRE_API_KEYS": key})
    return Replica(port, proc, log)


def wait_ready(replicas: Sequence[Replica], seconds: float = 240.0) -> None:
    """Until every replica's /readyz says 200."""
    deadline = time.monotonic() + seconds
    waiting = list(replicas)
    while waiting:
        for r in list(waiting):
            if r.proc.poll() is not None:
                raise RuntimeError(f"replica {r.hostport} exited with {r.proc.returncode}:\n"
                                   f"{r.tail()}")
            with contextlib.suppress(OSError):
                if http_status(f"http://{r.hostport}/readyz") == 200:
                    waiting.remove(r)
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas not ready after {seconds:g} s: "
                               f"{[r.hostport for r in waiting]}")
        time.sleep(0.3)


def nginx_site(template: str, upstreams: Sequence[str], listen: str) -> str:
    """deploy/nginx/voxwire.conf with its upstream servers and its listen address replaced
    (each new server line keeps the parameters of the template's first)."""
    server = re.compile(r"^(\s*)server\s+[\w.\-\[\]:]+:\d+((?:\s+[^;]*)?);\s*$")
    out: list[str] = []
    placed = False
    for line in template.splitlines():
        found = server.match(line)
        if found is None:
            out.append(line)
        elif not placed:
            out += [f"{found[1]}server {u}{found[2]};" for u in upstreams]
            placed = True
    text, listens = re.subn(r"^(\s*)listen\s+80;", rf"\g<1>listen {listen};", "\n".join(out),
                            flags=re.M)
    if not placed or listens != 1:
        raise ValueError("the template has no upstream server lines or no `listen 80;`")
    return text + "\n"


def start_nginx(folder: Path, upstreams: Sequence[str], port: int) -> subprocess.Popen[bytes]:
    """Debian's nginx, in the foreground, with the site filled in and every path of its own
    under ``folder``; once it answers /livez."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
    if binary is None:
        raise NginxMissing("nginx is not installed: `make sysdeps` installs Debian's nginx")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # workers may run as another user
    (folder / "voxwire.conf").write_text(
        nginx_site(SITE.read_text(), upstreams, f"127.0.0.1:{port}"))
    temp = "\n".join(f"    {name}_temp_path {folder / name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(
        "worker_processes 1;\nevents { worker_connections 4096; }\nhttp {\n"
        f"    access_log {folder / 'access.log'};\n{temp}\n"
        f"    include {folder / 'voxwire.conf'};\n}}\n")
    log = (folder / "nginx.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g",
         f"daemon off; pid {folder / 'nginx.pid'}; error_log stderr;"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("nginx exited:\n" + (folder / "nginx.log").read_text())
        with contextlib.suppress(OSError):
            if http_status(f"http://127.0.0.1:{port}/livez") == 200:
                return proc
        time.sleep(0.2)
    stop(proc, signal.SIGTERM)
    raise RuntimeError("nginx did not answer:\n" + (folder / "nginx.log").read_text())


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    """Stop ``proc`` with ``sig``, then SIGKILL if it is still there after 10 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def fleet(store: str, replicas: int, folder: Path, key: str = KEY,
          grace_s: float = GRACE_S, extra: Sequence[str] = ()) -> Iterator[Fleet]:
    """``replicas`` replicas on ``store`` and nginx in front of them; all stopped after."""
    started = Fleet([], free_port(), store, key, folder, grace_s)
    flags = ["--shutdown-grace-s", f"{grace_s:g}", *extra]
    try:
        for _ in range(replicas):
            started.replicas.append(start_replica(store, key, folder, flags))
        wait_ready(started.replicas)
        started.nginx = start_nginx(folder / "nginx", [r.hostport for r in started.replicas],
                                    started.port)
        yield started
    finally:
        for r in started.replicas:
            stop(r.proc)
        if started.nginx is not None:  # SIGTERM: its master stops its workers first
            stop(started.nginx, signal.SIGTERM)
        with contextlib.suppress(OSError):
            (folder / "nginx.log").write_bytes((folder / "nginx" / "nginx.log").read_bytes())


def lease_of(store: str, session_id: str) -> str:
    """The replica whose lease counts ``session_id`` ("" if none does)."""
    with psycopg.connect(store, autocommit=True) as db:
        row = db.execute("SELECT replica FROM leases WHERE session_id = %s",
                         (session_id,)).fetchone()
    return str(row[0]) if row else ""


async def identify(f: Fleet) -> None:
    """Each replica's id in the store: a session opened on it directly, by its lease."""
    for r in f.replicas:
        async with connect(f"ws://{r.hostport}/v1/realtime",
                           additional_headers={"Authorization": f"Bearer {f.key}"}) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 30))
            r.id = await asyncio.to_thread(lease_of, f.store, created["session"]["id"])
        if not r.id:
            raise RuntimeError(f"no lease for a session on {r.hostport}")


# ---------------------------------------------------------------------- the clients


@dataclass
class Turn:
    item_id: str
    question: str
    answer: str
    status: str
    replica: str  # the replica that answered


@dataclass
class Resume:
    code: int | None  # how the connection ended: 1012 (drained), None (dropped)
    replica_before: str
    answered_before: int  # answered turns of the conversation when it was lost
    replica_after: str = ""
    attempts: int = 0  # handshakes refused or failed before one went through
    created_s: float = 0.0  # from the loss to session.created
    first_answer_s: float | None = None  # from the loss to the first answer after it
    restored: int = 0  # conversation items restored
    missing: list[str] = field(default_factory=list)  # answered turns not restored


@dataclass
class Client:
    """One user holding a text conversation through nginx, resuming it when it is cut."""

    n: int
    url: str
    key: str
    store: str
    think_s: float = 0.3
    turns_per_conversation: int = 0  # then a new conversation; 0: one conversation
    session_id: str = ""
    replica: str = ""
    turns: list[Turn] = field(default_factory=list)  # answered, this conversation
    answered: int = 0  # answered turns, all conversations
    resumes: list[Resume] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # error events, failed turns, refusals
    statuses: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str]] = field(default_factory=list)  # ("done <status>", …)
    in_flight: bool = False  # its answer has started and not ended
    connected: bool = False
    sent: int = 0

    def mark(self, what: str) -> None:
        self.timeline.append((time.monotonic(), what))

    async def converse(self, stopping: asyncio.Event) -> None:
        client = AsyncOpenAI(api_key=self.key, base_url=f"{self.url}/v1", max_retries=0)
        lost: tuple[float, Resume] | None = None
        try:
            while not stopping.is_set():
                query = {"voxwire_resume": self.session_id} if self.session_id else {}
                try:
                    async with client.realtime.connect(model="voxwire",
                                                       extra_query=query) as conn:
                        await self._hold(conn, stopping, lost)
                        lost = None
                except (InvalidHandshake, OSError, TimeoutError) as exc:
                    if lost is None or time.monotonic() - lost[0] > RECONNECT_S:
                        self.problems.append(f"connection failed: {exc!r}")
                        return
                    if isinstance(exc, InvalidStatus) and exc.response.status_code not in (
                            502, 503, 504):
                        self.problems.append(f"resume refused: {exc!r} "
                                             f"{exc.response.body!r}")
                        return
                    lost[1].attempts += 1
                    await asyncio.sleep(min(0.1 * 2 ** lost[1].attempts, 1.0))
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else None
                    self.mark(f"closed {code}")
                    self.connected = self.in_flight = False
                    lost = (time.monotonic(), Resume(code, self.replica, len(self.turns)))
                    self.resumes.append(lost[1])
        finally:
            self.connected = self.in_flight = False
            await client.close()

    async def _hold(self, conn: Any, stopping: asyncio.Event,
                    lost: tuple[float, Resume] | None) -> None:
        created = await self._next(conn)
        if created.type != "session.created":
            raise RuntimeError(f"first event {created.type}, not session.created")
        if lost is not None and created.session.id != self.session_id:
            self.problems.append(f"resumed as {created.session.id}, not {self.session_id}")
        self.session_id = created.session.id
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "instructions": INSTRUCTIONS})
        restored: list[Any] = []
        while (event := await self._next(conn)).type != "session.updated":
            if event.type == "conversation.item.done":
                restored.append(event.item)
            elif event.type == "error":
                self.problems.append(f"error event: {event.error.code}: {event.error.message}")
        self.replica = await asyncio.to_thread(lease_of, self.store, self.session_id)
        self.connected = True
        self.mark("connected")
        if lost is not None:
            lost[1].created_s = time.monotonic() - lost[0]
            lost[1].replica_after = self.replica
            lost[1].restored = len(restored)
            lost[1].missing = missing(self.turns, restored)
        elif restored:
            self.problems.append(f"a new session came with {len(restored)} items")
        while not stopping.is_set():
            if (self.turns_per_conversation and len(self.turns) >= self.turns_per_conversation
                    and (lost is None or lost[1].first_answer_s is not None)):
                self.session_id, self.turns = "", []  # hang up; the next is a new one
                return
            if await self._turn(conn) and lost is not None and lost[1].first_answer_s is None:
                lost[1].first_answer_s = time.monotonic() - lost[0]
            await asyncio.sleep(self.think_s)

    async def _next(self, conn: Any) -> Any:
        """The next event (the SDK's typed event, used as Any: its unions hide what
        session.created holds)."""
        event: RealtimeServerEvent = await asyncio.wait_for(conn.recv(), ANSWER_WAIT_S)
        return event

    async def _turn(self, conn: Any) -> bool:
        """One question and its answer; whether it was answered."""
        self.sent += 1
        item_id = f"item_c{self.n}_{self.sent}"
        question = QUESTIONS[self.sent % len(QUESTIONS)]
        await conn.conversation.item.create(item={
            "id": item_id, "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": question}]})
        await conn.response.create(response={"output_modalities": ["text"]})
        while True:
            event = await self._next(conn)
            if event.type == "response.created":
                self.in_flight = True
            elif event.type == "error":
                self.problems.append(f"error event: {event.error.code}: {event.error.message}")
            elif event.type == "response.done":
                self.in_flight = False
                status = str(event.response.status)
                self.statuses[status] += 1
                self.mark(f"done {status}")
                if status not in ANSWERED:
                    if status == "failed":
                        self.problems.append(f"turn failed: {event.response.status_details}")
                    return False
                answer = "".join(part.text or "" for out in event.response.output or []
                                 if out.type == "message" for part in out.content or []
                                 if part.type == "output_text")
                self.turns.append(Turn(item_id, question, answer, status, self.replica))
                self.answered += 1
                return True


def missing(turns: Sequence[Turn], restored: Sequence[Any]) -> list[str]:
    """The answered turns whose question (by item id and words) or answer is not among the
    restored conversation items, in their order."""
    said = [(str(item.role), str(item.id),
             "".join(part.text or "" for part in item.content or [])) for item in restored
            if item.type == "message"]
    out, at = [], 0
    for turn in turns:
        for role, item_id, text in (("user", turn.item_id, turn.question),
                                    ("assistant", None, turn.answer)):
            found = next((i for i in range(at, len(said)) if said[i][0] == role
                          and said[i][2] == text and item_id in (None, said[i][1])), None)
            if found is None:
                out.append(f"{role} {item_id or ''} {text!r}")
            else:
                at = found + 1
    return out


# ---------------------------------------------------------------------- the scenario


@dataclass
class Plan:
    clients: int = 12
    replicas: int = 3
    hold_s: float = 5.0  # before the kill, between the kill and the drain, and after
    think_s: float = 0.3
    turns_per_conversation: int = 0


@dataclass
class Taken:
    """A replica taken down, with its clients at that moment."""

    replica: str  # its id
    clients: list[int]  # on it
    in_flight: list[int]  # on it, waiting for an answer
    at: float = 0.0  # monotonic
    exit: int | None = None  # its exit status, after SIGTERM


@dataclass
class Outcome:
    killed: Taken | None = None
    drained: Taken | None = None
    token: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    clients: list[Client] = field(default_factory=list)


async def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {seconds:g} s still not: {what}")
        await asyncio.sleep(0.02)


def on(clients: Sequence[Client], replica: str) -> list[Client]:
    return [c for c in clients if c.replica == replica and c.connected]


def moved_on(c: Client, gone: str, answered_before: int) -> bool:
    """Whether ``c``, on replica ``gone`` when it went, talks on another one now: resumed
    and answered there, or (a client that hung up at that moment to start a new
    conversation) answered there in its new one."""
    if not c.connected or c.replica == gone:
        return False
    if c.resumes and c.resumes[-1].replica_before == gone:
        return c.resumes[-1].first_answer_s is not None
    return c.answered > answered_before


async def token_across(f: Fleet, mint_on: Replica, use_on: Replica) -> dict[str, Any]:
    """A token minted on one replica opens one session on another; a second use is 401."""
    backend = AsyncOpenAI(api_key=f.key, base_url=f"http://{mint_on.hostport}/v1")
    try:
        token = (await backend.realtime.client_secrets.create(
            session={"type": "realtime", "instructions": INSTRUCTIONS})).value
    finally:
        await backend.close()
    out: dict[str, Any] = {"minted_on": mint_on.id, "used_on": use_on.id}
    url = f"ws://{use_on.hostport}/v1/realtime"
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=headers) as ws:
        out["first"] = json.loads(await asyncio.wait_for(ws.recv(), 30))["type"]
    try:
        async with connect(url, additional_headers=headers) as ws:
            out["second"] = json.loads(await asyncio.wait_for(ws.recv(), 30))["type"]
    except InvalidStatus as exc:
        out["second"] = exc.response.status_code
    return out


async def take_down(f: Fleet, clients: Sequence[Client], among: Sequence[Replica],
                    sig: signal.Signals) -> tuple[Replica, Taken]:
    """Send ``sig`` to one of ``among`` while one of its clients waits for an answer; after
    SIGTERM, wait for it to exit; then until its clients talk on other replicas."""
    await until(lambda: any(c.in_flight for r in among for c in on(clients, r.id)), 60,
                "an answer in flight")
    replica = next(r for r in among if any(c.in_flight for c in on(clients, r.id)))
    taken = Taken(replica.id, [c.n for c in on(clients, replica.id)],
                  [c.n for c in on(clients, replica.id) if c.in_flight])
    before = {c.n: c.answered for c in clients}
    taken.at = time.monotonic()
    replica.proc.send_signal(sig)
    if sig != signal.SIGKILL:
        taken.exit = await asyncio.to_thread(replica.proc.wait, f.grace_s + 30)
    moved = [clients[n] for n in taken.clients]
    await until(lambda: all(moved_on(c, replica.id, before[c.n]) for c in moved), 120,
                f"the clients of the replica sent {sig.name} answered elsewhere")
    return replica, taken


async def scenario(f: Fleet, plan: Plan) -> Outcome:
    """Clients talking through nginx; one replica killed mid-answer, another drained
    mid-answer, the token check in between; every client stopped at the end."""
    out = Outcome()
    started = time.monotonic()
    await identify(f)
    stopping = asyncio.Event()
    out.clients = [Client(n, f.url, f.key, f.store, plan.think_s, plan.turns_per_conversation)
                   for n in range(plan.clients)]
    tasks = [asyncio.create_task(c.converse(stopping)) for c in out.clients]
    try:
        await until(lambda: all(c.answered for c in out.clients) or any(t.done() for t in tasks),
                    120 + 10 * plan.clients, "every client answered once")
        await asyncio.sleep(plan.hold_s)
        victim, out.killed = await take_down(f, out.clients, f.replicas, signal.SIGKILL)
        survivors = [r for r in f.replicas if r is not victim]
        out.token = await token_across(f, survivors[0], survivors[-1])
        await asyncio.sleep(plan.hold_s)
        _, out.drained = await take_down(f, out.clients, survivors, signal.SIGTERM)
        before = {c.n: c.answered for c in out.clients}
        await asyncio.sleep(plan.hold_s)
        await until(lambda: all(c.answered > before[c.n] for c in out.clients),
                    60 + 5 * plan.clients, "every client answered after the drain")
    finally:
        stopping.set()
        done, pending = await asyncio.wait(tasks, timeout=ANSWER_WAIT_S)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                out.clients[tasks.index(task)].problems.append(
                    f"client crashed: {task.exception()!r}")
        out.seconds = time.monotonic() - started
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(out: Outcome) -> dict[str, Any]:
    """The figures of a run, as JSON."""
    resumed = [r for c in out.clients for r in c.resumes]
    firsts = [r.first_answer_s for r in resumed if r.first_answer_s is not None]
    moved = {n for taken in (out.killed, out.drained) if taken for n in taken.clients}
    return {
        "clients": len(out.clients),
        "seconds": round(out.seconds, 1),
        "turns_answered": sum(c.answered for c in out.clients),
        "statuses": dict(sum((c.statuses for c in out.clients), Counter())),
        "resumes": len(resumed),
        "reconnect_to_first_answer_s": {
            "p50": percentile(firsts, 0.5), "p95": percentile(firsts, 0.95),
            "max": max(firsts, default=None),
            "each": [round(s, 3) for s in firsts]},
        "reconnect_to_session_s": [round(r.created_s, 3) for r in resumed],
        "handshake_retries": sum(r.attempts for r in resumed),
        "turns_lost": sum(len(r.missing) for r in resumed),
        "resumes_unanswered": sum(r.first_answer_s is None for r in resumed),
        "failures": [f"client {c.n}: {p}" for c in out.clients for p in c.problems],
        "unexpected_disconnects": sum(len(c.resumes) for c in out.clients
                                      if c.n not in moved),
        "killed": asdict(out.killed) if out.killed else None,
        "drained": asdict(out.drained) if out.drained else None,
        "token_across_replicas": out.token,
        "resumed": [dict(asdict(r), client=c.n) for c in out.clients for r in c.resumes],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.environ.get("VOXWIRE_BENCH_STORE", ""),
                    help="a PostgreSQL URL the replicas share (env VOXWIRE_BENCH_STORE)")
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="how long the conversations go on (split around the kill and drain)")
    ap.add_argument("--think-s", type=float, default=0.3, help="a client's pause between turns")
    ap.add_argument("--turns-per-conversation", type=int, default=6,
                    help="then a client hangs up and starts a new conversation (0: never)")
    ap.add_argument("--grace-s", type=float, default=GRACE_S,
                    help="each replica's --shutdown-grace-s")
    ap.add_argument("--results", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    if not args.store.startswith(("postgresql://", "postgres://")):
        ap.error("--store: a PostgreSQL URL (postgresql://user@host:port/database)")
    if args.replicas < 3:
        ap.error("--replicas: at least 3 (one is killed, one drained)")
    plan = Plan(clients=args.clients, replicas=args.replicas, hold_s=args.seconds / 3,
                think_s=args.think_s, turns_per_conversation=args.turns_per_conversation)
    folder = Path(tempfile.mkdtemp(prefix="voxwire-replicas-"))
    try:
        with fleet(args.store, plan.replicas, folder, grace_s=args.grace_s) as f:
            try:
                out = asyncio.run(scenario(f, plan))
            except Exception:
                print(f.logs(), file=sys.stderr)
                raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures = summary(out)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "replicas.json").write_text(json.dumps(figures, indent=2))
    shown = {k: v for k, v in figures.items() if k != "resumed"}
    print(json.dumps(shown, indent=2))
    return 0 if not figures["failures"] and not figures["turns_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
