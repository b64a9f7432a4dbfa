"""The OpenAI Realtime wire protocol: typed client events, session shapes, server events.

Pure code: JSON text in, typed events out; typed builders in, JSON text out. Both the
GA dialect and the beta one (``OpenAI-Beta: realtime=v1``) are spoken. Internally the
server always uses GA names; ``encode`` renames for beta clients.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from openai.types.beta.realtime.session import Session as BetaSession
from openai.types.beta.realtime.transcription_session import (
    InputAudioTranscription as BetaTranscriber,
)

from server.errors import ProtocolError

Dialect = Literal["ga", "beta"]
Json = dict[str, Any]

# GA name -> beta name; None means the beta protocol has no such event.
_BETA_NAMES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
}
_BETA_CONTENT = {"output_audio": "audio", "output_text": "text"}
_GA_CONTENT = {v: k for k, v in _BETA_CONTENT.items()}

SAMPLE_RATES = (8000, 16000, 24000, 44100, 48000)
# The beta session's `model` may only name one of OpenAI's realtime models (the SDK's own
# list): any other name a client connects with is echoed as null to beta clients. Its
# transcription session likewise names only OpenAI's transcription models.
BETA_MODELS = frozenset(name for arg in get_args(BetaSession.model_fields["model"].annotation)
                        for name in get_args(arg))
BETA_TRANSCRIBERS = frozenset(get_args(get_args(
    BetaTranscriber.model_fields["model"].annotation)[0]))


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


# ---------------------------------------------------------------- session state


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    type: str = "server_vad"
    idle_timeout_ms: int | None = None  # silence after an answer played: timeout_triggered


@dataclass(frozen=True)
class AudioFormat:
    type: str = "audio/pcm"
    rate: int = 24000


@dataclass(frozen=True)
class SessionConfig:
    model: str = "voxwire"
    instructions: str = ""
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: AudioFormat = AudioFormat()
    output_format: AudioFormat = AudioFormat()
    voice: str = "joe"
    turn_detection: TurnDetection | None = TurnDetection()
    transcription_model: str = "whisper"
    temperature: float = 0.6
    max_output_tokens: int | None = None
    tools: tuple[Json, ...] = ()
    tool_choice: str | Json = "auto"  # "auto", "none", "required" or {"type": "function", ...}
    attach_latest_frame: bool = False  # extension: session.voxwire.attach_latest_frame
    type: str = "realtime"  # or "transcription": transcripts only, never a response
    # Extensions reach only clients that ask: `voxwire.turn.metrics` events go to sessions
    # with session.voxwire.metrics (or ?voxwire_metrics=1), and session.created/updated
    # show the `voxwire` object only to sessions that named it.
    metrics: bool = False
    extensions: bool = False


# Keys whose explicit null means something of its own (turn detection off, no idle
# timeout); every other null a client sends means "not set".
_MEANINGFUL_NULLS = frozenset({"turn_detection", "idle_timeout_ms"})
# Values taken as they are: a tool's JSON schema may hold nulls of its own ("default": null).
_OPAQUE = frozenset({"parameters"})


def without_nulls(value: Any) -> Any:
    """``value`` with every ``"key": null`` dropped (at any depth), except the keys whose null
    has a meaning: clients such as LiveKit's send an explicit null for each field they leave
    unset, and OpenAI takes it as unset. Iterative, so deep nesting cannot exhaust the stack."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        src, dst = stack.pop()
        pairs = src.items() if isinstance(src, dict) else enumerate(src)
        for key, inner in pairs:
            if inner is None and isinstance(src, dict) and key not in _MEANINGFUL_NULLS:
                continue
            if isinstance(inner, dict | list) and key not in _OPAQUE:
                copy: Any = {} if isinstance(inner, dict) else []
                stack.append((inner, copy))
                inner = copy
            if isinstance(dst, dict):
                dst[key] = inner
            else:
                dst.append(inner)
    return root


