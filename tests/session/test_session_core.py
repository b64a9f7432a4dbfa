"""The session's logic on scripted engines and a fake clock (tests/support/harness.py): speculation,
barge-in, partial transcripts, the turn queue and cancellation, with exact timings.

Speech is fed in 20 ms appends; the VAD sees 32 ms windows; with the defaults a turn
starts after 96 ms of speech, is confirmed (barge-in) after 300 ms and ends after 500 ms
of silence.
"""

from __future__ import annotations

import asyncio
import base64

from server.stages import ChatRequest
from tests.support.harness import Harness, Keeper, harness, quiet, tone

MOON = "tell me about the moon"
ANSWER = "The moon is bright and full tonight, and it rises late."


def user_words(request: ChatRequest) -> list[str]:
    return [m.content for m in request.messages if m.role == "user"]


def after(h: Harness, kind: str) -> list[str]:
    """The event types sent after the first ``kind``."""
    names = h.types()
    return names[names.index(kind) + 1:]


def response_events(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("response.")]


async def test_a_spoken_turn_has_exact_timings() -> None:
    async with harness(finals=[MOON], replies=[ANSWER]) as h:
        await h.speech(640)
        await h.silence(800)
        started = h.one("input_audio_buffer.speech_started")
        stopped = h.one("input_audio_buffer.speech_stopped")
        assert (started["audio_start_ms"], stopped["audio_end_ms"]) == (0, 640)
        # 96 ms of speech starts a turn; 500 ms of silence after 640 ends it (the window
        # 1120-1152 ms ends in the append that reaches 1160 ms).
        assert h.at("input_audio_buffer.speech_started") == 100
        assert h.at("input_audio_buffer.speech_stopped") == 1160
        assert h.one("conversation.item.input_audio_transcription.completed")[
            "transcript"] == MOON
        done = h.one("response.done")["response"]
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["transcript"] == ANSWER


async def test_a_pause_that_resumes_drops_the_speculation_and_sends_nothing() -> None:
    whole = MOON + " and the stars"
    early = "About the moon and all of its many craters and seas."
    async with harness(finals=[MOON, whole], replies=[early, "About both."],
                       token_ms=100) as h:
        await h.speech(640)
        await h.silence(320)  # shorter than the 500 ms that ends a turn
        llm = h.engines.responder
        assert [user_words(r) for r in llm.requests] == [[MOON]]  # answered in the pause
        assert response_events(h.types()) == []  # ...but nothing sent
        await h.speech(640)
        # The prepared answer was stopped when speech resumed, in the middle of its stream.
        assert llm.closed == 1
        assert llm.words_sent[0] < len(early.split())
        assert response_events(h.types()) == []
        await h.silence(800)
        assert [user_words(r) for r in llm.requests] == [[MOON], [whole]]
        assert h.types().count("input_audio_buffer.committed") == 1
        assert h.one("input_audio_buffer.speech_stopped")["audio_end_ms"] == 1600
        assert h.one("response.done")["response"]["output"][0]["content"][0][
            "transcript"] == "About both."
        assert "craters" not in str(h.events)


async def test_a_pause_that_ends_the_turn_releases_the_prepared_answer_in_order() -> None:
    async with harness(finals=[MOON], replies=[ANSWER], first_ms=100, token_ms=20) as h:
        await h.speech(640)
        await h.silence(800)
        llm = h.engines.responder
        # The model was asked at the first silent window (640-672 ms, in the append that
        # reaches 680 ms), half a second before the turn was known to be over.
        assert [round((t - h.start) * 1000) for t in llm.asked_at] == [680]
        assert len(llm.requests) == 1
        stopped = h.at("input_audio_buffer.speech_stopped")
        assert stopped == 1160
        # Released at once, in order: the user's item first, then the whole answer.
        assert h.at("response.created") == stopped
        assert h.at("response.output_audio.delta") == stopped
        assert after(h, "input_audio_buffer.speech_stopped")[:6] == [
            "input_audio_buffer.committed", "conversation.item.added",
            "conversation.item.input_audio_transcription.completed", "conversation.item.done",
            "response.created", "conversation.item.added"]
        added = h.of("conversation.item.added")
        assert [a["item"]["role"] for a in added] == ["user", "assistant"]
        assert h.one("response.done")["response"]["output"][0]["content"][0][
            "transcript"] == ANSWER


