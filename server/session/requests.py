"""What a response asks of the responder: the chat request, its output modalities, voice
and format, built from the session's config, the conversation, the settings and the
`response.create` parameters. Pure functions, but for the images of a response's own
`input`, which are checked by the caller's ``image`` function (in the image lane)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import realtime as p
from realtime import Json, SessionConfig
from server.errors import ProtocolError
from server.response.run import CANNOT_SEE
from server.runtime.config import Settings
from server.session.conversation import Conversation, client_item
from server.stages import ChatMessage, ChatRequest, ImageData, Responder, ToolSpec

CheckImage = Callable[[str, str | None], Awaitable[ImageData]]


def voice(asked: str, voices: Sequence[str], default: str) -> str:
    """The voice in effect: one the server has, else ``default`` (the session's own)."""
    return asked if asked in voices else default


def response_audio(cfg: SessionConfig, voices: Sequence[str],
                   params: Json) -> tuple[str, p.AudioFormat]:
    """A response's voice and output format: its own where it names them (GA
    `audio.output`, beta `voice`/`output_audio_format`), else the session's. A voice
    the server does not have is taken, and the session's voice speaks."""
    chosen, fmt = cfg.voice, cfg.output_format
    out = params.get("audio", {})
    out = out.get("output", {}) if isinstance(out, dict) else None
    if not isinstance(out, dict):
        raise ProtocolError("response.audio.output must be an object", code="invalid_value",
                            param="response.audio.output")
    if "voice" in params:
        chosen = voice(p.voice_value(params["voice"], "response.voice"), voices, cfg.voice)
    if "voice" in out:
        chosen = voice(p.voice_value(out["voice"], "response.audio.output.voice"), voices,
                       cfg.voice)
    if "output_audio_format" in params:
        fmt = p.apply_session_update(cfg, {"output_audio_format": params[
            "output_audio_format"]}, "beta").output_format
    if "format" in out:
        fmt = p.apply_session_update(cfg, {"audio": {"output": {"format": out[
            "format"]}}}, "ga").output_format
    return chosen, fmt


def tools(cfg: SessionConfig, params: Json) -> tuple[tuple[ToolSpec, ...], str, str | None]:
    """The tools a response may call and how: its own `tools`/`tool_choice`, else the
    session's. "none" still sends the tools (a history of calls needs them declared)."""
    declared = (p.tools_value(params["tools"], "response.tools") if "tools" in params
                else cfg.tools)
    choice, name = p.tool_choice_mode(
        p.tool_choice_value(params["tool_choice"], "response.tool_choice")
        if "tool_choice" in params else cfg.tool_choice)
    specs = tuple(ToolSpec(t["name"], str(t.get("description", "")),
                           t.get("parameters") or {"type": "object", "properties": {}})
                  for t in declared)
    if name is not None and name not in {t.name for t in specs}:
        raise ProtocolError(f"tool_choice names the function {name!r}, which is not among "
                            "the tools", code="invalid_value", param="tool_choice.name")
    if choice == "required" and not specs:
        raise ProtocolError('tool_choice "required" needs at least one tool',
                            code="invalid_value", param="tool_choice")
    return specs, choice, name


def prepare(cfg: SessionConfig, settings: Settings, conv: Conversation, responder: Responder,
            session_id: str, params: Json, event_id: str | None,
            pending: ChatMessage | None = None, context: Conversation | None = None
            ) -> tuple[ChatRequest, str | None, tuple[str, ...]]:
    """The request a response sends to the responder, from the session and ``params``;
    ``context`` replaces the conversation (a response's own `input`)."""
    modalities = cfg.output_modalities
    for key in ("output_modalities", "modalities"):
        if key in params:
            modalities = p.modalities_value(params[key], f"response.{key}")
    instructions = p.text_value(params.get("instructions", cfg.instructions),
                                "response.instructions")
    temperature = params.get("temperature", cfg.temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ProtocolError("response.temperature must be a number", code="invalid_value",
                            param="response.temperature", event_id=event_id)
    limit = settings.max_output_tokens
    if "max_output_tokens" in params:
        asked = p.max_tokens_value(params["max_output_tokens"], "response.max_output_tokens")
    else:
        asked = cfg.max_output_tokens
    history = (context or conv).history(instructions, settings.history_turns, pending)
    specs, choice, name = tools(cfg, params)
    if not responder.can_use_tools:
        if specs and choice in ("required", "function"):
            raise ProtocolError(
                f"the language model {responder.name!r} cannot call tools, so tool_choice "
                f"{choice!r} cannot be honoured: use a backend that calls tools (OpenAI, "
                "Anthropic, a compatible server) or tool_choice auto", code="invalid_value",
                param="tool_choice", event_id=event_id)
        specs = ()
    request = ChatRequest(tuple(history), float(temperature), min(asked or limit, limit),
                          specs, choice, name, session=session_id)
    sees_images = any(m.images for m in history)
    notice = CANNOT_SEE if sees_images and not responder.can_see else None
    return request, notice, modalities


async def input_context(value: object, event_id: str | None, conv: Conversation,
                        settings: Settings, image: CheckImage) -> Conversation:
    """A response's own `input`: its items, new ones or references to the conversation's,
    in place of the conversation (an empty list: no context at all)."""
    if not isinstance(value, list):
        raise ProtocolError("response.input must be a list of items", code="invalid_value",
                            param="response.input", event_id=event_id)
    context = Conversation(settings.max_items, settings.max_conversation_bytes)
    for i, raw in enumerate(value):
        if isinstance(raw, dict) and raw.get("type") == "item_reference":
            ref = raw.get("id")
            item = conv.get(ref if isinstance(ref, str) else "", event_id)
            images = conv.images.get(item["id"], ())
            context.add({**item, "id": f"{item['id']}#{i}"}, images=images)
            continue
        item = client_item(raw if isinstance(raw, dict) else {"type": None}, event_id,
                           settings.max_item_bytes)
        checked = [await image(part["image_url"], event_id)
                   for part in item.get("content", []) if part.get("type") == "input_image"]
        context.add({**item, "id": f"{item['id']}#{i}"}, images=checked, event_id=event_id)
    return context
