"""Traces (OpenTelemetry): one span a turn, a child span a stage, the LLM's HTTP call inside.

Off unless an OTLP endpoint is set: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as it is)
or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended); ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turn them off again. Off, nothing is set up: no SDK provider,
no turn sink, and the LLM's requests go out as they are. On, spans are exported over
OTLP/HTTP (protobuf) by a `BatchSpanProcessor`: ending a span only queues it, and the SDK's
own thread sends the batches, never the event loop. The rest is the SDK's, read from the
environment as it reads it: ``OTEL_SERVICE_NAME`` (default here: voxwire),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its argument, the exporter's
headers, timeout and compression, ``OTEL_BSP_*``.

Why the turn span is started live: a turn's figures are whole only once its first audio
has left, but the LLM's HTTP call happens in the middle of it, and that call's span (and
the W3C ``traceparent`` sent with the request, by which a traced LLM server joins the trace)
needs the turn span as its parent while it runs. So `TurnTracer.begin` starts the turn span
when the response starts, back-dated to the end of the user's speech, and makes it the
current span of the response's task (and so of the tasks it starts); `TurnTracer.take`
gets the turn's record when its figures are whole, adds the stage spans after the fact from
the turn's marks, and ends the turn span at its last mark. A response dropped unannounced
(a speculative answer that resumed speech made moot) ends with status ``dropped``.

Times: a turn's marks are on the session's monotonic clock (`server.runtime.clock`). They
become epoch nanoseconds through one offset a turn, ``now() - monotonic()`` read (in whole
nanoseconds) when the turn span starts, so that each stage span lasts exactly what
`voxwire.turn.metrics` says.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from server import __version__
from server.response.record import TurnRecord, When
from server.runtime.metrics import STAGES, TurnClock

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

TURN_SPAN = "voxwire.turn"
# One child span a stage, in the turn's order; voice_to_voice and total span the others.
STAGE_SPANS = tuple(s for s in STAGES if s not in ("voice_to_voice", "total"))
# gen_ai.provider.name where the convention names the backend; others go by their own name.
PROVIDERS = {"local": "llama.cpp", "openai": "openai", "anthropic": "anthropic"}
Inject = Callable[[dict[str, str], otel_context.Context], None]


@dataclass(frozen=True)
class Tracing:
    provider: TracerProvider
    tracer: Tracer
    inject: Inject  # the configured propagator (OTEL_PROPAGATORS; W3C trace context)


_active: Tracing | None = None


def endpoint(environ: Mapping[str, str]) -> str | None:
    """Where traces go, as the OTEL_* variables say; None: traces are off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "otlp" not in exporters:
        if exporters - {"none", ""}:
            log.warning("OTEL_TRACES_EXPORTER=%s: only otlp is supported; traces are off",
                        environ["OTEL_TRACES_EXPORTER"])
        return None
    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not url and (base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()):
        url = base.rstrip("/") + "/v1/traces"
    if not url:
        return None
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol.strip() != "http/protobuf":
        log.warning("OTLP protocol %s: traces are sent as http/protobuf", protocol)
    return url


