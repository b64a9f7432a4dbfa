"""The request a response sends to the responder, built by pure functions of the session's
config, the conversation, the settings and `response.create`'s parameters: no session."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import pytest

from realtime import AudioFormat, SessionConfig
from server.errors import ProtocolError
from server.response.run import CANNOT_SEE
from server.runtime.config import Settings
from server.session import requests
from server.session.conversation import Conversation, client_item
from server.stages import ChatMessage, ChatRequest, ImageData, ResponderEvent

LIGHTS = {"type": "function", "name": "lights", "description": "Turn the lights on or off",
          "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}}}


@dataclass
class Model:
    """A responder as `prepare` sees it: its name and what it can do."""

    name: str = "model"
    can_see: bool = False
    can_use_tools: bool = False

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        raise AssertionError("prepare never streams")
        yield


def conversation(*texts: str) -> Conversation:
    conv = Conversation(100, 1 << 20)
    for text in texts:
        conv.add(client_item({"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": text}]}, None))
    return conv


def test_a_plain_response_asks_with_the_sessions_settings() -> None:
    cfg = SessionConfig(instructions="Be brief.", temperature=0.7)
    request, notice, modalities = requests.prepare(
        cfg, Settings(max_output_tokens=90), conversation("Hi."), Model(), "sess_1", {}, None,
        ChatMessage("user", "And you?"))
    assert modalities == ("audio",) and notice is None
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."), ("user", "Hi."), ("user", "And you?")]
    assert (request.temperature, request.max_tokens, request.session) == (0.7, 90, "sess_1")
    assert request.tools == () and request.tool_choice == "auto"


def test_a_responses_own_parameters_win_and_the_server_caps_its_tokens() -> None:
    params = {"output_modalities": ["text"], "instructions": "Answer in French.",
              "temperature": 1, "max_output_tokens": 4096}
    request, _, modalities = requests.prepare(
        SessionConfig(max_output_tokens=20), Settings(max_output_tokens=160), conversation(),
        Model(), "s", params, None)
    assert modalities == ("text",)
    assert request.messages[0].content == "Answer in French."
    assert (request.temperature, request.max_tokens) == (1.0, 160)
    with pytest.raises(ProtocolError, match="temperature must be a number") as caught:
        requests.prepare(SessionConfig(), Settings(), conversation(), Model(), "s",
                         {"temperature": True}, "evt_9")
    assert caught.value.event_id == "evt_9"


def test_tools_reach_a_model_that_calls_them_and_are_refused_where_they_must_be_called() -> None:
    cfg = SessionConfig(tools=(LIGHTS,))
    request, _, _ = requests.prepare(cfg, Settings(), conversation(), Model(can_use_tools=True),
                                     "s", {"tool_choice": "required"}, None)
    assert [t.name for t in request.tools] == ["lights"] and request.tool_choice == "required"
    quiet, _, _ = requests.prepare(cfg, Settings(), conversation(), Model(), "s", {}, None)
    assert quiet.tools == ()  # tool_choice auto: the model answers without them
    with pytest.raises(ProtocolError, match="cannot call tools"):
        requests.prepare(cfg, Settings(), conversation(), Model(), "s",
                         {"tool_choice": "required"}, None)
    with pytest.raises(ProtocolError, match="not among the tools"):
        requests.tools(cfg, {"tool_choice": {"type": "function", "name": "oven"}})
    with pytest.raises(ProtocolError, match="needs at least one tool"):
        requests.tools(SessionConfig(), {"tool_choice": "required"})


def test_a_conversation_with_images_for_a_blind_model_carries_the_notice() -> None:
    conv = Conversation(100, 1 << 20)
    image = ImageData("image/png", b"\x89PNG", 1, 1)
    conv.add(client_item({"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": "Look."}]}, None),
             images=[image])
    _, notice, _ = requests.prepare(SessionConfig(), Settings(), conv, Model(), "s", {}, None)
    assert notice == CANNOT_SEE
    _, seen, _ = requests.prepare(SessionConfig(), Settings(), conv, Model(can_see=True), "s",
                                  {}, None)
    assert seen is None


def test_a_responses_voice_and_format_are_its_own_where_it_names_them() -> None:
    cfg = SessionConfig(voice="joe")
    voices = ("joe", "amy")
    assert requests.response_audio(cfg, voices, {}) == ("joe", AudioFormat())
    ga = {"audio": {"output": {"voice": "amy", "format": {"type": "audio/pcmu"}}}}
    assert requests.response_audio(cfg, voices, ga) == ("amy", AudioFormat("audio/pcmu", 8000))
    beta = {"voice": "nova", "output_audio_format": "g711_alaw"}  # a voice the server lacks
    assert requests.response_audio(cfg, voices, beta) == ("joe", AudioFormat("audio/pcma", 8000))
    with pytest.raises(ProtocolError, match="must be an object"):
        requests.response_audio(cfg, voices, {"audio": {"output": "loud"}})


async def test_a_responses_input_replaces_the_conversation() -> None:
    conv = conversation("What time is it?")
    first = conv.items[0]["id"]

    async def no_image(url: str, event_id: str | None) -> ImageData:
        raise AssertionError("no image here")

    given = [{"type": "item_reference", "id": first},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "Say it in French."}]}]
    context = await requests.input_context(given, None, conv, Settings(), no_image)
    assert [item["id"][-2:] for item in context.items] == ["#0", "#1"]
    assert context.items[0]["id"] == f"{first}#0"
    request, _, _ = requests.prepare(SessionConfig(), Settings(), conv, Model(), "s", {}, None,
                                     context=context)
    assert [m.content for m in request.messages] == [  # no instructions: no system message
        "What time is it?", "Say it in French."]
    empty = await requests.input_context([], None, conv, Settings(), no_image)
    assert empty.items == []
    with pytest.raises(ProtocolError, match="must be a list"):
        await requests.input_context({}, "evt_1", conv, Settings(), no_image)
