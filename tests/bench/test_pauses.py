"""The pauses check (`bench/pauses.py`) against the real server: a hesitation of a second after
"um" ends no semantic_vad turn at medium eagerness, and ends server_vad's (500 ms of silence);
words that read unfinished hold a pause that the audio alone takes for an end."""

from __future__ import annotations

import numpy as np

from bench import pauses
from bench.fixtures import RATE
from server.audio import RATE as SERVER_RATE
from server.audio import resample
from server.runtime.engines import Engines
from server.stages.turns import EAGERNESS

UM = (["Um", "can you remind me to call the dentist?"], [1000])


def test_the_parts_and_pauses_are_where_the_fixture_put_them() -> None:
    fx = pauses.spoken(*UM, voice="piper")
    (a, b), (c, d) = fx.parts_ms
    assert a == pauses.LEAD_MS and c - b == 1000 and d == len(fx.audio) * 1000 // RATE
    assert fx.pauses_ms == [(b, c)] and fx.last_part_ms == c
    assert d - 10 <= fx.speech_end_s * 1000 <= d
    gap = fx.audio[(b + 5) * RATE // 1000:(c - 5) * RATE // 1000]
    assert len(gap) and not np.any(gap)
    assert pauses._pause_of(fx, b + 100) == 1000 and pauses._pause_of(fx, a + 50) is None


def test_every_utterance_hesitates_within_the_range() -> None:
    assert len(pauses.HESITATIONS) >= 20
    assert len({" ".join(clips) for clips, _ in pauses.HESITATIONS}) == len(pauses.HESITATIONS)
    gaps = [g for clips, gaps in pauses.HESITATIONS for g in gaps]
    assert all(300 <= g <= 1500 for g in gaps) and {300, 1500} <= set(gaps)
    assert all(len(gaps) == len(clips) - 1 for clips, gaps in pauses.HESITATIONS)


def test_the_summary_counts_cut_offs_by_pause_length() -> None:
    items = [{"pauses_ms": [400, 1200], "cut_off": True, "cut_in_pauses_ms": [1200],
              "settled": True, "errors": []},
             {"pauses_ms": [700], "cut_off": False, "cut_in_pauses_ms": [], "settled": True,
              "errors": []}]
    ends = [{"end_delay_ms": d, "cut_off": False, "settled": True, "errors": []}
            for d in (500, 600, 700)]
    s = pauses.summary(items, ends)
    assert (s["utterances"], s["cut_off"], s["cut_off_rate"], s["pauses_cut"]) == (2, 1, 0.5, 1)
    assert s["by_pause_ms"] == {"300-600": {"pauses": 1, "cut": 0},
                                "650-1000": {"pauses": 1, "cut": 0},
                                "1050-1500": {"pauses": 1, "cut": 1}}
    assert (s["questions_ended"], s["end_ms_p50"], s["end_ms_max"]) == (3, 600, 700)


async def test_a_second_after_um_ends_no_medium_turn_but_ends_server_vads(
        server_url: str) -> None:
    fx = pauses.spoken(*UM, voice="piper")
    semantic = await pauses.one_item(server_url, fx, pauses.MODES["semantic_vad medium"])
    assert semantic["settled"] and not semantic["errors"], semantic
    assert not semantic["cut_off"] and semantic["turns"] == 1, semantic
    assert semantic["responses"] == 0  # create_response: false
    assert semantic["end_delay_ms"] is not None and 0 < semantic["end_delay_ms"] < 4000
    plain = await pauses.one_item(server_url, fx, pauses.MODES["server_vad"])
    assert plain["cut_off"] and plain["turns"] == 2 and plain["cut_in_pauses_ms"] == [1000], plain
    # The turn that ends the utterance ends after server_vad's silence, give or take the VAD.
    assert plain["end_delay_ms"] is not None and 400 < plain["end_delay_ms"] < 1500, plain


UNFINISHED = (["Send a message to Anna saying", "that I will be late."], [700])


async def test_words_that_read_unfinished_hold_a_pause_the_audio_finds_finished(
        server_url: str, engines: Engines) -> None:
    fx = pauses.spoken(*UNFINISHED, voice="piper")
    # The audio alone: Smart Turn on the first part and 200 ms of its pause (where `high`
    # first asks) finds it finished, so `high` would end the turn there.
    end_ms = fx.parts_ms[0][1] + 200
    first = resample(fx.audio[:end_ms * RATE // 1000], RATE, SERVER_RATE)
    assert engines.turn is not None and engines.turn_text is not None
    audio_says = engines.turn.complete(first)
    assert audio_says >= EAGERNESS["high"].threshold, audio_says
    # The words ("Send a message to Anna saying") read unfinished, and hold it: one turn, not two.
    high = await pauses.one_item(server_url, fx, pauses.MODES["semantic_vad high"])
    assert high["settled"] and not high["errors"], high
    assert not high["cut_off"] and high["turns"] == 1, high
