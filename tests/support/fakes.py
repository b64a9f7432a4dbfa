"""An in-process fake of two cloud LLM HTTP APIs, served on 127.0.0.1.

`FakeProvider` speaks OpenAI Chat Completions (``POST /v1/chat/completions``) and
Anthropic Messages (``POST /v1/messages``) closely enough for the real ``openai`` and
``anthropic`` SDKs to talk to it: the same JSON shapes, the same server-sent events,
the same error bodies. Each request takes the next scripted `Reply`; tests then look at
what arrived (`FakeProvider.requests`) and how the streams ended
(`FakeProvider.completed_streams`, `FakeProvider.disconnects`).

The server is plain HTTP/1.1 over ``asyncio.start_server``: one request per connection,
answered with ``Connection: close``. Streams are sent with chunked transfer encoding,
as the real services send them.

A client that closes a stream early is only seen as a disconnect if the fake has not
already written the whole stream, so tests of early closing should script some
``delay_between_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

__all__ = [
    "DEFAULT_TEXT",
    "FakeProvider",
    "Recorded",
    "Reply",
    "anthropic_error",
    "anthropic_events",
    "anthropic_message",
    "json_pieces",
    "openai_completion",
    "openai_error",
    "openai_events",
    "text_pieces",
]

DEFAULT_TEXT = "Hello from the fake."
OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
BAD_KEY = "bad-key"
MISSING_MODEL = "no-such-model"

_MAX_HEADER_LINES = 200
_MIN_PIECE = 3
_JSON_PIECE = 8
_ALNUM = string.ascii_letters + string.digits


@dataclass
class Reply:
    """One scripted answer for the next request."""

    text: str = ""
    """Streamed as several deltas, split on word boundaries (about 3 characters or more each)."""
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """``(call_id, name, arguments)`` for each tool call, in order."""
    status: int = 200
    """Anything but 200 sends the provider's JSON error body with this status, and no stream."""
    error_type: str | None = None
    """Overrides the error type string that goes with `status`."""
    retry_after: float | None = None
    """Adds a ``retry-after`` header, in seconds, to an error response."""
    delay_first_s: float = 0.0
    """Sleep before the first byte of the response, status line and headers included."""
    delay_between_s: float = 0.0
    """Sleep between streamed events."""
    hang: bool = False
    """Send status and headers, then nothing, and hold the connection until the client closes it."""
    cut_short: bool = False
    """End as an answer the max tokens cap cut short (finish reason `length`, `max_tokens`)."""


@dataclass
class Recorded:
    """One request as the fake received it."""

    path: str
    """The request path, without any query string."""
    headers: dict[str, str]
    """Header names in lower case; repeated headers joined with ``", "``."""
    body: dict[str, Any]
    """The parsed JSON body; empty when there was none or it was not a JSON object."""
    method: str = "POST"


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes


class _ClientGone(Exception):
    """The client closed the connection while a response was still being sent."""


def _random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def text_pieces(text: str) -> list[str]:
    """Split `text` into stream deltas on word boundaries; joined again they give `text`.

    Each piece is a word with the whitespace before it (as model tokens usually are),
    pieces shorter than 3 characters being merged into the next one.
    """
    if not text:
        return []
    words = re.findall(r"\s*\S+", text)
    tail = text[sum(len(w) for w in words):]
    pieces: list[str] = []
    pending = ""
    for word in words:
        pending += word
        if len(pending) >= _MIN_PIECE:
            pieces.append(pending)
            pending = ""
    pending += tail
    if pending:
        if pieces:
            pieces[-1] += pending
        else:
            pieces.append(pending)
    return pieces


def json_pieces(arguments: dict[str, Any]) -> list[str]:
    """The JSON text of `arguments` cut into several short pieces, as tool arguments stream."""
    encoded = json.dumps(arguments)
    return [encoded[i:i + _JSON_PIECE] for i in range(0, len(encoded), _JSON_PIECE)]


def _count_words(value: object) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_count_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    return 0


def _prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, _count_words(body.get("messages")) + _count_words(body.get("system")))


def _completion_tokens(reply: Reply) -> int:
    pieces = len(text_pieces(reply.text))
    pieces += sum(len(json_pieces(args)) for _, _, args in reply.tool_calls)
    return max(1, pieces)


