"""The turn model for real: Smart Turn v3.2 on its own features, on speech spoken here.

The features are checked against faster-whisper's own numpy log-mel (the same Whisper
recipe, written independently); the model against finished questions and sentences that
trail off, each spoken by piper and by espeak-ng, followed by 200 ms of silence: what the
session hands it at the first question of a pause.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from server.errors import ConfigError
from server.runtime import config
from server.runtime.config import Settings
from server.runtime.engines import Engines, load_turn, load_turn_text
from server.stages import TurnModel
from server.stages.turn_smart import SAMPLES, last_window, log_mel
from server.stages.turn_text import trails_off
from server.stages.turns import EAGERNESS
from tests.e2e.test_e2e import Speak

FINISHED = ("Can you tell me what the weather will be like tomorrow?",
            "What is the capital of France?", "Set a timer for ten minutes.")
# Synthetic voices speak a sentence cut short with falling, final intonation, and the
# model hears prosody more than words: these trail off in hesitations, as people do.
TRAILING = ("I would like to book a table for, um, and then", "I would like to, um,",
            "I was going to say that, um,")
SILENCE_MS = 200


def turn_of(engines: Engines) -> TurnModel:
    assert engines.turn is not None, "the server loads the turn model by default"
    return engines.turn


def test_the_features_are_whisper_log_mel_of_the_normalised_last_8_s(speak: Speak) -> None:
    speech = speak(FINISHED[0], "espeak")
    window = last_window(speech)
    assert window.shape == (SAMPLES,) and not window[:SAMPLES - len(speech)].any()
    np.testing.assert_array_equal(window[-len(speech):], speech)
    features = log_mel(window)
    assert features.shape == (80, 800) and features.dtype == np.float32
    normalised = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    reference = FeatureExtractor(chunk_length=8)(normalised, padding=0)
    np.testing.assert_allclose(features, reference, atol=1e-4)


@pytest.mark.parametrize("voice", ["piper", "espeak"])
def test_finished_turns_score_high_and_trailing_ones_low(
        engines: Engines, speak: Speak, voice: str) -> None:
    model = turn_of(engines)
    pause = np.zeros(SILENCE_MS * 16, np.float32)

    def score(text: str) -> float:
        return model.complete(np.concatenate([speak(text, voice), pause]))

    finished = [score(t) for t in FINISHED]
    trailing = [score(t) for t in TRAILING]
    assert min(finished) > 0.8 and max(trailing) < 0.2, (finished, trailing)


def test_the_turn_settings_and_their_flags() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(["--turn-detection", "semantic_vad", "--turn-engine", "none"])
    with pytest.raises(ConfigError, match="semantic_vad needs a turn model"):
        config.from_sources(args, env={})
    assert load_turn(Settings(turn_engine="none")) is None
    with pytest.raises(ConfigError, match="turn_engine must be one of"):
        Settings(turn_engine="nope")


# ---------------------------------------------------------------------- the words

# Transcripts as Whisper wrote them at pauses of the pause fixtures (bench/pauses.py), and
# of finished questions.
UNFINISHED_WORDS = ("I would like to", "Send a message to Anna saying",
                    "I went to the shop and then", "So I was thinking", "What was the name of")
FINISHED_WORDS = ("What is the capital of France?", "How do I make a cup of tea?",
                  "Tell me something interesting about the moon.",
                  "Could you tell me what the weather is like in London today?")


def test_the_text_turn_model_reads_unfinished_phrases_from_finished_questions(
        engines: Engines) -> None:
    reader = engines.turn_text
    assert reader is not None, "the server loads the text turn model with the turn model"
    unfinished = [reader.complete(t) for t in UNFINISHED_WORDS]
    finished = [reader.complete(t) for t in FINISHED_WORDS]
    threshold = EAGERNESS["medium"].text_threshold
    assert max(unfinished) < threshold / 3 and min(finished) > 0.3, (unfinished, finished)
    # Its cache of the template's start changes nothing: the same words, the same answer.
    assert reader.complete(FINISHED_WORDS[0]) == pytest.approx(finished[0], abs=1e-4)
    assert reader.complete("   ") == 0.0  # no words, no opinion that it is finished


@pytest.mark.parametrize(("text", "unfinished"), [
    ("I would like to.", True), ("Set an alarm for", True), ("What was the name of...", True),
    ("I went to the shop and then.", True), ("So I was thinking, um.", True),
    ("Tea or coffee and", True), ("Book a table for four.", False),
    ("Where are you from?", False), ("What is it for?", False), ("See you then.", False),
    ("I think so.", False), ("What is that?", False),
    ("Set a timer for 10 minutes.", False), ("", False), ("...", False)])
def test_a_phrase_that_stops_on_a_word_no_sentence_ends_on_trails_off(
        text: str, unfinished: bool) -> None:
    assert trails_off(text) is unfinished


def test_the_text_turn_model_reads_a_trailing_phrase_as_unfinished_whatever_it_thinks(
        engines: Engines) -> None:
    reader = engines.turn_text
    assert reader is not None, "the server loads the text turn model with the turn model"
    # SmolLM2-135M alone puts "I would like to." above a finished request, and above the
    # `high` eagerness's threshold; the rule holds it.
    assert reader.complete("Set a timer for 10 minutes.") >= EAGERNESS["high"].text_threshold
    assert reader.complete("I would like to.") == 0.0
    assert reader.complete("Set an alarm for.") == 0.0


def test_the_text_turn_model_setting() -> None:
    assert load_turn_text(Settings(turn_text_engine="none")) is None
    with pytest.raises(ConfigError, match="turn_text_engine must be one of"):
        Settings(turn_text_engine="nope")
