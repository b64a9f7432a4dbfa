"""A real server on loopback, as deploy/ expects to find one: API keys on, one spoken turn
(through the `openai` SDK) and one error behind it, so that its histograms and counters exist."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio
from openai import AsyncOpenAI

from client.realtime import Float32
from server.edge.app import App
from server.runtime.engines import Engines
from tests.conftest import ANSWERED, TEST_SETTINGS
from tests.e2e.test_e2e import METRICS, RATE, events_until, spoken_turn

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KEY = "sk-voxwire-deploy"


@dataclass(frozen=True)
class Live:
    app: App
    url: str  # http://127.0.0.1:PORT
    hostport: str


def http_get(url: str, key: str | None = None) -> tuple[int, str]:
    """Status and body; run it in a thread (asyncio.to_thread): the server shares this loop."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(url: str, key: str | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, url, key)


def metric_names(text: str) -> set[str]:
    """The series names in Prometheus text (histograms as their _bucket/_sum/_count)."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


@pytest_asyncio.fixture(scope="session")
async def live(engines: Engines, speak: Callable[..., Float32]) -> AsyncIterator[Live]:
    app = App(TEST_SETTINGS.replace(api_keys=KEY), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        url = f"http://{host}:{port}"
        client = AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1")
        async with client.realtime.connect(model="voxwire", extra_query=METRICS) as conn:
            await conn.send_raw(json.dumps({"type": "no.such.event", "event_id": "e1"}))
            errors = await events_until(conn, lambda e: e.type == "error", seconds=10)
            assert errors[-1].error.code == "unknown_event"
            events = await spoken_turn(conn, speak("What is the capital of France?", rate=RATE))
            assert events[-1].status in ANSWERED, events[-1]
        yield Live(app, url, f"{host}:{port}")
