"""The conversation: Realtime items, their order, and the history a language model sees. Pure."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from server.errors import ProtocolError
from server.protocol import Json, new_id
from server.stages import ChatMessage, ImageData, ToolCall

_USER_PARTS = {"input_text", "input_audio", "input_image"}
_ASSISTANT_PARTS = {"output_text", "output_audio", "text", "audio"}


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
        self.images: dict[str, tuple[ImageData, ...]] = {}  # item id -> checked images

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
        self.images.pop(item_id, None)

    def truncate(self, item_id: str, audio_end_ms: int, event_id: str | None = None) -> None:
        item = self.get(item_id, event_id)
        if item.get("role") != "assistant":
            raise ProtocolError("only assistant audio items can be truncated",
                                code="invalid_value", param="item_id", event_id=event_id)
        heard = self.spoken.get(item_id, Spoken()).text_until(audio_end_ms)
        for part in item["content"]:
            if part.get("type") in ("output_audio", "audio"):
                part["transcript"] = heard

    def history(self, instructions: str, max_turns: int,
                pending: ChatMessage | None = None) -> list[ChatMessage]:
        """System prompt plus the last ``max_turns`` user turns with what followed them,
        and ``pending`` last: a user message not yet in the conversation (a speculative
        answer prepares for a turn that has not ended yet).

        Only the latest user message that carries images keeps them: older frames are
        stale, and every image costs the backend time and tokens.
        """
        msgs: list[ChatMessage] = []
        tail = [pending] if pending is not None else []
        for msg in [*(self._message(item) for item in self.items), *tail]:
            if msg is None:
                continue
            if msg.tool_calls and msgs and msgs[-1].role == "assistant":
                last = msgs.pop()  # one assistant turn: its words, then its tool calls
                msg = ChatMessage("assistant", last.content, tool_calls=(
                    *last.tool_calls, *msg.tool_calls))
            msgs.append(msg)
        user_idx = [i for i, m in enumerate(msgs) if m.role == "user"]
        if len(user_idx) > max_turns:
            msgs = msgs[user_idx[-max_turns]:]
        seen_image = False
        for i in range(len(msgs) - 1, -1, -1):
            if msgs[i].images:
                if seen_image:
                    msgs[i] = ChatMessage(msgs[i].role, msgs[i].content or "(an earlier image)")
                seen_image = True
        return [ChatMessage("system", instructions), *msgs] if instructions else msgs

    def _message(self, item: Json) -> ChatMessage | None:
        kind = item.get("type")
        if kind == "function_call":
            return ChatMessage("assistant", "", tool_calls=(ToolCall(
                item.get("call_id", ""), item.get("name", ""), item.get("arguments", "")),))
        if kind == "function_call_output":
            return ChatMessage("tool", str(item.get("output", "")),
                               tool_call_id=item.get("call_id"))
        text = item_text(item)
        images = self.images.get(item["id"], ())
        if not text and not images:
            return None
        return ChatMessage(item.get("role", "user"), text, images=images)


def item_text(item: Json) -> str:
    out: list[str] = []
    for part in item.get("content", []):
        text = part.get("text") or part.get("transcript")
        if isinstance(text, str) and text:
            out.append(text)
    return " ".join(out).strip()


def _require(ok: bool, message: str, param: str, event_id: str | None) -> None:
    if not ok:
        raise ProtocolError(message, code="invalid_value", param=param, event_id=event_id)


def client_item(raw: Json, event_id: str | None) -> Json:
    """Validate a `conversation.item.create` item and normalise it to GA shape."""
    item: dict[str, Any] = copy.deepcopy(raw)
    kind = item.get("type", "message")
    item.setdefault("id", new_id("item"))
    item.update(object="realtime.item", status="completed", type=kind)
    if kind == "function_call_output":
        _require(isinstance(item.get("call_id"), str), "item.call_id must be a string",
                 "item.call_id", event_id)
        _require(isinstance(item.get("output"), str), "item.output must be a string",
                 "item.output", event_id)
        return item
    if kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            _require(isinstance(item.get(key), str), f"item.{key} must be a string",
                     f"item.{key}", event_id)
        return item
    if kind != "message":
        raise ProtocolError(f"item type {kind!r} is not supported", code="unsupported_item_type",
                            param="item.type", event_id=event_id)
    role = item.get("role")
    _require(role in ("user", "assistant", "system"), "item.role must be user, assistant or "
             "system", "item.role", event_id)
    content = item.get("content")
    _require(isinstance(content, list) and bool(content), "item.content must be a non-empty list",
             "item.content", event_id)
    allowed = _ASSISTANT_PARTS if role == "assistant" else _USER_PARTS
    for part in content if isinstance(content, list) else []:
        _require(isinstance(part, dict) and part.get("type") in allowed,
                 f"content parts of a {role} item must be one of {sorted(allowed)}",
                 "item.content", event_id)
        if part["type"] == "input_audio" and "audio" in part:
            raise ProtocolError("input_audio parts with raw audio are not supported; stream it "
                                "with input_audio_buffer.append", code="unsupported_content",
                                param="item.content", event_id=event_id)
        if part["type"] == "input_image":
            _require(isinstance(part.get("image_url"), str),
                     "input_image parts need an image_url (a data URI)", "item.content",
                     event_id)
    return item
