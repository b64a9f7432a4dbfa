import base64
import json

import pytest

import realtime as p
from server.errors import ProtocolError


def parse(ev: object) -> p.ClientEvent:
    return p.parse_client_event(json.dumps(ev))


def test_parses_every_client_event() -> None:
    audio = base64.b64encode(b"\x01\x00\x02\x00").decode()
    assert parse({"type": "input_audio_buffer.append", "audio": audio, "event_id": "e1"}) == \
        p.AudioAppend("e1", b"\x01\x00\x02\x00")
    assert isinstance(parse({"type": "input_audio_buffer.commit"}), p.AudioCommit)
    assert isinstance(parse({"type": "input_audio_buffer.clear"}), p.AudioClear)
    assert parse({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0,
                  "audio_end_ms": 1500}) == p.ItemTruncate(None, "i", 0, 1500)
    assert parse({"type": "conversation.item.delete", "item_id": "i"}) == p.ItemDelete(None, "i")
    assert parse({"type": "response.create"}) == p.ResponseCreate(None, {})
    assert parse({"type": "response.cancel", "response_id": "r"}) == p.ResponseCancel(None, "r")
    assert isinstance(parse({"type": "session.update", "session": {}}), p.SessionUpdate)
    assert parse({"type": "output_audio_buffer.clear", "event_id": "e2"}) == \
        p.OutputAudioClear("e2")


@pytest.mark.parametrize(("message", "code"), [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_event"),
    ('{"no": "type"}', "invalid_event"),
    ('{"type": "nope.nothing", "event_id": "x"}', "unknown_event"),
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_audio"),
    ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_value"),
    ('{"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": -1}',
     "invalid_value"),
    ('{"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": true}',
     "invalid_value"),
])
def test_malformed_events_raise_protocol_errors(message: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_client_event(message)
    assert info.value.code == code


def test_error_names_the_offending_event_id() -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_client_event('{"type": "bogus", "event_id": "evt_42"}')
    assert info.value.event_id == "evt_42"


def test_ga_session_update_sets_formats_and_turn_detection() -> None:
    cfg = p.apply_session_update(p.SessionConfig(), {
        "type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}},
                  "output": {"format": {"type": "audio/pcmu"}}},
    }, "ga")
    assert cfg.instructions == "Be brief."
    assert cfg.output_modalities == ("text",)
    assert cfg.input_format == p.AudioFormat("audio/pcm", 16000)
    assert cfg.output_format == p.AudioFormat("audio/pcmu", 8000)
    assert cfg.turn_detection is not None and cfg.turn_detection.silence_duration_ms == 700
    wire = p.session_to_wire(cfg, "sess_1", "ga")
    assert wire["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}


def test_beta_session_update_and_manual_turns() -> None:
    cfg = p.apply_session_update(p.SessionConfig(), {
        "modalities": ["text", "audio"], "input_audio_format": "g711_alaw",
        "turn_detection": None, "max_response_output_tokens": 50, "temperature": 0.2,
    }, "beta")
    assert cfg.turn_detection is None
    assert cfg.input_format == p.AudioFormat("audio/pcma", 8000)
    assert cfg.max_output_tokens == 50 and cfg.temperature == 0.2
    wire = p.session_to_wire(cfg, "s", "beta")
    assert wire["input_audio_format"] == "g711_alaw" and wire["turn_detection"] is None


@pytest.mark.parametrize("session", [
    {"temperature": "hot"},
    {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 12345}}}},
    {"input_audio_format": "mp3"},
    {"turn_detection": {"type": "server_vad", "threshold": 2}},
    {"output_modalities": ["video"]},
    {"audio": "loud"},
])
def test_invalid_session_values_are_rejected_whole(session: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as info:
        p.apply_session_update(p.SessionConfig(), session, "ga")
    assert info.value.code == "invalid_value"
    assert info.value.param


def test_encode_renames_events_and_content_for_beta() -> None:
    item = {"id": "i", "type": "message", "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "hi"}]}
    ga = json.loads(p.encode({"type": "conversation.item.added", "item": item}, "ga") or "")
    beta = json.loads(p.encode({"type": "conversation.item.added", "item": item}, "beta") or "")
    assert ga["type"] == "conversation.item.added"
    assert ga["item"]["content"][0]["type"] == "output_audio"
    assert beta["type"] == "conversation.item.created"
    assert beta["item"]["content"][0]["type"] == "audio"
    assert ga["event_id"] != beta["event_id"]
    delta = json.loads(p.encode({"type": "response.output_audio.delta", "delta": ""}, "beta")
                       or "")
    assert delta["type"] == "response.audio.delta"
    assert p.encode({"type": "conversation.item.done", "item": item}, "beta") is None


def test_nulls_mean_unset_except_where_null_has_a_meaning() -> None:
    event = parse({"type": "session.update", "event_id": None, "session": {
        "instructions": None, "tools": [{"type": "function", "name": "f", "description": None,
                                         "parameters": {"type": "object", "default": None}}],
        "audio": {"input": {"turn_detection": {"type": "server_vad",
                                               "idle_timeout_ms": None}}}}})
    assert isinstance(event, p.SessionUpdate) and event.event_id is None
    session = event.session
    assert "instructions" not in session
    assert session["tools"][0] == {"type": "function", "name": "f",
                                   "parameters": {"type": "object", "default": None}}
    assert session["audio"]["input"]["turn_detection"]["idle_timeout_ms"] is None
    cfg = p.apply_session_update(p.SessionConfig(), {"audio": {"input": {
        "turn_detection": {"idle_timeout_ms": 2000}}}}, "ga")
    assert cfg.turn_detection is not None and cfg.turn_detection.idle_timeout_ms == 2000
    off = p.apply_session_update(cfg, {"audio": {"input": {"turn_detection": None}}}, "ga")
    assert off.turn_detection is None
    deep = json.dumps({"type": "input_audio_buffer.clear", "x": [[[None]] * 3] * 3})
    assert isinstance(p.parse_client_event(deep), p.AudioClear)


def test_tool_choice_takes_its_string_and_object_forms() -> None:
    assert p.tool_choice_mode(p.tool_choice_value("none", "t")) == ("none", None)
    named = p.tool_choice_value({"type": "function", "name": "f"}, "t")
    assert p.tool_choice_mode(named) == ("function", "f")
    with pytest.raises(ProtocolError) as info:
        p.tool_choice_value({"type": "mcp", "server_label": "x"}, "t")
    assert info.value.code == "mcp_not_supported"
    with pytest.raises(ProtocolError):
        p.tool_choice_value("sometimes", "t")
