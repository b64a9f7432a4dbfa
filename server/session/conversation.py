"""The conversation: Realtime items, their order, and the history a language model sees. Pure."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from realtime import Json, json_size, new_id
from realtime import server_events as se
from server.errors import LimitError, ProtocolError
from server.stages import ChatMessage, ImageData, ToolCall

MAX_ITEMS = 1000
MAX_BYTES = 16 * 1024 * 1024
MAX_ITEM_BYTES = 32 * 1024
_ITEM_ID = re.compile(r"[\x20-\x7e]{1,64}")
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
    """The items of one session, bounded by count and by (estimated) bytes.

    `add` refuses an item that would cross a bound (a client's item: the client deletes
    some and tries again); `make_room` drops the oldest items instead (the server's own
    items of a spoken turn, which must never fail).
    """

    def __init__(self, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.items: list[Json] = []
        self.spoken: dict[str, Spoken] = {}
        self.images: dict[str, tuple[ImageData, ...]] = {}  # item id -> checked images
        self.max_items, self.max_bytes = max_items, max_bytes
        self.bytes = 0
        self._sizes: dict[str, int] = {}

    @staticmethod
    def size_of(item: Json, images: Sequence[ImageData] = (), reserve: int = 0) -> int:
        """What an item costs: its JSON, its checked images, and ``reserve`` bytes for text
        still to come (a transcript, an answer being written)."""
        return json_size(item) + sum(len(i.data) for i in images) + reserve

    def fits(self, size: int) -> bool:
        return len(self.items) < self.max_items and self.bytes + size <= self.max_bytes

    def check(self, item_id: str, size: int, event_id: str | None = None) -> None:
        """Raise unless an item ``item_id`` of ``size`` bytes may be added now."""
        if item_id in self._sizes:
            raise ProtocolError(f"an item with id {item_id!r} already exists",
                                code="item_id_duplicate", param="item.id", event_id=event_id)
        if not self.fits(size):
            raise LimitError(
                f"the conversation is full ({len(self.items)} items, {self.bytes} bytes; at "
                f"most {self.max_items} items and {self.max_bytes} bytes): delete items with "
                "conversation.item.delete, then add this one again",
                code="conversation_full", event_id=event_id)

    def make_room(self, size: int) -> list[str]:
        """Drop the oldest items until one of ``size`` bytes fits; their ids, oldest first."""
        dropped: list[str] = []
        while self.items and not self.fits(size):
            dropped.append(self.items[0]["id"])
            self.delete(self.items[0]["id"])
        return dropped

    def get(self, item_id: str, event_id: str | None = None) -> Json:
        for item in self.items:
            if item["id"] == item_id:
                return item
        raise ProtocolError(f"no item with id {item_id!r}", code="item_not_found",
                            param="item_id", event_id=event_id)

    def add(self, item: Json, previous_item_id: str | None = None, *,
            images: Sequence[ImageData] = (), reserve: int = 0,
            event_id: str | None = None) -> str | None:
        """Insert an item; return the id of the item before it (None when first).

        Raises ProtocolError if the id is taken, LimitError if a bound would be crossed."""
        item_id = item["id"]
        size = self.size_of(item, images, reserve)
        self.check(item_id, size, event_id)
        index = len(self.items)
        if previous_item_id == "root":
            index = 0
        elif previous_item_id is not None:
            index = self.items.index(self.get(previous_item_id, event_id)) + 1
        self.items.insert(index, item)
        self._sizes[item_id] = size
        self.bytes += size
        if images:
            self.images[item_id] = tuple(images)
        return self.items[index - 1]["id"] if index > 0 else None

    def delete(self, item_id: str, event_id: str | None = None) -> None:
        self.items.remove(self.get(item_id, event_id))
        self.bytes -= self._sizes.pop(item_id, 0)
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


def client_item(raw: Json, event_id: str | None, max_bytes: int = MAX_ITEM_BYTES) -> Json:
    """Validate a `conversation.item.create` item and normalise it to GA shape.

    An item's own size (its text and fields; images have limits of their own) is at most
    ``max_bytes``."""
    size = json_size(raw, skip=frozenset({"image_url"}))
    if size > max_bytes:
        raise LimitError(f"the item is too large: about {size} bytes of text and fields, at "
                         f"most {max_bytes}", code="item_too_large", event_id=event_id)
    item: dict[str, Any] = copy.deepcopy(raw)
    kind = item.get("type", "message")
    if item.get("id") is None:
        item["id"] = new_id("item")
    _require(isinstance(item["id"], str) and _ITEM_ID.fullmatch(item["id"]) is not None,
             "item.id must be a string of 1 to 64 printable ASCII characters", "item.id",
             event_id)
    item.update(se.item(item["id"], kind))
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