async def test_a_session_update_in_the_pause_drops_the_prepared_answer() -> None:
    async with harness(finals=[MOON], replies=["Old answer.", "New answer."]) as h:
        await h.speech(640)
        await h.silence(200)
        llm = h.engines.responder
        assert len(llm.requests) == 1
        await h.send({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Answer in French."}})
        await h.silence(600)
        assert len(llm.requests) == 2
        assert llm.requests[1].messages[0].content == "Answer in French."
        assert llm.requests[0].messages[0].content != "Answer in French."
        transcripts = [d["response"]["output"][0]["content"][0]["transcript"]
                       for d in h.of("response.done")]
        assert transcripts == ["New answer."]
        assert "Old answer." not in str(h.events)


async def test_speech_over_an_answer_cancels_it_and_keeps_what_was_sent() -> None:
    words = " ".join(f"word{i}." for i in range(40))
    async with harness(finals=[MOON], replies=[words], token_ms=100) as h:
        await h.speech(640)
        await h.silence(800)
        assert "response.created" in h.types()
        await h.speech(500)
        done = h.one("response.done")["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "turn_detected"
        sent = "".join(d["delta"] for d in h.of("response.output_audio_transcript.delta"))
        kept = done["output"][0]["content"][0]["transcript"]
        assert kept == sent.strip()
        assert 0 < len(kept.split()) < 40
        assert h.engines.responder.closed == 1
        # Confirmed 300 ms into the new speech: the window ending at 1760 + 300 ms.
        assert h.at("response.done") == h.at("input_audio_buffer.speech_started", 1) + 220


async def test_partial_transcripts_send_only_words_two_hypotheses_agree_on() -> None:
    partials = ["the cat", "a cat sat", "a cat sat on", "a cat sat on the mat"]
    async with harness(finals=["a cat sat on the mat"], partials=partials,
                       speculate=False) as h:
        await h.speech(3900)
        deltas = [e["delta"] for e in h.of(
            "conversation.item.input_audio_transcription.delta")]
        assert deltas == ["a cat sat", " on"]
        assert [partial for _, partial in h.engines.asr.calls] == [True] * 4


async def test_each_partial_transcript_prepares_the_answer_while_the_user_speaks() -> None:
    partials = ["tell me", "tell me about", "tell me about the moon"]
    async with harness(finals=[MOON], partials=partials, replies=[ANSWER]) as h:
        await h.speech(2500)
        llm = h.engines.responder
        assert [user_words(r) for r in llm.prepared] == [["tell me"], ["tell me about"],
                                                         ["tell me about the moon"]]
        assert llm.requests == []  # prepared, not asked
        await h.silence(800)
        # The answer's prompt is the prepared one with the final words: the same prefix.
        assert [user_words(r) for r in llm.requests] == [[MOON]]
        assert llm.requests[0].messages[:-1] == llm.prepared[-1].messages[:-1]
        assert h.one("response.done")["response"]["status"] == "completed"


async def test_nothing_is_prepared_while_an_answer_plays_or_when_turned_off() -> None:
    async with harness(finals=[MOON], partials=["tell me about"] * 4, replies=[ANSWER],
                       prepare_words=False) as h:
        await h.speech(2500)
        assert h.engines.responder.prepared == []
    async with harness(finals=[MOON, MOON], partials=["tell me about"] * 8,
                       replies=[" ".join(["long"] * 60)], token_ms=100,
                       backchannel_words="") as h:
        await h.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "interrupt_response": False}}}}})
        await h.speech(640)
        await h.silence(800)
        before = len(h.engines.responder.prepared)
        await h.speech(2500)  # over the answer, still being made
        assert "response.done" not in h.types()
        assert len(h.engines.responder.prepared) == before


async def test_a_full_turn_queue_drops_the_turn_with_turn_queue_full() -> None:
    async with harness(finals=["one"] * 20, replies=[" ".join(["slow"] * 50)],
                       token_ms=1000) as h:
        await h.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "interrupt_response": False}}}}})
        for _ in range(11):
            await h.speech(160)
            await h.silence(544)
        errors = [e["error"]["code"] for e in h.of("error")]
        assert errors == ["turn_queue_full"]
        # One answer running, one turn waiting for it, eight queued: the eleventh dropped.
        assert h.types().count("input_audio_buffer.committed") == 11


