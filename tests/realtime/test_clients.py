"""Other people's Realtime clients, unchanged but for the URL, against `voxwire serve`.

Three clients written for OpenAI's Realtime API each talk to a real server in its own
process: the OpenAI Agents SDK for Python (`openai-agents`), its Node twin
(`@openai/agents-realtime`, pinned in tests/realtime/node/package-lock.json) and LiveKit's OpenAI
plugin (`livekit-plugins-openai`). Each does a spoken turn, a function-tool round trip and a
barge-in that truncates the answer, and must end with no error event and no server event that
its own schemas refuse. The embedded model never calls tools, so the server's language backend
is the OpenAI-compatible one, pointed at tests/support/fakes.py's FakeProvider.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import pytest_asyncio

from client.realtime import Float32
from tests.conftest import padded, words
from tests.runtime.test_store import free_port, wait_healthy
from tests.stages.test_backends import KEY
from tests.support.fakes import FakeProvider, Reply

RATE = 24000
NODE_DIR = Path(__file__).parent / "node"
QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
LIGHTS_CALL = ("call_lights_1", "set_lights", {"room": "kitchen", "on": True})
LIGHTS_DONE = "The kitchen lights are on."
STORY = " ".join(f"This is sentence number {n} of a long story." for n in range(40))
INTERRUPTION = "Wait, stop please."
Speak = Callable[..., Float32]


@dataclass
class Served:
    url: str
    """http://127.0.0.1:PORT"""
    fake: FakeProvider
    log: Path
    """the server's output"""

    @property
    def ws(self) -> str:
        return self.url.replace("http", "ws", 1) + "/v1/realtime"


@pytest_asyncio.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    """`voxwire serve` in its own process, its language backend a FakeProvider here."""
    log_path = tmp_path_factory.mktemp("clients") / "server.log"
    async with FakeProvider() as fake:
        port = free_port()
        with log_path.open("wb") as log:
            proc = serve(port, fake.url, log)
            try:
                await asyncio.to_thread(wait_healthy, port, proc)
                yield Served(f"http://127.0.0.1:{port}", fake, log_path)
            finally:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait, 10)


def serve(port: int, fake_url: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--store", "none",
         "--llm-backend", "openai-compatible", "--llm-model", "test-model",
         "--llm-base-url", f"{fake_url}/v1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OPENAI_API_KEY": KEY})


def pcm16(audio: Float32) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def question(speak: Speak) -> bytes:
    return pcm16(padded(speak(QUESTION, rate=RATE), RATE, 300, 1200))


def interruption(speak: Speak) -> bytes:
    return pcm16(padded(speak(INTERRUPTION, rate=RATE), RATE, 0, 1200))


def chunks(pcm: bytes, ms: int = 40) -> Iterator[bytes]:
    step = RATE * 2 * ms // 1000
    for at in range(0, len(pcm), step):
        yield pcm[at:at + step]


async def stream(send: Callable[[bytes], Any], pcm: bytes, ms: int = 40) -> None:
    """Send `pcm` in `ms` pieces at twice real time; `send` may be sync or async."""
    for piece in chunks(pcm, ms):
        result = send(piece)
        if asyncio.iscoroutine(result):
            await result
        await asyncio.sleep(ms / 2000)


def script_story(fake: FakeProvider) -> None:
    fake.script(Reply(text=STORY, delay_between_s=0.05))


class ErrorLog(logging.Handler):
    """Collects ERROR records (and worse) of the named loggers while a client runs."""

    def __init__(self, *names: str) -> None:
        super().__init__(logging.ERROR)
        self.names = names
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:2000])

    def __enter__(self) -> ErrorLog:
        for name in self.names:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        for name in self.names:
            logging.getLogger(name).removeHandler(self)


@dataclass
class Seen:
    """What one client saw: the raw server events, and everything that went wrong."""

    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.get("type") == kind)

    async def until(self, kind: str, at_least: int = 1, seconds: float = 60) -> None:
        async with asyncio.timeout(seconds):
            while self.count(kind) < at_least:
                self.changed.clear()
                await self.changed.wait()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


