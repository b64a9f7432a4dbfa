"""Remote language models: OpenAI, any OpenAI-compatible server, and Anthropic.

Both stream over HTTP with their official async SDKs, on the event loop (they are I/O
bound). Closing the generator closes the HTTP stream. The SDKs retry 408/409/429/5xx and
connection errors with exponential backoff, honouring `retry-after`, as each provider
advises; `retries` sets how many times. Errors become `BackendError` with a code a client
can act on, and API keys never appear in a message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable
from dataclasses import replace
from typing import Any, cast

import anthropic
import httpx2
import openai
from anthropic import AsyncStream
from anthropic.types import (
    InputJSONDelta,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStreamEvent,
    ToolUseBlock,
)
from anthropic.types import TextDelta as AnthropicTextDelta

from server.errors import BackendError
from server.runtime import tracing
from server.runtime.config import Settings
from server.runtime.lanes import Lane
from server.stages import (
    ChatMessage,
    ChatRequest,
    Finished,
    LanguageModel,
    ResponderEvent,
    TextDelta,
    ToolCallArguments,
    ToolCallStart,
    ToolSpec,
)

Json = dict[str, Any]


def _status_code(status: int) -> str:
    if status in (401, 403):
        return "llm_auth_failed"
    if status == 404:
        return "llm_model_not_found"
    if status == 429:
        return "llm_rate_limited"
    if status >= 500:
        return "llm_unavailable"
    return "llm_bad_request"


def _redact(text: str, secret: str) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[key]")
    return text


def backend_error(provider: str, exc: Exception, secret: str) -> BackendError:
    """One clear, key-free error for everything an SDK can raise."""
    status = getattr(exc, "status_code", None)
    # A read that times out mid-stream reaches us as the HTTP client's own error.
    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError
                  | httpx2.TimeoutException):
        return BackendError(f"{provider} did not answer in time", code="llm_timeout")
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError
                  | httpx2.TransportError):
        return BackendError(f"cannot reach {provider}: {_redact(str(exc), secret)}",
                            code="llm_unreachable")
    if isinstance(status, int):
        detail = _redact(_provider_message(exc), secret)
        return BackendError(f"{provider} answered HTTP {status}: {detail}",
                            code=_status_code(status))
    return BackendError(f"{provider} failed: {_redact(str(exc), secret)}")


def _provider_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return str(getattr(exc, "message", exc))


# ---------------------------------------------------------------------- OpenAI


def openai_messages(messages: Iterable[ChatMessage], vision: bool) -> list[Any]:
    out: list[Json] = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        elif m.tool_calls:
            out.append({"role": "assistant", "content": m.content or None, "tool_calls": [
                {"id": c.call_id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]})
        elif m.images and vision:
            parts: list[Json] = [{"type": "text", "text": m.content}] if m.content else []
            parts += [{"type": "image_url", "image_url": {"url": i.data_uri()}} for i in m.images]
            out.append({"role": m.role, "content": parts})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def openai_tools(tools: Iterable[ToolSpec]) -> list[Json]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]


class OpenAIResponder:
    """OpenAI Chat Completions, streaming; also any OpenAI-compatible server by base URL."""

    def __init__(self, *, model: str, api_key: str, base_url: str | None, timeout: float,
                 retries: int, vision: bool, compatible: bool) -> None:
        self.name = model
        self.provider = "the OpenAI-compatible server" if compatible else "OpenAI"
        self.can_see = vision
        self.can_use_tools = True
        self.compatible = compatible
        self._key = api_key
        self.client = openai.AsyncOpenAI(api_key=api_key or "none", base_url=base_url,
                                         timeout=timeout, max_retries=retries)

    async def prepare(self, request: ChatRequest) -> int:
        return 0  # the provider caches prompt prefixes itself

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        args: Json = {"temperature": request.temperature}
        # OpenAI's own reasoning models refuse max_tokens; compatible servers know only it.
        args["max_tokens" if self.compatible else "max_completion_tokens"] = request.max_tokens
        if request.tools:
            args["tools"] = openai_tools(request.tools)
            args["tool_choice"] = ({"type": "function", "function": {"name": request.tool_name}}
                                   if request.tool_choice == "function"
                                   else request.tool_choice)
        args["stream_options"] = {"include_usage": True}  # a last chunk with token counts
        with tracing.llm_call("openai-compatible" if self.compatible else "openai", self.name,
                              str(self.client.base_url), request.max_tokens) as traced:
            try:
                stream = await self.client.chat.completions.create(
                    model=self.name, messages=openai_messages(request.messages, self.can_see),
                    stream=True, extra_headers=traced.headers, **args)
            except openai.OpenAIError as exc:
                raise backend_error(self.provider, exc, self._key) from exc
            calls: dict[int, str] = {}
            finished = Finished()
            try:
                async for chunk in stream:
                    if chunk.usage is not None:
                        details = chunk.usage.prompt_tokens_details
                        finished = replace(finished, input_tokens=chunk.usage.prompt_tokens,
                                           output_tokens=chunk.usage.completion_tokens,
                                           cached_tokens=(details.cached_tokens
                                                          if details else None))
                    for choice in chunk.choices:
                        if choice.finish_reason:
                            finished = replace(finished, reason=choice.finish_reason)
                        delta = choice.delta
                        if delta.content:
                            yield TextDelta(delta.content)
                        for call in delta.tool_calls or ():
                            if call.index not in calls:
                                name = call.function.name if call.function else ""
                                calls[call.index] = call.id or f"call_{call.index}"
                                yield ToolCallStart(call.index, calls[call.index], name or "")
                            if call.function and call.function.arguments:
                                yield ToolCallArguments(call.index, call.function.arguments)
            except (openai.OpenAIError, httpx2.HTTPError) as exc:
                raise backend_error(self.provider, exc, self._key) from exc
            finally:
                await stream.close()
            traced.finished(finished.reason, finished.input_tokens, finished.output_tokens)
        yield finished


# ---------------------------------------------------------------------- Anthropic


def anthropic_messages(messages: Iterable[ChatMessage], vision: bool) -> tuple[str, list[Json]]:
    """System text and alternating user/assistant messages with content blocks."""
    system: list[str] = []
    out: list[Json] = []

    def add(role: str, blocks: list[Json]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        if m.role == "system":
            system.append(m.content)
        elif m.role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": m.tool_call_id,
                          "content": m.content}])
        else:
            blocks: list[Json] = []
            if m.images and vision:
                blocks += [{"type": "image", "source": {
                    "type": "base64", "media_type": i.media_type, "data": i.base64()}}
                    for i in m.images]
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for c in m.tool_calls:
                blocks.append({"type": "tool_use", "id": c.call_id, "name": c.name,
                               "input": _json_object(c.arguments)})
            if blocks:
                add("assistant" if m.role == "assistant" else "user", blocks)
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": "(start)"}]})
    return "\n\n".join(system), out


def _json_object(text: str) -> Json:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


def anthropic_tool_choice(request: ChatRequest) -> Json:
    """The Messages API's form: auto, any (a call is required), tool (by name), none."""
    if request.tool_choice == "function":
        return {"type": "tool", "name": request.tool_name}
    return {"type": {"required": "any"}.get(request.tool_choice, request.tool_choice)}


