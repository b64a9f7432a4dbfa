"""Every server event a test client receives, checked against the `openai` SDK's own models.

Strict Realtime clients (the Python `openai-agents`, LiveKit) validate each server event
with these pydantic models and report any that fails, or whose `type` they do not know,
as an error. GA sessions are checked against `openai.types.realtime.RealtimeServerEvent`,
beta ones (`OpenAI-Beta: realtime=v1`) against the beta union; extra keys are allowed, as
the SDK's models allow them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import typing
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pydantic
from openai.types.beta.realtime import realtime_server_event as beta_events
from openai.types.realtime import realtime_server_event as ga_events
from websockets.asyncio.client import ClientConnection
from websockets.sync.client import ClientConnection as SyncClientConnection

Dialect = Literal["ga", "beta"]
Model = type[pydantic.BaseModel]


def _by_type(union: object) -> dict[str, Model]:
    """The union's models by their `type` literal (the discriminator the SDK declares)."""
    members = typing.get_args(typing.get_args(union)[0])
    out: dict[str, Model] = {}
    for model in members:
        for kind in typing.get_args(model.model_fields["type"].annotation):
            out[kind] = model
    return out


MODELS: dict[Dialect, dict[str, Model]] = {
    "ga": _by_type(ga_events.RealtimeServerEvent),
    "beta": _by_type(beta_events.RealtimeServerEvent),
}
# OpenAI's beta API opens a transcription session (`?intent=transcription`) with
# `transcription_session.created`, which the SDK has no model for; its session is the one
# `transcription_session.updated` carries, so it is checked against that event's model.
_BETA_CREATED = pydantic.create_model(
    "TranscriptionSessionCreatedEvent",
    __base__=MODELS["beta"]["transcription_session.updated"],
    type=(Literal["transcription_session.created"], ...),
)
MODELS["beta"]["transcription_session.created"] = _BETA_CREATED


def opted_in(event: dict[str, Any]) -> bool | None:
    """From a `session.created|updated`: whether the session asked for extension events
    (the server echoes `session.voxwire.metrics`); None from any other event."""
    if event.get("type") not in ("session.created", "session.updated"):
        return None
    session = event.get("session")
    ext = session.get("voxwire") if isinstance(session, dict) else None
    return isinstance(ext, dict) and ext.get("metrics") is True


def _chosen_rates_as_24k(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its session's pcm rates read as 24000. OpenAI's models allow only
    24 kHz pcm; Voxwire also speaks the rates a client sets in `session.update` and says so
    in the echo. A stock strict client cannot ask for another rate, so never sees one."""
    session = event.get("session")
    if not isinstance(session, dict) or not isinstance(session.get("audio"), dict):
        return event
    audio = session["audio"]
    audio = copy.deepcopy(audio)
    for side in audio.values():
        fmt = side.get("format") if isinstance(side, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "audio/pcm":
            fmt["rate"] = 24000
    return {**event, "session": {**session, "audio": audio}}


def problems(message: str | bytes, dialect: Dialect, extensions: bool = False) -> list[str]:
    """What a strict client would object to in one server message; empty when it is valid.
    With ``extensions`` (the session asked for them) `voxwire.*` events are let through."""
    try:
        event = json.loads(message)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    kind = event.get("type") if isinstance(event, dict) else None
    model = MODELS[dialect].get(kind) if isinstance(kind, str) else None
    if model is None and extensions and str(kind).startswith("voxwire."):
        return []
    if model is None:
        return [f"{kind!r}: not a {dialect} server event type"
                + ("" if extensions else " (and the session asked for no extensions)")]
    try:
        model.model_validate(_chosen_rates_as_24k(event), strict=True)
    except pydantic.ValidationError as exc:
        return [f"{kind}: {'.'.join(str(x) for x in err['loc']) or '(event)'}: {err['msg']}"
                for err in exc.errors()]
    return []


def _dialect(conn: ClientConnection | SyncClientConnection) -> Dialect | None:
    """The session's dialect, or None when the connection is not a Realtime session."""
    request = conn.request
    if request is None or not request.path.startswith("/v1/realtime"):
        return None
    return "beta" if "realtime=v1" in request.headers.get("OpenAI-Beta", "") else "ga"


@contextmanager
def watching() -> Iterator[list[str]]:
    """Check every message the test's WebSocket clients receive from a Realtime session;
    yields the list the mismatches are added to, one line each."""
    found: list[str] = []
    asked: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()

    def check(conn: ClientConnection | SyncClientConnection, message: Any) -> None:
        dialect = _dialect(conn)
        if dialect is None or not isinstance(message, str | bytes):
            return
        found.extend(f"[{dialect}] {line}"
                     for line in problems(message, dialect, asked.get(conn, False)))
        with contextlib.suppress(ValueError, AttributeError):
            state = opted_in(json.loads(message))
            if state is not None:
                asked[conn] = state

    original = ClientConnection.recv
    original_sync = SyncClientConnection.recv

    async def recv(self: ClientConnection, *args: Any, **kwargs: Any) -> Any:
        message = await original(self, *args, **kwargs)
        check(self, message)
        return message

    def recv_sync(self: SyncClientConnection, *args: Any, **kwargs: Any) -> Any:
        message = original_sync(self, *args, **kwargs)
        check(self, message)
        return message

    patches: list[tuple[Any, Callable[..., Any]]] = [(ClientConnection, recv),
                                                     (SyncClientConnection, recv_sync)]
    for cls, method in patches:
        cls.recv = method
    try:
        yield found
    finally:
        ClientConnection.recv = original  # type: ignore[method-assign]
        SyncClientConnection.recv = original_sync  # type: ignore[method-assign]
