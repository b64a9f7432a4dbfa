"""Speech over a playing answer: backchannels leave it playing, interruptions cancel it at
once; on fake engines and a fake clock (the short transcriptions are the fake ASR's
`finals`)."""

from __future__ import annotations

from typing import Any

import pytest

from server.runtime.config import Settings
from server.session.overlap import FIRST_LOOK_MS, LONGEST_MS, is_backchannel, phrases
from tests.support.harness import Harness, harness

WORDS = Settings.backchannel_words
LONG_ANSWER = ". ".join(["A word"] * 40)  # 8 s of audio at 100 ms a word, made over 4 s


@pytest.mark.parametrize("text", ["Mm-hmm.", "mhm", "Uh-huh", "Yeah, right.", "I see, okay.",
                                  "(coughs)", "[laughter]", "", "Oh, really?", "All right."])
def test_backchannels(text: str) -> None:
    assert is_backchannel(text, phrases(WORDS))


@pytest.mark.parametrize("text", ["Stop.", "I see a problem.", "What time is it?", "No.",
                                  "Wait", "Yeah, but why?"])
def test_not_backchannels(text: str) -> None:
    assert not is_backchannel(text, phrases(WORDS))


def test_no_words_no_backchannels() -> None:
    assert phrases("") == frozenset()
    assert not is_backchannel("okay", phrases(""))


async def over_the_answer(partials: list[str], speech_ms: int, **settings: Any) -> Harness:
    """The user says something (``speech_ms`` long) 500 ms into a long answer; the short
    transcriptions of it are ``partials``, in order (the fake ASR's finals)."""
    async with harness(finals=partials, replies=[LONG_ANSWER], backchannel_words=WORDS,
                       token_ms=50, **settings) as h:
        await h.send({"type": "response.create"})
        await h.silence(500)
        await h.speech(speech_ms)
        await h.silence(4000)  # the answer is made by then
        return h


async def test_a_backchannel_leaves_the_answer_playing_and_is_kept() -> None:
    h = await over_the_answer(["mm-hm", "mm-hm"], 400)
    types = h.types()
    assert "input_audio_buffer.speech_started" not in types  # clients keep playing
    assert h.one("response.done")["response"]["status"] == "completed"
    assert types.count("response.created") == 1  # nothing answers it
    said = h.of("conversation.item.input_audio_transcription.completed")
    assert [e["transcript"] for e in said] == ["mm-hm"]
    user = [e["item"] for e in h.of("conversation.item.done") if e["item"]["role"] == "user"]
    assert user and user[-1]["content"][0]["transcript"] == "mm-hm"
    assert [i["role"] for i in h.session.conv.items] == ["assistant", "user"]


async def test_a_short_sound_with_no_words_is_not_an_interruption() -> None:
    h = await over_the_answer([], 200)  # a cough: the transcriber writes nothing
    assert "input_audio_buffer.speech_started" not in h.types()
    assert h.one("response.done")["response"]["status"] == "completed"
    assert "input_audio_buffer.committed" not in h.types()  # and nothing is kept of it


async def test_a_longer_sound_with_no_words_interrupts() -> None:
    # Words the transcriber missed, maybe: a missed "stop" costs more than a cough.
    h = await over_the_answer([], 500)
    assert h.types().count("input_audio_buffer.speech_started") == 1
    assert h.one("response.done")["response"]["status"] == "cancelled"


async def test_words_interrupt_at_the_first_look() -> None:
    h = await over_the_answer(["stop"], 600)
    started = h.one("input_audio_buffer.speech_started")
    assert h.one("response.done")["response"]["status"] == "cancelled"
    # Decided at the first short transcription, 400 ms into the speech (+ a VAD window).
    decided = h.at("input_audio_buffer.speech_started")
    assert started["audio_start_ms"] < 500 < decided < 500 + FIRST_LOOK_MS + 64, decided


async def test_long_speech_interrupts_whatever_it_says() -> None:
    h = await over_the_answer(["yeah"] * 10, LONGEST_MS + 400)
    decided = h.at("input_audio_buffer.speech_started")
    assert 500 + LONGEST_MS <= decided < 500 + LONGEST_MS + 64, decided
    assert h.one("response.done")["response"]["status"] == "cancelled"


async def test_a_session_may_turn_it_off() -> None:
    async with harness(finals=["mm-hm"], replies=[LONG_ANSWER], token_ms=50,
                       backchannel_words=WORDS) as h:
        await h.send({"type": "session.update", "session": {
            "type": "realtime", "voxwire": {"backchannels": False}}})
        assert h.of("session.updated")[-1]["session"]["voxwire"]["backchannels"] is False
        await h.send({"type": "response.create"})
        await h.silence(500)
        await h.speech(400)
        await h.silence(800)
        assert h.types().count("input_audio_buffer.speech_started") == 1
        assert h.of("response.done")[0]["response"]["status"] == "cancelled"


async def test_after_the_answer_has_played_speech_is_a_turn_as_usual() -> None:
    async with harness(partials=["mm-hm"], finals=["mm-hm"], replies=["Hi."],
                       backchannel_words=WORDS) as h:
        await h.send({"type": "response.create"})
        await h.silence(600)  # a 100 ms answer: long over
        await h.speech(400)
        await h.silence(800)
        assert h.types().count("input_audio_buffer.speech_started") == 1
        assert h.types().count("response.created") == 2


async def test_the_clients_cancel_after_the_servers_barge_in_is_no_error() -> None:
    # Clients cancel on speech_started; with backchannels, the server has cancelled by then.
    async with harness(finals=["stop"], replies=[LONG_ANSWER], token_ms=50,
                       backchannel_words=WORDS) as h:
        await h.send({"type": "response.create"})
        await h.silence(500)
        await h.speech(600)
        response_id = h.one("response.done")["response"]["id"]
        assert h.one("response.done")["response"]["status"] == "cancelled"
        await h.send({"type": "response.cancel", "response_id": response_id})
        await h.send({"type": "response.cancel"})
        assert "error" not in h.types()
        await h.silence(3000)  # long after, a cancel with nothing to cancel is an error
        await h.send({"type": "response.cancel", "response_id": response_id})
        assert h.one("error")["error"]["code"] == "response_cancel_not_active"
