"""The side-by-side benchmark (`make bench-peers`): the same client measures Voxwire and Pipecat."""

import json
import socket
from pathlib import Path

import pytest

from bench import report
from bench.latency import make_fixtures
from bench.peers import __main__ as peers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_voxwire_turns_are_measured_and_a_failed_turn_is_recorded(server_url: str) -> None:
    fixtures = make_fixtures(["What is the capital of France?"])
    turns = await peers.measure(server_url, fixtures, "voxwire.turn.metrics")
    summary = peers.summarize("voxwire", turns)
    assert summary["completed"] == 1 and summary["wer"] == 0.0
    assert summary["v2v_ms"]["p50"] > 0 and summary["turn_end_ms"]["p50"] > 0
    assert summary["stages_ms"]["end of turn"]["p50"] > 0
    nobody = await peers.measure(f"http://127.0.0.1:{free_port()}", fixtures,
                                 "voxwire.turn.metrics")
    assert nobody[0]["status"].startswith("failed") and nobody[0]["client_v2v_ms"] is None


@pytest.mark.foreign_events  # Pipecat's server sends its own `pipecat.turn.metrics`
@pytest.mark.skipif(not peers.PEERS_PYTHON.is_file(),
                    reason="Pipecat's environment .venv-peers is missing (make bench-peers)")
async def test_pipecat_speaks_the_clients_events_and_the_report_shows_both(
        server_url: str, tmp_path: Path) -> None:
    fixtures = make_fixtures(["What is the capital of France?"])
    vox = await peers.measure(server_url, fixtures, "voxwire.turn.metrics")
    with peers.pipecat(free_port(), free_port(), "tiny.en", tmp_path) as url:
        pc = await peers.measure(url, fixtures, "pipecat.turn.metrics")
    turn = pc[0]
    assert turn["status"] == "completed", (tmp_path / "pipecat.log").read_text()[-3000:]
    assert "capital of france" in turn["transcript"].lower()
    assert turn["client_v2v_ms"] > 0 and turn["endpoint_ms"] > 0
    assert turn["stages_ms"]["endpointing_wait"] > 0 and turn["stages_ms"]["voice_to_voice"] > 0
    res = {"machine": {"cpu": "test", "cores": 2, "python": "3.11"},
           "settings": {"voices": "piper"},
           "peer_versions": peers.peer_versions(), "stage_keys": peers.STAGES,
           "systems": {"voxwire": peers.summarize("voxwire", vox),
                       "pipecat": peers.summarize("pipecat", pc)}, "p50_ratio": 2.0}
    assert res["peer_versions"]["pipecat-ai"].startswith("1.")
    (tmp_path / "peers.json").write_text(json.dumps(res))
    page = report.write(tmp_path, tmp_path / "docs").read_text()
    assert "## Beside Pipecat" in page and "| turns completed | 1/1 | 1/1 |" in page
    assert "(`endpoint` / `endpointing_wait` + `turn_detection`)" in page
    assert "| turns ended more than 2 s after the speech |" in page
