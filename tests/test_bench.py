"""The benchmark's own code stays working: one short question through the test server."""

from bench.latency import Fixture, make_fixtures, one_turn, speech_end, summarize
from client.realtime import silence


def test_speech_end_finds_the_last_loud_frame() -> None:
    import numpy as np

    audio = np.concatenate([silence(200, 24000), np.full(24000, 0.5, np.float32),
                            silence(500, 24000)])
    assert abs(speech_end(audio, 24000) - 1.2) < 0.011


async def test_one_turn_through_the_server(server_url: str) -> None:
    fixtures: list[Fixture] = make_fixtures(["What is the capital of France?"])
    turn = await one_turn(server_url, fixtures[0])
    assert turn["status"] == "completed"
    assert turn["client_v2v_ms"] > 0
    summary = summarize([turn], [{"asr": 1.0, "llm_first_token": 1.0, "first_sentence": 1.0,
                                  "tts_first_audio": 1.0}])
    assert summary["completed"] == 1
    assert summary["stages_ms"]["voice_to_voice"]["p50"] > 0
    assert summary["server_overhead_ms"] is not None