def assert_spoken_turn(user: list[str], assistant: list[str], fake: FakeProvider) -> None:
    assert [words(t) for t in user] == [words(QUESTION)]
    assert [words(t) for t in assistant] == [words(ANSWER)]
    asked = fake.requests[-1].body["messages"][-1]
    assert asked["role"] == "user" and words(str(asked["content"])) == words(QUESTION)


def assert_tool_round_trip(calls: list[dict[str, Any]], fake: FakeProvider) -> None:
    assert calls == [LIGHTS_CALL[2]]
    history = fake.requests[-1].body["messages"]
    assert history[-2]["tool_calls"][0]["id"] == LIGHTS_CALL[0]
    assert history[-1]["role"] == "tool" and history[-1]["tool_call_id"] == LIGHTS_CALL[0]
    assert json.loads(history[-1]["content"]) == {"ok": True}


def assert_truncated(truncated: list[int], cancelled: bool) -> None:
    assert len(truncated) == 1 and truncated[0] > 0, truncated
    assert cancelled


# ------------------------------------------------------------------- openai-agents (Python)


@dataclass
class AgentsRun:
    session: Any
    seen: Seen
    reader: asyncio.Task[None]


@pytest_asyncio.fixture
async def agents(served: Served) -> AsyncIterator[AgentsRun]:
    await asyncio.to_thread(importlib.import_module, "agents.realtime")  # not on the loop
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    seen = Seen()

    @function_tool
    def set_lights(room: str, on: bool) -> str:
        """Switch lights on or off."""
        seen.tool_calls.append({"room": room, "on": on})
        return json.dumps({"ok": True})

    agent = RealtimeAgent(name="assistant", instructions="Be brief.", tools=[set_lights])
    runner = RealtimeRunner(agent)
    with ErrorLog("openai.agents") as log:
        session = await runner.run(model_config={"url": served.ws, "api_key": KEY})
        async with session:

            async def read() -> None:
                async for event in session:
                    if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                        seen.add(event.data.data)
                    elif event.type == "error":
                        seen.errors.append(f"error event: {brief(event.error)}")

            reader = asyncio.create_task(read())
            await seen.until("session.updated")
            yield AgentsRun(session, seen, reader)
            await asyncio.sleep(0.3)  # anything the server still had to say
            reader.cancel()
    seen.errors += log.records
    assert seen.errors == [], "\n".join(seen.errors)


def brief(error: Any) -> str:
    """A pydantic validation failure as its locations and messages; anything else as text."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        return "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"[:300]
            for e in errors())
    return str(error)[:2000]


async def tool_answered(seen: Seen, fake: FakeProvider) -> None:
    """The tool's answer spoken, after the tool ran once and its output went to the model."""
    await seen.until("response.done", 2)
    assert_tool_round_trip(seen.tool_calls, fake)
    assert transcripts(seen)[1][-1] == LIGHTS_DONE


def transcripts(seen: Seen) -> tuple[list[str], list[str]]:
    user = [e["transcript"] for e in
            seen.of("conversation.item.input_audio_transcription.completed")]
    assistant = [e["transcript"] for e in seen.of("response.output_audio_transcript.done")]
    return user, assistant


async def test_openai_agents_spoken_turn(
        served: Served, agents: AgentsRun, speak: Speak) -> None:
    served.fake.script(Reply(text=ANSWER))
    await stream(agents.session.send_audio, question(speak))
    await agents.seen.until("response.done")
    assert_spoken_turn(*transcripts(agents.seen), served.fake)


async def test_openai_agents_tool_round_trip(served: Served, agents: AgentsRun) -> None:
    served.fake.script(Reply(tool_calls=[LIGHTS_CALL]), Reply(text=LIGHTS_DONE))
    await agents.session.send_message("Turn on the kitchen lights.")
    await tool_answered(agents.seen, served.fake)


