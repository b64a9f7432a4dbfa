"""The soak's short version: a real server, talking, idle and misbehaving sessions at once."""

from pathlib import Path

from bench import report, soak
from tests.bench.test_peers import free_port


def test_a_short_soak_answers_every_misbehaviour_and_leaks_nothing(tmp_path: Path) -> None:
    plan = soak.Plan(duration_s=20.0, talkers=1, idle=4, sample_s=1.0, pause_s=1.0,
                     quiet_turns=2, rtc_callers=0)
    result = soak.run(plan, free_port(), ["--asr-model", "tiny.en", "--device", "cpu"],
                      tmp_path / "soak.json")
    assert result["unexpected"] == []
    assert result["turns"]["completed"] >= 1 and result["turns"]["v2v_p95_ms"] > 0
    assert result["turns"]["quiet_total"] == 4  # two before the load, two after
    for kind in soak.MISDEEDS:  # each ran and got what it should have
        outcomes = result["misbehavers"][kind]["outcomes"]
        assert outcomes and all(soak.EXPECTED[kind](o) for o in outcomes), (kind, outcomes)
    assert result["misbehavers"]["huge"]["server_answers"] == {
        "1009": result["misbehavers"]["huge"]["runs"]}
    assert result["sessions"]["peak"] >= plan.idle + plan.talkers
    verdict = result["verdict"]
    assert verdict["sessions_released"] and verdict["fds_back"] and verdict["threads_back"]
    page = report.write(tmp_path, tmp_path / "docs").read_text()
    assert "## Soak" in page and "| sessions held | 0 |" in page


def test_a_short_soak_with_webrtc_calls_that_hang_up_or_vanish(tmp_path: Path) -> None:
    """WebRTC calls beside talkers and idle sessions: each asks one question and goes, some
    without a word; when the server has found them all, it holds nothing of them."""
    plan = soak.Plan(duration_s=30.0, talkers=1, idle=4, sample_s=1.0, quiet_turns=2,
                     rtc_callers=1, misdeeds=[])
    result = soak.run(plan, free_port(), ["--asr-model", "tiny.en", "--device", "cpu"],
                      tmp_path / "soak.json")
    assert result["unexpected"] == []
    rtc = result["webrtc"]
    assert rtc["calls"] >= 2 and rtc["failed"] == 0 and rtc["completed"] == rtc["calls"]
    assert rtc["vanished"] >= 1 and rtc["hung_up"] >= 1
    assert rtc["v2v_p50_ms"] > 0
    assert result["sessions"]["peak"] >= plan.idle + plan.talkers + 1
    verdict = result["verdict"]
    assert verdict["sessions_released"] and verdict["fds_back"] and verdict["threads_back"]
    assert result["resources"]["fds"]["max"] > result["resources"]["fds"]["start"]
    page = report.write(tmp_path, tmp_path / "docs").read_text()
    assert f"- WebRTC: 1 caller(s) made {rtc['calls']} calls" in page


def test_the_verdict_sees_growth_and_leaks() -> None:
    base = {"t_s": 0.0, "rss_mib": 500.0, "fds": 12.0, "threads": 11.0, "sessions": 0.0}
    minutes = [{**base, "t_s": 60.0 * n, "sessions": 9.0} for n in range(1, 31)]
    growing = [{**s, "rss_mib": 500.0 + 3 * n} for n, s in enumerate(minutes)]
    leaky = {**base, "fds": 14.0, "threads": 12.0, "sessions": 1.0}
    tally = soak.Tally()
    tally.fail("talker 0", "turn failed")
    result = soak.summarize(soak.Plan(), base, growing[:-1], growing[-1], leaky, tally)
    assert result["rss_mib_per_min"] == 3.0
    assert not any(result["verdict"].values())
    assert result["resources"]["fds"] == {"start": 12.0, "end": 12.0, "max": 12.0,
                                          "after": 14.0}
    # a step early on, then level, with the usual jitter: flat
    level = [{**s, "rss_mib": (550.0 if n > 3 else 500.0) + n % 2} for n, s in enumerate(minutes)]
    talked = soak.Tally()
    talked.quiet = [{"client_v2v_ms": ms, "status": "completed"} for ms in (600, 700, 800)]
    talked.turns = [{"client_v2v_ms": ms, "status": "completed"} for ms in (900, 1000, 2000)]
    flat = soak.summarize(soak.Plan(), base, level[:-1], level[-1], base, talked)
    assert flat["verdict"]["flat"], flat["rss_mib_per_min"]
    assert flat["turns"]["loaded_to_quiet_p50"] == 1.43
    talked.turns.append({"client_v2v_ms": 1200.0, "status": "completed"})
    slowed = soak.summarize(soak.Plan(), base, level[:-1], level[-1], base, talked)
    assert not slowed["verdict"]["talkers_within_ratio"] and not slowed["verdict"]["flat"]
