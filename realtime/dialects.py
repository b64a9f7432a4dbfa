"""The two dialects. The server speaks GA internally; ``encode`` renames for beta clients
at the edge, on the way out."""

from __future__ import annotations

import json

from realtime.base import Dialect, Json, new_id

# GA prefix -> beta prefix: response.output_audio.delta is response.audio.delta,
# response.output_audio_transcript.done is response.audio_transcript.done, and so on.
_BETA_PREFIXES = (("response.output_audio", "response.audio"),
                  ("response.output_text", "response.text"))
# GA name -> beta name; None means the beta protocol has no such event.
_BETA_NAMES: dict[str, str | None] = {
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    # The beta API has no idle timeout: a beta client that sets one gets the turn it
    # commits, not an event its SDK would reject.
    "input_audio_buffer.timeout_triggered": None,
}
_BETA_CONTENT = {"output_audio": "audio", "output_text": "text"}
_GA_CONTENT = {v: k for k, v in _BETA_CONTENT.items()}


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


def beta_name(event: Json) -> str | None:
    """A GA server event's beta name; None if the beta protocol has no such event."""
    kind: str = event["type"]
    for ga, beta in _BETA_PREFIXES:
        if kind.startswith(ga):
            return beta + kind[len(ga):]
    session = event.get("session")
    if (kind.startswith("session.") and isinstance(session, dict)
            and session.get("object") == "realtime.transcription_session"):
        return "transcription_" + kind  # a beta transcription session's own names
    return _BETA_NAMES.get(kind, kind)


def encode(event: Json, dialect: Dialect) -> str | None:
    """Serialize a server event (GA names) for the client's dialect; None if it has none."""
    out = dict(event)
    if dialect == "beta":
        beta = beta_name(event)
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
