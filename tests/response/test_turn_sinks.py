"""Each turn's record reaches every sink the session was given, at its moment: the "ended"
ones before `response.done`, the "sent" ones once the first audio has left; a sink that
fails breaks neither the others nor the session."""

from __future__ import annotations

from server.errors import StoreError
from tests.support.harness import Keeper, harness

MOON = "tell me about the moon"
ANSWER = "The moon is bright and full tonight, and it rises late."
STARS = "and the stars"
BOTH = "Both shine."


async def test_every_sink_gets_the_turn_and_a_failing_one_breaks_nothing() -> None:
    ended, broken_store = Keeper("ended"), Keeper("ended", StoreError("the disk is full"))
    broken_log, sent = Keeper("sent", RuntimeError("the log is gone")), Keeper("sent")
    sinks = (ended, broken_store, broken_log, sent)
    async with harness(finals=[MOON, STARS], replies=[ANSWER, BOTH], sinks=sinks) as h:
        await h.speech(640)
        await h.silence(3000)
        done = h.one("response.done")["response"]
        item_id = h.one("conversation.item.input_audio_transcription.completed")["item_id"]
        for sink in sinks:
            assert len(sink.turns) == 1
            turn = sink.turns[0]
            assert (turn.response_id, turn.user_item_id, turn.status) == (
                done["id"], item_id, "completed")
            assert (turn.user_text, turn.said, turn.tools) == (MOON, ANSWER, ())
            assert turn.session_id == h.session.id and turn.audio_ms > 0
        # "ended": before response.done, whose figures stop at response_done; "sent": with
        # the first audio's departure counted.
        assert "response_done" in ended.turns[0].timings.marks_ms
        assert "voice_to_voice" in sent.turns[0].timings.stages_ms
        # The failing store is told to the client, before response.done; the failing log
        # is the server's own business: logged, not told.
        names = h.types()
        errors = h.of("error")
        assert len(errors) == 1 and "the disk is full" in errors[0]["error"]["message"]
        assert names.index("error") < names.index("response.done")

        await h.speech(640)  # the session goes on
        await h.silence(3000)
        second = h.of("response.done")[1]["response"]
        assert second["status"] == "completed"
        for sink in sinks:
            assert [t.said for t in sink.turns] == [ANSWER, BOTH]