def _reason(status: int) -> str:
    if status == 529:
        return "Site Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- error bodies ---------------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, message)
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", f"Incorrect API key provided: {BAD_KEY}."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", None, "Not found."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached"),
    500: ("server_error", None,
          "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    # status: (type, message)
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error",
          "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error",
          "Number of requests has exceeded your rate limit. Please try again later."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def openai_error(status: int, *, error_type: str | None = None, message: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    """The body the OpenAI API sends with an error `status`."""
    default_type, default_code, default_message = _OPENAI_ERRORS.get(
        status,
        ("server_error", None, "The server had an error processing your request.")
        if status >= 500 else ("invalid_request_error", None, "Invalid request."))
    return {"error": {"message": message or default_message,
                      "type": error_type or default_type,
                      "param": None,
                      "code": code if code is not None else default_code}}


def anthropic_error(status: int, *, error_type: str | None = None,
                    message: str | None = None) -> dict[str, Any]:
    """The body the Anthropic API sends with an error `status`."""
    default_type, default_message = _ANTHROPIC_ERRORS.get(
        status,
        ("api_error", "Internal server error") if status >= 500
        else ("invalid_request_error", "Invalid request"))
    return {"type": "error",
            "error": {"type": error_type or default_type, "message": message or default_message}}


# --- event streams --------------------------------------------------------------------


def openai_events(reply: Reply, body: dict[str, Any]) -> Iterator[str]:
    """The server-sent events of one streamed OpenAI chat completion, ``[DONE]`` included."""
    completion_id = _random_id("chatcmpl-")
    created = int(time.time())
    model = str(body.get("model", ""))
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        data: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}],
        }
        if include_usage:
            data["usage"] = None
        return f"data: {_dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in text_pieces(reply.text):
        yield chunk({"content": piece})
    for index, (call_id, name, arguments) in enumerate(reply.tool_calls):
        yield chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                     "function": {"name": name, "arguments": ""}}]})
        for piece in json_pieces(arguments):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, "length" if reply.cut_short else "tool_calls" if reply.tool_calls else "stop")
    if include_usage:
        prompt, completion = _prompt_tokens(body), _completion_tokens(reply)
        usage = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                 "model": model, "system_fingerprint": None, "choices": [],
                 "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}}
        yield f"data: {_dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