def _num(value: Any, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ProtocolError(f"{param} must be a number in [{lo}, {hi}]", code="invalid_value",
                            param=param)
    return float(value)


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{param} must be a boolean", code="invalid_value", param=param)
    return value


MAX_TEXT_CHARS = 32_768  # every free-text field a client sends: instructions, text parts


def text_value(value: Any, param: str) -> str:
    """A client's free text (instructions, a message): one limit for every such field."""
    return _str(value, param, MAX_TEXT_CHARS)


def _str(value: Any, param: str, max_len: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise ProtocolError(f"{param} must be a string of at most {max_len} characters",
                            code="invalid_value", param=param)
    return value


def _obj(value: Any, param: str) -> Json:
    if not isinstance(value, dict):
        raise ProtocolError(f"{param} must be an object", code="invalid_value", param=param)
    return value


def _turn_detection(value: Any, current: TurnDetection | None, param: str) -> TurnDetection | None:
    if value is None:
        return None
    td = _obj(value, param)
    kind = td.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError(f"{param}.type must be server_vad or semantic_vad",
                            code="invalid_value", param=f"{param}.type")
    base = current or TurnDetection()
    return TurnDetection(
        threshold=_num(td.get("threshold", base.threshold), f"{param}.threshold", 0.01, 0.99),
        prefix_padding_ms=int(_num(td.get("prefix_padding_ms", base.prefix_padding_ms),
                                   f"{param}.prefix_padding_ms", 0, 5000)),
        silence_duration_ms=int(_num(td.get("silence_duration_ms", base.silence_duration_ms),
                                     f"{param}.silence_duration_ms", 32, 10_000)),
        create_response=_bool(td.get("create_response", base.create_response),
                              f"{param}.create_response"),
        interrupt_response=_bool(td.get("interrupt_response", base.interrupt_response),
                                 f"{param}.interrupt_response"),
        type=kind,
        idle_timeout_ms=_idle_timeout(td, base, param),
    )


def _idle_timeout(td: Json, base: TurnDetection, param: str) -> int | None:
    if "idle_timeout_ms" not in td:
        return base.idle_timeout_ms
    value = td["idle_timeout_ms"]
    if value is None:
        return None
    return int(_num(value, f"{param}.idle_timeout_ms", 100, 3_600_000))


_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_GA_TO_BETA_FORMAT = {v: k for k, v in _BETA_FORMATS.items()}


def _ga_format(value: Any, current: AudioFormat, param: str) -> AudioFormat:
    fmt = _obj(value, param)
    kind = fmt.get("type", current.type)
    if kind not in _GA_TO_BETA_FORMAT:
        raise ProtocolError(f"{param}.type must be one of {sorted(_GA_TO_BETA_FORMAT)}",
                            code="invalid_value", param=f"{param}.type")
    rate = fmt.get("rate", current.rate if kind == "audio/pcm" else 8000)
    if kind != "audio/pcm":
        rate = 8000
    if rate not in SAMPLE_RATES:
        raise ProtocolError(f"{param}.rate must be one of {SAMPLE_RATES}", code="invalid_value",
                            param=f"{param}.rate")
    return AudioFormat(kind, int(rate))


def _beta_format(value: Any, param: str) -> AudioFormat:
    if value not in _BETA_FORMATS:
        raise ProtocolError(f"{param} must be one of {sorted(_BETA_FORMATS)}",
                            code="invalid_value", param=param)
    kind = _BETA_FORMATS[value]
    return AudioFormat(kind, 24000 if kind == "audio/pcm" else 8000)


def modalities_value(value: Any, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not set(value) <= {"text", "audio"}:
        raise ProtocolError(f"{param} must be a non-empty list of 'text' and 'audio'",
                            code="invalid_value", param=param)
    return ("audio",) if "audio" in value else ("text",)


def max_tokens_value(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    return int(_num(value, param, 1, 4096))


def _tools(value: Any, param: str) -> tuple[Json, ...]:
    if not isinstance(value, list):
        raise ProtocolError(f"{param} must be a list", code="invalid_value", param=param)
    for i, tool in enumerate(value):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            raise _no_mcp(f"{param}[{i}]")
        ok = (isinstance(tool, dict) and tool.get("type", "function") == "function"
              and isinstance(tool.get("name"), str) and tool["name"]
              and isinstance(tool.get("parameters", {}), dict))
        if not ok:
            raise ProtocolError(f"{param}[{i}] must be a function tool with a name and JSON "
                                "schema parameters", code="invalid_value", param=f"{param}[{i}]")
    return tuple(value)


def _no_mcp(param: str) -> ProtocolError:
    return ProtocolError("Voxwire has no MCP client: MCP tools cannot be used; declare "
                         "function tools and answer their calls", code="mcp_not_supported",
                         param=param)


def tool_choice_value(value: Any, param: str) -> str | Json:
    """``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function", "name": ...}``."""
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "mcp":
        raise _no_mcp(param)
    if (isinstance(value, dict) and value.get("type") == "function"
            and isinstance(value.get("name"), str) and value["name"]):
        return {"type": "function", "name": value["name"]}
    raise ProtocolError(f'{param} must be "auto", "none", "required" or '
                        '{"type": "function", "name": ...}', code="invalid_value", param=param)


def tool_choice_mode(choice: str | Json) -> tuple[str, str | None]:
    """A tool choice as (mode, function name): ``("function", name)`` for a named one."""
    if isinstance(choice, dict):
        return "function", str(choice["name"])
    return choice, None


def tools_value(value: Any, param: str) -> tuple[Json, ...]:
    return _tools(value, param)


def metadata_value(value: Any, param: str) -> Json:
    """At most 16 string pairs (keys up to 64 characters, values up to 512), as OpenAI."""
    meta = _obj(value, param)
    ok = len(meta) <= 16 and all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
        for k, v in meta.items())
    if not ok:
        raise ProtocolError(f"{param} takes at most 16 string pairs (keys up to 64 characters, "
                            "values up to 512)", code="invalid_value", param=param)
    return meta


def voice_value(value: Any, param: str) -> str:
    return _str(value, param, 200)


def apply_session_update(cfg: SessionConfig, session: Any, dialect: Dialect) -> SessionConfig:
    """Validate a `session.update` payload and return the new configuration (all or nothing)."""
    s = without_nulls(_obj(session, "session"))
    ch: dict[str, Any] = {}
    if "instructions" in s:
        ch["instructions"] = text_value(s["instructions"], "session.instructions")
    if "temperature" in s:
        ch["temperature"] = _num(s["temperature"], "session.temperature", 0.0, 2.0)
    if "tools" in s:
        ch["tools"] = _tools(s["tools"], "session.tools")
    if "tool_choice" in s:
        ch["tool_choice"] = tool_choice_value(s["tool_choice"], "session.tool_choice")
    if "type" in s:
        if s["type"] not in ("realtime", "transcription"):
            raise ProtocolError("session.type must be realtime or transcription",
                                code="invalid_value", param="session.type")
        ch["type"] = s["type"]
    ext = _obj(s.get("voxwire", {}), "session.voxwire")
    if "attach_latest_frame" in ext:
        ch["attach_latest_frame"] = _bool(ext["attach_latest_frame"],
                                          "session.voxwire.attach_latest_frame")
    if "metrics" in ext:
        ch["metrics"] = _bool(ext["metrics"], "session.voxwire.metrics")
    if "voxwire" in s:
        ch["extensions"] = True
    if "model" in s:
        ch["model"] = _str(s["model"], "session.model", 200)
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in s:
            ch["max_output_tokens"] = max_tokens_value(s[key], f"session.{key}")
    for key in ("modalities", "output_modalities"):
        if key in s:
            ch["output_modalities"] = modalities_value(s[key], f"session.{key}")
    if "voice" in s:
        ch["voice"] = _str(s["voice"], "session.voice", 200)
    if "turn_detection" in s:
        ch["turn_detection"] = _turn_detection(s["turn_detection"], cfg.turn_detection,
                                               "session.turn_detection")
    if "input_audio_format" in s:
        ch["input_format"] = _beta_format(s["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in s:
        ch["output_format"] = _beta_format(s["output_audio_format"], "session.output_audio_format")
    if "input_audio_transcription" in s and s["input_audio_transcription"] is not None:
        model = _obj(s["input_audio_transcription"], "session.input_audio_transcription")
        ch["transcription_model"] = _str(model.get("model", "whisper"), "transcription.model")
    audio = _obj(s.get("audio", {}), "session.audio")
    inp = _obj(audio.get("input", {}), "session.audio.input")
    out = _obj(audio.get("output", {}), "session.audio.output")
    if "format" in inp:
        ch["input_format"] = _ga_format(inp["format"], cfg.input_format,
                                        "session.audio.input.format")
    if "turn_detection" in inp:
        ch["turn_detection"] = _turn_detection(inp["turn_detection"], cfg.turn_detection,
                                               "session.audio.input.turn_detection")
    if isinstance(inp.get("transcription"), dict):
        ch["transcription_model"] = _str(inp["transcription"].get("model", "whisper"),
                                         "session.audio.input.transcription.model")
    if "format" in out:
        ch["output_format"] = _ga_format(out["format"], cfg.output_format,
                                         "session.audio.output.format")
    if "voice" in out:
        ch["voice"] = _str(out["voice"], "session.audio.output.voice", 200)
    return _replace(cfg, ch)


def _replace(cfg: SessionConfig, changes: dict[str, Any]) -> SessionConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def session_to_wire(cfg: SessionConfig, session_id: str, dialect: Dialect) -> Json:
    td: Json | None = None
    if cfg.turn_detection is not None:
        t = cfg.turn_detection
        td = {"type": t.type, "threshold": t.threshold, "prefix_padding_ms": t.prefix_padding_ms,
              "silence_duration_ms": t.silence_duration_ms, "create_response": t.create_response,
              "interrupt_response": t.interrupt_response, "idle_timeout_ms": t.idle_timeout_ms}
    if cfg.type == "transcription":
        return _transcription_wire(cfg, td, session_id, dialect)
    max_tokens: int | str = cfg.max_output_tokens if cfg.max_output_tokens else "inf"
    if dialect == "beta":
        return {
            "id": session_id, "object": "realtime.session",
            "model": cfg.model if cfg.model in BETA_MODELS else None,
            "modalities": ["text", "audio"] if "audio" in cfg.output_modalities else ["text"],
            "instructions": cfg.instructions, "voice": cfg.voice,
            "input_audio_format": _GA_TO_BETA_FORMAT[cfg.input_format.type],
            "output_audio_format": _GA_TO_BETA_FORMAT[cfg.output_format.type],
            "input_audio_transcription": {"model": cfg.transcription_model},
            "turn_detection": td, "tools": list(cfg.tools), "tool_choice": cfg.tool_choice,
            "temperature": cfg.temperature, "max_response_output_tokens": max_tokens,
            **_extensions(cfg),
        }
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": cfg.model,
        "output_modalities": list(cfg.output_modalities), "instructions": cfg.instructions,
        "audio": {
            "input": {
                "format": {"type": cfg.input_format.type, "rate": cfg.input_format.rate},
                "transcription": {"model": cfg.transcription_model},
                "noise_reduction": None, "turn_detection": td,
            },
            "output": {"format": {"type": cfg.output_format.type, "rate": cfg.output_format.rate},
                       "voice": cfg.voice, "speed": 1.0},
        },
        "tools": list(cfg.tools), "tool_choice": cfg.tool_choice, "max_output_tokens": max_tokens,
        **_extensions(cfg),
    }


def _transcription_wire(cfg: SessionConfig, td: Json | None, session_id: str,
                        dialect: Dialect) -> Json:
    """A transcription-only session: audio in, transcripts out, no model answering."""
    transcription = {"model": cfg.transcription_model, "language": None, "prompt": ""}
    if dialect == "beta":
        named = cfg.transcription_model if cfg.transcription_model in BETA_TRANSCRIBERS else None
        # The beta model requires `client_secret`, which only a minted session has: a
        # WebSocket session's is empty and long expired.
        return {"id": session_id, "object": "realtime.transcription_session",
                "client_secret": {"value": "", "expires_at": 0},
                "input_audio_format": _GA_TO_BETA_FORMAT[cfg.input_format.type],
                "input_audio_transcription": {**transcription, "model": named},
                "turn_detection": td,
                "input_audio_noise_reduction": None, "include": [],
                "modalities": ["text"]}
    return {"type": "transcription", "object": "realtime.transcription_session",
            "id": session_id, "include": [],
            "audio": {"input": {
                "format": {"type": cfg.input_format.type, "rate": cfg.input_format.rate},
                "transcription": transcription, "noise_reduction": None,
                "turn_detection": td}}}


def _extensions(cfg: SessionConfig) -> Json:
    """The session's `voxwire` object, for clients that named an extension."""
    if not cfg.extensions:
        return {}
    return {"voxwire": {"attach_latest_frame": cfg.attach_latest_frame,
                        "metrics": cfg.metrics}}


def wants(cfg: SessionConfig, event: Json) -> bool:
    """Whether a session gets a server event: extension events only when it asked."""
    return not event["type"].startswith("voxwire.") or cfg.metrics


# ---------------------------------------------------------------- client events


@dataclass(frozen=True)
class ClientEvent:
    event_id: str | None


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    session: Json


@dataclass(frozen=True)
class TranscriptionSessionUpdate(SessionUpdate):
    """Beta `transcription_session.update`: a session.update that makes the session
    transcription-only; answered with `transcription_session.updated`."""


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    audio: bytes


@dataclass(frozen=True)
class AudioCommit(ClientEvent):
    pass


@dataclass(frozen=True)
class AudioClear(ClientEvent):
    pass


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    item: Json
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class ItemDelete(ClientEvent):
    item_id: str


@dataclass(frozen=True)
class ItemRetrieve(ClientEvent):
    item_id: str


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    response: Json = field(default_factory=dict)


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    response_id: str | None = None


@dataclass(frozen=True)
class FrameAppend(ClientEvent):
    """Extension `voxwire.input_image.append`: the latest camera frame (a data URI)."""

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
    "session.update": lambda ev, eid: SessionUpdate(eid, _field(ev, "session", dict, eid)),
    "transcription_session.update": lambda ev, eid: TranscriptionSessionUpdate(
        eid, {**_field(ev, "session", dict, eid), "type": "transcription"}),
    "input_audio_buffer.append": lambda ev, eid: AudioAppend(
        eid, decode_base64(_field(ev, "audio", str, eid), eid)),
    "input_audio_buffer.commit": lambda ev, eid: AudioCommit(eid),
    "input_audio_buffer.clear": lambda ev, eid: AudioClear(eid),
    "conversation.item.create": _parse_item_create,
    "conversation.item.truncate": _parse_truncate,
    "conversation.item.delete": lambda ev, eid: ItemDelete(eid, _field(ev, "item_id", str, eid)),
    "conversation.item.retrieve": lambda ev, eid: ItemRetrieve(
        eid, _field(ev, "item_id", str, eid)),
    "response.create": _parse_response_create,
    "voxwire.input_image.append": lambda ev, eid: FrameAppend(
        eid, _field(ev, "image_url", str, eid)),
    "response.cancel": lambda ev, eid: ResponseCancel(
        eid, ev.get("response_id") if isinstance(ev.get("response_id"), str) else None),
}


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


# ---------------------------------------------------------------- server events


def content_for(dialect: Dialect, part: Json) -> Json:
    kind = part.get("type", "")
    if dialect == "beta" and kind in _BETA_CONTENT:
        return {**part, "type": _BETA_CONTENT[kind]}
    if dialect == "ga" and kind in _GA_CONTENT:
        return {**part, "type": _GA_CONTENT[kind]}
    return part


def _item_for(dialect: Dialect, item: Json) -> Json:
    if "content" not in item:
        return item
    return {**item, "content": [content_for(dialect, p) for p in item["content"]]}


def encode(event: Json, dialect: Dialect) -> str | None:
    """Serialize a server event (GA names) for the client's dialect; None if it has none."""
    kind: str = event["type"]
    out = dict(event)
    if dialect == "beta":
        beta = _BETA_NAMES.get(kind, kind)
        if beta is None:
            return None
        out["type"] = beta
    if isinstance(out.get("item"), dict):
        out["item"] = _item_for(dialect, out["item"])
    if isinstance(out.get("part"), dict):  # content part events say "audio"/"text" in both
        out["part"] = content_for("beta", out["part"])
    if isinstance(out.get("response"), dict) and "output" in out["response"]:
        out["response"] = {**out["response"],
                           "output": [_item_for(dialect, i) for i in out["response"]["output"]]}
    out["event_id"] = new_id("event")
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate a client sent ("\ud800"): escape it
            text = json.dumps(out, separators=(",", ":"))
    return text


def error_event(message: str, *, code: str, kind: str = "invalid_request_error",
                param: str | None = None, event_id: str | None = None) -> Json:
    return {"type": "error", "error": {"type": kind, "code": code, "message": message,
                                       "param": param, "event_id": event_id}}


def json_size(value: object, *, skip: frozenset[str] = frozenset()) -> int:
    """About how many bytes ``value`` takes as JSON, without encoding it: string lengths
    plus a little per value. Values under a key in ``skip`` count as nothing. Iterative,
    so a deeply nested client item cannot exhaust the stack."""
    size, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            size += (len(v) if v.isascii() else 4 * len(v)) + 2  # UTF-8: up to 4 bytes
        elif isinstance(v, dict):
            size += 2
            for key, inner in v.items():
                size += len(str(key)) + 4
                if key not in skip:
                    stack.append(inner)
        elif isinstance(v, list | tuple):
            size += 2 + len(v)
            stack.extend(v)
        else:
            size += 8
    return size
