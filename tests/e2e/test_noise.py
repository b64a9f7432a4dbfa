"""A noisy spoken question through the real server, the real models and the openai SDK:
with `noise_reduction` on, the transcript keeps the question's key words."""

from __future__ import annotations

from typing import Any

from bench.noise import fan, mix
from client.realtime import Float32, resample, send_audio
from tests.conftest import padded
from tests.e2e.test_e2e import events_until, ga

RATE = 24000
QUESTION = "Set a timer for fifteen minutes."
KEY_WORDS = (("timer",), ("fifteen", "15"), ("minutes",))  # each: any of its spellings
COMPLETED = "conversation.item.input_audio_transcription.completed"


def noisy_question(speech: Float32) -> Float32:
    """The question with room around it, under fan-like noise at 0 dB SNR, at the wire's rate."""
    clean = padded(speech, 16000, 300, 1200)
    return resample(mix(clean, fan(len(clean) / 16000), 0.0)[1], 16000, RATE)


async def test_a_noisy_question_is_heard_with_noise_reduction_on(
        server_url: str, speak: Any) -> None:
    audio = noisy_question(speak(QUESTION, "piper"))
    async with ga(server_url) as conn:
        await conn.session.update(session={
            "type": "realtime", "output_modalities": ["text"], "max_output_tokens": 8,
            "audio": {"input": {"noise_reduction": {"type": "far_field"}}}})
        await send_audio(conn, audio, RATE, realtime=False)
        events = await events_until(conn, lambda ev: ev.type == COMPLETED, 60)
    updated = [e for e in events if e.type == "session.updated"][-1]
    assert updated.session.audio.input.noise_reduction.type == "far_field"
    transcript = [e for e in events if e.type == COMPLETED][-1].transcript.lower()
    assert all(any(w in transcript for w in word) for word in KEY_WORDS), transcript
