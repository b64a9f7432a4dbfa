"""Server events: one constructor each, returning the GA wire dict that ``encode`` sends.

Each event type is named here and nowhere else in the server; the beta dialect is made
from these at the edge (``realtime.dialects.encode``). Plain functions over dicts keep
the hot path (an audio delta every few milliseconds) as cheap as an inline literal, and
their signatures type every field. tests/realtime/test_realtime.py validates each one against the
`openai` SDK's model for its type, in both dialects.
"""

from __future__ import annotations

from typing import Any, TypedDict

from realtime.base import Json
from realtime.errors import ProtocolError, VoxwireError


class ContentIds(TypedDict):
    """Where a piece of a response's output goes: its item and content part."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int


# ---------------------------------------------------------------- items


def item(item_id: str, kind: str, status: str = "completed", **fields: Any) -> Json:
    """A `realtime.item`: the one shape of a conversation item, whoever made it."""
    return {"id": item_id, "object": "realtime.item", "type": kind, "status": status, **fields}


# ---------------------------------------------------------------- errors


def error_event(exc: BaseException, event_id: str | None = None) -> Json:
    """The `error` event for an exception: the one place where exceptions become events.

    A client's mistake (ProtocolError) names its parameter and the event that caused it
    (its own ``event_id``, else ``event_id``); any other VoxwireError is the server's, with
    its code; anything else is a bug, whose detail is for the log, not the client."""
    kind, param = "server_error", None
    if isinstance(exc, ProtocolError):
        kind, param, event_id = "invalid_request_error", exc.param, exc.event_id or event_id
    if isinstance(exc, VoxwireError):
        code, message = exc.code, str(exc)
    else:
        code, message = "server_error", f"internal error ({type(exc).__name__})"
    return {"type": "error", "error": {"type": kind, "code": code, "message": message,
                                       "param": param, "event_id": event_id}}


# ---------------------------------------------------------------- session and input audio


def session_created(session: Json) -> Json:
    return {"type": "session.created", "session": session}


def session_updated(session: Json) -> Json:
    return {"type": "session.updated", "session": session}


def input_audio_buffer_speech_started(audio_start_ms: int, item_id: str) -> Json:
    return {"type": "input_audio_buffer.speech_started", "audio_start_ms": audio_start_ms,
            "item_id": item_id}


def input_audio_buffer_speech_stopped(audio_end_ms: int, item_id: str) -> Json:
    return {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms,
            "item_id": item_id}


def input_audio_buffer_timeout_triggered(audio_start_ms: int, audio_end_ms: int,
                                         item_id: str) -> Json:
    return {"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": audio_start_ms,
            "audio_end_ms": audio_end_ms, "item_id": item_id}


def input_audio_buffer_committed(previous_item_id: str | None, item_id: str) -> Json:
    return {"type": "input_audio_buffer.committed", "previous_item_id": previous_item_id,
            "item_id": item_id}


def input_audio_buffer_cleared() -> Json:
    return {"type": "input_audio_buffer.cleared"}


def input_audio_transcription_delta(item_id: str, delta: str) -> Json:
    return {"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
            "content_index": 0, "delta": delta}


def input_audio_transcription_completed(item_id: str, transcript: str, seconds: float) -> Json:
    return {"type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id, "content_index": 0, "transcript": transcript,
            "usage": {"type": "duration", "seconds": round(seconds, 3)}}


def input_audio_transcription_failed(item_id: str, message: str,
                                     code: str = "asr_failed") -> Json:
    return {"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id,
            "content_index": 0,
            "error": {"type": "transcription_error", "code": code, "message": message}}


# ---------------------------------------------------------------- conversation


def conversation_item_added(previous_item_id: str | None, item: Json) -> Json:
    return {"type": "conversation.item.added", "previous_item_id": previous_item_id,
            "item": item}


def conversation_item_done(item: Json, previous_item_id: str | None = None) -> Json:
    return {"type": "conversation.item.done", "previous_item_id": previous_item_id,
            "item": item}


def conversation_item_retrieved(item: Json) -> Json:
    return {"type": "conversation.item.retrieved", "item": item}


def conversation_item_truncated(item_id: str, content_index: int, audio_end_ms: int) -> Json:
    return {"type": "conversation.item.truncated", "item_id": item_id,
            "content_index": content_index, "audio_end_ms": audio_end_ms}


def conversation_item_deleted(item_id: str) -> Json:
    return {"type": "conversation.item.deleted", "item_id": item_id}


# ---------------------------------------------------------------- responses


def response_created(response: Json) -> Json:
    return {"type": "response.created", "response": response}


def output_audio_buffer_started(response_id: str) -> Json:
    """The answer's first audio went out on the track (WebRTC, where the server plays)."""
    return {"type": "output_audio_buffer.started", "response_id": response_id}


def output_audio_buffer_stopped(response_id: str) -> Json:
    """The answer's audio has all been played, and no more is coming (WebRTC)."""
    return {"type": "output_audio_buffer.stopped", "response_id": response_id}


def output_audio_buffer_cleared(response_id: str) -> Json:
    """What was left of the answer's audio was dropped: barge-in, or the client's
    `output_audio_buffer.clear` (WebRTC)."""
    return {"type": "output_audio_buffer.cleared", "response_id": response_id}


def response_done(response: Json) -> Json:
    return {"type": "response.done", "response": response}


def response_output_item_added(response_id: str, output_index: int, item: Json) -> Json:
    return {"type": "response.output_item.added", "response_id": response_id,
            "output_index": output_index, "item": item}


def response_output_item_done(response_id: str, output_index: int, item: Json) -> Json:
    return {"type": "response.output_item.done", "response_id": response_id,
            "output_index": output_index, "item": item}


def response_content_part_added(ids: ContentIds, part: Json) -> Json:
    return {"type": "response.content_part.added", **ids, "part": part}


def response_content_part_done(ids: ContentIds, part: Json) -> Json:
    return {"type": "response.content_part.done", **ids, "part": part}


def response_output_text_delta(ids: ContentIds, delta: str) -> Json:
    return {"type": "response.output_text.delta", **ids, "delta": delta}


def response_output_text_done(ids: ContentIds, text: str) -> Json:
    return {"type": "response.output_text.done", **ids, "text": text}


def response_output_audio_delta(ids: ContentIds, delta: str) -> Json:
    return {"type": "response.output_audio.delta", **ids, "delta": delta}


def response_output_audio_done(ids: ContentIds) -> Json:
    return {"type": "response.output_audio.done", **ids}


def response_output_audio_transcript_delta(ids: ContentIds, delta: str) -> Json:
    return {"type": "response.output_audio_transcript.delta", **ids, "delta": delta}


def response_output_audio_transcript_done(ids: ContentIds, transcript: str) -> Json:
    return {"type": "response.output_audio_transcript.done", **ids, "transcript": transcript}


def response_function_call_arguments_delta(ids: ContentIds, call_id: str, delta: str) -> Json:
    return {"type": "response.function_call_arguments.delta", **ids, "call_id": call_id,
            "delta": delta}


def response_function_call_arguments_done(ids: ContentIds, call_id: str, name: str,
                                          arguments: str) -> Json:
    return {"type": "response.function_call_arguments.done", **ids, "call_id": call_id,
            "name": name, "arguments": arguments}


# ---------------------------------------------------------------- extensions


def turn_metrics(record: Json) -> Json:
    """Extension `voxwire.turn.metrics`: a turn's stage timings, for sessions that asked."""
    return {"type": "voxwire.turn.metrics", **record}
