"""Traces: a real turn through a real server makes one turn span with its stage spans (the
same figures as `voxwire.turn.metrics`), the LLM's HTTP call inside it with a `traceparent`
the LLM server receives, the real OTLP/HTTP exporter sending to a receiver on 127.0.0.1
configured by OTEL_* variables alone, and nothing at all when no endpoint is set."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from client.realtime import Float32
from server.edge.app import App
from server.response.record import Timings, TurnRecord
from server.runtime import tracing
from server.runtime.clock import FakeClock
from server.runtime.engines import Engines
from server.runtime.metrics import STAGES, TurnClock
from tests.conftest import ANSWERED, TEST_SETTINGS
from tests.e2e.test_e2e import RATE, ga, spoken_turn
from tests.stages.test_backends import ask, backend, done, serving
from tests.support.fakes import FakeProvider, Reply

Speak = Callable[..., Float32]
OTEL = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER", "OTEL_EXPORTER_OTLP_PROTOCOL")


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    """Traces on for this test, exported (in batches, as served) to memory."""
    exporter = InMemorySpanExporter()
    tracing.start(exporter)
    try:
        yield exporter
    finally:
        tracing.stop()


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def finished(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    active = tracing.active()
    assert active is not None
    active.provider.force_flush()
    return exporter.get_finished_spans()


def turn_spans(spans: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return [s for s in spans if s.name == tracing.TURN_SPAN
            and (s.attributes or {}).get("voxwire.response.status") != "dropped"]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return sorted((s for s in spans if s.parent is not None
                   and s.parent.span_id == parent.context.span_id),
                  key=lambda s: (s.start_time or 0, s.end_time or 0))


def ms(a: int | None, b: int | None) -> float:
    assert a is not None and b is not None
    return (b - a) / 1e6


# ---------------------------------------------------------------------- a spoken turn


async def test_a_spoken_turn_is_one_span_with_its_stages(
        engines: Engines, speak: Speak, memory: InMemorySpanExporter) -> None:
    # Without speculation the stages follow one another, so their order is fixed.
    app = App(TEST_SETTINGS.replace(speculate_answer=False), engines=engines)
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        async with ga(f"http://{host}:{port}") as conn:
            events = await spoken_turn(conn, speak("What is the capital of France?",
                                                   rate=RATE))
    session_id = next(e for e in events if e.type == "session.created").session.id
    response = next(e for e in events if e.type == "response.done").response
    assert response.status in ANSWERED
    metrics = events[-1].model_dump()
    spans = finished(memory)
    [turn] = turn_spans(spans)
    attrs = dict(turn.attributes or {})
    assert attrs["session.id"] == attrs["gen_ai.conversation.id"] == session_id
    assert attrs["voxwire.response.id"] == response.id
    assert attrs["voxwire.response.status"] == response.status
    assert attrs["voxwire.transport"] == "websocket"
    assert attrs["voxwire.backend"] == "local"
    assert attrs["gen_ai.request.model"] == engines.responder.name
    assert attrs["voxwire.voice_to_voice_ms"] == metrics["stages_ms"]["voice_to_voice"]
    assert turn.parent is None and turn.kind == SpanKind.INTERNAL

    # The turn starts at the end of speech (marks' origin) and lasts at least `total`.
    marks, stages = metrics["marks_ms"], metrics["stages_ms"]
    assert marks["speech_end"] == 0.0
    assert ms(turn.start_time, turn.end_time) >= stages["total"] - 1
    kids = children(spans, turn)
    names = [k.name for k in kids]
    assert names[:5] == ["endpoint", "asr", "llm_first_token", "first_sentence",
                         "tts_first_audio"], names
    assert set(names) == {s for s in tracing.STAGE_SPANS if s in stages}, names
    for kid in kids:
        begins = STAGES[kid.name][0]
        # Each stage span starts at its mark and lasts what the metrics say (0.1 ms rounding).
        assert abs(ms(turn.start_time, kid.start_time) - marks[begins]) < 1, kid.name
        assert abs(ms(kid.start_time, kid.end_time) - stages[kid.name]) < 1, kid.name
        assert (kid.attributes or {})["voxwire.stage.ms"] == stages[kid.name]
    assert turn.events[0].name == "speech_end"


# ---------------------------------------------------------------------- the LLM call inside


async def test_the_llm_http_call_is_inside_the_turn_and_carries_its_trace(
        engines: Engines, fake: FakeProvider, memory: InMemorySpanExporter) -> None:
    fake.script(Reply(text="Paris is the capital of France."))
    async with serving(engines, **backend("openai-compatible", f"{fake.url}/v1")) as url, \
            ga(url) as conn:
        events = await ask(conn, "What is the capital of France?")
    assert done(events).status == "completed"
    spans = finished(memory)
    [turn] = turn_spans(spans)
    [chat] = [s for s in spans if s.name == "chat test-model"]
    assert turn.context is not None and chat.context is not None
    assert chat.parent is not None and chat.parent.span_id == turn.context.span_id
    assert chat.context.trace_id == turn.context.trace_id
    assert chat.kind == SpanKind.CLIENT
    attrs = dict(chat.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai-compatible"
    assert attrs["gen_ai.request.model"] == "test-model"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert isinstance(attrs["gen_ai.usage.output_tokens"], int)
    assert turn.start_time is not None and chat.start_time is not None
    assert turn.end_time is not None and chat.end_time is not None
    assert turn.start_time <= chat.start_time <= chat.end_time <= turn.end_time
    # The provider got the chat span's W3C trace context, so a traced server joins the trace.
    [request] = fake.requests
    assert request.headers["traceparent"] == (
        f"00-{chat.context.trace_id:032x}-{chat.context.span_id:016x}"
        f"-{chat.context.trace_flags:02x}")
    assert chat.context.trace_flags.sampled
    assert dict(turn.attributes or {})["gen_ai.provider.name"] == "openai-compatible"


async def test_a_failed_llm_call_marks_its_span(
        engines: Engines, fake: FakeProvider, memory: InMemorySpanExporter) -> None:
    fake.script(Reply(status=401))
    async with serving(engines, **backend("openai", fake.url)) as url, ga(url) as conn:
        events = await ask(conn, "Hello?")
    assert done(events).status == "failed"
    spans = finished(memory)
    [turn] = turn_spans(spans)
    [chat] = [s for s in spans if s.name == "chat test-model"]
    assert chat.status.status_code == StatusCode.ERROR
    assert dict(chat.attributes or {})["error.type"] == "llm_auth_failed"
    assert turn.status.status_code == StatusCode.ERROR


# ---------------------------------------------------------------------- the clock


def record(response_id: str, turn: TurnClock, status: str = "completed") -> TurnRecord:
    t = turn.timings()
    return TurnRecord(response_id, "sess_1", "item_1", "hi", "hello", status, "openai", (),
                      {"input_tokens": 7, "output_tokens": 3}, 500.0,
                      Timings(t.stages_ms, t.overhead_ms, t.marks_ms, t.compute_ms),
                      1.0, 2.0, transport="webrtc")


async def test_marks_become_epoch_nanoseconds_and_dropped_turns_say_so() -> None:
    exporter = InMemorySpanExporter()
    active = tracing.start(exporter)
    try:
        clock = FakeClock(start=50.0, epoch=1_700_000_000.0)
        sink = tracing.TurnTracer(active.tracer, "m")
        turn = TurnClock(clock=clock)
        turn.mark("speech_end", 49.5)
        with sink.begin("sess_1", "resp_1", turn):
            for name, at in (("speech_stopped", 50.0), ("asr_done", 50.25),
                             ("llm_first_token", 50.5), ("response_done", 52.0)):
                turn.mark(name, at)
            await sink.take(record("resp_1", turn))
        dropped = TurnClock(clock=clock)
        dropped.mark("speech_end", 49.5)
        with sink.begin("sess_1", "resp_2", dropped):
            clock.advance(0.75)
        active.provider.force_flush()
        spans = exporter.get_finished_spans()
    finally:
        tracing.stop()
    epoch_ns = 1_700_000_000 * 10**9
    one, two = (next(s for s in spans if (s.attributes or {}).get("voxwire.response.id") == r)
                for r in ("resp_1", "resp_2"))
    assert one.start_time == epoch_ns + 49_500_000_000
    assert one.end_time == epoch_ns + 52_000_000_000
    attrs = dict(one.attributes or {})
    assert attrs["voxwire.transport"] == "webrtc"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] == 7
    assert attrs["voxwire.total_ms"] == 2500.0
    kids = {s.name: s for s in children(spans, one)}
    assert set(kids) == {"endpoint", "asr", "llm_first_token"}
    assert kids["asr"].start_time == epoch_ns + 50_000_000_000
    assert kids["asr"].end_time == epoch_ns + 50_250_000_000
    assert dict(two.attributes or {})["voxwire.response.status"] == "dropped"
    assert two.end_time == epoch_ns + 50_750_000_000


# ---------------------------------------------------------------------- OTLP over HTTP


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint on 127.0.0.1: what it gets, decoded."""

    def __init__(self) -> None:
        self.got: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            self.server.got.append(request)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


def attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


async def test_the_otlp_exporter_sends_turns_configured_by_the_environment(
        engines: Engines, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    fake.script(Reply(text="Hello there."))
    with receiving() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "voxwire-replica-1")
        assert tracing.from_environment() is not None
        try:
            async with serving(engines, **backend("openai", fake.url)) as url, \
                    ga(url) as conn:
                events = await ask(conn, "Hello?")
        finally:
            await asyncio.to_thread(tracing.stop)  # flushes: the batch goes out now
    assert done(events).status == "completed"
    assert receiver.got, receiver.paths
    spans = [(attributes(rs.resource.attributes), span)
             for request in receiver.got for rs in request.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    [(resource, turn)] = [(r, s) for r, s in spans if s.name == tracing.TURN_SPAN]
    assert resource["service.name"] == "voxwire-replica-1"
    attrs = attributes(turn.attributes)
    session_id = next(e for e in events if e.type == "session.created").session.id
    assert attrs["session.id"] == session_id
    assert attrs["voxwire.backend"] == "openai"
    assert attrs["gen_ai.request.model"] == "test-model"
    assert attrs["voxwire.transport"] == "websocket"
    assert attrs["voxwire.response.id"] == done(events).id
    [chat] = [s for _, s in spans if s.name == "chat test-model"]
    assert chat.parent_span_id == turn.span_id and chat.trace_id == turn.trace_id


# ---------------------------------------------------------------------- off


def test_no_endpoint_no_traces() -> None:
    assert tracing.endpoint({}) is None
    assert tracing.endpoint({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) \
        is None
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert tracing.endpoint(base) == "http://collector:4318/v1/traces"
    assert tracing.endpoint({**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}) \
        == "http://t/x"
    assert tracing.endpoint({**base, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing.endpoint({**base, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing.from_environment({}) is None
    assert tracing.active() is None
    assert tracing.turn_sinks("m") == ()
    with tracing.llm_call("openai", "m", "http://127.0.0.1:1/v1", 10) as call:
        assert call.headers == {}
    # In a process of its own: unset, `voxwire serve`'s setup loads no SDK at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = ("import sys; from server.runtime import tracing; "
            "assert tracing.from_environment() is None; "
            "assert tracing.turn_sinks('m') == (); "
            "assert not [m for m in sys.modules if m.startswith('opentelemetry.sdk')], "
            "[m for m in sys.modules if m.startswith('opentelemetry.sdk')]")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
