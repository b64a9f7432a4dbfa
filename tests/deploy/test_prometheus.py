"""deploy/prometheus.yml with a real Prometheus (Debian's `prometheus`) scraping a real
server on loopback, with its API key as a bearer token: the turn's per-stage histogram comes
back through Prometheus's HTTP API."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, KEY, Live, get
from tests.runtime.test_store import free_port

HISTOGRAM = "voxwire_stage_seconds"


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("prometheus is missing: `make sysdeps` installs it "
                    "(apt-get install prometheus)")
    return found


def scrape_config(target: str, key_file: Path) -> dict[str, Any]:
    """deploy/prometheus.yml's `voxwire` job, aimed at the test server, its key uncommented."""
    text = (DEPLOY / "prometheus.yml").read_text()
    assert "credentials_file:" in text  # the bearer token option, shown (commented) there
    cfg: dict[str, Any] = yaml.safe_load(text)
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "voxwire"]
    assert len(jobs) == 1
    job = jobs[0]
    job["static_configs"] = [{"targets": [target]}]
    job["authorization"] = {"type": "Bearer", "credentials_file": str(key_file)}
    cfg["global"]["scrape_interval"] = "1s"
    cfg["scrape_configs"] = [job]
    return cfg


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    status, body = await get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def stages_with_turns(metrics: str) -> set[str]:
    """The stages the server's own /metrics counts at least one observation of."""
    out = set()
    for line in metrics.splitlines():
        if line.startswith(f"{HISTOGRAM}_count{{"):
            labels, value = line.rsplit(" ", 1)
            if float(value) > 0:
                out.add(labels.split('stage="')[1].split('"')[0])
    return out


async def test_prometheus_scrapes_the_turns_stages(live: Live, tmp_path: Path) -> None:
    binary = prometheus_binary()
    key_file = tmp_path / "voxwire-api-key"
    key_file.write_text(KEY + "\n")
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(scrape_config(live.hostport, key_file)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=log, stderr=subprocess.STDOUT)
    try:
        status, metrics = await get(live.url + "/metrics", KEY)
        assert status == 200
        expected = stages_with_turns(metrics)
        assert {"asr", "voice_to_voice", "total"} <= expected, metrics
        got: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.returncode is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                found = await query(base, f'{HISTOGRAM}_bucket{{le="+Inf"}} > 0')
            except (OSError, AssertionError):
                found = []
            got = {r["metric"]["stage"] for r in found}
            if got >= expected:
                break
            await asyncio.sleep(0.5)
        assert got == expected, (tmp_path / "prometheus.log").read_text()[-2000:]
        up = await query(base, 'up{job="voxwire"}')
        assert [r["value"][1] for r in up] == ["1"]  # scraped with the bearer token
        # The dashboard's kind of query: a quantile per stage from the buckets.
        p95 = await query(base, f"histogram_quantile(0.95, sum by (stage, le) "
                                f"({HISTOGRAM}_bucket))")
        seconds = {r["metric"]["stage"]: float(r["value"][1]) for r in p95}
        assert set(seconds) >= expected
        assert 0 < seconds["voice_to_voice"] < 30
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
