"""End to end over a real socket, with the official `openai` SDK as the client."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import urllib.request
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from client.realtime import Float32, from_pcm16, resample, send_audio
from server.edge.app import App
from server.runtime.engines import Engines
from server.stages import ChatMessage, ChatRequest, Responder, ResponderEvent
from tests.conftest import ANSWERED, TEST_SETTINGS, padded, words

Speak = Callable[..., Float32]
RATE = 24000


async def events_until(conn: Any, stop: Callable[[Any], bool], seconds: float = 60
                       ) -> list[Any]:
    got: list[Any] = []

    async def read() -> None:
        async for ev in conn:
            got.append(ev)
            if stop(ev):
                return

    await asyncio.wait_for(read(), seconds)
    return got


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def is_metrics(ev: Any) -> bool:
    return bool(ev.type == "voxwire.turn.metrics")


METRICS = {"voxwire_metrics": "1"}  # the per-turn metrics extension, asked for by URL


def ga(url: str) -> Any:
    return AsyncOpenAI(api_key="unused", base_url=f"{url}/v1").realtime.connect(
        model="voxwire", extra_query=METRICS)


async def spoken_turn(conn: Any, speech: Float32) -> list[Any]:
    send = asyncio.create_task(send_audio(conn, padded(speech, RATE, 300, 1200), RATE))
    events = await events_until(conn, is_metrics)
    await send
    return events


def audio_of(events: list[Any], name: str = "response.output_audio.delta") -> Float32:
    chunks = [from_pcm16(base64.b64decode(e.delta)) for e in events if e.type == name]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


async def test_a_spoken_question_gets_a_spoken_answer(
        server_url: str, speak: Speak, engines: Engines) -> None:
    question = "Could you tell me what the weather is like in London today?"
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0.0})
        events = await spoken_turn(conn, speak(question, rate=RATE))
    names = types(events)
    order = ["session.created", "input_audio_buffer.speech_started",
             "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "conversation.item.input_audio_transcription.completed", "response.created",
             "response.output_audio_transcript.delta", "response.output_audio.delta",
             "response.output_audio.done", "response.done", "voxwire.turn.metrics"]
    positions = [names.index(n) for n in order]
    assert positions == sorted(positions), names
    assert "conversation.item.input_audio_transcription.delta" in names  # partials while speaking
    final = next(e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed")
    assert words(final.transcript) == words(question)
    done = next(e for e in events if e.type == "response.done")
    assert done.response.status in ANSWERED
    said = done.response.output[0].content[0].transcript
    assert said
    # The answer's audio says the answer's transcript: Whisper hears the same words.
    answer = audio_of(events)
    assert len(answer) > RATE // 2
    heard = engines.asr.transcribe(resample(answer, RATE, 16000)).text
    overlap = len(set(words(heard)) & set(words(said))) / max(len(set(words(said))), 1)
    assert overlap >= 0.5, (heard, said)
    metrics = events[-1].model_dump()
    for stage in ("endpoint", "asr", "llm_first_token", "first_sentence", "tts_first_audio",
                  "send", "voice_to_voice"):
        assert metrics["stages_ms"][stage] >= 0, stage
    assert metrics["stages_ms"]["voice_to_voice"] >= metrics["stages_ms"]["endpoint"]
    status, kind, text = await asyncio.to_thread(get, f"{server_url}/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert 'voxwire_stage_seconds_count{stage="voice_to_voice"}' in text


class RecordingResponder:
    """The real embedded model, with a record of every prompt it was given."""

    def __init__(self, inner: Responder) -> None:
        self.inner, self.name = inner, inner.name
        self.can_see, self.can_use_tools = inner.can_see, inner.can_use_tools
        self.prompts: list[list[ChatMessage]] = []
        self.prepared: list[str] = []  # the words so far that each `prepare` was given

    async def prepare(self, request: ChatRequest) -> int:
        self.prepared.append(request.messages[-1].content)
        return await self.inner.prepare(request)

    def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]:
        self.prompts.append(list(request.messages))
        return self.inner.stream(request)


async def test_the_second_turn_sees_the_first(engines: Engines, speak: Speak) -> None:
    llm = RecordingResponder(engines.responder)
    app = App(TEST_SETTINGS, engines=dataclasses.replace(engines, responder=llm))
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        async with ga(f"http://{host}:{port}") as conn:
            await conn.session.update(session={"type": "realtime", "temperature": 0.0,
                                               "output_modalities": ["text"]})
            first = await spoken_turn(conn, speak("My name is Alice.", rate=RATE))
            events = await spoken_turn(conn, speak("What is my name?", rate=RATE))
    reply = next(e for e in first if e.type == "response.done").response.output[0]
    done = next(e for e in events if e.type == "response.done")
    assert done.response.status in ANSWERED
    assert "response.output_text.delta" in types(events)
    assert done.response.output[0].content[0].text  # text-only session: text, no audio
    assert "response.output_audio.delta" not in types(events)
    second = llm.prompts[-1]
    assert [m.role for m in second] == ["system", "user", "assistant", "user"]
    assert words(second[1].content) == words("My name is Alice.")
    assert second[2].content == reply.content[0].text
    assert words(second[3].content) == words("What is my name?")


async def test_barge_in_cancels_the_answer_and_truncate_trims_it(
        server_url: str, speak: Speak) -> None:
    async with ga(server_url) as conn:
        await conn.session.update(session={
            "type": "realtime", "instructions": "Tell very long, detailed stories."})
        send = asyncio.create_task(send_audio(
            conn, padded(speak("Tell me a long story about a brave dragon.", rate=RATE),
                         RATE, 300, 600), RATE))
        first = await events_until(conn, lambda e: e.type == "response.output_audio.delta")
        await send
        answer_item = next(e for e in first if e.type == "response.output_item.added").item.id
        interrupt = asyncio.create_task(send_audio(
            conn, padded(speak("Stop, stop. What time is it?", rate=RATE), RATE, 0, 1200), RATE))
        rest = await events_until(conn, lambda e: e.type == "response.done")
        assert rest[-1].response.status == "cancelled"
        assert rest[-1].response.status_details.reason == "turn_detected"
        assert "input_audio_buffer.speech_started" in types(rest)
        spoken = rest[-1].response.output[0].content[0].transcript
        await interrupt
        after = await events_until(conn, lambda e: is_metrics(e) and e.status in ANSWERED)
        assert any(e.type == "conversation.item.input_audio_transcription.completed"
                   and "time" in words(e.transcript) for e in after)  # it got its own answer
        await conn.send({"type": "conversation.item.truncate", "item_id": answer_item,
                         "content_index": 0, "audio_end_ms": 0})
        await conn.send({"type": "conversation.item.retrieve", "item_id": answer_item})
        trimmed = await events_until(conn, lambda e: e.type == "conversation.item.retrieved")
    assert "conversation.item.truncated" in types(trimmed)
    assert spoken  # what had been sent before the barge-in
    assert trimmed[-1].item.content[0].transcript == ""


async def test_manual_commit_and_response_create(server_url: str, speak: Speak) -> None:
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {
            "input": {"turn_detection": None,
                      "format": {"type": "audio/pcm", "rate": 16000}}}})
        await conn.input_audio_buffer.commit()  # nothing buffered yet
        empty = await events_until(conn, lambda e: e.type == "error")
        assert empty[-1].error.code == "input_audio_buffer_commit_empty"
        await send_audio(conn, padded(speak("Turn on the kitchen lights please.", rate=16000),
                                      16000, 200, 300), 16000, realtime=False)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await events_until(conn, is_metrics)
    names = types(events)
    assert "input_audio_buffer.speech_started" not in names
    final = next(e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed")
    assert words(final.transcript) == words("Turn on the kitchen lights please.")
    assert names.index("conversation.item.input_audio_transcription.completed") < \
        names.index("response.created")
    assert next(e for e in events if e.type == "response.done").response.status in ANSWERED


async def test_beta_client_is_answered_in_beta(server_url: str) -> None:
    ws_url = server_url.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(api_key="unused", base_url=f"{server_url}/v1", websocket_base_url=ws_url)
    async with client.beta.realtime.connect(model="voxwire") as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        assert created.session.modalities == ["text", "audio"]
        await conn.session.update(session={"turn_detection": None, "temperature": 0.0})
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say hello."}]})
        await conn.response.create()
        events = await events_until(conn, lambda e: e.type == "response.done")
    names = types(events)
    assert "session.updated" in names and "conversation.item.created" in names
    assert "response.audio.delta" in names and "response.audio_transcript.done" in names
    assert "response.output_audio.delta" not in names
    assert events[-1].response.status in ANSWERED
    assert len(audio_of(events, "response.audio.delta")) > 0


async def test_bad_input_gets_errors_and_the_session_goes_on(
        server_url: str, speak: Speak) -> None:
    bad = [
        ("not json at all", None, "invalid_json"),
        (json.dumps({"type": "no.such.event", "event_id": "e1"}), "e1", "unknown_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "e2"}),
         "e2", "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append", "event_id": "e3",
                     "audio": base64.b64encode(b"\x00\x01\x02").decode()}), "e3",
         "invalid_audio"),
        (json.dumps({"type": "session.update", "event_id": "e4",
                     "session": {"audio": {"input": {"format": {"type": "audio/ogg"}}}}}),
         "e4", "invalid_value"),
        (json.dumps({"type": "response.cancel", "event_id": "e5"}), "e5",
         "response_cancel_not_active"),
        (json.dumps({"type": "conversation.item.delete", "item_id": "nope", "event_id": "e6"}),
         "e6", "item_not_found"),
    ]
    async with ga(server_url) as conn:
        for raw, event_id, code in bad:
            await conn.send_raw(raw)
            errs = await events_until(conn, lambda e: e.type == "error", seconds=10)
            assert errs[-1].error.code == code, raw
            assert errs[-1].error.event_id == event_id
            assert errs[-1].error.message
        events = await spoken_turn(conn, speak("What is the capital of France?", rate=RATE))
    assert events[-1].status in ANSWERED


async def test_g711_input_and_output(server_url: str, speak: Speak) -> None:
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcmu"}}}})
        speech = padded(speak("What is the capital of France?", rate=8000), 8000, 300, 1200)
        pcmu = _mulaw(speech)
        step = 320
        for i in range(0, len(pcmu), step):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcmu[i:i + step]).decode())
            await asyncio.sleep(0.04)
        events = await events_until(conn, is_metrics)
    final = next(e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed")
    assert words(final.transcript) == words("What is the capital of France?")
    deltas = [base64.b64decode(e.delta) for e in events
              if e.type == "response.output_audio.delta"]
    assert deltas and sum(len(d) for d in deltas) > 4000  # one byte per sample at 8 kHz


def _mulaw(x: Float32) -> bytes:
    """Reference G.711 mu-law encoder (independent of the server's table-based one)."""
    pcm = np.clip(x * 32767, -32767, 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    mag = np.minimum(np.abs(pcm) + 0x84, 0x7FFF)
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return bytes((~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes())


async def test_http_routes(server_url: str) -> None:
    status, kind, body = await asyncio.to_thread(get, f"{server_url}/healthz")
    assert (status, body) == (200, "ok\n")
    status, kind, body = await asyncio.to_thread(get, f"{server_url}/")
    assert kind.startswith("text/html") and "/v1/realtime" in body
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(get, f"{server_url}/nope")
    assert info.value.code == 404
    info.value.close()




class BrokenVoice:
    """A synthesizer whose engine fails, as a broken voice file would."""

    def __init__(self, inner: Any) -> None:
        self.name, self.sample_rate, self.voices = inner.name, inner.sample_rate, inner.voices

    def synthesize(self, text: str, voice: str, stop: Any) -> Iterator[Float32]:
        raise RuntimeError("voice model crashed")
        yield  # pragma: no cover


async def test_a_failing_stage_fails_the_response_not_the_session(engines: Engines) -> None:
    app = App(TEST_SETTINGS, engines=dataclasses.replace(engines, tts=BrokenVoice(engines.tts)))
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        async with ga(f"http://{host}:{port}") as conn:
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hello there."}]})
            await conn.response.create()
            failed = await events_until(conn, lambda e: e.type == "response.done")
            # The same session still answers in text.
            await conn.response.create(response={"output_modalities": ["text"]})
            after = await events_until(conn, lambda e: e.type == "response.done")
    assert failed[-1].response.status == "failed"
    details = failed[-1].response.status_details
    assert details.error.code == "tts_failed" and "voice model crashed" in details.error.message
    assert any(e.type == "error" and e.error.code == "tts_failed" for e in failed)
    assert after[-1].response.status in ANSWERED
    assert after[-1].response.output[0].content[0].text


async def test_speculation_is_dropped_when_speech_resumes(server_url: str, speak: Speak) -> None:
    from client.realtime import silence

    speech = np.concatenate([speak("I would like to order", rate=RATE), silence(300, RATE),
                             speak("a large pizza with mushrooms.", rate=RATE)])
    async with ga(server_url) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        events = await spoken_turn(conn, speech)
    names = types(events)
    assert names.count("input_audio_buffer.committed") == 1  # the pause did not end the turn
    assert names.index("response.created") > names.index("input_audio_buffer.speech_stopped")
    final = next(e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed")
    assert words(final.transcript) == words("I would like to order a large pizza with mushrooms.")
    compute = events[-1].model_dump()["compute_ms"]
    assert compute["speculative_discarded"] >= 1  # a transcript started in the pause, dropped
    assert compute["asr_speculative"] == 1.0  # the one started at the real end was used