def openai_completion(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """A whole (not streamed) OpenAI ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None,
                               "refusal": None, "annotations": []}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": json.dumps(arguments)}}
            for call_id, name, arguments in reply.tool_calls]
    prompt, completion = _prompt_tokens(body), _completion_tokens(reply)
    return {
        "id": _random_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
        "model": str(body.get("model", "")), "system_fingerprint": None,
        "service_tier": "default",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }


def anthropic_events(reply: Reply, body: dict[str, Any]) -> Iterator[str]:
    """The named server-sent events of one streamed Anthropic message."""

    def event(data: dict[str, Any]) -> str:
        return f"event: {data['type']}\ndata: {_dumps(data)}\n\n"

    yield event({"type": "message_start", "message": {
        "id": _random_id("msg_01"), "type": "message", "role": "assistant",
        "model": str(body.get("model", "")), "content": [], "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": _prompt_tokens(body), "output_tokens": 1}}})
    index = 0
    if reply.text or not reply.tool_calls:
        yield event({"type": "content_block_start", "index": index,
                     "content_block": {"type": "text", "text": ""}})
        yield event({"type": "ping"})
        for piece in text_pieces(reply.text):
            yield event({"type": "content_block_delta", "index": index,
                         "delta": {"type": "text_delta", "text": piece}})
        yield event({"type": "content_block_stop", "index": index})
        index += 1
    for call_id, name, arguments in reply.tool_calls:
        yield event({"type": "content_block_start", "index": index,
                     "content_block": {"type": "tool_use", "id": call_id, "name": name,
                                       "input": {}}})
        if index == 0:
            yield event({"type": "ping"})
        for piece in json_pieces(arguments):
            yield event({"type": "content_block_delta", "index": index,
                         "delta": {"type": "input_json_delta", "partial_json": piece}})
        yield event({"type": "content_block_stop", "index": index})
        index += 1
    yield event({"type": "message_delta",
                 "delta": {"stop_reason": "max_tokens" if reply.cut_short
                           else "tool_use" if reply.tool_calls else "end_turn",
                           "stop_sequence": None},
                 "usage": {"output_tokens": _completion_tokens(reply)}})
    yield event({"type": "message_stop"})


def anthropic_message(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """A whole (not streamed) Anthropic ``message`` object."""
    content: list[dict[str, Any]] = []
    if reply.text or not reply.tool_calls:
        content.append({"type": "text", "text": reply.text})
    content += [{"type": "tool_use", "id": call_id, "name": name, "input": arguments}
                for call_id, name, arguments in reply.tool_calls]
    return {
        "id": _random_id("msg_01"), "type": "message", "role": "assistant",
        "model": str(body.get("model", "")), "content": content,
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": _prompt_tokens(body),
                  "output_tokens": _completion_tokens(reply)},
    }


# --- the server -----------------------------------------------------------------------


class FakeProvider:
    """A fake of OpenAI Chat Completions (POST /v1/chat/completions) and Anthropic Messages
    (POST /v1/messages) on 127.0.0.1.

    Before any script is consulted, a request whose key is ``"bad-key"`` gets 401 and one
    for model ``"no-such-model"`` gets 404, each with the provider's own error body; neither
    takes a scripted reply. OpenAI's key comes in ``authorization: Bearer ...``; for
    Anthropic either ``x-api-key`` or ``authorization: Bearer ...`` is checked.
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self.completed_streams = 0
        self._replies: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        if self._server is not None:
            return
        self._stopping = False
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every connection still open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Dropping the connections ends every handler, hanging ones included; what that
        # cuts short is not counted as a client disconnect.
        self._stopping = True
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        if self._port is None:
            raise RuntimeError("FakeProvider is not started")
        return f"http://127.0.0.1:{self._port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies; each request takes the next, or a plain greeting once none are left."""
        self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """How many scripted replies are still queued."""
        return len(self._replies)

    def _next_reply(self) -> Reply:
        return self._replies.popleft() if self._replies else Reply(text=DEFAULT_TEXT)

    # --- connection handling ----------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        try:
            request = await _read_request(reader)
            if request is not None:
                await self._respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, _ClientGone):
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, request: _Request, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        anthropic = request.path == ANTHROPIC_PATH or (
            request.path != OPENAI_PATH and "anthropic-version" in request.headers)
        id_header = ("request-id", _random_id("req_011")) if anthropic else (
            "x-request-id", "req_" + secrets.token_hex(16))
        parsed: object = None
        body_ok = True
        if request.raw_body:
            try:
                parsed = json.loads(request.raw_body)
            except ValueError:
                body_ok = False
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        self.requests.append(Recorded(path=request.path, headers=request.headers, body=body,
                                      method=request.method))
        send = _Sender(writer, [id_header])

        def error(status: int, error_type: str | None = None, message: str | None = None,
                  code: str | None = None) -> dict[str, Any]:
            if anthropic:
                return anthropic_error(status, error_type=error_type, message=message)
            return openai_error(status, error_type=error_type, message=message, code=code)

        if request.method != "POST" or request.path not in (OPENAI_PATH, ANTHROPIC_PATH):
            message = ("Not Found" if anthropic
                       else f"Invalid URL ({request.method} {request.path})")
            await send.json(404, error(404, "not_found_error" if anthropic else None, message))
            return
        if _api_key(request, anthropic=anthropic) == BAD_KEY:
            await send.json(401, error(401))
            return
        if not body_ok or parsed is None:
            message = ("There was an error parsing the body of your request." if anthropic
                       else "We could not parse the JSON body of your request.")
            await send.json(400, error(400, message=message))
            return
        if body.get("model") == MISSING_MODEL:
            if anthropic:
                await send.json(404, error(404, message=f"model: {MISSING_MODEL}"))
            else:
                await send.json(404, error(
                    404, code="model_not_found",
                    message=f"The model `{MISSING_MODEL}` does not exist or you do not have "
                            "access to it."))
            return

        reply = self._next_reply()
        stream = body.get("stream") is True
        watcher = _EofWatcher(reader)
        try:
            await self._answer(reply, body, send, watcher, anthropic=anthropic, stream=stream)
        except _ClientGone:
            if (stream or reply.hang) and not self._stopping:
                self.disconnects += 1
        finally:
            watcher.cancel()

    async def _answer(self, reply: Reply, body: dict[str, Any], send: _Sender,
                      watcher: _EofWatcher, *, anthropic: bool, stream: bool) -> None:
        await watcher.pause(reply.delay_first_s)
        if reply.hang:
            await send.stream_head(event_stream=stream)
            await watcher.closed()
            raise _ClientGone
        if reply.status != 200:
            extra = []
            if reply.retry_after is not None:
                seconds = reply.retry_after
                value = str(int(seconds)) if seconds == int(seconds) else repr(seconds)
                extra.append(("retry-after", value))
            model = str(body.get("model", ""))
            message = None
            if not anthropic and reply.status == 429:
                message = (f"Rate limit reached for {model} on requests per min (RPM): "
                           "Limit 3, Used 3, Requested 1.")
            if anthropic:
                payload = anthropic_error(reply.status, error_type=reply.error_type)
            else:
                payload = openai_error(reply.status, error_type=reply.error_type,
                                       message=message)
            await send.json(reply.status, payload, extra)
            return
        if not stream:
            payload = anthropic_message(reply, body) if anthropic else openai_completion(
                reply, body)
            await send.json(200, payload)
            return
        events = anthropic_events(reply, body) if anthropic else openai_events(reply, body)
        await send.stream_head(event_stream=True)
        for number, text in enumerate(events):
            if number:
                await watcher.pause(reply.delay_between_s)
            watcher.check()
            await send.chunk(text.encode())
        await send.end()
        self.completed_streams += 1