class AnthropicResponder:
    """Anthropic Messages, streaming."""

    def __init__(self, *, model: str, api_key: str, base_url: str | None, timeout: float,
                 retries: int, vision: bool) -> None:
        self.name = model
        self.can_see = vision
        self.can_use_tools = True
        self._key = api_key
        self.client = anthropic.AsyncAnthropic(api_key=api_key or "none", base_url=base_url,
                                               timeout=timeout, max_retries=retries)

    async def prepare(self, request: ChatRequest) -> int:
        return 0  # the provider caches prompt prefixes itself

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        system, messages = anthropic_messages(request.messages, self.can_see)
        # The Messages API of this SDK generation takes no temperature: it is not sent.
        args: Json = {}
        if system:
            args["system"] = system
        if request.tools:
            args["tools"] = [{"name": t.name, "description": t.description,
                              "input_schema": t.parameters} for t in request.tools]
            args["tool_choice"] = anthropic_tool_choice(request)
        with tracing.llm_call("anthropic", self.name, str(self.client.base_url),
                              request.max_tokens) as traced:
            try:
                stream: AsyncStream[RawMessageStreamEvent] = await self.client.messages.create(
                    model=self.name, max_tokens=request.max_tokens,
                    messages=cast(Any, messages), stream=True, extra_headers=traced.headers,
                    **args)
            except anthropic.AnthropicError as exc:
                raise backend_error("Anthropic", exc, self._key) from exc
            finished = Finished()
            try:
                async for event in stream:
                    if isinstance(event, RawMessageStartEvent):
                        start = event.message.usage
                        cached = start.cache_read_input_tokens or 0
                        # Anthropic counts cached and newly cached input apart from the rest.
                        finished = replace(finished, cached_tokens=cached, input_tokens=(
                            start.input_tokens + cached
                            + (start.cache_creation_input_tokens or 0)))
                    elif isinstance(event, RawMessageDeltaEvent):
                        finished = replace(finished, output_tokens=event.usage.output_tokens,
                                           reason=_ANTHROPIC_REASONS.get(
                                               event.delta.stop_reason or "", "stop"))
                    elif isinstance(event, RawContentBlockStartEvent):
                        if isinstance(event.content_block, ToolUseBlock):
                            block = event.content_block
                            yield ToolCallStart(event.index, block.id, block.name)
                    elif isinstance(event, RawContentBlockDeltaEvent):
                        if isinstance(event.delta, AnthropicTextDelta):
                            yield TextDelta(event.delta.text)
                        elif isinstance(event.delta, InputJSONDelta):
                            yield ToolCallArguments(event.index, event.delta.partial_json)
            except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
                raise backend_error("Anthropic", exc, self._key) from exc
            finally:
                await stream.close()
            traced.finished(finished.reason, finished.input_tokens, finished.output_tokens)
        yield finished


# Anthropic's stop reasons, as Chat Completions' finish reasons.
_ANTHROPIC_REASONS = {"max_tokens": "length", "tool_use": "tool_calls"}


def _common(settings: Settings) -> dict[str, Any]:
    return {"model": settings.llm_model, "api_key": settings.llm_api_key,
            "base_url": settings.llm_base_url or None, "timeout": settings.llm_timeout_s,
            "retries": settings.llm_retries, "vision": settings.can_see}


def load_openai(settings: Settings, lane: Lane, model: LanguageModel | None) -> OpenAIResponder:
    return OpenAIResponder(**_common(settings), compatible=False)


def load_compatible(settings: Settings, lane: Lane,
                    model: LanguageModel | None) -> OpenAIResponder:
    return OpenAIResponder(**_common(settings), compatible=True)


def load_anthropic(settings: Settings, lane: Lane,
                   model: LanguageModel | None) -> AnthropicResponder:
    return AnthropicResponder(**_common(settings))
