"""The language backends through the real server and the real SDKs.

OpenAI and Anthropic cannot be reached from here: their adapters talk, with the real
`openai` and `anthropic` SDKs, to a local server speaking each provider's streaming wire
format (tests/support/fakes.py). The OpenAI-compatible adapter also talks to a real one:
llama-cpp-python's own server running the embedded GGUF.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from client.realtime import Float32
from models import locate
from server.edge.app import App
from server.response.run import APOLOGY, CANNOT_SEE
from server.runtime import config
from server.runtime.config import Settings
from server.runtime.engines import Engines, make_responder
from server.stages.cloud import AnthropicResponder, OpenAIResponder
from tests.conftest import TEST_SETTINGS, words
from tests.e2e.test_e2e import RATE, events_until, ga, is_metrics, spoken_turn, types
from tests.support.fakes import FakeProvider, Reply

Speak = Callable[..., Float32]
KEY = "sk-test-1234567890"
LIGHTS = {"type": "function", "name": "set_lights", "description": "Switch lights on or off.",
          "parameters": {"type": "object", "properties": {
              "room": {"type": "string"}, "on": {"type": "boolean"}},
              "required": ["room", "on"]}}


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


@contextlib.asynccontextmanager
async def serving(engines: Engines, **changes: Any) -> AsyncIterator[str]:
    """A server whose engines are the test ones, with the language backend swapped."""
    settings = TEST_SETTINGS.replace(**changes)
    responder = make_responder(settings, engines.llm, engines.llm_lane)
    app = App(settings, engines=dataclasses.replace(engines, responder=responder))
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"


def backend(kind: str, url: str, **more: Any) -> dict[str, Any]:
    base = f"{url}/v1" if kind == "openai" else url
    return {"llm_backend": kind, "llm_model": "test-model", "llm_base_url": base,
            "llm_api_key": KEY, **more}


def png(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 220)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


async def ask(conn: Any, text: str, image: str | None = None,
              modalities: list[str] | None = None) -> list[Any]:
    content: list[dict[str, Any]] = [{"type": "input_text", "text": text}]
    if image:
        content.append({"type": "input_image", "image_url": image})
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": content})
    await conn.response.create(response={"output_modalities": modalities or ["text"]})
    return await events_until(conn, is_metrics)


def done(events: list[Any]) -> Any:
    return next(e for e in events if e.type == "response.done").response


# ---------------------------------------------------------------------- configuration


def test_one_flag_switches_the_backend(engines: Engines) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    env = {"ANTHROPIC_API_KEY": "sk-ant-secret", "OPENAI_API_KEY": "sk-oai-secret"}
    for flag, kind in (("anthropic", AnthropicResponder), ("openai", OpenAIResponder)):
        settings = config.from_sources(parser.parse_args(["--llm-backend", flag]), env)
        assert isinstance(make_responder(settings, None, engines.llm_lane), kind)
        assert settings.llm_api_key == env[f"{flag.upper()}_API_KEY"]
        assert "secret" not in repr(settings)
    assert "--llm-api-key" not in parser.format_help()  # keys come from the environment only
    with pytest.raises(config.ConfigError, match="llm-base-url"):
        Settings(llm_backend="openai-compatible", llm_model="m")


# ---------------------------------------------------------------------- OpenAI


async def test_openai_gets_the_conversation_and_speaks_the_answer(
        engines: Engines, fake: FakeProvider) -> None:
    fake.script(Reply(text="Paris is the capital of France. It is lovely."))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief.",
                                           "temperature": 0.3})
        events = await ask(conn, "What is the capital of France?", modalities=["audio"])
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "test-model" and sent.body["stream"] is True
    assert sent.body["temperature"] == 0.3
    assert sent.body["max_completion_tokens"] == TEST_SETTINGS.max_output_tokens
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"}]
    answer = done(events)
    assert answer.status == "completed"
    assert answer.output[0].content[0].transcript == "Paris is the capital of France. It is lovely."
    assert "response.output_audio.delta" in types(events)


async def test_openai_sees_the_image_downscaled_in_its_own_format(
        engines: Engines, fake: FakeProvider) -> None:
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        events = await ask(conn, "What colour is this?", image=png(2000, 1000))
    assert done(events).status == "completed"
    user = fake.requests[-1].body["messages"][-1]
    assert user["role"] == "user"
    text, image = user["content"]
    assert text == {"type": "text", "text": "What colour is this?"}
    assert image["type"] == "image_url"
    uri = image["image_url"]["url"]
    assert uri.startswith("data:image/jpeg;base64,")
    assert image_size(base64.b64decode(uri.split(",", 1)[1])) == (768, 384)


async def test_a_camera_frame_rides_along_with_the_next_spoken_turn(
        engines: Engines, fake: FakeProvider, speak: Speak) -> None:
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "voxwire": {"attach_latest_frame": True}})
        for side in (300, 400):  # only the latest frame matters
            await conn.send_raw(json.dumps({"type": "voxwire.input_image.append",
                                            "image_url": png(side, side)}))
        await spoken_turn(conn, speak("What am I holding?", rate=RATE))
    user = fake.requests[-1].body["messages"][-1]
    text, image = user["content"]
    assert words(text["text"]) == words("What am I holding?")
    assert image_size(base64.b64decode(image["image_url"]["url"].split(",", 1)[1])) == (400, 400)


async def test_tool_call_round_trip(engines: Engines, fake: FakeProvider) -> None:
    fake.script(Reply(tool_calls=[("call_42", "set_lights", {"room": "kitchen", "on": True})]),
                Reply(text="The kitchen lights are on."))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime", "tools": [LIGHTS]})
        first = await ask(conn, "Turn on the kitchen lights.")
        call = next(e for e in first if e.type == "response.function_call_arguments.done")
        assert call.name == "set_lights" and call.call_id == "call_42"
        assert json.loads(call.arguments) == {"room": "kitchen", "on": True}
        assert "response.function_call_arguments.delta" in types(first)
        assert done(first).output[0].type == "function_call"
        await conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": "call_42", "output": '{"ok": true}'})
        await conn.response.create(response={"output_modalities": ["text"]})
        second = await events_until(conn, is_metrics)
    assert done(second).output[0].content[0].text == "The kitchen lights are on."
    tools = fake.requests[0].body["tools"]
    assert tools == [{"type": "function", "function": {
        "name": "set_lights", "description": LIGHTS["description"],
        "parameters": LIGHTS["parameters"]}}]
    assert fake.requests[0].body["tool_choice"] == "auto"
    history = fake.requests[1].body["messages"]
    assert history[-2]["tool_calls"][0]["id"] == "call_42"
    assert history[-1] == {"role": "tool", "tool_call_id": "call_42", "content": '{"ok": true}'}


# ---------------------------------------------------------------------- Anthropic


async def test_anthropic_gets_system_image_blocks_and_tools(
        engines: Engines, fake: FakeProvider) -> None:
    fake.script(Reply(tool_calls=[("toolu_1", "set_lights", {"room": "hall", "on": False})]),
                Reply(text="Done, the hall is dark."))
    async with serving(engines, **backend("anthropic", fake.url)) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief.",
                                           "tools": [LIGHTS]})
        first = await ask(conn, "Switch off the hall light.", image=png(1000, 2000))
        call = next(e for e in first if e.type == "response.function_call_arguments.done")
        await conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": call.call_id, "output": "switched"})
        await conn.response.create(response={"output_modalities": ["text"]})
        second = await events_until(conn, is_metrics)
    body = fake.requests[0].body
    assert fake.requests[0].path == "/v1/messages"
    assert body["system"] == "Be brief."
    assert body["tools"][0]["input_schema"] == LIGHTS["parameters"]
    assert body["tool_choice"] == {"type": "auto"}
    image, text = body["messages"][0]["content"]
    assert image["type"] == "image" and image["source"]["media_type"] == "image/jpeg"
    assert image_size(base64.b64decode(image["source"]["data"])) == (384, 768)
    assert text == {"type": "text", "text": "Switch off the hall light."}
    assert json.loads(call.arguments) == {"room": "hall", "on": False}
    follow = fake.requests[1].body["messages"]
    assert follow[-2]["content"][-1] == {"type": "tool_use", "id": "toolu_1",
                                         "name": "set_lights",
                                         "input": {"room": "hall", "on": False}}
    assert follow[-1]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "switched"}]
    assert done(second).output[0].content[0].text == "Done, the hall is dark."


# ---------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_wrong_key_fails_the_response_aloud_and_never_shows_the_key(
        engines: Engines, fake: FakeProvider, kind: str) -> None:
    raw: list[str] = []
    async with serving(engines, **backend(kind, fake.url, llm_api_key="bad-key")) as url, \
            ga(url) as conn:
        events = await ask(conn, "Hello?", modalities=["audio"])
        raw = [e.model_dump_json() for e in events]
        after = await ask(conn, "Still there?")  # the session goes on
    answer = done(events)
    assert answer.status == "failed"
    assert answer.status_details.error.code == "llm_auth_failed"
    assert any(e.type == "error" and e.error.code == "llm_auth_failed" for e in events)
    assert answer.output[0].content[0].transcript == APOLOGY  # heard, not silent
    assert not any("bad-key" in r for r in raw)
    assert done(after).status == "failed"


async def test_a_backend_that_never_answers_times_out(
        engines: Engines, fake: FakeProvider) -> None:
    fake.script(Reply(hang=True))
    async with serving(engines, first_token_timeout_s=1.0,
                       **backend("openai", fake.url)) as url, ga(url) as conn:
        events = await ask(conn, "Hello?")
        await asyncio.sleep(0.3)
    assert done(events).status_details.error.code == "llm_timeout"
    assert fake.disconnects == 1  # the hanging request was closed, not left open


async def test_429_then_success_after_the_providers_backoff(
        engines: Engines, fake: FakeProvider) -> None:
    fake.script(Reply(status=429, retry_after=0.1), Reply(text="Here I am."))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        events = await ask(conn, "Hello?")
    assert done(events).status == "completed"
    assert done(events).output[0].content[0].text == "Here I am."
    assert len(fake.requests) == 2


@pytest.mark.parametrize(("changes", "code"), [
    ({"llm_model": "no-such-model"}, "llm_model_not_found"),
    ({"llm_base_url": "http://127.0.0.1:9/v1", "llm_retries": 0}, "llm_unreachable"),
])
async def test_unknown_model_and_refused_connection(
        engines: Engines, fake: FakeProvider, changes: dict[str, Any], code: str) -> None:
    async with serving(engines, **{**backend("openai", fake.url), **changes}) as url, \
            ga(url) as conn:
        events = await ask(conn, "Hello?")
    assert done(events).status_details.error.code == code


async def test_barge_in_closes_the_cloud_stream(
        engines: Engines, fake: FakeProvider, speak: Speak) -> None:
    story = " ".join(f"This is sentence number {n} of a long story." for n in range(40))
    fake.script(Reply(text=story, delay_between_s=0.05))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Tell me a long story."}]})
        await conn.response.create()
        await events_until(conn, lambda e: e.type == "response.output_audio.delta")
        sender = asyncio.create_task(spoken_interrupt(conn, speak))
        rest = await events_until(conn, lambda e: e.type == "response.done")
        sender.cancel()
    assert rest[-1].response.status == "cancelled"
    for _ in range(60):  # the fake notices the closed connection within a few polls
        if fake.disconnects:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == 1 and fake.completed_streams == 0


async def spoken_interrupt(conn: Any, speak: Speak) -> None:
    from client.realtime import send_audio
    from tests.conftest import padded

    await send_audio(conn, padded(speak("Wait, stop please.", rate=RATE), RATE, 0, 800), RATE)


async def test_oversize_image_is_refused_and_the_session_goes_on(
        engines: Engines, fake: FakeProvider) -> None:
    async with serving(engines, max_image_pixels=1_000_000,
                       **backend("openai", fake.url)) as url, ga(url) as conn:
        await conn.send_raw(json.dumps({"type": "conversation.item.create", "event_id": "big",
                                        "item": {"type": "message", "role": "user", "content": [
                                            {"type": "input_image",
                                             "image_url": png(2000, 1000)}]}}))
        err = await events_until(conn, lambda e: e.type == "error", seconds=10)
        await conn.send_raw(json.dumps({"type": "voxwire.input_image.append", "event_id": "bad",
                                        "image_url": "data:image/png;base64,AAAA"}))
        bad = await events_until(conn, lambda e: e.type == "error", seconds=10)
        events = await ask(conn, "Hello?")
    assert err[-1].error.code == "image_too_large" and err[-1].error.event_id == "big"
    assert bad[-1].error.code == "invalid_image" and bad[-1].error.event_id == "bad"
    assert done(events).status == "completed"
    assert all(m.get("content") != [] for m in fake.requests[-1].body["messages"])


async def test_a_model_that_cannot_see_says_so_aloud(engines: Engines) -> None:
    async with serving(engines) as url, ga(url) as conn:  # the embedded text model
        events = await ask(conn, "What is in this picture?", image=png(64, 64),
                           modalities=["audio"])
    answer = done(events)
    assert answer.status == "completed"
    assert answer.output[0].content[0].transcript.startswith(CANNOT_SEE)


# ---------------------------------------------------------------------- a real compatible server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "log.txt").open("w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model",
         str(locate("smollm2-135m", "llm")), "--host", "127.0.0.1", "--port", str(port),
         "--n_threads", "1", "--n_ctx", "2048"],
        stdout=log, stderr=subprocess.STDOUT)  # a file: a full pipe would stall it
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited: {log.read().decode()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/models",
                                                                      timeout=2):
                break
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start in 90 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


async def test_spoken_conversation_through_a_real_openai_compatible_server(
        engines: Engines, llama_server: str, speak: Speak) -> None:
    changes = {"llm_backend": "openai-compatible", "llm_model": "smollm2",
               "llm_base_url": llama_server}
    async with serving(engines, **changes) as url, ga(url) as conn:
        await conn.session.update(session={"type": "realtime", "temperature": 0.0})
        first = await spoken_turn(conn, speak("What is the capital of France?", rate=RATE))
        second = await spoken_turn(conn, speak("Set a timer for ten minutes.", rate=RATE))
    for events in (first, second):
        answer = done(events)
        assert answer.status == "completed"
        assert answer.output[0].content[0].transcript
        assert "response.output_audio.delta" in types(events)
        assert events[-1].backend == "openai-compatible"
