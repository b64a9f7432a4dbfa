"""The benchmark's own code stays working: one short question through the test server."""

from pathlib import Path

from bench.latency import ANSWERED, Fixture, make_fixtures, one_turn, speech_end, summarize
from client.realtime import silence


def test_speech_end_finds_the_last_loud_frame() -> None:
    import numpy as np

    audio = np.concatenate([silence(200, 24000), np.full(24000, 0.5, np.float32),
                            silence(500, 24000)])
    assert abs(speech_end(audio, 24000) - 1.2) < 0.011


async def test_one_turn_through_the_server(server_url: str) -> None:
    fixtures: list[Fixture] = make_fixtures(["What is the capital of France?"])
    turn = await one_turn(server_url, fixtures[0])
    assert turn["status"] in ANSWERED
    assert turn["client_v2v_ms"] > 0
    summary = summarize([turn], [{"asr": 1.0, "llm_first_token": 1.0, "first_sentence": 1.0,
                                  "tts_first_audio": 1.0}])
    assert summary["completed"] == 1
    assert summary["stages_ms"]["voice_to_voice"]["p50"] > 0
    assert summary["server_overhead_ms"] is not None


async def test_concurrency_step_and_report(server_url: str, tmp_path: Path) -> None:
    import json
    import os

    from bench import load, report

    stats = load.proc_stats(os.getpid())
    assert stats["rss_mib"] > 10 and stats["threads"] >= 1
    fixtures = make_fixtures(["What is the capital of France?"])
    step = await load.step(server_url, fixtures, 2, os.getpid())
    assert step["completed"] == 2 and step["v2v_p50_ms"] > 0
    assert step["endpoint_lag_p95_ms"] is not None
    (tmp_path / "load.json").write_text(json.dumps({"steps": [step],
                                                    "first_level_not_keeping_up": None}))
    page = report.write(tmp_path, tmp_path / "docs")
    text = page.read_text()
    assert "| 2 | 2 |" in text and (tmp_path / "docs/img/sessions.png").stat().st_size > 1000