async def test_response_cancel_during_the_llm_stream() -> None:
    ended, sent = Keeper("ended"), Keeper("sent")
    async with harness(finals=[MOON], replies=[ANSWER], first_ms=200, token_ms=100,
                       sinks=(ended, sent)) as h:
        await h.speech(640)
        await h.silence(600)
        await h.advance(450)  # the first token, then a few more
        await h.send({"type": "response.cancel"})
        done = h.one("response.done")["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "client_cancelled"
        # Every sink has the turn at once: an unanswered turn's figures are whole as it ends.
        assert [t.status for t in ended.turns] == [t.status for t in sent.turns] == [
            "cancelled"]
        assert sent.turns[0].said == done["output"][0]["content"][0]["transcript"]
        llm = h.engines.responder
        assert llm.closed == 1
        assert 0 < llm.words_sent[0] < len(ANSWER.split())
        before = len(h.events)
        await h.advance(5000)
        assert h.events[before:] == []
        await h.send({"type": "response.cancel"})
        assert h.of("error")[-1]["error"]["code"] == "response_cancel_not_active"


async def test_a_client_leaving_mid_answer_stops_everything() -> None:
    async with harness(finals=[MOON], replies=[ANSWER], token_ms=100) as h:
        await h.speech(640)
        await h.silence(700)
        session = h.session
        assert session.response is not None
        await session.close()
        await h.settle()
        assert session.response is None
        assert h.engines.responder.closed == 1
        assert h.clock.sleepers == 0  # nothing waits on the clock any more
        done = h.of("response.done")[-1]["response"]
        # cancelled for a reason the API has no name for: none is given
        assert (done["status"], done["status_details"]) == ("cancelled", {"type": "cancelled"})
        assert session.response is None


async def test_no_first_token_in_time_fails_the_response_on_the_clock() -> None:
    async with harness(finals=[MOON], replies=[ANSWER], first_ms=60_000,
                       speculate=False) as h:
        await h.speech(640)
        await h.silence(600)
        asked = h.at("input_audio_buffer.speech_stopped")  # the model is asked at once
        await h.advance(asked + 19_990 - h.ms)
        assert "response.done" not in h.types()
        await h.advance(20)
        assert h.one("error")["error"]["code"] == "llm_timeout"
        assert h.at("error") == asked + 20_000
        assert h.one("response.done")["response"]["status"] == "failed"
        assert h.engines.responder.closed == 1


async def test_audio_faster_than_real_time_past_the_burst_waits_on_the_clock() -> None:
    second = base64.b64encode(tone(1000)).decode()
    async with harness(max_append_s=1.0, audio_burst_s=2.0, audio_rate=1.5) as h:
        for _ in range(2):  # the burst: taken at once
            await h.send({"type": "input_audio_buffer.append", "audio": second})
        third = asyncio.create_task(
            h.send({"type": "input_audio_buffer.append", "audio": second}))
        await h.settle()
        # One second over the burst, refilled at 1.5 s per second: due in 666.7 ms.
        await h.advance(666)
        assert not third.done()
        await h.advance(1)
        await third
        assert h.session.buffer.total_ms == 3000


async def test_the_idle_timeout_counts_from_the_end_of_playback() -> None:
    async with harness(finals=[MOON, ""], replies=["Hello there."], ms_per_word=100) as h:
        await h.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "idle_timeout_ms": 2000}}}}})
        await h.speech(640)
        await h.silence(600)
        # Two words of answer, all sent when the turn ended at 1160 ms: it plays until
        # 1360 ms, so the idle wait counts from the input that arrived next, at 1380 ms,
        # and times out 2000 ms of input audio later.
        assert h.at("response.output_audio.delta") == 1160
        assert 1359 < h.session.echo.play_end * 1000 - h.start * 1000 < 1361
        await h.silence(2100)
        assert "input_audio_buffer.timeout_triggered" not in h.types()
        await h.silence(100)
        timeout = h.one("input_audio_buffer.timeout_triggered")
        assert (timeout["audio_start_ms"], timeout["audio_end_ms"]) == (1380, 3380)
        assert h.at("input_audio_buffer.timeout_triggered") == 3380
        assert h.types().count("response.created") == 2


