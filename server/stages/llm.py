"""The embedded language model: a GGUF through llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from llama_cpp import Llama

from server.errors import BackendError, ConfigError
from server.lanes import Lane
from server.stages import (
    ChatMessage,
    ChatRequest,
    LanguageModel,
    ResponderEvent,
    TextDelta,
)

_PER_MESSAGE = 8  # chat-template tokens around each message


class LlamaModel:
    """Keeps the system prompt and history in llama.cpp's KV cache between turns
    (it reuses the longest common prefix of consecutive prompts), with pinned threads:
    its batch threads default to all cores, which collapses under contention."""

    def __init__(self, path: Path, *, threads: int = 1, context: int = 2048) -> None:
        if not path.is_file():
            raise ConfigError(f"no GGUF model at {path}")
        self.name = path.stem
        self.llm = Llama(model_path=str(path), n_ctx=context, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self.context = context

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def fit(self, messages: Sequence[ChatMessage], max_tokens: int) -> list[ChatMessage]:
        """Drop the oldest turns until the prompt and the answer fit in the context window."""
        kept = list(messages)
        budget = self.context - max_tokens
        cost = [self.count_tokens(m.content) + _PER_MESSAGE for m in kept]
        first = 1 if kept and kept[0].role == "system" else 0
        while sum(cost) > budget and len(kept) > first + 1:
            del kept[first], cost[first]
        if sum(cost) > budget:
            raise BackendError(f"the prompt needs {sum(cost)} tokens; the context window "
                             f"({self.context}) leaves {budget} after the answer's budget",
                               code="llm_context_exceeded")
        return kept

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        stop: threading.Event,
    ) -> Iterator[str]:
        messages = self.fit(messages, max_tokens)
        chunks: Iterator[dict[str, Any]] = self.llm.create_chat_completion(  # type: ignore[assignment]
            messages=[cast(Any, {"role": m.role, "content": m.content}) for m in messages],
            temperature=temperature, max_tokens=max_tokens, stream=True, repeat_penalty=1.1,
        )
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                delta = chunk["choices"][0].get("delta", {}).get("content")
                if delta:
                    yield delta
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            self._free_sampler()

    def _free_sampler(self) -> None:
        """Free the completion's sampler chain now. llama-cpp-python keeps the last one
        and drops it in a reference cycle when the next call makes its own, so each one's
        native memory waited for a full garbage collection: the server grew by about
        300 KiB an answer between those."""
        sampler = getattr(self.llm, "_sampler", None)
        if sampler is not None:
            self.llm._sampler = None
            sampler.close()


def as_text(message: ChatMessage) -> ChatMessage:
    """What a text-only model can read of a message: tool traffic written out as text."""
    parts = [message.content] if message.content else []
    if message.images:
        parts.append("(The user shared an image, which you cannot see.)")
    parts += [f"(I called the tool {c.name} with {c.arguments})" for c in message.tool_calls]
    if message.role == "tool":
        return ChatMessage("user", f"(The tool answered: {message.content})")
    return ChatMessage(message.role, " ".join(parts))


class LocalResponder:
    """The embedded model as a Responder: llama.cpp runs in its own worker lane."""

    can_see = False
    can_use_tools = False

    def __init__(self, model: LanguageModel, lane: Lane) -> None:
        self.model, self.lane, self.name = model, lane, model.name

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        stop = threading.Event()
        messages = [as_text(m) for m in request.messages]
        deltas = self.lane.stream(
            lambda: self.model.stream(messages, temperature=request.temperature,
                                      max_tokens=request.max_tokens, stop=stop), stop)
        try:
            async for delta in deltas:
                yield TextDelta(delta)
        finally:
            stop.set()
            await deltas.aclose()
