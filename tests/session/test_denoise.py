"""`audio.input.noise_reduction` in the session, on fake engines and a fake clock: the
suppressor runs in front of the VAD and the ASR when a session asks, never otherwise.

The fake suppressor silences all it is given (the fake VAD then hears no speech) and holds
its last 10 ms back, as a real one's delay does.
"""

from __future__ import annotations

from typing import Any

from tests.support.harness import FakeDenoiser, Harness, harness

Json = dict[str, Any]


def noise_reduction(kind: str | None) -> Json:
    value = None if kind is None else {"type": kind}
    return {"type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"noise_reduction": value}}}}


async def turns_heard(h: Harness) -> int:
    await h.speech(640)
    await h.silence(800)
    return h.types().count("input_audio_buffer.speech_started")


async def test_noise_reduction_is_off_unless_asked() -> None:
    fake = FakeDenoiser()
    async with harness(finals=["hello"], denoiser=fake) as h:
        assert h.one("session.created")["session"]["audio"]["input"]["noise_reduction"] is None
        assert await turns_heard(h) == 1
        assert fake.streams == []


async def test_near_field_denoises_before_the_vad_and_null_turns_it_off() -> None:
    fake = FakeDenoiser()
    async with harness(finals=["hello"], denoiser=fake, denoise_near_db=9.0) as h:
        await h.send(noise_reduction("near_field"))
        echoed = h.of("session.updated")[-1]["session"]["audio"]["input"]["noise_reduction"]
        assert echoed == {"type": "near_field"}
        assert await turns_heard(h) == 0  # the VAD heard only what the suppressor gave
        assert [s.limit_db for s in fake.streams] == [9.0]  # one stream, made on demand
        assert fake.streams[0].taken == (640 + 800) * 16  # every sample went through it

        await h.send(noise_reduction(None))
        assert h.of("session.updated")[-1]["session"]["audio"]["input"]["noise_reduction"] is None
        assert await turns_heard(h) == 1
        assert len(fake.streams) == 1
        first = fake.streams[0]
        assert first.given == first.taken  # what it held came out before the next audio


async def test_far_field_uses_its_own_limit_and_a_new_stream() -> None:
    fake = FakeDenoiser()
    async with harness(denoiser=fake, denoise_near_db=9.0, denoise_far_db=30.0) as h:
        await h.send(noise_reduction("near_field"))
        await h.silence(100)
        await h.send(noise_reduction("far_field"))
        await h.silence(100)
        assert [s.limit_db for s in fake.streams] == [9.0, 30.0]


async def test_the_buffer_keeps_its_timeline_through_the_suppressor() -> None:
    """A manual commit takes all the audio sent, the part the suppressor still held too."""
    fake = FakeDenoiser(hold=480)
    async with harness(denoiser=fake) as h:
        await h.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": None,
                                                    "noise_reduction": {"type": "far_field"}}}}})
        await h.speech(1000)
        assert h.session.ears.buffer.total_ms == 1000 - 30  # 30 ms still in the suppressor
        await h.send({"type": "input_audio_buffer.commit"})
        assert h.one("input_audio_buffer.committed")
        assert h.engines.asr.calls == [(1000, False)]


async def test_a_beta_session_names_it_input_audio_noise_reduction() -> None:
    from realtime import SessionConfig, apply_session_update, session_to_wire

    cfg = apply_session_update(SessionConfig(), {"input_audio_noise_reduction": {
        "type": "far_field"}}, "beta")
    assert session_to_wire(cfg, "s", "beta")["input_audio_noise_reduction"] == {
        "type": "far_field"}
    off = apply_session_update(cfg, {"input_audio_noise_reduction": None}, "beta")
    assert off.noise_reduction is None
