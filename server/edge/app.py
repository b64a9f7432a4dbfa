"""The WebSocket edge: HTTP routes and `/v1/realtime`, a thin adapter around `Session`.

Exceptions become `error` events here and only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import signal
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib.resources import files
from pathlib import PurePosixPath
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

import realtime as p
from server.edge import auth
from server.edge.http import (
    EdgeGuard,
    Reply,
    connection_class,
    duplicate_header,
    json_error,
    json_response,
    response,
)
from server.edge.intake import Intake
from server.edge.tokens import Grant, Shape, SharedTokens, Tokens, mint_request
from server.edge.webrtc import (
    CALLS_PATH,
    MAX_SIDEBANDS,
    NO_FREE_PORT,
    Call,
    Sideband,
    WebRtcDoor,
    read_offer,
)
from server.errors import LimitError, ProtocolError, StoreError
from server.runtime import tracing
from server.runtime.config import Settings
from server.runtime.engines import Engines
from server.runtime.heap import trim_every
from server.runtime.metrics import TurnMetrics
from server.runtime.store import PostgresStore, Resumable, SqlStore, Store, open_store
from server.session.core import Session
from server.session.outbox import FLUSHED

log = logging.getLogger(__name__)
REALTIME_PATH = "/v1/realtime"
MINT_PATHS: dict[str, Shape] = {"/v1/realtime/client_secrets": "ga",
                                "/v1/realtime/sessions": "beta",
                                "/v1/realtime/transcription_sessions": "beta"}
TRANSCRIPTION_MINT = "/v1/realtime/transcription_sessions"  # beta: transcription only
CLOSE_TRY_AGAIN = 1013
CLOSE_SERVICE_RESTART = 1012
# A replica tells the others it lives every BEAT_S; its sessions stop counting against
# their keys LEASE_TTL_S after its last word, and it is forgotten after FORGET_REPLICA_S.
BEAT_S, LEASE_TTL_S, FORGET_REPLICA_S = 5.0, 15.0, 600.0
TAKE_OVER_S = 5.0  # how long a resume waits for the session's old connection to close
RESUME_PARAM = "voxwire_resume"  # extension: go on with a stored session (its id)
DRAINING = "this server is shutting down: connect again (a balancer sends you elsewhere)"
# A client that takes in nothing for this long is dropped. Its socket backed up, so the
# keepalive pings, queued behind the same writes, would never time out: without this it
# would be held forever, its answer waiting for it.
SEND_TIMEOUT_S = 10.0
PAGES = {"/": "index.html", "/kiosk": "kiosk.html"}
LOAD_FAILED = "model loading failed"  # the detail goes to the log only
CLOSE_ON_EXIT_S = 2.0  # at shutdown, how long what is queued may take to go out, and the close
# Credentials never travel in a URL: URLs end up in logs, histories and Referer headers.
QUERY_SECRETS = ("key", "api_key", "token", "access_token")
KIOSK_ANY = (b'<meta name="voxwire-kiosk-servers" content="same-origin">',
             b'<meta name="voxwire-kiosk-servers" content="any">')
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml",
    ".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".ico": "image/x-icon",
}


# What a page may send with its offer: the SDK's own header included.
CORS_REQUEST_HEADERS = "Authorization, Content-Type, OpenAI-Beta, X-OpenAI-Agents-SDK"


def with_cors_headers(reply: Response, origin: str) -> Response:
    """Let a page on ``origin`` read this answer (the SDP, the call's Location, or the
    error's body)."""
    reply.headers["Access-Control-Allow-Origin"] = origin
    reply.headers["Access-Control-Expose-Headers"] = "Location"
    reply.headers["Vary"] = "Origin"
    return reply


def cors(reply: Reply, origin: str) -> Reply:
    if isinstance(reply, Response):
        return with_cors_headers(reply, origin)
    pending = reply

    async def later() -> Response:
        return with_cors_headers(await pending, origin)
    return later()


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str  # strong: the sha256 of the bytes

    def response(self, if_none_match: str | None) -> Response:
        tags = {t.strip().removeprefix("W/") for t in (if_none_match or "").split(",")}
        headers = [("ETag", self.etag), ("Cache-Control", "no-cache"),
                   ("Access-Control-Allow-Origin", "*"), ("X-Content-Type-Options", "nosniff")]
        if self.etag in tags or "*" in tags:
            status, body = HTTPStatus.NOT_MODIFIED, b""
        else:
            status, body = HTTPStatus.OK, self.body
            headers += [("Content-Type", self.content_type), ("Content-Length", str(len(body)))]
        return Response(status.value, status.phrase, Headers(headers), body)


def load_static() -> dict[str, StaticFile]:
    """Every servable file directly in server/edge/static, by name, read once."""
    out: dict[str, StaticFile] = {}
    for entry in files("server.edge").joinpath("static").iterdir():
        kind = STATIC_TYPES.get(PurePosixPath(entry.name).suffix)
        if kind is not None and entry.is_file() and not entry.name.startswith("."):
            body = entry.read_bytes()
            out[entry.name] = StaticFile(body, kind, f'"{hashlib.sha256(body).hexdigest()}"')
    return out


@dataclass
class App:
    settings: Settings
    engines: Engines | None = None
    sessions: set[Session] = field(default_factory=set)
    load_error: str | None = None
    static: dict[str, StaticFile] = field(default_factory=load_static)
    store: Store | None = None
    per_key: dict[str, int] = field(default_factory=dict)  # open sessions by key fingerprint
    tokens: Tokens = field(default_factory=Tokens)
    # what a token granted its connection, from the handshake to the session's start
    grants: weakref.WeakKeyDictionary[ServerConnection, Grant] = field(
        default_factory=weakref.WeakKeyDictionary)
    draining: bool = False  # shutting down: no new session, /readyz says 503
    # the session a connection resumes, from its handshake to the session's start
    resumes: weakref.WeakKeyDictionary[ServerConnection, Resumable] = field(
        default_factory=weakref.WeakKeyDictionary)
    # how to end each open WebSocket session's connection, by session id (a resume takes over)
    closers: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = auth.load_keys(self.settings)
        auth.check_exposure(self.settings, self.keys)
        self.origins = tuple(o.strip() for o in self.settings.allowed_origins.split(",")
                             if o.strip())
        self.hosts = auth.trusted_hosts(self.settings)
        self.tokens.configure(self.settings.max_tokens_per_key, self.settings.token_mints_per_s)
        self.guard = EdgeGuard(self.settings.max_connections_per_ip,
                               self.settings.max_pending_handshakes_per_ip,
                               self.settings.max_pending_handshakes,
                               exempt=self.settings.proxy_networks())
        kiosk = self.static.get("kiosk.html")
        if self.settings.kiosk_any_server and kiosk is not None:
            body = kiosk.body.replace(*KIOSK_ANY)
            self.static["kiosk.html"] = StaticFile(
                body, kiosk.content_type, f'"{hashlib.sha256(body).hexdigest()}"')
        if self.store is None:
            self.store = open_store(self.settings.store)
        self.webrtc = WebRtcDoor(self)
        # Replicas sharing a PostgreSQL store share tokens and per-key session counts.
        self.replica = "replica_" + secrets.token_hex(6)
        self.shared = self.store if isinstance(self.store, PostgresStore) else None
        self.shared_tokens = (SharedTokens(self.shared, self.tokens)
                              if self.shared is not None else None)

    async def load(self) -> Engines:
        """Load the models in a thread, so /healthz answers (503) while they load."""
        try:
            self.engines = await asyncio.to_thread(Engines.load, self.settings)
        except Exception:
            self.load_error = LOAD_FAILED
            log.exception("model loading failed")
            raise
        return self.engines

    # ------------------------------------------------------------------ HTTP

    def refuse(self, target: str, headers: Headers) -> Response | None:
        """Checks every request passes, whatever its method and path."""
        name = duplicate_header(headers)
        if name is not None:
            return json_error(HTTPStatus.BAD_REQUEST, "duplicate_header",
                              f"the {name} header must be sent at most once")
        if not self.keys and not auth.host_ok(headers.get("Host"), self.hosts):
            return json_error(HTTPStatus.FORBIDDEN, "host_not_allowed",
                              f"this server does not answer to Host {headers.get('Host')!r}: "
                              "list the name in --allowed-hosts")
        query = parse_qs(urlsplit(target).query, keep_blank_values=True)
        secret = next((name for name in QUERY_SECRETS if name in query), None)
        if secret is not None:
            return json_error(HTTPStatus.BAD_REQUEST, "key_in_query",
                              f"keys and tokens never go in the URL (the {secret!r} query "
                              "parameter): send Authorization: Bearer <key>, or from a "
                              "browser the openai-insecure-api-key.<key> subprotocol")
        return None

    async def process_request(self, connection: ServerConnection,
                              request: Request) -> Response | None:
        refused = self.refuse(request.path, request.headers)
        if refused is not None:
            return refused
        path = urlsplit(request.path).path.rstrip("/") or "/"
        if path in MINT_PATHS:
            return await self.mint(request.method, path, request.headers, b"")
        if path == REALTIME_PATH:
            query = parse_qs(urlsplit(request.path).query)
            if "call_id" in query:
                return self.refuse_sideband(query["call_id"][0], request.headers)
            if self.draining:
                return json_error(HTTPStatus.SERVICE_UNAVAILABLE, "server_draining", DRAINING)
            grant = await self.redeem(request.headers)
            if isinstance(grant, Response):
                log.info("refused a connection without a valid key from %s",
                         connection.remote_address)
                return grant
            if grant is not None:
                self.grants[connection] = grant
            if not auth.origin_ok(request.headers, self.origins, any_by_default=bool(self.keys)):
                return json_error(HTTPStatus.FORBIDDEN, "origin_not_allowed",
                                  f"origin {request.headers.get('Origin')} is not allowed")
            if self.engines is None:
                reason = self.load_error or "models are still loading"
                return response(HTTPStatus.SERVICE_UNAVAILABLE, reason.encode(), "text/plain")
            if RESUME_PARAM in query:
                found = await self.resumable(query[RESUME_PARAM][0],
                                             self.key_of(request.headers, grant))
                if isinstance(found, Response):
                    return found
                self.resumes[connection] = found
            return None  # upgrade to a WebSocket
        if path == "/livez":  # the process is alive and its event loop answers
            return response(HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/readyz":  # for balancers: send new users here, or not
            why = self.not_ready()
            if why is None:
                return response(HTTPStatus.OK, b"ready\n", "text/plain")
            return response(HTTPStatus.SERVICE_UNAVAILABLE, f"{why}\n".encode(), "text/plain")
        if path == "/healthz":
            if self.engines is not None:
                return response(HTTPStatus.OK, b"ok\n", "text/plain")
            body = (self.load_error or "loading") + "\n"
            return response(HTTPStatus.SERVICE_UNAVAILABLE, body.encode(), "text/plain")
        if path == "/metrics":
            if (self.keys and not self.settings.metrics_public
                    and not auth.key_ok(auth.bearer_key(request.headers), self.keys)):
                return json_error(HTTPStatus.UNAUTHORIZED, "invalid_api_key",
                                  "/metrics needs Authorization: Bearer <API key> "
                                  "(or --metrics-public)")
            text = self.engines.registry.render() if self.engines else ""
            return response(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4")
        static = self.static.get(PAGES.get(path, path.removeprefix("/")))
        if static is not None:
            return static.response(request.headers.get("If-None-Match"))
        return response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def answer_http(self, method: str, target: str, headers: Headers, body: bytes) -> Reply:
        """Requests other than GET (see server.edge.http): minting browser tokens, and
        WebRTC calls' SDP offers."""
        refused = self.refuse(target, headers)
        if refused is not None:
            return refused
        path = urlsplit(target).path.rstrip("/") or "/"
        if path.startswith(CALLS_PATH + "/"):
            return self.hangup(method, path, headers)
        if path in (CALLS_PATH, REALTIME_PATH):
            origin = headers.get("Origin")
            if method == "OPTIONS":
                return self.preflight(path, headers)
            reply = self.offer(method, path, target, headers, body)
            if origin is None or not auth.origin_ok(headers, self.origins,
                                                    any_by_default=bool(self.keys)):
                return reply
            return cors(reply, origin)
        return self.mint(method, path, headers, body)

    def preflight(self, path: str, headers: Headers) -> Response:
        """CORS for a page on another origin that posts an SDP offer (with the
        Authorization and Content-Type headers a browser asks about first)."""
        origin = headers.get("Origin")
        if origin is None or not auth.origin_ok(headers, self.origins,
                                                any_by_default=bool(self.keys)):
            return json_error(HTTPStatus.FORBIDDEN, "origin_not_allowed",
                              f"origin {origin} is not allowed")
        reply = Response(HTTPStatus.NO_CONTENT.value, HTTPStatus.NO_CONTENT.phrase, Headers([
            ("Access-Control-Allow-Methods", "POST"),
            ("Access-Control-Allow-Headers", CORS_REQUEST_HEADERS),
            ("Access-Control-Max-Age", "600"), ("Content-Length", "0")]), b"")
        return with_cors_headers(reply, origin)

    async def mint(self, method: str, path: str, headers: Headers, body: bytes) -> Response:
        """Minting browser tokens (`POST /v1/realtime/client_secrets` and the beta routes)."""
        shape = MINT_PATHS.get(path)
        if shape is None:
            return json_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for {method} {path}")
        if method != "POST":
            return post_only(path)
        if not self.keys:
            return json_error(HTTPStatus.NOT_FOUND, "tokens_disabled",
                              "this server has no API keys, so it mints no tokens: "
                              "connect without a key")
        offered = auth.offered_key(headers)
        if not auth.key_ok(offered, self.keys):
            return json_error(HTTPStatus.UNAUTHORIZED, "invalid_api_key",
                              "minting a token needs Authorization: Bearer <API key>")
        if self.engines is None:
            return json_error(HTTPStatus.SERVICE_UNAVAILABLE, "loading",
                              self.load_error or "models are still loading")
        try:
            request = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            return json_error(HTTPStatus.BAD_REQUEST, "invalid_json",
                              "the body is not a JSON document")
        try:
            config, ttl_s = mint_request(shape, request, self.settings.token_ttl_s)
            if path == TRANSCRIPTION_MINT:
                config = {**config, "type": "transcription"}
            # the session the token will open, as its session.created will show it
            probe = Session(self.engines, self.settings, dialect=shape)
            probe.configure(config)  # what is in effect: a voice it has not is not shown
            wire = p.session_to_wire(probe.cfg, probe.id, shape)
            if self.shared_tokens is not None:
                token, expires_at = await self.shared_tokens.mint(auth.key_id(offered), config,
                                                                  ttl_s)
            else:
                token, expires_at = self.tokens.mint(auth.key_id(offered), config, ttl_s)
        except LimitError as exc:
            return json_error(HTTPStatus.TOO_MANY_REQUESTS, exc.code, str(exc))
        except ProtocolError as exc:
            return json_error(HTTPStatus.BAD_REQUEST, exc.code, str(exc))
        except StoreError as exc:
            return store_down(exc)
        log.info("minted a token for %g s", ttl_s)
        secret = {"value": token, "expires_at": expires_at}
        return json_response(HTTPStatus.OK, {**wire, "client_secret": secret}
                             if shape == "beta" else {**secret, "session": wire})

    # ------------------------------------------------------------------ WebRTC

    async def redeem(self, headers: Headers) -> Grant | Response | None:
        """None for an API key (or a server without keys); the grant of a valid token, used
        up by trying it (on any replica when they share a PostgreSQL store); else the
        refusal."""
        offered = auth.offered_key(headers)
        if not self.keys or auth.key_ok(offered, self.keys):
            return None
        try:
            grant = (await self.shared_tokens.redeem(offered) if self.shared_tokens is not None
                     else self.tokens.redeem(offered))
        except StoreError as exc:
            return store_down(exc)
        return grant if grant is not None else json_error(
            HTTPStatus.UNAUTHORIZED, "invalid_api_key", "missing or invalid API key")

    async def offer(self, method: str, path: str, target: str, headers: Headers,
                    body: bytes) -> Response:
        """A WebRTC call's SDP offer: `POST /v1/realtime/calls` (GA), or the beta
        `POST /v1/realtime?model=...`; checked as a WebSocket's handshake is."""
        if method != "POST":
            reply = json_error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                               f"{path} takes POST only (or GET for a WebSocket)")
            reply.headers["Allow"] = "POST" if path == CALLS_PATH else "GET, POST"
            return reply
        if self.draining:
            return json_error(HTTPStatus.SERVICE_UNAVAILABLE, "server_draining", DRAINING)
        if self.settings.no_webrtc:  # before the key: a token tried would be used up
            return json_error(HTTPStatus.NOT_FOUND, "webrtc_disabled",
                              "this server takes no WebRTC calls (--no-webrtc): connect "
                              "over the WebSocket")
        grant = await self.redeem(headers)
        if isinstance(grant, Response):
            return grant
        if not auth.origin_ok(headers, self.origins, any_by_default=bool(self.keys)):
            return json_error(HTTPStatus.FORBIDDEN, "origin_not_allowed",
                              f"origin {headers.get('Origin')} is not allowed")
        engines = self.engines
        if engines is None:
            return json_error(HTTPStatus.SERVICE_UNAVAILABLE, "loading",
                              self.load_error or "models are still loading")
        try:
            offer = read_offer(headers.get("Content-Type", ""), body)
        except ProtocolError as exc:
            status = (HTTPStatus.UNSUPPORTED_MEDIA_TYPE if exc.code == "unsupported_media_type"
                      else HTTPStatus.BAD_REQUEST)
            return json_error(status, exc.code, str(exc))
        query = parse_qs(urlsplit(target).query)
        model = query.get("model", ["voxwire"])[0][:200]
        dialect: p.Dialect = "ga" if path == CALLS_PATH else "beta"
        key = self.key_of(headers, grant)
        resume = None
        if RESUME_PARAM in query:
            found = await self.resumable(query[RESUME_PARAM][0], key)
            if isinstance(found, Response):
                return found
            resume = found
        try:
            sdp, call_id = await self.webrtc.answer(offer, engines, key, grant, dialect, model,
                                                    resume)
        except LimitError as exc:
            return json_error(HTTPStatus.SERVICE_UNAVAILABLE if exc.code == NO_FREE_PORT
                              else HTTPStatus.TOO_MANY_REQUESTS, exc.code, str(exc))
        except ProtocolError as exc:
            return json_error(HTTPStatus.BAD_REQUEST, exc.code, str(exc))
        reply = response(HTTPStatus.CREATED, sdp.encode(), "application/sdp")
        reply.headers["Location"] = f"{CALLS_PATH}/{call_id}"
        return reply

    def hangup(self, method: str, path: str, headers: Headers) -> Reply:
        """Ending a call by its id, as OpenAI does: `POST /v1/realtime/calls/{id}/hangup`,
        with an API key (a browser token is not enough)."""
        call_id, _, action = path.removeprefix(CALLS_PATH + "/").partition("/")
        if action != "hangup":
            return json_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for {method} {path}")
        if method != "POST":
            return post_only(path)
        refused = self.refuse_backend(headers, "hanging up a call")
        return refused if refused is not None else self._hangup(call_id)

    async def _hangup(self, call_id: str) -> Response:
        if not await self.webrtc.hangup(call_id):
            return json_error(HTTPStatus.NOT_FOUND, "call_not_found", f"no live call {call_id!r}")
        return response(HTTPStatus.OK, b"", "text/plain")

    def refuse_backend(self, headers: Headers, what: str) -> Response | None:
        """What only a backend may do to a live call: with an API key, never a browser
        token (and from an allowed origin)."""
        if self.keys and not auth.key_ok(auth.offered_key(headers), self.keys):
            return json_error(HTTPStatus.UNAUTHORIZED, "invalid_api_key",
                              f"{what} needs Authorization: Bearer <API key> (a browser "
                              "token is not enough)")
        if not auth.origin_ok(headers, self.origins, any_by_default=bool(self.keys)):
            return json_error(HTTPStatus.FORBIDDEN, "origin_not_allowed",
                              f"origin {headers.get('Origin')} is not allowed")
        return None

    # ------------------------------------------------------------------ sidebands

    def refuse_sideband(self, call_id: str, headers: Headers) -> Response | None:
        """A sideband's handshake (`/v1/realtime?call_id=rtc_...`): an API key, never a
        browser token, and a live call with room for one more."""
        refused = self.refuse_backend(headers, "a sideband")
        if refused is not None:
            return refused
        call = self.webrtc.calls.get(call_id)
        if call is None or call.ended.is_set():
            return json_error(HTTPStatus.NOT_FOUND, "call_not_found",
                              f"no live call {call_id!r}")
        if len(call.sidebands) >= MAX_SIDEBANDS:
            return json_error(HTTPStatus.TOO_MANY_REQUESTS, "too_many_sidebands",
                              f"call {call_id} has {MAX_SIDEBANDS} sidebands attached already")
        return None  # upgrade to a WebSocket

    async def sideband(self, ws: ServerConnection, call_id: str) -> None:
        """A WebSocket attached to a live call: the call's server events from now on (no
        audio, as on the call), its client events into the call's session. Closed when the
        call ends (1000), or when it falls too far behind (1008)."""
        call = self.webrtc.calls.get(call_id)
        try:
            if call is None:
                raise ProtocolError(f"no live call {call_id!r}", code="call_not_found")
            feed = call.attach()
        except (LimitError, ProtocolError) as exc:
            await ws.close(1008, exc.code)
            return
        log.info("call %s: a sideband attached (%s)", call_id, ws.remote_address)
        parts = {asyncio.create_task(self._feed(ws, feed, call.dialect)),
                 asyncio.create_task(self._sideband_read(ws, call))}
        try:
            await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        finally:
            call.detach(feed)
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
        if feed.behind:
            await ws.close(1008, "sideband_too_slow")
        else:
            await ws.close(1000, "call_ended" if call.ended.is_set() else "")
        log.info("call %s: a sideband left", call_id)

    @staticmethod
    async def _feed(ws: ServerConnection, feed: Sideband, dialect: p.Dialect) -> None:
        """Send a sideband its copy of the call's events, until the call ends or drops it."""
        while (event := await feed.get()) is not None:
            text = p.encode(event, dialect)
            if text is None:
                continue
            try:
                await asyncio.wait_for(ws.send(text), SEND_TIMEOUT_S)
            except (TimeoutError, ConnectionClosed):
                return

    @staticmethod
    async def _sideband_read(ws: ServerConnection, call: Call) -> None:
        intake = call.sideband_intake()
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await intake.take(message)

    # ------------------------------------------------------------------ WebSocket

    async def handle(self, ws: ServerConnection) -> None:
        engines = self.engines
        if engines is None:
            await ws.close(CLOSE_TRY_AGAIN, "models are still loading")
            return
        request = ws.request
        if request is not None:
            call_id = parse_qs(urlsplit(request.path).query).get("call_id")
            if call_id:
                await self.sideband(ws, call_id[0])
                return
        headers = request.headers if request is not None else Headers()
        grant = self.grants.pop(ws, None)
        key = self.key_of(headers, grant)
        resume = self.resumes.pop(ws, None)
        session_id = resume.session_id if resume is not None else p.new_id("sess")
        refused = await self.admit(key, session_id)
        if refused is not None:
            await ws.close(CLOSE_TRY_AGAIN, refused)
            return
        dialect: p.Dialect = "beta" if "realtime=v1" in headers.get("OpenAI-Beta", "") else "ga"
        query = parse_qs(urlsplit(request.path).query) if request is not None else {}
        model = query.get("model", ["voxwire"])[0][:200]
        # `?intent=transcription` (the beta way): a transcription-only session
        kind = "transcription" if query.get("intent") == ["transcription"] else "realtime"
        session = self.open_session(engines, key, grant, dialect=dialect, model=model,
                                    kind=kind, transport="websocket", resume=resume,
                                    session_id=session_id)
        if query.get("voxwire_metrics", [""])[0] in ("1", "true"):
            session.configure({"voxwire": {"metrics": True}})  # the extension, by URL
        log.info("session %s opened (%s dialect, %s)", session.id, dialect, ws.remote_address)
        writer = asyncio.create_task(self._drain(ws, session, dialect))

        async def close() -> None:
            await ws.close(1000, "the session goes on on another connection")

        self.closers[session.id] = close
        try:
            await session.start()
            await self._read(ws, session)
        finally:
            if self.closers.get(session.id) is close:
                del self.closers[session.id]
            await self.close_session(session, key)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    # ------------------------------------------------------------------ sessions, any door

    def key_of(self, headers: Headers, grant: Grant | None) -> str:
        """The fingerprint of the key a connection counts against: a token's session counts
        against the key that minted it; "" when the server has no keys."""
        if grant is not None:
            return grant.key_id
        return auth.key_id(auth.offered_key(headers)) if self.keys else ""

    async def resumable(self, session_id: str, key: str) -> Resumable | Response:
        """The stored session ``session_id`` if the connecting ``key`` may go on with it
        (the key that opened it, or a token it minted, within --resume-ttl-s); else why
        not, as the handshake's answer."""
        if not isinstance(self.store, SqlStore):
            return json_error(HTTPStatus.BAD_REQUEST, "resume_unavailable",
                              "this server keeps no history (--store none), so no session "
                              "can be resumed: connect without voxwire_resume")
        try:
            found = await self.store.resumable(session_id[:200])
        except StoreError as exc:
            log.warning("resuming %s: %s", session_id[:200], exc)
            return json_error(HTTPStatus.SERVICE_UNAVAILABLE, "store_unavailable",
                              "the history store is unavailable: try again, or connect "
                              "without voxwire_resume")
        if found is None or found.key_id != key:  # another key's: as if there were none
            return json_error(HTTPStatus.NOT_FOUND, "session_not_found",
                              f"no session {session_id[:200]!r} to resume with this key")
        if time.time() - found.last_active > self.settings.resume_ttl_s:
            return json_error(HTTPStatus.GONE, "session_expired",
                              f"session {found.session_id} was last used more than "
                              f"{self.settings.resume_ttl_s:g} s ago (--resume-ttl-s): "
                              "connect without voxwire_resume for a new one")
        if any(s.id == found.session_id for s in self.sessions):
            # Still open here: its client lost the connection before this server noticed.
            # The new connection takes over: the old one is closed, its session saved.
            if not await self._take_over(found.session_id):
                return json_error(HTTPStatus.CONFLICT, "session_active",
                                  f"session {found.session_id} is still open on this server")
            again = await self.store.resumable(found.session_id)
            found = again if again is not None else found
        return found

    async def _take_over(self, session_id: str) -> bool:
        """Close the connection of open session ``session_id``; whether it closed in time."""
        closer = self.closers.get(session_id)
        calls = [c for c in self.webrtc.calls.values()
                 if c.session.id == session_id and not c.ended.is_set()]
        log.info("session %s: resumed on a new connection, closing the old one", session_id)
        if closer is not None:
            await closer()
        for call in calls:
            await call.close()
        for _ in range(int(TAKE_OVER_S / 0.05)):
            if not any(s.id == session_id for s in self.sessions):
                return True
            await asyncio.sleep(0.05)
        return False

    def not_ready(self) -> str | None:
        """Why a balancer should send no new session here now; None when it may."""
        if self.engines is None:
            return self.load_error or "models are still loading"
        if self.draining:
            return DRAINING
        return self.full("")

    def full(self, key: str) -> str | None:
        """Why no new session may open now for ``key`` on this replica; None when one may
        (the per-key limit is counted here unless replicas share it)."""
        if len(self.sessions) >= self.settings.max_sessions:
            return "server is at its session limit"
        if (key and self.shared is None
                and self.per_key.get(key, 0) >= self.settings.max_sessions_per_key):
            return "this key is at its session limit"
        return None

    async def admit(self, key: str, session_id: str) -> str | None:
        """Why ``session_id`` may not open now for ``key``; None when it may. Replicas
        sharing a PostgreSQL store count ``key``'s sessions across them all, each session
        by a lease that lives while its replica does; if the store cannot be reached, this
        replica's own count decides."""
        refused = self.full(key)
        if refused is not None or not key or self.shared is None:
            return refused
        limit = self.settings.max_sessions_per_key
        try:
            taken = await self.shared.take_lease(self.replica, key, session_id, limit,
                                                 LEASE_TTL_S)
        except StoreError as exc:
            log.warning("session leases unavailable (%s): counting this replica's only", exc)
            taken = self.per_key.get(key, 0) < limit
        return None if taken else "this key is at its session limit (across replicas)"

    def open_session(self, engines: Engines, key: str, grant: Grant | None, *,
                     transport: str, dialect: p.Dialect = "ga", model: str = "voxwire",
                     kind: str = "realtime",
                     transport_format: p.AudioFormat | None = None,
                     resume: Resumable | None = None, session_id: str | None = None) -> Session:
        """A new session, counted in (against ``key`` too), configured as ``grant`` says;
        or, with ``resume``, a stored one going on with its conversation."""
        session = Session(engines, self.settings, dialect=dialect, model=model,
                          store=self.store, kind=kind,
                          sinks=(TurnMetrics(engines.registry, transport),
                                 *tracing.turn_sinks(engines.responder.name)),
                          transport_format=transport_format, transport=transport,
                          session_id=resume.session_id if resume else session_id, owner=key)
        if grant is not None and grant.session:
            session.configure(grant.session)  # validated at minting; session.created shows it
        if resume is not None:
            session.restore(resume.turns)
            engines.registry.inc("sessions_resumed_total")
            log.info("session %s resumed with %d turns", resume.session_id, len(resume.turns))
        self.sessions.add(session)
        self.per_key[key] = self.per_key.get(key, 0) + 1
        engines.registry.gauge("sessions_active", len(self.sessions))
        engines.registry.inc("sessions_total")
        engines.registry.inc(f"sessions_{transport}_total")
        return session

    async def close_session(self, session: Session, key: str) -> None:
        """Close ``session`` (what runs is cancelled and saved) and count it out."""
        await session.close()
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_key[key] -= 1
            if self.shared is not None and key:
                with contextlib.suppress(StoreError):  # else it goes when its replica does
                    await self.shared.drop_lease(self.replica, session.id)
            if self.engines is not None:
                self.engines.registry.gauge("sessions_active", len(self.sessions))
            log.info("session %s closed", session.id)

    async def _read(self, ws: ServerConnection, session: Session) -> None:
        st = self.settings
        intake = Intake(st, session)
        ends = asyncio.get_running_loop().time() + st.max_session_s
        try:
            while True:
                left = ends - asyncio.get_running_loop().time()
                if left <= 0:
                    await self._close(ws, session, "session_expired",
                                      f"sessions last at most {st.max_session_s:g} s")
                    return
                try:
                    message = await asyncio.wait_for(ws.recv(), min(st.idle_timeout_s, left))
                except TimeoutError:
                    if left > st.idle_timeout_s:
                        await self._close(ws, session, "idle_timeout",
                                          f"no client event for {st.idle_timeout_s:g} s")
                        return
                    continue
                await intake.take(message)
        except ConnectionClosed:
            pass

    @staticmethod
    async def _close(ws: ServerConnection, session: Session, code: str, message: str) -> None:
        """Tell the client why in an `error` event, give it a moment to go out, then close."""
        await session.error(LimitError(message, code=code))
        await asyncio.sleep(0.2)
        await ws.close(1000, code)

    @staticmethod
    async def _drain(ws: ServerConnection, session: Session, dialect: p.Dialect) -> None:
        """Send the outbox; once the client is gone, drop what comes, so that nothing
        waiting for room in the outbox (the reader, an answer, closing) waits forever."""
        gone = False
        async for event, on_sent in session.outbox:
            if event is FLUSHED:
                if on_sent is not None:
                    on_sent()
                continue
            text = None if gone else p.encode(event, dialect)
            if text is None:
                continue
            try:
                await asyncio.wait_for(ws.send(text), SEND_TIMEOUT_S)
            except TimeoutError:
                log.warning("session %s: the client read nothing for %g s; dropped",
                            session.id, SEND_TIMEOUT_S)
                ws.transport.abort()
                gone = True
            except ConnectionClosed:
                gone = True
            else:
                if on_sent is not None:
                    on_sent()

    # ------------------------------------------------------------------ serving

    async def serve(self, ready: asyncio.Event | None = None,
                    stop: asyncio.Future[None] | None = None) -> None:
        async with self.start_server() as server:
            host, port = server.sockets[0].getsockname()[:2]
            print(f"Voxwire listening on http://{host}:{port}/  (realtime: "
                  f"ws://{host}:{port}{REALTIME_PATH})", flush=True)
            engines = self.engines or await self.load()
            if isinstance(self.store, SqlStore) and self.settings.retention_days > 0:
                gone = await self.store.expire(self.settings.retention_days)
                log.info("history: %d sessions older than %g days deleted", gone,
                         self.settings.retention_days)
            trimmer = asyncio.create_task(
                trim_every(self.settings.heap_trim_s, engines.registry), name="heap-trim")
            log.info("ready")
            if ready is not None:
                ready.set()
            stop = stop or _stop_on_signals()
            try:
                await stop
            finally:
                trimmer.cancel()
            await self.drain(server)
        if self.engines is not None:
            self.engines.close()
        if self.store is not None:
            self.store.close()

    async def drain(self, server: Server) -> None:
        """Take no new session (/readyz says 503 at once; the port still answers, so that
        balancers see why), let answers in flight finish (up to the grace period), then
        close every session (what is still running is cancelled and saved) and every
        connection: WebSockets with 1012 (service restart), for their clients to reconnect,
        through the balancer, to another replica."""
        self.draining = True
        grace = self.settings.shutdown_grace_s
        log.info("draining: %d sessions, up to %g s for answers in flight",
                 len(self.sessions), grace)
        # Answers in flight, and those their sessions start meanwhile, until none is left
        # or the grace period is over.
        deadline = asyncio.get_running_loop().time() + grace
        while pending := {asyncio.create_task(s.answer_ended()) for s in self.sessions
                          if s.response is not None}:
            left = deadline - asyncio.get_running_loop().time()
            if left > 0:
                await asyncio.wait(pending, timeout=left)
            for waiting in pending:  # only the waits: close() cancels what still runs
                waiting.cancel()
            if left <= 0:
                break
            await asyncio.sleep(0.05)  # a session lets go of an ended answer
        for session in list(self.sessions):
            await session.close()
        with contextlib.suppress(TimeoutError):  # the last response.done, for one
            await asyncio.wait_for(self._flush(), CLOSE_ON_EXIT_S)
        await self.webrtc.close_all()
        server.close(close_connections=False)
        # close() only counts its first call: close each connection here, or a connected
        # client would keep the process alive.
        closing = [asyncio.create_task(ws.close(CLOSE_SERVICE_RESTART, "server restarting"))
                   for ws in server.connections]
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_ON_EXIT_S)
        self.guard.abort_all()  # clients that did not answer, and unfinished handshakes
        await server.wait_closed()

    async def _flush(self) -> None:
        """Until what every session queued so far has gone out (or its client has gone)."""
        loop = asyncio.get_running_loop()
        sent = []
        for session in list(self.sessions):
            done: asyncio.Future[None] = loop.create_future()
            await session.emit(FLUSHED, functools.partial(done.set_result, None))
            sent.append(done)
        if sent:
            await asyncio.wait(sent)

    @contextlib.asynccontextmanager
    async def start_server(self) -> AsyncIterator[Server]:
        """Listening from entry to exit; the WebRTC calls, whose media does not go through
        the listening socket, end at the exit too."""
        async with serve(self.handle, self.settings.host, self.settings.port,
                         process_request=self.process_request,
                         create_connection=connection_class(self.answer_http, self.guard),
                         open_timeout=10,  # also how long a POST may take to arrive
                         max_size=self.settings.max_message_bytes,
                         max_queue=self.settings.input_queue,
                         # a few KB compressed could inflate to max_size per queued message
                         compression=None,
                         select_subprotocol=_select_subprotocol,
                         ping_interval=20, ping_timeout=20) as server:
            beating = (asyncio.create_task(self._beat(self.shared), name="replica heartbeat")
                       if self.shared is not None else None)
            try:
                yield server
            finally:
                await self.webrtc.close_all()
                if beating is not None and self.shared is not None:
                    beating.cancel()
                    with contextlib.suppress(StoreError, asyncio.CancelledError):
                        await beating
                    with contextlib.suppress(StoreError):
                        await self.shared.leave(self.replica)

    async def _beat(self, shared: PostgresStore) -> None:
        """Tell the other replicas this one lives, so that its sessions' leases count."""
        while True:
            try:
                await shared.beat(self.replica, FORGET_REPLICA_S)
            except StoreError as exc:
                log.warning("replica heartbeat: %s", exc)
            await asyncio.sleep(BEAT_S)


def store_down(exc: StoreError) -> Response:
    log.warning("shared state unavailable: %s", exc)
    return json_error(HTTPStatus.SERVICE_UNAVAILABLE, "store_unavailable",
                      "the store the replicas share is unavailable: try again")


def post_only(path: str) -> Response:
    reply = json_error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                       f"{path} takes POST only")
    reply.headers["Allow"] = "POST"
    return reply


def _select_subprotocol(connection: ServerConnection,
                        offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Browsers pass their key as a subprotocol and must get one back: answer "realtime"."""
    return Subprotocol("realtime") if "realtime" in offered else None


def _stop_on_signals() -> asyncio.Future[None]:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def fire() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fire)
    return stop
