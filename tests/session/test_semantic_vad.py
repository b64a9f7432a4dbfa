"""`semantic_vad` on scripted engines and a fake clock: at a pause the turn model (scripted
here) decides whether the turn is over; the eagerness's longest wait ends it anyway.

Speech is fed in 20 ms appends; the VAD sees 32 ms windows. The turn model is first asked
once a pause has lasted the eagerness's minimum silence (high: 200 ms, medium: 600, low:
1100), then every `turn_recheck_ms` (250).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

import realtime as p
from server.runtime.lanes import InlineLane
from server.stages.turns import EAGERNESS
from tests.support.harness import FakeTurnText, Harness, harness

T = TypeVar("T")

MOON = "tell me about the moon"
WHOLE = "tell me about the moon and the stars"


async def semantic(h: Harness, eagerness: str, metrics: bool = False) -> None:
    await h.send({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"turn_detection": {"type": "semantic_vad", "eagerness": eagerness}}},
        "voxwire": {"metrics": metrics}}})


def turn_calls(h: Harness) -> list[int]:
    assert h.engines.turn is not None
    return h.engines.turn.calls


async def test_a_finished_turn_ends_at_the_first_question_to_the_model() -> None:
    async with harness(finals=[MOON], replies=["The moon is bright."], turn=[0.9]) as h:
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(800)
        # The pause starts at 640 ms; the window ending at 864 ms is the first with 200 ms
        # of silence behind it (in the append reaching 880 ms): asked once, the turn ends.
        assert h.at("input_audio_buffer.speech_stopped") == 880
        assert h.one("input_audio_buffer.speech_stopped")["audio_end_ms"] == 640
        assert turn_calls(h) == [864]  # the whole turn so far, its silence included
        # The answer prepared at the pause is what the client gets, released at once.
        assert h.at("response.created") == 880
        assert len(h.engines.responder.requests) == 1
        assert h.one("response.done")["response"]["status"] == "completed"


async def test_an_unfinished_turn_waits_and_speech_resuming_continues_it() -> None:
    async with harness(finals=[MOON, WHOLE], replies=["Early.", "About both."],
                       turn=[0.1, 0.2, 0.25, 0.9]) as h:
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(900)  # longer than server_vad's 500 ms: that would have cut it here
        assert "input_audio_buffer.speech_stopped" not in h.types()
        assert len(turn_calls(h)) == 3  # at 200 ms of silence, then 450 and 700
        await h.speech(640)
        await h.silence(400)
        assert h.types().count("input_audio_buffer.speech_started") == 1
        assert h.types().count("input_audio_buffer.committed") == 1
        assert h.one("input_audio_buffer.speech_stopped")["audio_end_ms"] == 2176
        assert h.one("conversation.item.input_audio_transcription.completed")[
            "transcript"] == WHOLE
        assert [r["response"]["output"][0]["content"][0]["transcript"]
                for r in h.of("response.done")] == ["About both."]
        assert "Early." not in str(h.events)


async def test_the_model_is_asked_again_as_the_silence_grows() -> None:
    async with harness(finals=[MOON], turn=[0.1, 0.2, 0.6]) as h:
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(1200)
        # asked at 224, 480 and 736 ms of silence (window ends); the third clears 0.3
        assert turn_calls(h) == [864, 1120, 1376]
        assert h.at("input_audio_buffer.speech_stopped") == 1380


@pytest.mark.parametrize("eagerness", ["low", "medium", "high", "auto"])
async def test_the_longest_wait_ends_a_turn_the_model_never_finds_finished(
        eagerness: str) -> None:
    wait = EAGERNESS["medium" if eagerness == "auto" else eagerness].max_wait_ms
    async with harness(finals=[MOON]) as h:
        await semantic(h, eagerness)
        await h.speech(640)
        await h.silence(wait - 100)
        assert "input_audio_buffer.speech_stopped" not in h.types()
        await h.silence(200)
        assert h.one("input_audio_buffer.speech_stopped")["audio_end_ms"] == 640
        assert wait <= h.at("input_audio_buffer.speech_stopped") - 640 < wait + 100
        assert h.one("response.done")["response"]["status"] == "completed"


@pytest.mark.parametrize(("eagerness", "ends"), [("medium", False), ("high", True)])
async def test_eagerness_sets_how_sure_the_model_must_be(eagerness: str, ends: bool) -> None:
    async with harness(finals=[MOON], turn=[0.4]) as h:  # medium needs 0.5, high 0.3
        await semantic(h, eagerness)
        await h.speech(640)
        await h.silence(700)
        assert len(turn_calls(h)) == 1
        assert ("input_audio_buffer.speech_stopped" in h.types()) is ends


async def test_medium_lets_a_short_pause_pass_before_asking_the_model() -> None:
    async with harness(finals=[MOON, WHOLE], turn=[1.0]) as h:
        await semantic(h, "medium")
        await h.speech(640)
        await h.silence(300)  # a pause inside the sentence: the model is not asked
        await h.speech(640)
        await h.silence(800)
        # The second pause starts with the window at 1600 ms; asked once, 608 ms into it
        # (the first window end past 600 ms), on the whole turn so far.
        assert turn_calls(h) == [2208]
        assert h.one("input_audio_buffer.speech_stopped")["audio_end_ms"] == 1600
        assert h.one("conversation.item.input_audio_transcription.completed")[
            "transcript"] == WHOLE


async def test_server_vad_never_asks_the_turn_model() -> None:
    async with harness(finals=[MOON], turn=[1.0]) as h:
        await h.speech(640)
        await h.silence(800)
        assert h.at("input_audio_buffer.speech_stopped") == 1160  # 500 ms of silence, as ever
        assert turn_calls(h) == []


async def test_without_a_turn_model_semantic_vad_waits_for_the_silence() -> None:
    async with harness(finals=[MOON]) as h:
        h.engines.turn = None
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(800)
        assert h.at("input_audio_buffer.speech_stopped") == 1160


async def test_the_session_shows_semantic_vad_as_openai_does() -> None:
    async with harness(turn_detection="semantic_vad") as h:
        created = h.one("session.created")["session"]["audio"]["input"]["turn_detection"]
        assert created == {"type": "semantic_vad", "eagerness": "auto",
                           "create_response": True, "interrupt_response": True}
        await semantic(h, "high")
        updated = h.of("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"]
        assert updated["eagerness"] == "high"
        await h.send({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"turn_detection": {"type": "server_vad"}}}}})
        back = h.of("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"]
        assert back["type"] == "server_vad" and back["silence_duration_ms"] == 500


async def test_the_server_sets_new_sessions_eagerness() -> None:
    async with harness(turn_detection="semantic_vad", eagerness="high", finals=[MOON],
                       replies=["The moon is bright."], turn=[0.9]) as h:
        created = h.one("session.created")["session"]["audio"]["input"]["turn_detection"]
        assert created["eagerness"] == "high"
        await h.speech(640)
        await h.silence(800)
        assert h.at("input_audio_buffer.speech_stopped") == 880  # high's first question


def test_eagerness_is_checked_and_kept() -> None:
    cfg = p.apply_session_update(p.SessionConfig(), {
        "turn_detection": {"type": "semantic_vad", "eagerness": "low"}}, "beta")
    assert cfg.turn_detection is not None and cfg.turn_detection.eagerness == "low"
    beta = p.session_to_wire(cfg, "s", "beta")["turn_detection"]
    assert beta == {"type": "semantic_vad", "eagerness": "low", "create_response": True,
                    "interrupt_response": True}
    with pytest.raises(p.ProtocolError) as info:
        p.apply_session_update(cfg, {"turn_detection": {"type": "semantic_vad",
                                                        "eagerness": "eager"}}, "beta")
    assert info.value.param == "session.turn_detection.eagerness"


# ---------------------------------------------------------------------- the words


def reading(h: Harness, script: list[float]) -> FakeTurnText:
    h.engines.turn_text = FakeTurnText(script)
    return h.engines.turn_text


async def test_words_that_read_finished_let_the_turn_end_at_once() -> None:
    async with harness(finals=[MOON], replies=["The moon is bright."], turn=[0.9]) as h:
        words = reading(h, [0.6])
        await semantic(h, "high", metrics=True)
        await h.speech(640)
        await h.silence(800)
        assert words.calls == [MOON]  # the speculation's transcript, read once
        assert h.at("input_audio_buffer.speech_stopped") == 880  # as with the audio alone
        metrics = h.one("voxwire.turn.metrics")
        assert metrics["compute_ms"]["turn_words"] == 0.6
        assert metrics["compute_ms"]["turn_complete"] == 0.9


@pytest.mark.parametrize("eagerness", ["low", "medium", "high"])
async def test_words_that_read_unfinished_hold_the_turn_until_unfinished_ms(
        eagerness: str) -> None:
    hold = EAGERNESS[eagerness].unfinished_ms
    async with harness(finals=[MOON], turn=[0.99] * 40) as h:
        words = reading(h, [0.001])
        await semantic(h, eagerness, metrics=True)
        await h.speech(640)
        await h.silence(hold - 100)  # the audio has found it finished for a while
        assert len(turn_calls(h)) == 1  # asked once: then only the silence was awaited
        assert "input_audio_buffer.speech_stopped" not in h.types()
        await h.silence(200)
        assert hold <= h.at("input_audio_buffer.speech_stopped") - 640 < hold + 100
        assert words.calls == [MOON]
        assert h.one("voxwire.turn.metrics")["compute_ms"]["turn_words"] == 0.001


async def test_speech_resuming_in_a_held_pause_continues_the_turn() -> None:
    async with harness(finals=[MOON, WHOLE], replies=["About both."], turn=[0.99, 0.99]) as h:
        reading(h, [0.0, 0.8])
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(900)  # the audio alone would have ended it at 200 ms
        await h.speech(640)
        await h.silence(600)
        assert h.types().count("input_audio_buffer.committed") == 1
        assert h.one("conversation.item.input_audio_transcription.completed")[
            "transcript"] == WHOLE


async def test_no_words_heard_leaves_the_decision_to_the_audio() -> None:
    async with harness(finals=[""], turn=[0.9]) as h:
        words = reading(h, [0.0])
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(800)
        assert words.calls == []  # nothing to read
        assert h.at("input_audio_buffer.speech_stopped") == 880


async def test_without_speculation_the_audio_decides_alone() -> None:
    async with harness(finals=[MOON], turn=[0.9], speculate=False) as h:
        words = reading(h, [0.0])
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(800)
        assert words.calls == []
        assert h.at("input_audio_buffer.speech_stopped") == 880


class HeldLane(InlineLane):
    """The turn lane, its first job (the words) held until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__("turn")
        self.release = asyncio.Event()
        self._first = True

    async def run(self, fn: Callable[[], T], **kwargs: Any) -> T:
        if self._first:
            self._first = False
            await self.release.wait()
        return await super().run(fn, **kwargs)


async def test_a_turn_the_audio_finds_finished_waits_for_its_words_and_ends_on_them() -> None:
    async with harness(finals=[MOON], turn=[0.9]) as h:
        lane = HeldLane()
        h.engines.turn_lane = lane
        reading(h, [0.6])
        await semantic(h, "high")
        await h.speech(640)
        await h.silence(400)  # the audio said finished at 200 ms; the words are not read
        assert len(turn_calls(h)) == 1
        assert "input_audio_buffer.speech_stopped" not in h.types()
        lane.release.set()
        await h.settle()
        # read, and finished: the turn ends there and then, without asking again and
        # without more audio (a client that stops sending when its speech ends)
        assert h.at("input_audio_buffer.speech_stopped") == 1040
        assert len(turn_calls(h)) == 1
        assert h.one("input_audio_buffer.speech_stopped")["audio_end_ms"] == 640
