"""Client events: one typed class each, and the parser that makes them from JSON text."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from realtime.base import Json, without_nulls
from realtime.errors import ProtocolError


@dataclass(frozen=True)
class ClientEvent:
    type: ClassVar[str]  # the event's name on the wire
    event_id: str | None


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    type = "session.update"
    session: Json


@dataclass(frozen=True)
class TranscriptionSessionUpdate(SessionUpdate):
    """Beta `transcription_session.update`: a session.update that makes the session
    transcription-only; answered with `transcription_session.updated`."""

    type = "transcription_session.update"


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    type = "input_audio_buffer.append"
    audio: bytes


@dataclass(frozen=True)
class AudioCommit(ClientEvent):
    type = "input_audio_buffer.commit"


@dataclass(frozen=True)
class AudioClear(ClientEvent):
    type = "input_audio_buffer.clear"


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    type = "conversation.item.create"
    item: Json
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    type = "conversation.item.truncate"
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class ItemDelete(ClientEvent):
    type = "conversation.item.delete"
    item_id: str


@dataclass(frozen=True)
class ItemRetrieve(ClientEvent):
    type = "conversation.item.retrieve"
    item_id: str


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    type = "response.create"
    response: Json = field(default_factory=dict)


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    type = "response.cancel"
    response_id: str | None = None


@dataclass(frozen=True)
class OutputAudioClear(ClientEvent):
    """`output_audio_buffer.clear`: cut off the answer playing. Only a door that plays the
    audio itself (WebRTC) has an output audio buffer; the session refuses it otherwise."""

    type = "output_audio_buffer.clear"


@dataclass(frozen=True)
class FrameAppend(ClientEvent):
    """Extension `voxwire.input_image.append`: the latest camera frame (a data URI)."""

    type = "voxwire.input_image.append"
    image_url: str


def _field(ev: Json, name: str, kind: type, event_id: str | None) -> Any:
    value = ev.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"missing or invalid '{name}' (expected {kind.__name__})",
                            code="invalid_value", param=name, event_id=event_id)
    return value


def decode_base64(data: str, event_id: str | None) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("audio is not valid base64", code="invalid_audio",
                            param="audio", event_id=event_id) from exc


def parse_client_event(message: str | bytes) -> ClientEvent:
    """Decode one client WebSocket message; raise ProtocolError naming what is wrong."""
    if isinstance(message, bytes):
        raise ProtocolError("binary frames are not part of the protocol; send JSON text",
                            code="invalid_message")
    try:
        ev = json.loads(message)
    except (ValueError, RecursionError) as exc:  # ValueError: also numbers of > 4300 digits
        raise ProtocolError(f"message is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(ev, dict):
        raise ProtocolError("event must be a JSON object", code="invalid_event")
    ev = without_nulls(ev)
    raw_id = ev.get("event_id")
    eid = raw_id if isinstance(raw_id, str) else None
    kind = ev.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("event has no 'type'", code="invalid_event", param="type",
                            event_id=eid)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError(f"unknown event type {kind!r}", code="unknown_event", param="type",
                            event_id=eid)
    return parser(ev, eid)


def _parse_item_create(ev: Json, eid: str | None) -> ItemCreate:
    prev = ev.get("previous_item_id")
    return ItemCreate(eid, _field(ev, "item", dict, eid), prev if isinstance(prev, str) else None)


def _parse_truncate(ev: Json, eid: str | None) -> ItemTruncate:
    end = _field(ev, "audio_end_ms", int, eid)
    if end < 0:
        raise ProtocolError("audio_end_ms must be >= 0", code="invalid_value",
                            param="audio_end_ms", event_id=eid)
    index = ev.get("content_index", 0)
    if index is None:
        index = 0
    if type(index) is not int or index < 0:
        raise ProtocolError("content_index must be a whole number >= 0", code="invalid_value",
                            param="content_index", event_id=eid)
    return ItemTruncate(eid, _field(ev, "item_id", str, eid), index, end)


def _parse_response_create(ev: Json, eid: str | None) -> ResponseCreate:
    resp = ev.get("response") or {}
    if not isinstance(resp, dict):
        raise ProtocolError("'response' must be an object", code="invalid_value",
                            param="response", event_id=eid)
    return ResponseCreate(eid, resp)


_PARSERS: dict[str, Callable[[Json, str | None], ClientEvent]] = {
    SessionUpdate.type: lambda ev, eid: SessionUpdate(eid, _field(ev, "session", dict, eid)),
    TranscriptionSessionUpdate.type: lambda ev, eid: TranscriptionSessionUpdate(
        eid, {**_field(ev, "session", dict, eid), "type": "transcription"}),
    AudioAppend.type: lambda ev, eid: AudioAppend(
        eid, decode_base64(_field(ev, "audio", str, eid), eid)),
    AudioCommit.type: lambda ev, eid: AudioCommit(eid),
    AudioClear.type: lambda ev, eid: AudioClear(eid),
    ItemCreate.type: _parse_item_create,
    ItemTruncate.type: _parse_truncate,
    ItemDelete.type: lambda ev, eid: ItemDelete(eid, _field(ev, "item_id", str, eid)),
    ItemRetrieve.type: lambda ev, eid: ItemRetrieve(
        eid, _field(ev, "item_id", str, eid)),
    ResponseCreate.type: _parse_response_create,
    FrameAppend.type: lambda ev, eid: FrameAppend(
        eid, _field(ev, "image_url", str, eid)),
    ResponseCancel.type: lambda ev, eid: ResponseCancel(
        eid, ev.get("response_id") if isinstance(ev.get("response_id"), str) else None),
    OutputAudioClear.type: lambda ev, eid: OutputAudioClear(eid),
}


def dump(event: ClientEvent) -> str:
    """A client event as the JSON text a client sends (the parser's inverse)."""
    wire = {"type": event.type, **{k: v for k, v in asdict(event).items() if v is not None}}
    if isinstance(event, AudioAppend):
        wire["audio"] = base64.b64encode(event.audio).decode()
    return json.dumps(wire)


def carries_image(event: ClientEvent) -> bool:
    """Whether an event may be as large as an image: a camera frame, or a user message with
    an `input_image` part."""
    if isinstance(event, FrameAppend):
        return True
    if isinstance(event, ItemCreate):
        content = event.item.get("content")
        return isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "input_image" for part in content)
    return False
