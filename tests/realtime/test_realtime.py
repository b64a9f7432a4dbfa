"""The protocol package: every server event constructor against the `openai` SDK's models,
in both dialects; one constructor per event type; a package with no dependencies."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
from openai.types.beta.realtime.session import Session as BetaSession
from openai.types.beta.realtime.transcription_session import (
    InputAudioTranscription as BetaTranscriber,
)

import realtime as p
from realtime import server_events as se
from server.errors import LimitError, StageError
from tests.support.wire_check import MODELS, problems

ROOT = Path(__file__).resolve().parents[2]
IDS: se.ContentIds = {"response_id": "resp_1", "item_id": "item_2", "output_index": 0,
                      "content_index": 0}
USER = se.item("item_1", "message", role="user",
               content=[{"type": "input_audio", "transcript": "hello"}])
SPOKEN = se.item("item_2", "message", "in_progress", role="assistant",
                 content=[{"type": "output_audio", "transcript": ""}])
CALL = se.item("item_3", "function_call", "in_progress", call_id="call_1", name="lookup",
               arguments="{}")
RESPONSE: p.Json = {"object": "realtime.response", "id": "resp_1", "metadata": None,
                    "output_modalities": ["audio"], "conversation_id": "conv_1",
                    "audio": {"output": {"voice": "joe",
                                         "format": {"type": "audio/pcm", "rate": 24000}}},
                    "max_output_tokens": "inf", "status": "completed", "status_details": None,
                    "output": [SPOKEN, CALL], "usage": None}
TRANSCRIBING = p.SessionConfig(type="transcription")
SEMANTIC = p.SessionConfig(turn_detection=p.TurnDetection(type="semantic_vad", eagerness="high"))

Sample = Callable[[p.Dialect], p.Json]
# One or more samples of each constructor, by its name.
SAMPLES: dict[str, list[Sample]] = {
    "error_event": [lambda d: se.error_event(LimitError("too much", code="rate_limited"), "e1"),
                    lambda d: se.error_event(StageError("asr", "Whisper failed")),
                    lambda d: se.error_event(KeyError("x"))],
    "session_created": [lambda d: se.session_created(p.session_to_wire(p.SessionConfig(), "s", d)),
                        lambda d: se.session_created(p.session_to_wire(TRANSCRIBING, "s", d))],
    "session_updated": [lambda d: se.session_updated(p.session_to_wire(p.SessionConfig(), "s", d)),
                        lambda d: se.session_updated(p.session_to_wire(TRANSCRIBING, "s", d)),
                        lambda d: se.session_updated(p.session_to_wire(SEMANTIC, "s", d))],
    "input_audio_buffer_speech_started": [
        lambda d: se.input_audio_buffer_speech_started(120, "item_1")],
    "input_audio_buffer_speech_stopped": [
        lambda d: se.input_audio_buffer_speech_stopped(900, "item_1")],
    "input_audio_buffer_timeout_triggered": [
        lambda d: se.input_audio_buffer_timeout_triggered(100, 5100, "item_1")],
    "input_audio_buffer_committed": [lambda d: se.input_audio_buffer_committed(None, "item_1"),
                                     lambda d: se.input_audio_buffer_committed("i0", "item_1")],
    "input_audio_buffer_cleared": [lambda d: se.input_audio_buffer_cleared()],
    "input_audio_transcription_delta": [
        lambda d: se.input_audio_transcription_delta("item_1", "hel")],
    "input_audio_transcription_completed": [
        lambda d: se.input_audio_transcription_completed("item_1", "hello", 1.23456)],
    "input_audio_transcription_failed": [
        lambda d: se.input_audio_transcription_failed("item_1", "no model")],
    "conversation_item_added": [lambda d: se.conversation_item_added(None, USER),
                                lambda d: se.conversation_item_added("item_1", CALL)],
    "conversation_item_done": [lambda d: se.conversation_item_done(USER),
                               lambda d: se.conversation_item_done(SPOKEN, "item_1")],
    "conversation_item_retrieved": [lambda d: se.conversation_item_retrieved(USER)],
    "conversation_item_truncated": [lambda d: se.conversation_item_truncated("item_2", 0, 800)],
    "conversation_item_deleted": [lambda d: se.conversation_item_deleted("item_1")],
    "response_created": [lambda d: se.response_created({**RESPONSE, "status": "in_progress",
                                                        "output": []})],
    "response_done": [lambda d: se.response_done(RESPONSE)],
    "output_audio_buffer_started": [lambda d: se.output_audio_buffer_started("resp_1")],
    "output_audio_buffer_stopped": [lambda d: se.output_audio_buffer_stopped("resp_1")],
    "output_audio_buffer_cleared": [lambda d: se.output_audio_buffer_cleared("resp_1")],
    "response_output_item_added": [lambda d: se.response_output_item_added("resp_1", 0, SPOKEN)],
    "response_output_item_done": [lambda d: se.response_output_item_done("resp_1", 1, CALL)],
    "response_content_part_added": [lambda d: se.response_content_part_added(
        IDS, {"type": "output_audio", "transcript": ""})],
    "response_content_part_done": [lambda d: se.response_content_part_done(
        IDS, {"type": "output_text", "text": "Hi."})],
    "response_output_text_delta": [lambda d: se.response_output_text_delta(IDS, "Hi")],
    "response_output_text_done": [lambda d: se.response_output_text_done(IDS, "Hi.")],
    "response_output_audio_delta": [lambda d: se.response_output_audio_delta(IDS, "AAAA")],
    "response_output_audio_done": [lambda d: se.response_output_audio_done(IDS)],
    "response_output_audio_transcript_delta": [
        lambda d: se.response_output_audio_transcript_delta(IDS, "Hi")],
    "response_output_audio_transcript_done": [
        lambda d: se.response_output_audio_transcript_done(IDS, "Hi.")],
    "response_function_call_arguments_delta": [
        lambda d: se.response_function_call_arguments_delta(IDS, "call_1", '{"a"')],
    "response_function_call_arguments_done": [
        lambda d: se.response_function_call_arguments_done(IDS, "call_1", "lookup", "{}")],
    "turn_metrics": [lambda d: se.turn_metrics({"response_id": "resp_1", "stages_ms": {}})],
}
CASES = [pytest.param(name, i, dialect, id=f"{name}-{i}-{dialect}")
         for name, samples in SAMPLES.items() for i in range(len(samples))
         for dialect in ("ga", "beta")]


EVENT_TYPES = frozenset(MODELS["ga"]) | frozenset(MODELS["beta"]) | {"voxwire.turn.metrics"}


def constructors() -> set[str]:
    return {name for name, fn in inspect.getmembers(se, inspect.isfunction)
            if fn.__module__ == se.__name__ and name != "item"}


def test_every_constructor_has_samples() -> None:
    assert set(SAMPLES) == constructors()


@pytest.mark.parametrize(("name", "index", "dialect"), CASES)
def test_each_event_validates_against_the_sdk(name: str, index: int,
                                              dialect: p.Dialect) -> None:
    event = SAMPLES[name][index](dialect)
    text = p.encode(event, dialect)
    if text is None:  # the beta protocol has no such event
        assert dialect == "beta" and p.beta_name(event) is None
        return
    assert problems(text, dialect, extensions=name == "turn_metrics") == []
    if name != "turn_metrics":
        assert json.loads(text)["type"] in MODELS[dialect]


def test_an_exception_becomes_one_error_shape() -> None:
    named = se.error_event(LimitError("too much", code="rate_limited", event_id="mine"), "e1")
    assert named["error"] == {"type": "invalid_request_error", "code": "rate_limited",
                              "message": "too much", "param": None, "event_id": "mine"}
    assert se.error_event(LimitError("x"), "e1")["error"]["event_id"] == "e1"
    stage = se.error_event(StageError("asr", "Whisper failed"))["error"]
    assert (stage["type"], stage["code"], stage["message"]) == (
        "server_error", "asr_failed", "Whisper failed")
    bug = se.error_event(KeyError("secret detail"))["error"]
    assert bug["code"] == "server_error" and "secret" not in bug["message"]


def test_the_beta_names_are_the_sdks() -> None:
    models = {name for arg in typing.get_args(BetaSession.model_fields["model"].annotation)
              for name in typing.get_args(arg)}
    transcribers = set(typing.get_args(typing.get_args(
        BetaTranscriber.model_fields["model"].annotation)[0]))
    assert (frozenset(models), frozenset(transcribers)) == (p.BETA_MODELS, p.BETA_TRANSCRIBERS)


def _type_literals(path: Path) -> list[str]:
    """The server event types a module's dict literals name as their "type"."""
    return [value.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Dict) for key, value in zip(node.keys, node.values, strict=True)
            if isinstance(key, ast.Constant) and key.value == "type"
            and isinstance(value, ast.Constant) and value.value in EVENT_TYPES]


