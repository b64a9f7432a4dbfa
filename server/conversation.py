"""The conversation: Realtime items, their order, and the text history the LLM sees. Pure."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from server.errors import ProtocolError
from server.protocol import Json, new_id
from server.stages import ChatMessage

_USER_PARTS = {"input_text", "input_audio", "input_image"}
_ASSISTANT_PARTS = {"output_text", "output_audio", "text", "audio"}
IMAGE_NOTE = "(The user shared an image. You cannot see images; say so if it matters.)"


@dataclass
class Spoken:
    """What of an assistant item's text reached the client as audio, piece by piece."""

    pieces: list[tuple[int, str]] = field(default_factory=list)  # (audio end ms, text)

    def text_until(self, ms: int) -> str:
        kept: list[str] = []
        start = 0
        for end, text in self.pieces:
            if end <= ms:
                kept.append(text)
            else:
                words = text.split()
                share = max(0.0, (ms - start) / max(end - start, 1))
                kept.append(" ".join(words[: int(len(words) * share)]))
                break
            start = end
        return " ".join(k for k in kept if k)


class Conversation:
    def __init__(self) -> None:
        self.items: list[Json] = []
        self.spoken: dict[str, Spoken] = {}

    def get(self, item_id: str, event_id: str | None = None) -> Json:
        for item in self.items:
            if item["id"] == item_id:
                return item
        raise ProtocolError(f"no item with id {item_id!r}", code="item_not_found",
                            param="item_id", event_id=event_id)

    def add(self, item: Json, previous_item_id: str | None = None) -> str | None:
        """Insert an item; return the id of the item before it (None when first)."""
        index = len(self.items)
        if previous_item_id == "root":
            index = 0
        elif previous_item_id is not None:
            index = self.items.index(self.get(previous_item_id)) + 1
        self.items.insert(index, item)
        return self.items[index - 1]["id"] if index > 0 else None

    def delete(self, item_id: str, event_id: str | None = None) -> None:
        self.items.remove(self.get(item_id, event_id))
        self.spoken.pop(item_id, None)

    def truncate(self, item_id: str, audio_end_ms: int, event_id: str | None = None) -> None:
        item = self.get(item_id, event_id)
        if item.get("role") != "assistant":
            raise ProtocolError("only assistant audio items can be truncated",
                                code="invalid_value", param="item_id", event_id=event_id)
        spoken = self.spoken.get(item_id, Spoken())
        heard = spoken.text_until(audio_end_ms)
        for part in item["content"]:
            if part.get("type") in ("output_audio", "audio"):
                part["transcript"] = heard

    def history(self, instructions: str, max_turns: int) -> list[ChatMessage]:
        """System prompt plus the last ``max_turns`` user turns with what followed them."""
        msgs: list[ChatMessage] = []
        for item in self.items:
            if item.get("type") != "message":
                continue
            text = item_text(item)
            if text:
                msgs.append(ChatMessage(item.get("role", "user"), text))
        user_idx = [i for i, m in enumerate(msgs) if m.role == "user"]
        if len(user_idx) > max_turns:
            msgs = msgs[user_idx[-max_turns]:]
        return [ChatMessage("system", instructions), *msgs] if instructions else msgs


def item_text(item: Json) -> str:
    out: list[str] = []
    for part in item.get("content", []):
        kind = part.get("type")
        if kind == "input_image":
            out.append(IMAGE_NOTE)
        text = part.get("text") or part.get("transcript")
        if isinstance(text, str) and text:
            out.append(text)
    return " ".join(out).strip()


def client_item(raw: Json, event_id: str | None) -> Json:
    """Validate a `conversation.item.create` item and normalise it to GA shape."""
    item: dict[str, Any] = copy.deepcopy(raw)
    if item.get("type", "message") != "message":
        raise ProtocolError(f"item type {item.get('type')!r} is not supported yet",
                            code="unsupported_item_type", param="item.type", event_id=event_id)
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        raise ProtocolError("item.role must be user, assistant or system", code="invalid_value",
                            param="item.role", event_id=event_id)
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise ProtocolError("item.content must be a non-empty list", code="invalid_value",
                            param="item.content", event_id=event_id)
    allowed = _ASSISTANT_PARTS if role == "assistant" else _USER_PARTS
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in allowed:
            raise ProtocolError(f"content parts of a {role} item must be one of {sorted(allowed)}",
                                code="invalid_value", param="item.content", event_id=event_id)
        if part["type"] == "input_audio" and "audio" in part:
            raise ProtocolError("input_audio parts with raw audio are not supported; stream it "
                                "with input_audio_buffer.append", code="unsupported_content",
                                param="item.content", event_id=event_id)
    item["type"] = "message"
    item.setdefault("id", new_id("item"))
    item["object"] = "realtime.item"
    item["status"] = "completed"
    return item
