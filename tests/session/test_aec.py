"""`session.voxwire.echo_cancellation` in the session, on fake engines and a fake clock: the
canceller runs in front of the VAD when a session asks, never otherwise, and its far end
is the audio the session sent, sample for sample, as the client plays it."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from server.audio import RATE
from server.session.echo import EchoPath
from tests.support.harness import FakeEchoCanceller, Harness, harness, quiet

Json = dict[str, Any]


def echo_cancellation(on: bool) -> Json:
    return {"type": "session.update", "session": {
        "type": "realtime", "voxwire": {"echo_cancellation": on},
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": RATE}}}}}


async def turns_heard(h: Harness) -> int:
    await h.speech(640)
    await h.silence(800)
    return h.types().count("input_audio_buffer.speech_started")


def sent_audio(h: Harness) -> np.ndarray[Any, np.dtype[np.float32]]:
    pcm = b"".join(base64.b64decode(e["delta"]) for e in h.of("response.output_audio.delta"))
    return (np.frombuffer(pcm, "<i2") / 32767).astype(np.float32)


async def test_echo_cancellation_is_off_unless_asked() -> None:
    fake = FakeEchoCanceller(gain=0.0)
    async with harness(finals=["hello"], echo_canceller=fake) as h:
        assert "voxwire" not in h.one("session.created")["session"]  # stock clients: unchanged
        assert await turns_heard(h) == 1
        assert fake.streams == []


async def test_the_extension_turns_it_on_in_front_of_the_vad() -> None:
    fake = FakeEchoCanceller(gain=0.0, hold=100)
    async with harness(finals=["hello"], echo_canceller=fake) as h:
        await h.send(echo_cancellation(True))
        assert h.of("session.updated")[-1]["session"]["voxwire"]["echo_cancellation"] is True
        assert await turns_heard(h) == 0  # the VAD heard only what the canceller gave
        assert len(fake.streams) == 1  # one stream, made on demand
        assert sum(map(len, fake.streams[0].near_fed)) == (640 + 800) * 16

        await h.send(echo_cancellation(False))
        assert h.of("session.updated")[-1]["session"]["voxwire"]["echo_cancellation"] is False
        assert await turns_heard(h) == 1
        first = fake.streams[0]
        assert first.given == sum(map(len, first.near_fed))  # what it held came out


async def test_the_far_end_is_what_was_sent_as_the_client_plays_it() -> None:
    fake = FakeEchoCanceller()
    async with harness(replies=["One two three four five six."], ms_per_word=100,
                       echo_canceller=fake) as h:
        await h.send(echo_cancellation(True))
        await h.silence(200)
        await h.send({"type": "response.create"})
        played_from = len(fake.streams[0].far_audio)
        await h.silence(1200)  # six words of 100 ms play; the microphone hears nothing
        assert h.of("response.done")[-1]["response"]["status"] == "completed"
        far, sent = fake.streams[0].far_audio, sent_audio(h)
        assert len(sent) == 600 * 16
        assert not far[:played_from].any()  # nothing played before the answer
        # It plays from the moment it was sent, every sample once, in order.
        start = played_from + int(np.flatnonzero(far[played_from:])[0]) - 1
        assert abs(start - played_from) <= 1, (start, played_from)
        assert np.allclose(far[start:start + len(sent)], sent, atol=1.5 / 32767)
        assert not far[start + len(sent) + 1:].any()
        # As long as the microphone audio, sample for sample.
        assert len(far) == sum(map(len, fake.streams[0].near_fed))


async def test_barge_in_stops_the_far_end_where_the_client_stopped() -> None:
    fake = FakeEchoCanceller()
    async with harness(finals=["stop"], replies=["One two three four five six seven eight."],
                       ms_per_word=100, echo_canceller=fake) as h:
        await h.send(echo_cancellation(True))
        await h.silence(200)
        await h.send({"type": "response.create"})
        played_from = len(fake.streams[0].far_audio)
        await h.silence(200)
        await h.speech(400)  # the user talks over it: speech_started stops the playback
        # The far end is read from the session's start, one sample per 16 kHz sample.
        stopped_at = int(h.at("input_audio_buffer.speech_started") * RATE / 1000)
        assert 200 * 16 < stopped_at < 800 * 16
        await h.silence(400)  # the answer would have played on until 1000 ms; the next
        assert h.types().count("response.created") == 1  # one (to the user's turn) not yet
        far = fake.streams[0].far_audio
        assert far[played_from:played_from + 3200].any()
        assert not far[stopped_at:].any()


def echo_tone(ms: int) -> bytes:
    """The fake voice (a 1 kHz tone) coming back loud through the room."""
    t = np.arange(ms * 16) / 16000
    return (0.3 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()


async def user_over_the_answer(room: bytes) -> Harness:
    """The user talks over the answer after 700 ms of ``room`` (what the microphone heard
    of the playback), with a canceller that silences all: as AEC3 does to a near end over
    the far end in its first seconds."""
    fake = FakeEchoCanceller(gain=0.0)
    async with harness(finals=["stop"], replies=[" ".join(["word"] * 30)], ms_per_word=100,
                       echo_canceller=fake) as h:
        await h.send(echo_cancellation(True))
        await h.silence(200)
        await h.send({"type": "response.create"})
        await h.audio(room)
        await h.speech(400)
        return h


async def test_with_no_echo_path_the_user_is_heard_over_the_answer() -> None:
    # A headset: the raw microphone is heard once half a second of playback brought no
    # echo back, and the canceller cannot swallow the barge-in.
    h = await user_over_the_answer(quiet(700))
    assert h.types().count("input_audio_buffer.speech_started") == 1
    started = h.one("input_audio_buffer.speech_started")["audio_start_ms"]
    assert started >= 900 - 300 - 32  # where the speech began, less the prefix padding


async def test_with_an_echo_path_the_cancellers_output_is_heard() -> None:
    h = await user_over_the_answer(echo_tone(700))  # the loudspeaker reaches the microphone
    assert "input_audio_buffer.speech_started" not in h.types()  # the canceller's silence


def test_the_echo_path_is_judged_from_the_raw_microphone() -> None:
    path = EchoPath()
    assert path.cancel(0.0)  # not known yet: cancel
    path.observe(0.1, 1.0)
    path.observe(0.1, 1.4)
    assert path.cancel(1.4)  # not yet long enough to rule an echo out
    path.observe(0.1, 1.6)
    assert not path.cancel(1.6)  # half a second of playback with no echo: a headset
    path.observe(None, 2.0)  # nothing plays; the finding holds
    assert not path.cancel(10.0)
    path.observe(0.8, 11.0)  # echo heard: speakers after all
    assert path.cancel(11.0)
    path.observe(0.1, 11.5)
    path.observe(0.1, 12.5)  # the user talking over the echo does not rule it out
    assert path.cancel(12.5)
    assert path.cancel(40.0)  # the echo finding lapses after 30 s; unsure again: cancel