def test_each_server_event_type_is_named_once() -> None:
    """Events are built only by their constructors: no server module names an event type,
    and the constructors name each one once."""
    inline = {str(path.relative_to(ROOT)): found for path in sorted((ROOT / "server").rglob("*.py"))
              if (found := _type_literals(path))}
    assert inline == {}
    named = _type_literals(ROOT / "realtime" / "server_events.py")
    assert len(named) == len(set(named)) == len(constructors())


def test_the_package_needs_only_the_standard_library() -> None:
    code = ("import sys, realtime, realtime.server_events; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    loaded = json.loads(subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT,
                                       capture_output=True, text=True, check=True,
                                       ).stdout.replace("'", '"'))
    assert set(loaded) - set(sys.stdlib_module_names) - {"realtime", "__main__"} == set()


CLIENT_EVENTS: list[p.ClientEvent] = [
    p.SessionUpdate("e1", {"instructions": "Be brief."}),
    p.TranscriptionSessionUpdate(None, {"type": "transcription"}),
    p.AudioAppend("e2", b"\x00\x01" * 8), p.AudioCommit(None), p.AudioClear("e3"),
    p.ItemCreate(None, {"type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}]}, "item_0"),
    p.ItemTruncate(None, "item_1", 0, 640), p.ItemDelete(None, "item_1"),
    p.ItemRetrieve("e4", "item_1"), p.ResponseCreate(None, {"instructions": "Hi"}),
    p.ResponseCancel(None), p.FrameAppend(None, "data:image/png;base64,AAAA"),
    p.OutputAudioClear("e5"),
]


def test_a_client_event_sent_is_the_event_parsed() -> None:
    assert {type(ev) for ev in CLIENT_EVENTS} == {
        cls for cls in vars(p).values()
        if isinstance(cls, type) and issubclass(cls, p.ClientEvent) and cls is not p.ClientEvent}
    for event in CLIENT_EVENTS:
        assert p.parse_client_event(p.dump(event)) == event
