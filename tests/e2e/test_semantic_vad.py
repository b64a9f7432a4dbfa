"""semantic_vad end to end: the `openai` SDK streams spoken turns to a real server, whose turn
model decides where each turn ends."""

from __future__ import annotations

from typing import Any

import numpy as np
from openai import AsyncOpenAI

from client.realtime import silence
from server.stages.turns import EAGERNESS
from tests.conftest import ANSWERED, words
from tests.e2e.test_e2e import RATE, Speak, ga, spoken_turn, types


def semantic(eagerness: str) -> dict[str, Any]:
    return {"type": "semantic_vad", "eagerness": eagerness}


async def test_a_finished_question_ends_the_turn_by_the_model(server_url: str,
                                                              speak: Speak) -> None:
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0.0, "audio": {
            "input": {"turn_detection": semantic("high")}}})
        events = await spoken_turn(conn, speak("What is the capital of France?", rate=RATE))
    updated = next(e for e in events if e.type == "session.updated")
    shown = updated.session.audio.input.turn_detection
    assert (shown.type, shown.eagerness) == ("semantic_vad", "high")
    done = next(e for e in events if e.type == "response.done")
    assert done.response.status in ANSWERED
    compute = events[-1].model_dump()["compute_ms"]
    # The model ended the turn (a turn ended by the longest wait has no such figure).
    assert compute["turn_complete"] >= EAGERNESS["high"].threshold, compute


async def test_a_hesitation_longer_than_the_silence_setting_does_not_end_the_turn(
        server_url: str, speak: Speak) -> None:
    # Over the beta dialect: the session shape differs, the turn-taking does not.
    client = AsyncOpenAI(api_key="unused", base_url=f"{server_url}/v1",
                         websocket_base_url=f"{server_url.replace('http', 'ws')}/v1")
    first, second = "I would like to, um,", "book a table for two tonight."
    # Then silence past medium's longest wait (4 s): a turn the model is unsure of ends there.
    speech = np.concatenate([speak(first, rate=RATE), silence(900, RATE),
                             speak(second, rate=RATE), silence(3000, RATE)])
    async with client.beta.realtime.connect(model="voxwire",
                                            extra_query={"voxwire_metrics": "1"}) as conn:
        await conn.session.update(session={"turn_detection": semantic("medium")})
        events = await spoken_turn(conn, speech)
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.turn_detection.type == "semantic_vad"
    names = types(events)
    # 900 ms of silence after "um": server_vad's 500 ms would have answered half a sentence.
    assert names.count("input_audio_buffer.committed") == 1, names
    assert names.count("response.created") == 1
    final = next(e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed")
    assert {"like", "table", "two"} <= set(words(final.transcript)), final.transcript
