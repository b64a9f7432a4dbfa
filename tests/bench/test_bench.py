"""The benchmark's own code stays working: one short question through the test server."""

import shutil
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


def test_a_short_latency_run_over_both_transports(tmp_path: Path) -> None:
    """Two questions over the WebSocket and over WebRTC from one server, the server's CPU per
    call, the JSON and its report: the WebRTC row beside the WebSocket one."""
    import json

    from bench import latency, report
    from tests.bench.test_peers import free_port

    out = tmp_path / "latency.json"
    latency.run(["tiny.en"], "short", "cpu", 1, free_port(), None, out, cost_window_s=2.0)
    results = json.loads(out.read_text())
    assert results["settings"]["transports"] == ["websocket", "webrtc"]
    runs = results["runs"]
    assert {r["transport"] for r in runs.values()} == {"websocket", "webrtc"}
    for run in runs.values():
        assert run["completed"] == run["turns"] == 2
        assert all(t["client_v2v_ms"] > 0 for t in run["raw"]), run["raw"]
        assert run["stages_ms"]["client_voice_to_voice"]["p50"] > 0
    rtc = next(r for r in runs.values() if r["transport"] == "webrtc")
    assert all(t["transport"] == "webrtc" and t["started_ms"] > 0 for t in rtc["raw"])
    # The answer's first voiced frame comes after the server said it started playing it.
    assert all(t["client_v2v_ms"] >= t["started_ms"] for t in rtc["raw"]), rtc["raw"]
    (cost,) = results["cpu_per_call"].values()
    assert set(cost["cpu_s_per_s"]) == {"websocket_idle", "webrtc_idle", "websocket_talking",
                                        "webrtc_talking"}
    assert cost["cpu_s_per_s"]["webrtc_talking"] > 0 and cost["cpu_s_per_s"]["webrtc_idle"] > 0
    # Spliced into a page that has other sections: they stay as they were.
    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    page.write_text("# Title\n\n## Voice-to-voice latency, stage by stage\n\n"
                    "the last run's figures\n\n## Concurrent sessions\n\nkept\n")
    text = report.splice_latency(tmp_path, tmp_path / "docs").read_text()
    assert "the last run's figures" not in text
    assert text.startswith("# Title\n") and text.endswith("## Concurrent sessions\n\nkept\n")
    assert "| webrtc | 2/2 |" in text and "| idle |" in text and "| talking |" in text


def test_the_page_keeps_its_hand_written_sections_and_peers_splice_only_theirs(
        tmp_path: Path) -> None:
    from bench import report

    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "benchmarks.md"
    page.write_text("# Voxwire benchmarks\n\n## Soak: old\n\nold soak\n\n"
                    "## Pauses inside a turn\n\nmeasured by hand\n\n## GPU\n\nold\n")
    text = report.write(tmp_path, docs).read_text()
    assert "## Pauses inside a turn\n\nmeasured by hand\n" in text
    assert "old soak" not in text  # a generated section is made again (no soak.json: none)
    assert text.count("## GPU") == 1 and text.index("## Pauses") < text.index("## GPU")
    # The Pipecat run splices its own section in and leaves the rest as it is.
    shutil.copy(Path("bench/results/peers.json"), tmp_path / "peers.json")
    spliced = report.splice_peers(tmp_path, docs).read_text()
    assert spliced.count("## Beside Pipecat") == 1 and "measured by hand" in spliced