async def test_every_millisecond_of_the_answer_is_sent() -> None:
    """The answer is resampled as one stream (16 kHz voice, 24 kHz out); the resampler's
    last few milliseconds come out only when the stream is flushed, after the last word."""
    async with harness(finals=[MOON], replies=["Hello there, friend."], ms_per_word=100) as h:
        await h.speech(640)
        await h.silence(600)
        await h.settle()
        deltas = h.of("response.output_audio.delta")
        samples = sum(len(base64.b64decode(d["delta"])) // 2 for d in deltas)
        assert h.one("response.done")["response"]["status"] == "completed"
        assert abs(samples - 3 * 100 * 24) <= 1, samples  # three words, 300 ms at 24 kHz


async def test_a_bad_response_temperature_names_its_param() -> None:
    async with harness() as h:
        await h.send({"type": "response.create", "event_id": "ev1",
                      "response": {"temperature": "hot"}})
        error = h.one("error")["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "invalid_value", "response.temperature", "ev1")


async def test_what_the_asr_engine_reports_reaches_the_turn_metrics() -> None:
    async with harness(finals=[MOON]) as h:
        h.engines.asr.details["path_short"] = 1.0
        await h.send({"type": "session.update", "session": {
            "type": "realtime", "voxwire": {"metrics": True}}})
        await h.speech(640)
        await h.silence(800)
        compute = h.one("voxwire.turn.metrics")["compute_ms"]
        assert compute["asr_path_short"] == 1.0


LONG = " ".join(f"word{i}." for i in range(40))


async def test_clearing_the_buffer_in_a_pause_drops_the_prepared_answer() -> None:
    async with harness(finals=[MOON], replies=[LONG], token_ms=100) as h:
        await h.speech(640)
        await h.silence(200)
        llm = h.engines.responder
        assert len(llm.requests) == 1 and llm.closed == 0  # answering the pause, behind a gate
        await h.send({"type": "input_audio_buffer.clear"})
        assert llm.closed == 1  # stopped at once, mid-stream
        assert llm.words_sent[0] < 5
        await h.silence(2000)
        assert response_events(h.types()) == []
        assert "input_audio_buffer.committed" not in h.types()


async def test_a_manual_commit_in_a_pause_drops_the_prepared_answer() -> None:
    async with harness(finals=[MOON, MOON], replies=[LONG], token_ms=100) as h:
        await h.speech(640)
        await h.silence(200)
        llm = h.engines.responder
        assert len(llm.requests) == 1 and llm.closed == 0
        await h.send({"type": "input_audio_buffer.commit"})
        assert llm.closed == 1
        assert llm.words_sent[0] < 5
        await h.silence(2000)
        assert h.types().count("input_audio_buffer.committed") == 1
        assert response_events(h.types()) == []  # a manual commit asks for no answer


async def test_clearing_or_committing_the_buffer_stops_a_partial_preview() -> None:
    for kind in ("input_audio_buffer.clear", "input_audio_buffer.commit"):
        async with harness(partial_interval_ms=200, speculate=False) as h:
            await h.speech(380)
            asr = h.engines.asr
            previews = [partial for _, partial in asr.calls].count(True)
            assert previews == 1  # at 200 ms; the next is due at 400 ms
            await h.send_now({"type": "input_audio_buffer.append",
                              "audio": base64.b64encode(tone(20)).decode()})
            await h.send_now({"type": kind})  # right behind the append that started one
            await h.settle()
            assert [partial for _, partial in asr.calls].count(True) == previews, kind


async def test_a_new_input_format_starts_turn_detection_over() -> None:
    async with harness(finals=[MOON]) as h:
        await h.speech(640)
        assert h.types().count("input_audio_buffer.speech_started") == 1
        streams = len(h.engines.vad.streams)
        await h.send({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}}}}})
        assert len(h.engines.vad.streams) == streams + 1  # a fresh VAD stream
        # The turn heard in the old format is dropped: its end is not waited for.
        await h.audio(quiet(1000, rate=24000))
        assert "input_audio_buffer.speech_stopped" not in h.types()
        assert "input_audio_buffer.committed" not in h.types()


