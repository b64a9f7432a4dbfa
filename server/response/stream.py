"""The answer's language-model stream: the responder's events for one request, with the
notice (if any) first, a first-token timeout, the clock marks of the first token, and every
failure as a `StageError`. And `usage`: what the backend said the answer cost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from realtime import Json
from server.errors import BackendError, StageError
from server.runtime.clock import Clock
from server.runtime.metrics import TurnClock
from server.stages import ChatRequest, Finished, Responder, ResponderEvent, TextDelta


async def answer_events(responder: Responder, request: ChatRequest, notice: str | None, *,
                        turn: TurnClock, clock: Clock,
                        first_token_timeout_s: float) -> AsyncGenerator[ResponderEvent, None]:
    """The responder's events for ``request``: ``notice`` first, as text; no first token
    within ``first_token_timeout_s`` is a `BackendError` (``llm_timeout``). Marks
    `llm_request` and `llm_first_token` on ``turn``. Closing this generator closes the
    responder's stream (the HTTP stream, or the local model's work)."""
    if notice:
        yield TextDelta(notice + " ")
    turn.mark("llm_request")
    started = clock.monotonic()
    stream = responder.stream(request)
    first = True
    try:
        while True:
            try:
                if first:
                    event = await clock.wait_for(anext(stream), first_token_timeout_s)
                else:
                    event = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise BackendError(f"no first token within {first_token_timeout_s:g} s",
                                   code="llm_timeout") from None
            except (StageError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise StageError("llm", f"{type(exc).__name__}: {exc}") from exc
            if first:
                turn.mark("llm_first_token")
                turn.compute_once("llm_first_token", started)
                first = False
            yield event
    finally:
        await stream.aclose()


def usage(finished: Finished | None, request: ChatRequest) -> Json | None:
    """`response.usage` from the backend's token counts, where it gave them."""
    if finished is None or finished.input_tokens is None or finished.output_tokens is None:
        return None
    cached = finished.cached_tokens or 0
    inputs: Json = {"cached_tokens": cached}
    if not any(m.images for m in request.messages):  # text alone: split it
        inputs |= {"text_tokens": finished.input_tokens, "audio_tokens": 0, "image_tokens": 0,
                   "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0,
                                             "image_tokens": 0}}
    # Speech is synthesized from the model's text: every output token is a text token.
    return {"total_tokens": finished.input_tokens + finished.output_tokens,
            "input_tokens": finished.input_tokens, "output_tokens": finished.output_tokens,
            "input_token_details": inputs,
            "output_token_details": {"text_tokens": finished.output_tokens, "audio_tokens": 0}}