def _api_key(request: _Request, *, anthropic: bool) -> str | None:
    if anthropic and "x-api-key" in request.headers:
        return request.headers["x-api-key"].strip()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    return None


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADER_LINES):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    else:
        raise ValueError("too many header lines")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raw_body = await _read_chunked(reader)
    else:
        raw_body = await reader.readexactly(int(headers.get("content-length", "0")))
    path = target.split("?", 1)[0].split("#", 1)[0]
    return _Request(method=method.upper(), path=path, headers=headers, raw_body=raw_body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class _EofWatcher:
    """Reads the rest of the connection in the background, to notice the client closing it."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._eof = asyncio.Event()
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while await self._reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        self._eof.set()

    def check(self) -> None:
        if self._eof.is_set():
            raise _ClientGone

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the client goes away first (then raise `_ClientGone`)."""
        self.check()
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._eof.wait(), seconds)
            self.check()

    async def closed(self) -> None:
        await self._eof.wait()

    def cancel(self) -> None:
        self._task.cancel()


class _Sender:
    """Writes one HTTP/1.1 response."""

    def __init__(self, writer: asyncio.StreamWriter, headers: list[tuple[str, str]]) -> None:
        self._writer = writer
        self._headers = headers

    async def _write(self, data: bytes) -> None:
        if self._writer.transport.is_closing():
            raise _ClientGone
        self._writer.write(data)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as err:
            raise _ClientGone from err

    async def _head(self, status: int, headers: list[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{name}: {value}" for name, value in [*headers, *self._headers]]
        lines += ["connection: close", "", ""]
        await self._write("\r\n".join(lines).encode("latin-1"))

    async def json(self, status: int, payload: dict[str, Any],
                   headers: list[tuple[str, str]] | None = None) -> None:
        data = json.dumps(payload).encode()
        await self._head(status, [("content-type", "application/json"),
                                  ("content-length", str(len(data))), *(headers or [])])
        await self._write(data)

    async def stream_head(self, *, event_stream: bool) -> None:
        content_type = ("text/event-stream; charset=utf-8" if event_stream
                        else "application/json")
        await self._head(200, [("content-type", content_type), ("cache-control", "no-cache"),
                               ("transfer-encoding", "chunked")])

    async def chunk(self, data: bytes) -> None:
        if data:
            await self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def end(self) -> None:
        await self._write(b"0\r\n\r\n")
