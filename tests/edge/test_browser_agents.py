"""`@openai/agents-realtime` in headless Chromium, on its own WebRTC transport
(`OpenAIRealtimeWebRTC`), pointed at Voxwire: the way a browser agent built on it connects.

The page loads the package's own browser bundle (`dist/bundle`, from the npm package pinned
in tests/realtime/node/package-lock.json), unchanged, from another origin. A backend mints
the browser's token with the `openai` SDK, as OpenAI's docs show. The page speaks through
Chromium's fake microphone; the server events it saw are then checked in node against the
same package's schemas (which drop what they refuse without a word).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from openai import AsyncOpenAI
from playwright.async_api import TimeoutError as PlaywrightTimeout

from server.edge.app import App
from server.runtime.engines import Engines
from tests.conftest import ANSWERED, TEST_SETTINGS, words
from tests.edge.test_browser import Speak, mic_file
from tests.support.browser_helpers import chromium, chromium_args, in_browser_thread, other_site

KEY = "sk-voxwire-agents"
NODE_DIR = Path(__file__).parents[1] / "realtime" / "node"
BUNDLE = NODE_DIR / "node_modules" / "@openai" / "agents-realtime" / "dist" / "bundle"
INSTRUCTIONS = "Answer in one short sentence."

PAGE = """<!doctype html><html><head><link rel="icon" href="data:,"></head><body>
<audio id="out" autoplay></audio>
<script type="module">
import { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession }
  from "/assets/openai-realtime-agents.mjs";
const q = new URLSearchParams(location.search);
const report = window.report = { raw: [], errors: [], history: [], voicedMs: 0,
                                 connected: false, callId: null, status: null };
const audioElement = document.getElementById("out");
const transport = new OpenAIRealtimeWebRTC({ baseUrl: q.get("calls"), audioElement });
const agent = new RealtimeAgent({ name: "assistant", instructions: q.get("instructions") });
const session = new RealtimeSession(agent, { transport, model: "voxwire" });
transport.on("*", (raw) => report.raw.push(raw));
session.on("error", (e) => {
  const err = e.error?.error ?? e.error;
  report.errors.push(err instanceof Error ? String(err) : JSON.stringify(err));
});
session.on("history_updated", (history) => {
  report.history = history.map((item) => ({
    role: item.role, type: item.type, status: item.status,
    text: (item.content || []).map((c) => c.transcript ?? c.text ?? "").join(""),
  }));
});
// The answer as the page heard it: the energy of the track its audio element plays.
function listen() {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  ctx.createMediaStreamSource(audioElement.srcObject).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let energy = 0;
    for (const x of buf) energy += x * x;
    if (Math.sqrt(energy / buf.length) > 0.01) report.voicedMs += 50;
  }, 50);
}
try {
  await session.connect({ apiKey: q.get("token") });
  report.connected = true;
  report.callId = transport.callId;
  report.status = transport.status;
  listen();
} catch (err) {
  report.errors.push(`connect: ${err?.stack ?? err}`);
}
</script></body></html>"""


def validate(events: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    """The events, checked in node against the package's own server-event schemas."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `make sysdeps` installs nodejs and npm")
    path = tmp / "events.json"
    path.write_text(json.dumps(events))
    out = subprocess.run([node, str(NODE_DIR / "agents_realtime.mjs"), "-", "validate",
                          str(path)], cwd=NODE_DIR, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


async def test_a_browser_agent_on_the_sdks_webrtc_transport_holds_a_spoken_turn(
        engines: Engines, speak: Speak, tmp_path: Path) -> None:
    if not (BUNDLE / "openai-realtime-agents.mjs").is_file():
        pytest.fail(f"{BUNDLE} is missing: `make setup` runs npm ci in tests/realtime/node")
    question = "What is the capital of Italy?"
    # The SDK opens the microphone before it places the call: a few seconds of quiet first.
    wav = mic_file(tmp_path / "mic.wav", speak, 3.0, question, 4.0)

    async def run(base: str, token: str) -> dict[str, Any]:
        with other_site(PAGE, BUNDLE) as site:
            async with chromium(chromium_args(wav)) as browser:
                page = browser.page
                query = urlencode({"calls": f"{base}/v1/realtime/calls", "token": token,
                                   "instructions": INSTRUCTIONS})
                await page.goto(f"{site}?{query}")
                try:
                    await page.wait_for_function(
                        "() => window.report && (window.report.errors.length > 0 || "
                        "(window.report.raw.some((e) => e.type === 'response.done') && "
                        "window.report.raw.some((e) => "
                        "e.type === 'output_audio_buffer.stopped')))",
                        timeout=60000, polling=100)
                except PlaywrightTimeout:
                    browser.problems.append("timed out waiting for the answer")
                await asyncio.sleep(0.5)  # what the server still says about the response
                report: dict[str, Any] = await page.evaluate("() => window.report") or {
                    "raw": [], "errors": ["the page's script did not run"]}
                report["problems"] = browser.problems
                return report

    app = App(TEST_SETTINGS.replace(api_keys=KEY), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        base = f"http://{host}:{port}"
        backend = AsyncOpenAI(api_key=KEY, base_url=f"{base}/v1")
        secret = await backend.realtime.client_secrets.create(
            session={"type": "realtime", "model": "voxwire"})
        await backend.close()
        report = await in_browser_thread(lambda: run(base, secret.value))
        calls = dict(app.webrtc.calls)

    types = [e["type"] for e in report["raw"]]
    assert report["errors"] == [] and report["problems"] == [], (report, types)
    assert report["connected"] and report["status"] == "connected"
    assert report["callId"] is not None and report["callId"].startswith("rtc_")
    # The SDK read the call's id from Location (exposed to the page by CORS): the real call.
    assert calls[report["callId"]].ended.is_set()  # ended with the server
    raw = report["raw"]
    types = [e["type"] for e in raw]
    assert types[0] == "session.created" and "session.updated" in types
    # No audio on the data channel: the answer came on the track, and the page heard it.
    assert not [t for t in types if t.endswith("audio.delta")]
    assert types.index("output_audio_buffer.started") < types.index("output_audio_buffer.stopped")
    assert report["voicedMs"] > 500, report["voicedMs"]
    done = next(e for e in raw if e["type"] == "response.done")
    assert done["response"]["status"] in ANSWERED
    # The session's instructions came from the page's agent, through session.update.
    updated = [e for e in raw if e["type"] == "session.updated"]
    assert updated[-1]["session"]["instructions"] == INSTRUCTIONS
    # The SDK's history holds the turn: the spoken question and the answer.
    history = [(h["role"], h["text"]) for h in report["history"] if h["type"] == "message"]
    assert [role for role, _ in history] == ["user", "assistant"], history
    assert words(history[0][1]) == words(question)
    assert words(history[1][1])
    # Every server event passes the package's own schemas.
    checked = validate(raw, tmp_path)
    problems = {k: checked[k] for k in ("errors", "invalid", "unknown") if checked[k]}
    assert problems == {}, json.dumps(problems, indent=1)[:4000]
    assert len(checked["types"]) == len(raw)
