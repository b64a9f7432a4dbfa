"""Session state and its two wire shapes: `session.update` in, the session object out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from realtime.base import Dialect, Json, without_nulls
from realtime.errors import ProtocolError

DEFAULT_RATE = 24000  # the wire's pcm rate unless a session sets another
SAMPLE_RATES = (8000, 16000, DEFAULT_RATE, 44100, 48000)
# The beta session's `model` may only name one of OpenAI's realtime models (the SDK's own
# list): any other name a client connects with is echoed as null to beta clients. Its
# transcription session likewise names only OpenAI's transcription models. Copied here so
# that the protocol needs no SDK; tests/realtime/test_realtime.py checks them against the SDK's.
BETA_MODELS = frozenset({
    "gpt-4o-realtime-preview", "gpt-4o-realtime-preview-2024-10-01",
    "gpt-4o-realtime-preview-2024-12-17", "gpt-4o-realtime-preview-2025-06-03",
    "gpt-4o-mini-realtime-preview", "gpt-4o-mini-realtime-preview-2024-12-17",
    "gpt-realtime", "gpt-realtime-2025-08-28"})
BETA_TRANSCRIBERS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})


# ---------------------------------------------------------------- session state


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    type: str = "server_vad"  # or "semantic_vad": a turn model judges each pause
    idle_timeout_ms: int | None = None  # silence after an answer played: timeout_triggered
    eagerness: str = "auto"  # semantic_vad: "low", "medium", "high" or "auto" (medium)


@dataclass(frozen=True)
class AudioFormat:
    type: str = "audio/pcm"
    rate: int = DEFAULT_RATE


@dataclass(frozen=True)
class SessionConfig:
    model: str = "voxwire"
    instructions: str = ""
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: AudioFormat = AudioFormat()
    output_format: AudioFormat = AudioFormat()
    voice: str = "joe"
    turn_detection: TurnDetection | None = TurnDetection()
    noise_reduction: str | None = None  # "near_field" or "far_field"; None: off
    transcription_model: str = "whisper"
    temperature: float = 0.6
    max_output_tokens: int | None = None
    tools: tuple[Json, ...] = ()
    tool_choice: str | Json = "auto"  # "auto", "none", "required" or {"type": "function", ...}
    attach_latest_frame: bool = False  # extension: session.voxwire.attach_latest_frame
    # Extension: session.voxwire.echo_cancellation: the server cancels the echo of its own
    # voice from the microphone audio (for clients that play the answer aloud).
    echo_cancellation: bool = False
    # Extension: session.voxwire.backchannels: speech over a playing answer that says only
    # backchannels ("mm-hm", "yeah") leaves it playing; false: any speech interrupts at once.
    backchannels: bool = True
    type: str = "realtime"  # or "transcription": transcripts only, never a response
    # Extensions reach only clients that ask: `voxwire.turn.metrics` events go to sessions
    # with session.voxwire.metrics (or ?voxwire_metrics=1), and session.created/updated
    # show the `voxwire` object only to sessions that named it.
    metrics: bool = False
    extensions: bool = False


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


EAGERNESS = ("low", "medium", "high", "auto")


def _turn_detection(value: Any, current: TurnDetection | None, param: str) -> TurnDetection | None:
    if value is None:
        return None
    td = _obj(value, param)
    base = current or TurnDetection()
    kind = td.get("type", base.type)
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError(f"{param}.type must be server_vad or semantic_vad",
                            code="invalid_value", param=f"{param}.type")
    eagerness = td.get("eagerness", base.eagerness)
    if eagerness not in EAGERNESS:
        raise ProtocolError(f"{param}.eagerness must be one of {', '.join(EAGERNESS)}",
                            code="invalid_value", param=f"{param}.eagerness")
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
        eagerness=eagerness,
    )


NOISE_REDUCTION = ("near_field", "far_field")


def _noise_reduction(value: Any, param: str) -> str | None:
    if value is None:
        return None
    kind = _obj(value, param).get("type")
    if kind not in NOISE_REDUCTION:
        raise ProtocolError(f"{param}.type must be near_field or far_field",
                            code="invalid_value", param=f"{param}.type")
    return str(kind)


def _noise_wire(cfg: SessionConfig) -> Json | None:
    return {"type": cfg.noise_reduction} if cfg.noise_reduction else None


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
    return AudioFormat(kind, DEFAULT_RATE if kind == "audio/pcm" else 8000)


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
    if "echo_cancellation" in ext:
        ch["echo_cancellation"] = _bool(ext["echo_cancellation"],
                                        "session.voxwire.echo_cancellation")
    if "backchannels" in ext:
        ch["backchannels"] = _bool(ext["backchannels"], "session.voxwire.backchannels")
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
    if "input_audio_noise_reduction" in s:
        ch["noise_reduction"] = _noise_reduction(s["input_audio_noise_reduction"],
                                                 "session.input_audio_noise_reduction")
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
    if "noise_reduction" in inp:
        ch["noise_reduction"] = _noise_reduction(inp["noise_reduction"],
                                                 "session.audio.input.noise_reduction")
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
    return replace(cfg, **changes)


def session_to_wire(cfg: SessionConfig, session_id: str, dialect: Dialect) -> Json:
    td = _turn_detection_wire(cfg.turn_detection)
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
            "input_audio_noise_reduction": _noise_wire(cfg),
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
                "noise_reduction": _noise_wire(cfg), "turn_detection": td,
            },
            "output": {"format": {"type": cfg.output_format.type, "rate": cfg.output_format.rate},
                       "voice": cfg.voice, "speed": 1.0},
        },
        "tools": list(cfg.tools), "tool_choice": cfg.tool_choice, "max_output_tokens": max_tokens,
        **_extensions(cfg),
    }


def _turn_detection_wire(t: TurnDetection | None) -> Json | None:
    """The session's turn detection as OpenAI shows it: semantic_vad has no VAD fields."""
    if t is None:
        return None
    if t.type == "semantic_vad":
        td: Json = {"type": t.type, "eagerness": t.eagerness,
                    "create_response": t.create_response,
                    "interrupt_response": t.interrupt_response}
        if t.idle_timeout_ms is not None:
            td["idle_timeout_ms"] = t.idle_timeout_ms
        return td
    return {"type": t.type, "threshold": t.threshold, "prefix_padding_ms": t.prefix_padding_ms,
            "silence_duration_ms": t.silence_duration_ms, "create_response": t.create_response,
            "interrupt_response": t.interrupt_response, "idle_timeout_ms": t.idle_timeout_ms}


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
                "input_audio_noise_reduction": _noise_wire(cfg), "include": [],
                "modalities": ["text"]}
    return {"type": "transcription", "object": "realtime.transcription_session",
            "id": session_id, "include": [],
            "audio": {"input": {
                "format": {"type": cfg.input_format.type, "rate": cfg.input_format.rate},
                "transcription": transcription, "noise_reduction": _noise_wire(cfg),
                "turn_detection": td}}}


def _extensions(cfg: SessionConfig) -> Json:
    """The session's `voxwire` object, for clients that named an extension."""
    if not cfg.extensions:
        return {}
    return {"voxwire": {"attach_latest_frame": cfg.attach_latest_frame,
                        "backchannels": cfg.backchannels,
                        "echo_cancellation": cfg.echo_cancellation, "metrics": cfg.metrics}}


def wants(cfg: SessionConfig, event: Json) -> bool:
    """Whether a session gets a server event: extension events only when it asked."""
    return not event["type"].startswith("voxwire.") or cfg.metrics
