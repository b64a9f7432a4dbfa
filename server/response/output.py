"""A response's output items and their events, in the order a Realtime client expects:
the assistant message (one content part, audio or text) once there is something to say,
a `function_call` item per tool call, and at the end each part and item done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import realtime as p
from realtime import Json
from realtime import server_events as se
from server.session.conversation import Conversation, Spoken
from server.session.outbox import Emit
from server.stages import ToolCallArguments, ToolCallStart

BYTES_PER_TOKEN = 16  # generous: what an answer's text may take per output token


class OutputItems:
    """One response's output items. ``released`` is awaited before the first item joins the
    conversation (a speculative response waits there for its turn); with
    ``in_conversation`` the items join the session's conversation ``conv``, making room."""

    def __init__(self, response_id: str, *, audio: bool, in_conversation: bool,
                 conv: Conversation, emit: Emit, reserve_bytes: int,
                 released: Callable[[], Awaitable[None]]) -> None:
        self.response_id, self.audio, self.in_conversation = response_id, audio, in_conversation
        self._conv, self._emit, self._reserve, self._released = (conv, emit, reserve_bytes,
                                                                 released)
        self.outputs: list[Json] = []
        self.message: Json | None = None  # the assistant message, once there is something
        self._calls: dict[int, Json] = {}

    def ids(self, item: Json) -> se.ContentIds:
        return {"response_id": self.response_id, "item_id": item["id"],
                "output_index": self.outputs.index(item), "content_index": 0}

    @property
    def tools(self) -> list[str]:
        """The names of the tools called, in order."""
        return [i["name"] for i in self.outputs if i["type"] == "function_call"]

    async def open_message(self) -> se.ContentIds:
        """The assistant message's place, added (with its content part) the first time."""
        if self.message is None:
            part: Json = ({"type": "output_audio", "transcript": ""} if self.audio
                          else {"type": "output_text", "text": ""})
            self.message = se.item(p.new_id("item"), "message", "in_progress",
                                   role="assistant", content=[part])
            await self._add(self.message)
            await self._emit(se.response_content_part_added(self.ids(self.message), dict(part)))
        return self.ids(self.message)

    async def tool_start(self, event: ToolCallStart) -> None:
        item = se.item(p.new_id("item"), "function_call", "in_progress",
                       call_id=event.call_id, name=event.name, arguments="")
        self._calls[event.index] = item
        await self._add(item)

    async def tool_arguments(self, event: ToolCallArguments) -> None:
        item = self._calls.get(event.index)
        if item is None:
            return
        item["arguments"] += event.delta
        await self._emit(se.response_function_call_arguments_delta(
            self.ids(item), item["call_id"], event.delta))

    async def finish(self, status: str, said: str, spoken: Spoken) -> None:
        """Every item done: ``said`` is the message's final text (or transcript), ``spoken``
        what of it was heard, kept with the conversation for a later truncate."""
        await self._released()
        done = "completed" if status == "completed" else "incomplete"
        for item in self.outputs:
            item["status"] = done
            ids = self.ids(item)
            if item["type"] == "message":
                part = item["content"][0]
                if self.audio:
                    part["transcript"] = said
                    await self._emit(se.response_output_audio_done(ids))
                    await self._emit(se.response_output_audio_transcript_done(ids, said))
                else:
                    part["text"] = said
                    await self._emit(se.response_output_text_done(ids, said))
                await self._emit(se.response_content_part_done(ids, part))
                if self.in_conversation:
                    self._conv.spoken[item["id"]] = spoken
            else:
                await self._emit(se.response_function_call_arguments_done(
                    ids, item["call_id"], item["name"], item["arguments"]))
            await self._emit(se.response_output_item_done(self.response_id,
                                                          ids["output_index"], item))
            if self.in_conversation:
                await self._emit(se.conversation_item_done(item))

    async def _add(self, item: Json) -> None:
        await self._released()  # the user's item goes into the conversation first
        self.outputs.append(item)
        if self.in_conversation:
            # The answer is the server's own: it never fails for want of room, the oldest
            # items make way for it. Its text, still to come, is counted in advance.
            conv = self._conv
            for gone in conv.make_room(conv.size_of(item, (), self._reserve)):
                await self._emit(se.conversation_item_deleted(gone))
            prev = conv.add(item, reserve=self._reserve)
            await self._emit(se.conversation_item_added(prev, item))
        await self._emit(se.response_output_item_added(self.response_id,
                                                       len(self.outputs) - 1, item))
