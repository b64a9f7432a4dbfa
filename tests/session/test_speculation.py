"""Speculative answers: computed during the end-of-turn wait, released only for a real turn end.

The server starts ASR, the LLM and the first clause's TTS at the first silence. These tests
use long end-of-turn waits so that the speculative work surely starts inside the pause,
whatever the machine's load, and check what reached the client and the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
import pytest_asyncio

from client.realtime import silence
from server.edge.app import App
from server.runtime.engines import Engines
from server.stages import ChatMessage, ChatRequest, Responder, ResponderEvent
from tests.conftest import ANSWERED, TEST_SETTINGS, words
from tests.e2e.test_e2e import RATE, Speak, audio_of, ga, spoken_turn, types


class RecordingResponder:
    """The real embedded model, recording every prompt and whether its stream was closed."""

    def __init__(self, inner: Responder) -> None:
        self.inner, self.name = inner, inner.name
        self.can_see, self.can_use_tools = inner.can_see, inner.can_use_tools
        self.prompts: list[list[ChatMessage]] = []
        self.prepared: list[str] = []  # the words so far that each `prepare` was given
        self.closed = 0

    async def prepare(self, request: ChatRequest) -> int:
        self.prepared.append(request.messages[-1].content)
        return await self.inner.prepare(request)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        self.prompts.append(list(request.messages))
        try:
            async for event in self.inner.stream(request):
                yield event
        finally:
            self.closed += 1


@pytest_asyncio.fixture
async def recorded(engines: Engines) -> AsyncIterator[tuple[str, RecordingResponder]]:
    llm = RecordingResponder(engines.responder)
    app = App(TEST_SETTINGS, engines=dataclasses.replace(engines, responder=llm))
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}", llm


def user_texts(prompt: list[ChatMessage]) -> list[list[str]]:
    return [words(m.content) for m in prompt if m.role == "user"]


async def slow_turns(conn: Any, silence_ms: int) -> None:
    await conn.session.update(session={
        "type": "realtime", "temperature": 0.0,
        "audio": {"input": {"turn_detection": {"type": "server_vad",
                                               "silence_duration_ms": silence_ms}}}})


async def test_an_answer_prepared_in_the_pause_is_dropped_when_speech_resumes(
        recorded: tuple[str, RecordingResponder], speak: Speak) -> None:
    url, llm = recorded
    first, second = "Tell me about the moon", "and the stars tonight."
    speech = np.concatenate([speak(first, rate=RATE), silence(1500, RATE),
                             speak(second, rate=RATE)])
    async with ga(url) as conn:
        await slow_turns(conn, 2500)
        events = await spoken_turn(conn, np.concatenate([speech, silence(1500, RATE)]))
    names = types(events)
    # The model was asked about the first half during the pause...
    assert [words(first)] in [user_texts(p) for p in llm.prompts], llm.prompts
    assert llm.closed >= 1  # ...and that answer was stopped
    # ...but the client saw one turn, one response, about the whole question.
    assert names.count("input_audio_buffer.committed") == 1
    assert names.count("response.created") == 1
    stopped = names.index("input_audio_buffer.speech_stopped")
    assert all(n in ("input_audio_buffer.speech_started", "session.created", "session.updated",
                     "conversation.item.input_audio_transcription.delta")
               for n in names[:stopped]), names[:stopped]
    final = llm.prompts[-1]
    assert user_texts(final) == [words(first + " " + second)]  # no trace of the dropped one
    done = next(e for e in events if e.type == "response.done")
    assert done.response.status in ANSWERED
    assert len(audio_of(events)) > 0
    compute = events[-1].model_dump()["compute_ms"]
    assert compute["speculative_discarded"] >= 1


async def test_a_confirmed_turn_releases_the_prepared_answer(
        recorded: tuple[str, RecordingResponder], speak: Speak) -> None:
    url, llm = recorded
    question = "What is the capital of France?"
    async with ga(url) as conn:
        await slow_turns(conn, 1800)
        events = await spoken_turn(conn, np.concatenate([speak(question, rate=RATE),
                                                         silence(1500, RATE)]))
    names = types(events)
    metrics = events[-1].model_dump()
    assert metrics["compute_ms"].get("speculative") == 1.0, metrics  # the prepared one was used
    assert len(llm.prompts) == 1  # and only one answer was computed
    assert user_texts(llm.prompts[0]) == [words(question)]
    # The protocol order is the usual one: the user's item first, then the response.
    order = ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "conversation.item.input_audio_transcription.completed", "response.created",
             "conversation.item.added", "response.output_audio_transcript.delta",
             "response.output_audio.delta", "response.done", "voxwire.turn.metrics"]
    at = 0
    for name in order:  # each one after the one before
        assert name in names[at:], (name, names)
        at = names.index(name, at)
    done = next(e for e in events if e.type == "response.done")
    assert done.response.status in ANSWERED
    assert done.response.output[0].content[0].transcript
    stages = metrics["stages_ms"]
    # The answer's first audio was ready before the turn was confirmed: it waited (held)
    # and went out right after the end-of-turn wait.
    assert stages["held"] > 0, stages
    assert stages["voice_to_voice"] >= stages["endpoint"]
    assert metrics["overhead_ms"] is not None and metrics["overhead_ms"] >= 0

