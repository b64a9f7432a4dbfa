"""Pipecat wired to Voxwire's embedded models, behind the Realtime events the benchmark reads.

Run with `.venv-peers/bin/python` (see `make bench-peers`); Voxwire never imports this file.
The pipeline is Pipecat's own, with its defaults: silero VAD (stop after 0.2 s), Smart Turn
v3 (the ONNX weights ship in the pipecat package), Whisper through faster-whisper, an
OpenAI-compatible LLM (llama.cpp's server running the GGUF) and piper. The only thing
added is a WebSocket serializer for the subset of the OpenAI Realtime protocol that the
benchmark client (`bench.latency.one_turn`, the official `openai` SDK) needs:

- in: `input_audio_buffer.append` (pcm16, 24 kHz) becomes 16 kHz input audio;
  `session.update` and anything else is ignored;
- out: TTS audio becomes `response.output_audio.delta` (pcm16, 24 kHz); the user turn's
  end (UserStoppedSpeakingFrame) `input_audio_buffer.speech_stopped`; the transcript
  `conversation.item.input_audio_transcription.completed`; the end of the spoken answer
  `response.done`, then `pipecat.turn.metrics` with Pipecat's own latency breakdown
  (its UserBotLatencyObserver's contributions, in ms).

One pipeline serves one client at a time; each new connection starts a fresh conversation
(its context is emptied; the system prompt is the LLM service's), as each Voxwire session does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData, TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.observers.user_bot_latency_observer import LatencyBreakdown, UserBotLatencyObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transcriptions.language import Language
from pipecat.transports.websocket.server import (
    SingleClientWebsocketServerParams,
    SingleClientWebsocketServerTransport,
)
from pipecat.workers.runner import WorkerRunner

IN_RATE, CLIENT_RATE = 16000, 24000


class RealtimeSerializer(FrameSerializer):
    """Realtime protocol events <-> Pipecat frames, for the events the benchmark uses."""

    def __init__(self) -> None:
        super().__init__()
        self._resampler = create_stream_resampler()

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)

    async def deserialize(self, data: str | bytes) -> Frame | None:
        try:
            event = json.loads(data)
        except ValueError:
            return None
        if not isinstance(event, dict) or event.get("type") != "input_audio_buffer.append":
            return None  # session.update and the rest: nothing for the pipeline
        pcm = base64.b64decode(event.get("audio", ""))
        audio = await self._resampler.resample(pcm, CLIENT_RATE, IN_RATE)
        return InputAudioRawFrame(audio=audio, sample_rate=IN_RATE, num_channels=1)

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            assert frame.sample_rate == CLIENT_RATE, frame.sample_rate
            return json.dumps({"type": "response.output_audio.delta", "event_id": _id("ev"),
                               "response_id": "resp", "item_id": "item", "output_index": 0,
                               "content_index": 0,
                               "delta": base64.b64encode(frame.audio).decode()})
        if isinstance(frame, OutputTransportMessageFrame | OutputTransportMessageUrgentFrame):
            return json.dumps(frame.message)
        return None


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class RealtimeEvents(BaseObserver):
    """Turns the pipeline's frames into the Realtime events the client waits for."""

    def __init__(self, transport: SingleClientWebsocketServerTransport) -> None:
        super().__init__(observe_every_push=False)
        self.transport = transport
        self.reset()

    def reset(self) -> None:
        self.stopped = self.llm_done = False
        self.breakdown: LatencyBreakdown | None = None
        self.latency_s: float | None = None
        self.ttfb_ms: dict[str, float] = {}
        self.prompt_tokens: int | None = None

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _id("ev"))
        await self.transport.output().send_message(OutputTransportMessageUrgentFrame(event))

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, UserStartedSpeakingFrame):
            self.reset()
        elif isinstance(frame, UserStoppedSpeakingFrame) and not self.stopped:
            self.stopped = True
            await self.send({"type": "input_audio_buffer.speech_stopped",
                             "audio_end_ms": 0, "item_id": "item"})
        elif isinstance(frame, TranscriptionFrame):
            await self.send({"type": "conversation.item.input_audio_transcription.completed",
                             "item_id": "item", "content_index": 0,
                             "transcript": frame.text.strip()})
        elif isinstance(frame, MetricsFrame):
            for d in frame.data:
                if isinstance(d, TTFBMetricsData) and d.value > 0:
                    self.ttfb_ms.setdefault(d.processor.split("#")[0], round(d.value * 1000, 1))
                elif isinstance(d, LLMUsageMetricsData):
                    self.prompt_tokens = d.value.prompt_tokens
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.llm_done = True
        elif isinstance(frame, BotStoppedSpeakingFrame) and self.llm_done:
            await self.send({"type": "response.done", "response": {
                "id": "resp", "object": "realtime.response", "status": "completed",
                "output": []}})
            await self.send(self.metrics())
            self.reset()

    def metrics(self) -> dict[str, Any]:
        stages: dict[str, float] = {}
        for c in self.breakdown.contributions if self.breakdown else []:
            stages[c.key] = round(stages.get(c.key, 0.0) + c.duration_secs * 1000, 1)
        if self.latency_s is not None:
            stages["voice_to_voice"] = round(self.latency_s * 1000, 1)
        return {"type": "pipecat.turn.metrics", "status": "completed", "stages_ms": stages,
                "ttfb_ms": self.ttfb_ms, "prompt_tokens": self.prompt_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL, .../v1")
    ap.add_argument("--llm-model", default="smollm2-135m")
    ap.add_argument("--asr-model", type=Path, required=True, help="a CTranslate2 Whisper folder")
    ap.add_argument("--voice", type=Path, required=True, help="a piper voice .onnx file")
    ap.add_argument("--instructions", required=True, help="the system prompt")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    logger.remove()
    logger.add(lambda m: print(m, end="", flush=True), level=args.log_level)
    asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> None:
    transport = SingleClientWebsocketServerTransport(
        host="127.0.0.1", port=args.port,
        params=SingleClientWebsocketServerParams(audio_in_enabled=True, audio_out_enabled=True,
                                     serializer=RealtimeSerializer()))
    stt = WhisperSTTService(
        device="cpu", compute_type="int8",
        settings=WhisperSTTService.Settings(model=str(args.asr_model), language=Language.EN))
    llm = OpenAILLMService(
        api_key="none", base_url=args.llm_url,
        settings=OpenAILLMService.Settings(
            model=args.llm_model, system_instruction=args.instructions,
            temperature=args.temperature, max_tokens=args.max_tokens))
    tts = PiperTTSService(download_dir=args.voice.parent, settings=PiperTTSService.Settings(
        voice=args.voice.stem))
    context = LLMContext()
    user, assistant = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()))
    pipeline = Pipeline([transport.input(), stt, user, llm, tts, transport.output(), assistant])

    events = RealtimeEvents(transport)
    latency = UserBotLatencyObserver()
    worker = PipelineWorker(
        pipeline, params=PipelineParams(audio_in_sample_rate=IN_RATE,
                                        audio_out_sample_rate=CLIENT_RATE, enable_metrics=True),
        observers=[events, latency], enable_rtvi=False, idle_timeout_secs=None)

    @latency.event_handler("on_latency_measured")
    async def on_latency(_: Any, seconds: float) -> None:
        events.latency_s = seconds

    @latency.event_handler("on_latency_breakdown")
    async def on_breakdown(_: Any, breakdown: LatencyBreakdown) -> None:
        events.breakdown = breakdown

    @transport.event_handler("on_client_connected")
    async def on_connected(*_: Any) -> None:
        context.set_messages([])  # a fresh conversation per connection
        events.reset()

    runner = WorkerRunner(handle_sigint=True, handle_sigterm=True)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    main()