async def test_openai_agents_barge_in_truncates(
        served: Served, agents: AgentsRun, speak: Speak) -> None:
    script_story(served.fake)
    await agents.session.send_message("Tell me a long story.")
    await agents.seen.until("response.output_audio.delta")
    await stream(agents.session.send_audio, interruption(speak))
    await agents.seen.until("response.done", 2)
    first = agents.seen.of("response.done")[0]["response"]
    truncated = [e["audio_end_ms"] for e in agents.seen.of("conversation.item.truncated")]
    assert_truncated(truncated, first["status"] == "cancelled")


# ------------------------------------------------------------------- @openai/agents-realtime


def node_client(served: Served, scenario: str, pcm: bytes | None, tmp: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `make sysdeps` installs nodejs and npm")
    if not (NODE_DIR / "node_modules" / "@openai" / "agents-realtime").is_dir():
        pytest.fail("tests/realtime/node/node_modules is missing: `make setup` runs npm ci there")
    args = [node, str(NODE_DIR / "agents_realtime.mjs"), served.ws, scenario]
    if pcm is not None:
        (tmp / "speech.pcm").write_bytes(pcm)
        args.append(str(tmp / "speech.pcm"))
    out = subprocess.run(args, cwd=NODE_DIR, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if report["errors"]:  # the client gave up: what the server was doing meanwhile
        report["serverLog"] = served.log.read_text(errors="replace").splitlines()[-40:]
    return report


def diagnosis(report: dict[str, Any]) -> str:
    """What went wrong in the client, and the server's last words, for a failed assertion."""
    told = [t for t in report["types"] if not t.endswith(".append")]
    return json.dumps({"errors": report["errors"], "told": told,
                       "serverLog": report.get("serverLog")}, indent=1)[-8000:]


def assert_clean(report: dict[str, Any]) -> None:
    """No error event, and no server event that the client's own schemas refuse or ignore."""
    problems = {k: report[k] for k in ("errors", "invalid", "unknown") if report[k]}
    assert problems == {}, json.dumps(problems, indent=1)[:6000]


async def test_agents_realtime_spoken_turn(
        served: Served, speak: Speak, tmp_path: Path) -> None:
    served.fake.script(Reply(text=ANSWER))
    report = await asyncio.to_thread(node_client, served, "spoken", question(speak), tmp_path)
    assert report["userTranscripts"], diagnosis(report)
    assert_spoken_turn(report["userTranscripts"], report["assistantTranscripts"], served.fake)
    assert report["audioBytes"] > RATE  # more than half a second of answer
    assert_clean(report)


async def test_agents_realtime_tool_round_trip(served: Served, tmp_path: Path) -> None:
    served.fake.script(Reply(tool_calls=[LIGHTS_CALL]), Reply(text=LIGHTS_DONE))
    report = await asyncio.to_thread(node_client, served, "tool", None, tmp_path)
    assert_tool_round_trip(report["toolCalls"], served.fake)
    assert report["assistantTranscripts"][-1] == LIGHTS_DONE
    assert_clean(report)


async def test_agents_realtime_barge_in_truncates(
        served: Served, speak: Speak, tmp_path: Path) -> None:
    script_story(served.fake)
    report = await asyncio.to_thread(node_client, served, "barge-in", interruption(speak),
                                     tmp_path)
    assert "conversation.item.truncate" in report["sent"], diagnosis(report)
    cancelled = "response.cancel" in report["sent"] or report["types"].count("response.done") > 1
    assert cancelled, diagnosis(report)
    assert_truncated(report["truncated"], cancelled)
    assert_clean(report)


# ------------------------------------------------------------------- livekit-plugins-openai


@dataclass
class LiveKitRun:
    session: Any
    seen: Seen
    sent: list[dict[str, Any]]


@pytest_asyncio.fixture
async def livekit(served: Served) -> AsyncIterator[LiveKitRun]:
    from livekit.agents import llm
    from livekit.agents.utils import http_context
    from livekit.plugins.openai.realtime import RealtimeModel

    seen = Seen()
    sent: list[dict[str, Any]] = []

    @llm.function_tool
    async def set_lights(room: str, on: bool) -> str:
        """Switch lights on or off."""
        seen.tool_calls.append({"room": room, "on": on})
        return json.dumps({"ok": True})

    with ErrorLog("livekit", "livekit.agents", "livekit.plugins.openai") as log:
        http_context._new_session_ctx()
        model = RealtimeModel(base_url=f"{served.url}/v1", api_key=KEY)
        session = model.session()
        session.on("openai_server_event_received", seen.add)
        session.on("openai_client_event_queued", sent.append)
        session.on("error", lambda e: seen.errors.append(f"error event: {e.error}"[:2000]))
        try:
            await session.update_tools([set_lights])
            await seen.until("session.updated")
            yield LiveKitRun(session, seen, sent)
            await asyncio.sleep(0.3)
        finally:
            await session.aclose()
            await model.aclose()
            await http_context._close_http_ctx()
    seen.errors += log.records
    assert seen.errors == [], "\n".join(seen.errors)


async def say(session: Any, text: str) -> None:
    """A typed user message into LiveKit's chat context, then a reply to it."""
    ctx = session.chat_ctx.copy()
    ctx.add_message(role="user", content=text)
    await session.update_chat_ctx(ctx)
    await session.generate_reply()


def push(session: Any) -> Callable[[bytes], None]:
    from livekit import rtc

    def send(piece: bytes) -> None:
        session.push_audio(rtc.AudioFrame(piece, RATE, 1, len(piece) // 2))

    return send


async def test_livekit_spoken_turn(served: Served, livekit: LiveKitRun, speak: Speak) -> None:
    served.fake.script(Reply(text=ANSWER))
    await stream(push(livekit.session), question(speak))
    await livekit.seen.until("response.done")
    assert_spoken_turn(*transcripts(livekit.seen), served.fake)


async def test_livekit_tool_round_trip(served: Served, livekit: LiveKitRun) -> None:
    from livekit.agents import llm

    served.fake.script(Reply(tool_calls=[LIGHTS_CALL]), Reply(text=LIGHTS_DONE))
    session = livekit.session
    await say(session, "Turn on the kitchen lights.")
    await livekit.seen.until("response.done")
    call = next(e["item"] for e in livekit.seen.of("response.output_item.done")
                if e["item"]["type"] == "function_call")
    # What an AgentSession does with a tool call: run it, hand back the output, reply.
    output = await session.tools.function_tools[call["name"]](**json.loads(call["arguments"]))
    ctx = session.chat_ctx.copy()
    ctx.items.append(llm.FunctionCallOutput(call_id=call["call_id"], name=call["name"],
                                            output=output, is_error=False))
    await session.update_chat_ctx(ctx)
    await session.generate_reply()
    await tool_answered(livekit.seen, served.fake)


async def test_livekit_barge_in_truncates(
        served: Served, livekit: LiveKitRun, speak: Speak) -> None:
    script_story(served.fake)
    session = livekit.session
    await say(session, "Tell me a long story.")
    await livekit.seen.until("response.output_audio.delta")
    item = livekit.seen.of("response.output_audio.delta")[0]["item_id"]
    started = asyncio.get_running_loop().time()

    def on_speech(_: object) -> None:
        # What an AgentSession does when the user speaks over the answer.
        played = int((asyncio.get_running_loop().time() - started) * 1000)
        session.interrupt()
        session.truncate(message_id=item, modalities=["audio", "text"], audio_end_ms=played)

    session.on("input_speech_started", on_speech)
    await stream(push(session), interruption(speak))
    await livekit.seen.until("response.done", 2)
    first = livekit.seen.of("response.done")[0]["response"]
    truncated = [e["audio_end_ms"] for e in livekit.seen.of("conversation.item.truncated")]
    assert_truncated(truncated, first["status"] == "cancelled")
    assert any(e["type"] == "conversation.item.truncate" for e in livekit.sent)
