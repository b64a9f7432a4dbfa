"""deploy/grafana/voxwire.json: every metric its panels query is one the real server exports
(after a spoken turn and an error, so that the histograms and counters exist)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.deploy.conftest import DEPLOY, KEY, Live, get, metric_names

DASHBOARD = DEPLOY / "grafana" / "voxwire.json"
METRIC = re.compile(r"\b((?:voxwire|container|process|node|kube)_[a-zA-Z0-9_:]*)\b")
# Queried by the dashboard but not the server's own.
ELSEWHERE = {
    # The server exports no RSS of its own; the kubelet's cAdvisor has every container's.
    "container_memory_rss": "the kubelet (cAdvisor)",
}
# One counter per transport: this test's turn went over the WebSocket, and the WebRTC
# counter is the same one under the other transport's name (server/runtime/metrics.py).
PER_TRANSPORT = {"voxwire_turns_webrtc_total": "voxwire_turns_websocket_total"}


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)  # rows hold panels


def queries() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in panels(dashboard)}
    out["variables"] = [v["query"] for v in dashboard["templating"]["list"]]
    return out


def test_every_panel_queries_something() -> None:
    titles = set(queries())
    for wanted in ("Voice to voice by stage, p95", "Sessions active", "Errors",
                   "Memory (RSS)", "Turns by transport"):
        assert wanted in titles
    for title, exprs in queries().items():
        assert exprs and all(METRIC.search(e) for e in exprs), title


async def test_every_metric_the_dashboard_queries_is_exported(live: Live) -> None:
    status, text = await get(live.url + "/metrics", KEY)
    assert status == 200
    exported = metric_names(text)
    missing = {}
    for title, exprs in queries().items():
        for expr in exprs:
            for name in METRIC.findall(expr):
                if name in ELSEWHERE:
                    continue
                if PER_TRANSPORT.get(name, name) not in exported:
                    missing[name] = title
    assert not missing, f"not in the server's /metrics: {missing}"
    # The stage labels the panels pick exist too.
    for exprs in queries().values():
        for stage in re.findall(r'stage="([a-z_]+)"', " ".join(exprs)):
            assert f'voxwire_stage_seconds_count{{stage="{stage}"}}' in text
