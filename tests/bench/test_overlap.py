"""The overlap fixtures (`bench/overlap.py`) against the real server: a backchannel over a
long answer leaves it playing and is kept; words interrupt it."""

from __future__ import annotations

from bench import overlap
from bench.fixtures import trim
from server.runtime.config import Settings
from server.session.overlap import is_backchannel, phrases


async def test_a_backchannel_plays_on_and_words_interrupt(story_server_url: str) -> None:
    url = story_server_url.replace("http://", "ws://") + "/v1/realtime"
    question = trim(overlap.VOICES["piper"](overlap.QUESTION, overlap.RATE), overlap.RATE)
    back = await overlap.one_session(url, question, overlap.fixture(0, "Uh-huh."), True)
    assert not back["interrupted"] and back["first_answer"] != "cancelled", back
    assert len(back["heard"]) == 2, back  # kept, as what it was
    assert is_backchannel(back["heard"][1], phrases(Settings.backchannel_words)), back
    stop = await overlap.one_session(url, question, overlap.fixture(0, "Stop, what time is it?"),
                                     True)
    assert stop["interrupted"] and stop["first_answer"] == "cancelled", stop
    assert stop["latency_ms"] is not None and 0 < stop["latency_ms"] < 3000, stop
    assert stop["cancel_ms"] is not None and stop["cancel_ms"] >= stop["latency_ms"], stop


def test_the_summary_counts_each_kind() -> None:
    rows = [{"kind": "backchannel", "backchannels": True, "interrupted": False},
            {"kind": "backchannel", "backchannels": False, "interrupted": True},
            {"kind": "interruption", "backchannels": True, "interrupted": True,
             "latency_ms": 600},
            {"kind": "interruption", "backchannels": True, "interrupted": False,
             "latency_ms": None}]
    s = overlap.summary(rows)
    assert s["backchannels_on"] == {"fixtures": 1, "interrupted": 0}
    assert s["backchannels_off"] == {"fixtures": 1, "interrupted": 1}
    assert s["interruptions"] == {"fixtures": 2, "detected": 1, "latency_ms_p50": 600,
                                  "latency_ms_max": 600, "cancel_ms_p50": None}
    assert s["plain_barge_in"] == {"speech_started_ms_p50": None, "cancel_ms_p50": None}
