"""The evaluation suite's own code stays working: scoring, signals, and one item per kind."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from bench import evaluate as ev
from bench.fixtures import RATE, chords, cough, dbfs, joined, peak_dbfs, room_noise, speak_piper
from bench.latency import Fixture, make_fixtures
from client.realtime import Float32, silence
from server.runtime.engines import Engines
from tests.stages.test_backends import backend, serving
from tests.support.fakes import FakeProvider, Reply

SENTENCE = "Set a timer for fifteen minutes."


@pytest.fixture(scope="module")
def sentence() -> Fixture:
    return make_fixtures([SENTENCE])[0]


@pytest.fixture(scope="module")
def hello() -> Float32:
    return speak_piper("Hello, can you hear me?")


# ---------------------------------------------------------------------- scoring


def test_normalise_lower_cases_strips_punctuation_and_spells_small_numbers() -> None:
    assert ev.normalise("It's 7 o'clock, SEVEN!") == ["its", "seven", "oclock", "seven"]
    assert ev.normalise("Add 2 cartons; 20 or 21?") == ["add", "two", "cartons", "twenty", "or",
                                                      "21"]


def test_word_error_rate_counts_edits_over_reference_words() -> None:
    assert ev.edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2  # a swap, an insertion
    assert ev.edit_distance(["a", "b"], []) == 2
    assert ev.edit_distance([], ["a"]) == 1
    assert ev.wer([(SENTENCE, "set a timer for 15 minutes")]) == 0.0
    assert ev.wer([("one two three four", "one three four five")]) == 0.5
    # Pooled: one edit in each sentence over six words in all, not the mean of 1/2 and 1/4.
    assert ev.wer([("a b", "a"), ("c d e f", "c d e g")]) == pytest.approx(2 / 6)


def test_field_scoring_reads_the_first_json_object() -> None:
    label = ev.LABELS[0]
    answer = ('Sure! {"product": "organic apple juice", "price": "$3.49", "date": "2024-05-12", '
              '"code": "AJ 4821"} Anything else? {"product": "x"}')
    assert ev.score_fields(label, answer)["score"] == 1.0
    assert ev.score_fields(label, answer.replace("3.49", "3.50"))["right"] == [
        "product", "date", "code"]
    assert ev.score_fields(label, "No JSON here.")["score"] == 0.0
    assert ev.first_json('{"a": {"b": 1}, }') == {"b": 1}  # the outer object is not valid JSON


# ---------------------------------------------------------------------- signals


def test_synthetic_sounds_have_their_length_and_level() -> None:
    noise = room_noise(5.0)
    assert len(noise) == 5 * RATE and dbfs(noise) == pytest.approx(-45.0, abs=0.1)
    music = chords()
    assert len(music) == 4 * RATE and peak_dbfs(music) == pytest.approx(-12.0, abs=0.1)
    coughs = cough()
    assert len(coughs) == int(0.85 * RATE) and peak_dbfs(coughs) == pytest.approx(-10.0, abs=0.1)
    loud = np.abs(coughs) > 10 ** (-40 / 20)  # two bursts with a gap between them
    assert loud[: RATE // 4].any() and not loud[int(0.4 * RATE):int(0.5 * RATE)].any()
    clip = np.ones(RATE // 10, np.float32)
    assert len(joined([clip, clip, clip], [250, 350])) == 3 * len(clip) + int(0.6 * RATE)


def test_the_speaker_leaks_its_sound_late_and_attenuated() -> None:
    speaker = ev.Speaker(gain_db=-15.0, delay_ms=60)
    speaker.feed(np.ones(2400, np.float32))
    mic = np.concatenate([speaker.play(960) for _ in range(4)])
    assert not mic[:1440].any()
    assert mic[1440:3840] == pytest.approx(10 ** (-15 / 20))
    assert not mic[3840:].any() and not speaker.busy and speaker.played == 2400


# ---------------------------------------------------------------------- through the server


async def test_one_sentence_streamed_and_offline(server_url: str, sentence: Fixture) -> None:
    item = await ev.transcribe_item(server_url, "piper", sentence)
    assert item["settled"] and item["turns"] == 1 and not item["errors"]
    assert ev.normalise(item["streaming"]) == ev.normalise(SENTENCE)
    offline = await asyncio.to_thread(ev.offline_transcripts, "tiny.en", [sentence.audio])
    assert ev.normalise(offline[0]) == ev.normalise(SENTENCE)


async def test_a_paused_sentence_is_one_turn_and_nothing_leaks_before_its_end(
        server_url: str) -> None:
    clips, gaps = ev.PAUSED[0]
    item = await ev.paused_item(server_url, ev.paused_fixture(clips, gaps), gaps)
    assert item["settled"] and not item["errors"]
    assert (item["speech_stopped"], item["turns"]) == (1, 1)
    assert item["early_response_events"] == 0 and item["answered"]


async def test_non_speech_counting(server_url: str, hello: Float32) -> None:
    quiet = await ev.listen_item(server_url, "silence", silence(1000, RATE))
    assert (quiet["speech_started"], quiet["turns"], quiet["transcripts"], quiet["responses"]) \
        == (0, 0, [], 0)
    assert quiet["settled"] and quiet["rms_dbfs"] is None
    speech = await ev.listen_item(server_url, "speech", hello)  # the counters do count
    assert (speech["speech_started"], speech["turns"], len(speech["transcripts"]),
            speech["responses"]) == (1, 1, 1, 1)


async def test_a_label_read_right_scores_full_marks(engines: Engines) -> None:
    label = ev.LABELS[1]
    async with FakeProvider() as fake:
        fake.script(Reply(text="Here it is: " + json.dumps(label)))
        async with serving(engines, **backend("openai", fake.url)) as url:
            item = await ev.vision_item(url, label)
    assert item["score"] == 1.0 and item["can_see"]
    sent = fake.requests[-1].body["messages"][-1]["content"]
    assert [part["type"] for part in sent] == ["text", "image_url"]


async def test_a_model_that_cannot_see_is_marked(server_url: str) -> None:
    item = await ev.vision_item(server_url, ev.LABELS[0])  # the embedded text model
    assert not item["can_see"] and not item["errors"]


def test_a_server_url_may_be_given_either_way() -> None:
    assert ev.http_url("ws://127.0.0.1:8765/v1/realtime") == "http://127.0.0.1:8765"
    assert ev.http_url("wss://kiosk.local/v1/realtime/") == "https://kiosk.local"
    assert ev.http_url("http://127.0.0.1:8765") == "http://127.0.0.1:8765"


def test_the_report_renders_a_check_stored_in_an_earlier_format() -> None:
    stored = {"machine": {"cpu": "test", "cores": 2}, "seconds": 1, "settings": {"asr": "tiny.en"},
              "checks": {"asr_paths": {"clips": 3, "words": 9, "padded": 1.0, "short": 2.0}}}
    md = ev.render(stored)
    assert "Stored in an earlier format" in md
