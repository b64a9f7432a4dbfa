"""Plain HTTP next to the WebSocket, on the same port.

websockets reads only GET requests: the `/v1/realtime` handshake and the GET routes go
through ``process_request``. `connection_class` makes each connection look at the method
first. A GET goes to websockets untouched; any other method is read here by a small,
strict HTTP/1.1 reader (a head of at most 8 KiB, a Content-Length body of at most 64 KiB,
no chunked bodies, one request per connection), answered by a synchronous handler, and
the connection closes. websockets' opening timeout (``open_timeout``) aborts a request
that takes too long to arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

log = logging.getLogger(__name__)
MAX_HEAD = 8 * 1024
MAX_BODY = 64 * 1024
LINGER_S = 2.0  # after answering, how long what the client still sends is read and dropped
_REQUEST_LINE = re.compile(r"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.[01]")
_HEADER = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*")

# method, target (path and query), headers, body -> the answer
Answer = Callable[[str, str, Headers, bytes], Response]


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


def connection_class(answer: Answer) -> type[ServerConnection]:
    """A `ServerConnection` for ``serve(create_connection=...)`` that answers non-GET
    requests with ``answer``."""

    class Connection(HttpConnection):
        def answer(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
            return answer(method, target, headers, body)

    return Connection


def _bad(message: str) -> Response:
    return json_error(HTTPStatus.BAD_REQUEST, "invalid_http_request", message)


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mode: Literal["sniff", "websocket", "http", "done"] = "sniff"
        self._buffer = b""
        self._linger: asyncio.TimerHandle | None = None

    def answer(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        return json_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for {method} {target}")

    def data_received(self, data: bytes) -> None:
        if self._mode == "websocket":
            super().data_received(data)
            return
        if self._mode == "done":
            return  # answered: what else comes is dropped
        self._buffer += data
        if self._mode == "sniff":
            if len(self._buffer) < 4 and b" " not in self._buffer:
                return
            if self._buffer.startswith(b"GET "):
                self._mode, data, self._buffer = "websocket", self._buffer, b""
                super().data_received(data)
                return
            self._mode = "http"
        self._read()

    def eof_received(self) -> None:
        if self._mode == "sniff" and b"GET ".startswith(self._buffer):
            self._mode = "websocket"
            super().data_received(self._buffer)
        if self._mode == "websocket":
            super().eof_received()
        elif self._mode != "done":
            self._finish(_bad("the connection ended before the request did"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def _read(self) -> None:
        end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._finish(json_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                        "head_too_large", f"the head is over {MAX_HEAD} bytes"))
            return
        head = _read_head(self._buffer[:end])
        if isinstance(head, Response):
            self._finish(head)
            return
        method, target, headers = head
        length = _body_length(method, headers)
        if isinstance(length, Response):
            self._finish(length)
            return
        if len(self._buffer) < end + 4 + length:
            return
        body = self._buffer[end + 4:end + 4 + length]
        try:
            reply = self.answer(method, target, headers, body)
        except Exception:
            log.exception("unexpected error answering %s %s", method, target)
            reply = json_error(HTTPStatus.INTERNAL_SERVER_ERROR, "server_error",
                               "internal error")
        self._finish(reply)

    def _finish(self, reply: Response) -> None:
        """Answer, half-close, and drop what the client still sends until it closes too (or
        LINGER_S pass): closing at once could reset the connection before it reads this."""
        self._mode, self._buffer = "done", b""
        reply.headers["Connection"] = "close"
        self.transport.write(reply.serialize())
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)
