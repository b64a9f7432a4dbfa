"""The asr_paths check: every Whisper path scored per clip length, per voice and per set."""

from __future__ import annotations

from bench import asr_paths
from bench.fixtures import speak_piper


def test_length_buckets_are_by_seconds_of_speech() -> None:
    assert asr_paths.bucket(0.8) == "under 1.25 s"
    assert asr_paths.bucket(1.25) == "1.25-1.5 s"
    assert asr_paths.bucket(1.99) == "1.5-2 s"
    assert asr_paths.bucket(2.0) == asr_paths.bucket(12.0) == "2 s and more"
    assert asr_paths.bucket_labels() == ["under 1.25 s", "1.25-1.5 s", "1.5-2 s", "2 s and more"]


def test_short_question_set_is_large_and_short() -> None:
    assert len(asr_paths.SHORT_QUESTIONS) >= 30
    assert len(set(asr_paths.SHORT_QUESTIONS)) == len(asr_paths.SHORT_QUESTIONS)
    assert all(len(q.split()) <= 11 for q in asr_paths.SHORT_QUESTIONS)  # up to about 3 s
    assert "espeak en-us+m3" in asr_paths.question_voices()
    assert len(asr_paths.question_voices()) >= 3


def test_check_reports_each_path_per_bucket_voice_and_set() -> None:
    result = asr_paths.check(
        "tiny.en", 15.0, ["Add two cartons of milk to my shopping list."],
        questions=["Who wrote Hamlet?", "What is the capital of France?"],
        sentence_speakers={"piper": speak_piper},
        question_speakers={"piper": speak_piper,
                           "espeak en-us+m3": asr_paths.espeak("en-us+m3")})
    assert result["clips"] == 5
    assert result["sets"] == ["sentences", "short questions"]
    assert result["voices"] == ["piper", "espeak en-us+m3"]
    assert result["buckets"][0] == "under 1.25 s"  # "Who wrote Hamlet?": about a second
    assert {i["bucket"] for i in result["items"]} == set(result["buckets"])
    assert set(result["paths"]) == set(asr_paths.PATHS)
    for name, path in result["paths"].items():
        assert path["clips"] == 5 and path["words"] == result["words"]
        assert 0 <= path["wer"] <= 100 and path["median_ms"] > 0, name
        for key, groups in (("by_bucket", result["buckets"]), ("by_voice", result["voices"]),
                            ("by_set", result["sets"])):
            assert list(path[key]) == groups
            assert sum(g["clips"] for g in path[key].values()) == 5
            assert sum(g["words"] for g in path[key].values()) == result["words"]
            assert all(g["wer"] is not None and g["median_ms"] > 0
                       for g in path[key].values())
    for item in result["items"]:
        assert set(item["texts"]) == set(item["ms"]) == set(asr_paths.PATHS)
    assert result["paths"]["padded"]["fallbacks"] == 0  # counted for the short window only
    assert isinstance(result["goal_met"], bool)
    report = "\n".join(asr_paths.section(result))
    for label in (*result["buckets"], *result["voices"], "final (15 s window, beam"):
        assert label in report
