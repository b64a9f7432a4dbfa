"""Plain HTTP next to the WebSocket, on the same port.

websockets reads only GET requests: the `/v1/realtime` handshake and the GET routes go
through ``process_request``. `connection_class` makes each connection look at the method
first. A GET goes to websockets untouched; any other method is read here by a small,
strict HTTP/1.1 reader (a head of at most 8 KiB, a Content-Length body of at most 64 KiB,
no chunked bodies, one request per connection), answered by a handler (at once, or through
an awaitable when the answer takes network work: a WebRTC offer), and the connection
closes. websockets' opening timeout (``open_timeout``) aborts a request that takes too long
to arrive, or to answer; a body that stalls or crawls gets 408 sooner.

Every connection passes an `EdgeGuard` first: connections per client address, and
connections still in their handshake (per address and in all), are capped. One over a cap
is closed at once.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

log = logging.getLogger(__name__)
MAX_HEAD = 8 * 1024
MAX_BODY = 64 * 1024
# A GET's head as websockets reads it may reach 128 headers of 8 KiB: 1 MiB held per
# unfinished handshake. Browsers send a few KiB (cookies included).
MAX_GET_HEAD = 32 * 1024
LINGER_S = 2.0  # after answering, how long what the client still sends is read and dropped
BODY_IDLE_S = 2.0  # once the head is in, the longest pause allowed in the body
BODY_GRACE_S = 2.0  # and from this long after the head on, at least MIN_BODY_RATE
MIN_BODY_RATE = 1024  # bytes per second
BODY_CHECK_S = 0.5
# Headers read as one value: sent twice, which one counts would be anyone's guess.
SINGLE_HEADERS = ("Authorization", "Origin", "Host", "OpenAI-Beta", "If-None-Match",
                  "Content-Length", "Content-Type")
_REQUEST_LINE = re.compile(r"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.[01]")
_HEADER = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*")

# method, target (path and query), headers, body -> the answer, or what will give it
Reply = Response | Awaitable[Response]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Answer = Callable[[str, str, Headers, bytes], Reply]


def response(status: HTTPStatus, body: bytes, content_type: str,
             cache: str = "no-store") -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", cache)])
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, payload: Any) -> Response:
    return response(status, json.dumps(payload).encode(), "application/json")


def json_error(status: HTTPStatus, code: str, message: str) -> Response:
    return json_response(status, {"error": {"type": "invalid_request_error", "code": code,
                                            "message": message}})


def duplicate_header(headers: Headers) -> str | None:
    """The first header of SINGLE_HEADERS that came more than once, if any."""
    return next((name for name in SINGLE_HEADERS if len(headers.get_all(name)) > 1), None)


class EdgeGuard:
    """Counts open connections and unfinished handshakes (no WebSocket yet, no HTTP answer
    yet) per client address and in all, and refuses connections over the caps. A proxy in
    ``exempt`` (a balancer, which holds its own clients to their limits) is held to the
    total only: every user behind it shares its address."""

    def __init__(self, per_address: int, pending_per_address: int, pending: int,
                 exempt: Sequence[IPNetwork] = ()) -> None:
        self.caps = per_address, pending_per_address, pending
        self.exempt = tuple(exempt)
        self.open: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()
        self.pending_total = 0
        self.live: set[HttpConnection] = set()
        self._warned = 0.0

    def admit(self, address: str) -> str | None:
        """Count a new connection in, or say which cap it is over."""
        per_address, pending_per_address, pending = self.caps
        if self._exempt(address):
            per_address = pending_per_address = pending
        reason = ("connections from this address" if self.open[address] >= per_address
                  else "handshakes from this address" if self.pending[address] >=
                  pending_per_address else "handshakes" if self.pending_total >= pending
                  else None)
        if reason is not None:
            now = time.monotonic()
            if now - self._warned >= 1.0:  # a flood of refusals is not a flood of log lines
                self._warned = now
                log.warning("refusing connections from %s: too many open %s", address, reason)
            return reason
        self.open[address] += 1
        self.pending[address] += 1
        self.pending_total += 1
        return None

    def _exempt(self, address: str) -> bool:
        if not self.exempt:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.exempt)

    def handshake_done(self, address: str) -> None:
        self.pending[address] -= 1
        self.pending_total -= 1
        if not self.pending[address]:
            del self.pending[address]

    def closed(self, address: str) -> None:
        self.open[address] -= 1
        if not self.open[address]:
            del self.open[address]

    def abort_all(self) -> None:
        """At shutdown: drop every connection still open, whatever its state."""
        for connection in list(self.live):
            connection.transport.abort()


def connection_class(answer: Answer, guard: EdgeGuard | None = None
                     ) -> type[ServerConnection]:
    """A `ServerConnection` for ``serve(create_connection=...)`` that answers non-GET
    requests with ``answer`` and passes ``guard`` first."""

    class Connection(HttpConnection):
        def answer(self, method: str, target: str, headers: Headers, body: bytes) -> Reply:
            return answer(method, target, headers, body)

    Connection.guard = guard
    return Connection


def _bad(message: str) -> Response:
    return json_error(HTTPStatus.BAD_REQUEST, "invalid_http_request", message)


def _internal_error() -> Response:
    return json_error(HTTPStatus.INTERNAL_SERVER_ERROR, "server_error", "internal error")


def _read_head(head: bytes) -> tuple[str, str, Headers] | Response:
    try:
        line, *lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return _bad("the request head is not ASCII")
    first = _REQUEST_LINE.fullmatch(line)
    if first is None:
        return _bad("malformed request line")
    headers = Headers()
    for raw in lines:
        field = _HEADER.fullmatch(raw)
        if field is None:
            return _bad("malformed header line")
        headers[field[1]] = field[2]
    return first[1], first[2], headers


def _body_length(method: str, headers: Headers) -> int | Response:
    if "Transfer-Encoding" in headers:
        return json_error(HTTPStatus.LENGTH_REQUIRED, "length_required",
                          "send the body with a Content-Length (chunked bodies are not taken)")
    values = headers.get_all("Content-Length")
    if not values:
        if method != "POST":
            return 0
        return json_error(HTTPStatus.LENGTH_REQUIRED, "length_required",
                          "a POST needs a Content-Length header")
    if len(values) > 1 or not values[0].isascii() or not values[0].isdigit():
        return _bad("Content-Length must be one decimal number")
    if int(values[0]) > MAX_BODY:
        return json_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large",
                          f"the body is over {MAX_BODY} bytes")
    return int(values[0])


class HttpConnection(ServerConnection):
    """Looks at the first bytes: ``GET `` is the WebSocket's, anything else is read here."""

    guard: EdgeGuard | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mode: Literal["sniff", "websocket", "http", "answering", "done"] = "sniff"
        self._buffer = bytearray()
        self._scanned = 0  # bytes already searched for the end of the head
        self._request: tuple[str, str, Headers, int] | None = None  # the head, and body length
        self._last_data = self._head_at = 0.0
        self._linger: asyncio.TimerHandle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._address = ""
        self._admitted = self._pending = False
        self._head_bytes = 0  # of a GET, until its handshake is done
        self._answering: asyncio.Task[Response] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # first: websockets' handler must see it end
        if self.guard is None:
            return
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else ""
        if self.guard.admit(self._address) is not None:
            self.transport.abort()
            return
        self._admitted = self._pending = True
        self.guard.live.add(self)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        finally:
            self._handshake_done()

    def _handshake_done(self) -> None:
        if self._pending and self.guard is not None:
            self._pending = False
            self.guard.handshake_done(self._address)

    def answer(self, method: str, target: str, headers: Headers, body: bytes) -> Reply:
        return json_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for {method} {target}")

    def data_received(self, data: bytes) -> None:
        if self._mode == "websocket":
            if self._pending:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_GET_HEAD:
                    self._finish(json_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                            "head_too_large",
                                            f"the head is over {MAX_GET_HEAD} bytes"))
                    return
            super().data_received(data)
            return
        if self._mode in ("answering", "done"):
            return  # the request is in: what else comes is dropped
        self._buffer += data
        if self._mode == "sniff":
            if len(self._buffer) < 4 and b" " not in self._buffer:
                return
            if self._buffer.startswith(b"GET "):
                self._mode, data, self._buffer = "websocket", bytes(self._buffer), bytearray()
                self.data_received(data)
                return
            self._mode = "http"
        self._last_data = self.loop.time()
        self._read()

    def eof_received(self) -> None:
        if self._mode == "sniff" and b"GET ".startswith(self._buffer):
            self._mode = "websocket"
            super().data_received(bytes(self._buffer))
        if self._mode == "websocket":
            super().eof_received()
        elif self._mode not in ("answering", "done"):
            self._finish(_bad("the connection ended before the request did"))

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._linger, self._watch):
            if timer is not None:
                timer.cancel()
        if self._admitted and self.guard is not None:
            self._handshake_done()
            self.guard.closed(self._address)
            self.guard.live.discard(self)
            self._admitted = False
        super().connection_lost(exc)

    def _read(self) -> None:
        if self._request is None and not self._read_head():
            return
        assert self._request is not None
        method, target, headers, length = self._request
        if len(self._buffer) < length:
            return
        body = bytes(self._buffer[:length])
        try:
            reply = self.answer(method, target, headers, body)
        except Exception:
            log.exception("unexpected error answering %s %s", method, target)
            reply = _internal_error()
        if isinstance(reply, Response):
            self._finish(reply)
            return
        assert inspect.isawaitable(reply)
        # The request is whole: no more body checks; the answer comes when it is ready.
        self._mode, self._buffer = "answering", bytearray()
        if self._watch is not None:
            self._watch.cancel()
        self._answering = asyncio.ensure_future(reply)
        self._answering.add_done_callback(functools.partial(self._answered, method, target))

    def _answered(self, method: str, target: str, task: asyncio.Task[Response]) -> None:
        if task.cancelled():
            reply = _internal_error()
        elif task.exception() is not None:
            log.error("unexpected error answering %s %s", method, target,
                      exc_info=task.exception())
            reply = _internal_error()
        else:
            reply = task.result()
        if not self.transport.is_closing():
            self._finish(reply)

    def _read_head(self) -> bool:
        """Whether the head is in (and valid). The search for its end resumes where the last
        one stopped: a head trickled in a byte at a time is searched once, not once a byte."""
        end = self._buffer.find(b"\r\n\r\n", max(0, self._scanned - 3), MAX_HEAD + 4)
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > MAX_HEAD:
                self._finish(json_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                        "head_too_large", f"the head is over {MAX_HEAD} bytes"))
            return False
        head = _read_head(bytes(self._buffer[:end]))
        if isinstance(head, Response):
            self._finish(head)
            return False
        method, target, headers = head
        length = _body_length(method, headers)
        if isinstance(length, Response):
            self._finish(length)
            return False
        self._request = method, target, headers, length
        del self._buffer[:end + 4]
        self._head_at = self.loop.time()
        self._watch = self.loop.call_later(BODY_CHECK_S, self._check_body)
        return True

    def _check_body(self) -> None:
        """408 for a body that pauses over BODY_IDLE_S or falls behind MIN_BODY_RATE."""
        now = self.loop.time()
        owed = MIN_BODY_RATE * (now - self._head_at - BODY_GRACE_S)
        if now - self._last_data >= BODY_IDLE_S or len(self._buffer) < owed:
            self._finish(json_error(HTTPStatus.REQUEST_TIMEOUT, "request_timeout",
                                    f"the body stopped or came slower than {MIN_BODY_RATE} "
                                    "bytes a second"))
            return
        self._watch = self.loop.call_later(BODY_CHECK_S, self._check_body)

    def _finish(self, reply: Response) -> None:
        """Answer, half-close, and drop what the client still sends until it closes too (or
        LINGER_S pass): closing at once could reset the connection before it reads this."""
        self._mode, self._buffer = "done", bytearray()
        if self._watch is not None:
            self._watch.cancel()
        self._handshake_done()
        reply.headers["Connection"] = "close"
        self.transport.write(reply.serialize())
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)