def from_environment(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """Traces for this process as ``environ`` says (see the module's notes), or None: off,
    and nothing set up. `voxwire serve` calls it at startup and `stop` at exit."""
    url = endpoint(environ)
    if url is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    log.info("traces: OTLP/HTTP to %s", url)
    return start(OTLPSpanExporter(endpoint=url))


def start(exporter: SpanExporter) -> Tracing:
    """Traces for this process, exported to ``exporter`` in batches from the SDK's thread
    (until `stop`)."""
    global _active
    from opentelemetry import propagate
    from opentelemetry.sdk.resources import (
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    stop()
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the defaults given here.
    resource = Resource.create({SERVICE_NAME: "voxwire", SERVICE_VERSION: __version__}).merge(
        OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # `stop` flushes
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _active = Tracing(provider, provider.get_tracer("voxwire", __version__),
                      lambda carrier, ctx: propagate.inject(carrier, context=ctx))
    return _active


def stop() -> None:
    """Export what is still queued and stop tracing (blocks: call it off the event loop)."""
    global _active
    tracing, _active = _active, None
    if tracing is not None:
        tracing.provider.shutdown()


def active() -> Tracing | None:
    return _active


def turn_sinks(model: str) -> tuple[TurnTracer, ...]:
    """A session's turn sinks for traces: none while traces are off."""
    return () if _active is None else (TurnTracer(_active.tracer, model),)


def _ns(t: float, offset_ns: int) -> int:
    return round(t * 1e9) + offset_ns


@dataclass
class _Live:
    span: Span
    turn: TurnClock
    offset_ns: int  # epoch nanoseconds minus the turn clock's monotonic ones


class TurnTracer:
    """The turn sink for traces: the turn span, live from the response's start (`begin`),
    and its stage spans, made from the turn's marks when its figures are whole (`take`)."""

    when: When = "sent"

    def __init__(self, tracer: Tracer, model: str) -> None:
        self.tracer, self.model = tracer, model
        self._live: dict[str, _Live] = {}

    @contextlib.contextmanager
    def begin(self, session_id: str, response_id: str, turn: TurnClock) -> Iterator[None]:
        """The turn span, current while the response runs (entered in its task)."""
        clock = turn.clock
        # Apart, not summed: an epoch in float seconds is only good to about 0.2 µs.
        offset = round(clock.now() * 1e9) - round(clock.monotonic() * 1e9)
        origin = turn.marks.get("speech_end", turn.marks.get("speech_stopped",
                                                              clock.monotonic()))
        span = self.tracer.start_span(
            TURN_SPAN, context=otel_context.Context(), start_time=_ns(origin, offset),
            attributes={"session.id": session_id, "gen_ai.conversation.id": session_id,
                        "voxwire.response.id": response_id,
                        "gen_ai.request.model": self.model})
        self._live[response_id] = _Live(span, turn, offset)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)
            live = self._live.pop(response_id, None)
            if live is not None:  # it ended without a record: dropped unannounced
                span.set_attribute("voxwire.response.status", "dropped")
                span.end(_ns(clock.monotonic(), offset))

    async def take(self, turn: TurnRecord) -> None:
        live = self._live.pop(turn.response_id, None)
        if live is None:
            return
        span, marks = live.span, dict(live.turn.marks)

        def ns(t: float) -> int:
            return _ns(t, live.offset_ns)

        span.set_attributes(turn_attributes(turn))
        parent = trace.set_span_in_context(span)
        for stage in STAGE_SPANS:
            a, b = STAGES[stage]
            if a in marks and b in marks:
                attributes: dict[str, Any] = {
                    "voxwire.stage": stage,
                    "voxwire.stage.ms": turn.timings.stages_ms.get(stage, 0.0)}
                if stage in turn.timings.compute_ms:
                    attributes["voxwire.compute_ms"] = turn.timings.compute_ms[stage]
                child = self.tracer.start_span(stage, context=parent,
                                               start_time=ns(marks[a]), attributes=attributes)
                child.end(ns(max(marks[a], marks[b])))
        for name, t in sorted(marks.items(), key=lambda m: m[1]):
            span.add_event(name, timestamp=ns(t))
        if turn.status == "failed":
            span.set_status(Status(StatusCode.ERROR, "the response failed"))
        span.end(ns(max(marks.values(), default=live.turn.clock.monotonic())))


def turn_attributes(turn: TurnRecord) -> dict[str, Any]:
    """A turn span's attributes from its record: the same figures as `voxwire.turn.metrics`."""
    out: dict[str, Any] = {
        "voxwire.response.status": turn.status, "voxwire.backend": turn.backend,
        "gen_ai.provider.name": PROVIDERS.get(turn.backend, turn.backend),
        "voxwire.transport": turn.transport, "voxwire.audio_ms": round(turn.audio_ms, 1)}
    if turn.user_item_id is not None:
        out["voxwire.item.id"] = turn.user_item_id
    if turn.tools:
        out["voxwire.tools"] = list(turn.tools)
    out |= {f"voxwire.{stage}_ms": ms for stage, ms in turn.timings.stages_ms.items()}
    if turn.timings.overhead_ms is not None:
        out["voxwire.overhead_ms"] = turn.timings.overhead_ms
    for key in ("input_tokens", "output_tokens"):
        if turn.usage is not None and isinstance(turn.usage.get(key), int):
            out[f"gen_ai.usage.{key}"] = turn.usage[key]
    return out


@dataclass
class LlmCall:
    """One streamed LLM request, as `llm_call` hands it over: the headers to send with it,
    and where to say how it ended."""

    headers: dict[str, str] = field(default_factory=dict)
    span: Span | None = None

    def finished(self, reason: str | None, input_tokens: int | None,
                 output_tokens: int | None) -> None:
        if self.span is None:
            return
        if reason:
            self.span.set_attribute("gen_ai.response.finish_reasons", [reason])
        if input_tokens is not None:
            self.span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            self.span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


@contextlib.contextmanager
def llm_call(provider: str, model: str, base_url: str, max_tokens: int) -> Iterator[LlmCall]:
    """A CLIENT span around one streamed LLM HTTP request (retries included), child of the
    current span (the turn's), and its ``traceparent`` in the headers to send. The span is
    never made current: the stream's steps run in more than one task."""
    tracing = _active
    if tracing is None:
        yield LlmCall()
        return
    url = urlsplit(base_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
        "gen_ai.request.model": model, "gen_ai.request.max_tokens": max_tokens,
        "server.address": url.hostname or "",
        "server.port": url.port or (443 if url.scheme == "https" else 80)}
    span = tracing.tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT,
                                     attributes=attributes)
    call = LlmCall(span=span)
    tracing.inject(call.headers, trace.set_span_in_context(span))
    try:
        yield call
    except Exception as exc:
        span.set_attribute("error.type", getattr(exc, "code", None) or type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()
