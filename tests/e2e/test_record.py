"""--record: each turn's audio (the user's utterance and the answer as sent) in the store."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from client.realtime import silence
from server.edge.app import App
from server.runtime.engines import Engines
from tests.conftest import TEST_SETTINGS, words
from tests.e2e.test_e2e import RATE, Speak, audio_of, ga, spoken_turn
from tests.session.test_speculation import slow_turns


async def test_record_keeps_the_utterance_and_the_answer_as_sent(
        engines: Engines, speak: Speak, tmp_path: Any) -> None:
    """The user's audio and the answer's, stored with the turn (a speculative one here)."""
    import io
    import wave

    from client.realtime import from_pcm16
    from server.runtime.store import SqlStore, open_store

    settings = dataclasses.replace(TEST_SETTINGS, store=f"sqlite:///{tmp_path}/h.db",
                                   record=True)
    app = App(settings, engines=engines)
    question = "What is the capital of France?"
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        async with ga(f"http://{host}:{port}") as conn:
            await slow_turns(conn, 1200)
            events = await spoken_turn(conn, np.concatenate([speak(question, rate=RATE),
                                                             silence(1000, RATE)]))
    store = open_store(settings.store)
    assert isinstance(store, SqlStore)
    try:
        (session,) = store.sessions()
        audio = {role: wav for _, role, wav in store.audio(session["id"])}
        (turn,) = store.turns(session["id"])
    finally:
        store.close()
    assert sorted(audio) == ["assistant", "user"]
    assert sorted(r["role"] for r in turn["recordings"]) == ["assistant", "user"]

    def samples(wav_bytes: bytes) -> Any:
        with wave.open(io.BytesIO(wav_bytes)) as w:
            assert (w.getframerate(), w.getnchannels()) == (16000, 1)
            return from_pcm16(w.readframes(w.getnframes()))

    # The user's recording says the question; the answer's is as long as what was sent.
    assert words(engines.asr.transcribe(samples(audio["user"])).text) == words(question)
    sent_s = len(audio_of(events)) / RATE
    assert abs(len(samples(audio["assistant"])) / 16000 - sent_s) < 0.05


async def test_without_record_no_audio_is_kept(engines: Engines, tmp_path: Any) -> None:
    from server.runtime.store import SqlStore, open_store

    settings = dataclasses.replace(TEST_SETTINGS, store=f"sqlite:///{tmp_path}/h.db")
    app = App(settings, engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        async with ga(f"http://{host}:{port}") as conn:
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Say hello."}]})
            await conn.response.create()
            async for ev in conn:
                if ev.type == "response.done":
                    break
    store = open_store(settings.store)
    assert isinstance(store, SqlStore)
    try:
        (session,) = store.sessions()
        assert len(store.turns(session["id"])) == 1
        assert store.audio(session["id"]) == []
    finally:
        store.close()
