"""Load every model once per process and give each its own worker lane."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import locate
from server.config import Settings
from server.errors import ConfigError
from server.images import ImageLane
from server.lanes import Lane
from server.metrics import Registry
from server.stages import (
    LanguageModel,
    Responder,
    Synthesizer,
    Transcriber,
    VoiceActivityModel,
)

log = logging.getLogger(__name__)


def resolve(name_or_path: str, stage: str) -> Path:
    """An embedded model by manifest name, or any local path the user points at."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    return locate(name_or_path, stage)


@dataclass
class Engines:
    vad: VoiceActivityModel
    asr: Transcriber
    llm: LanguageModel | None  # the embedded model, when the local backend is in use
    responder: Responder
    tts: Synthesizer
    registry: Registry
    vad_lane: Lane
    asr_lane: Lane
    llm_lane: Lane
    tts_lane: Lane
    image_lane: ImageLane = field(default_factory=ImageLane)  # shared by every session

    @classmethod
    def load(cls, settings: Settings) -> Engines:
        from server.stages.asr import WhisperTranscriber
        from server.stages.llm import LlamaModel
        from server.stages.tts import PiperSynthesizer
        from server.stages.vad import SileroVad

        t0 = time.monotonic()
        vad = SileroVad(resolve("silero-vad", "vad"))
        asr = WhisperTranscriber(resolve(settings.asr_model, "asr"), mode=settings.asr_mode,
                                 device=settings.device, threads=settings.asr_threads,
                                 name=settings.asr_model, window_s=settings.asr_window_s,
                                 budget_s=settings.asr_budget_s,
                                 budget_ratio=settings.asr_budget_ratio)
        tts = PiperSynthesizer(resolve(settings.tts_voice, "tts"), threads=settings.tts_threads)
        llm_lane = Lane("llm")
        llm: LlamaModel | None = None
        if settings.llm_backend == "local":
            llm = LlamaModel(resolve(settings.llm_model, "llm"), threads=settings.llm_threads,
                             context=settings.llm_context, cache_scope=settings.llm_cache_scope,
                             contexts=settings.llm_contexts)
            llm.warm(settings.instructions)
        responder = make_responder(settings, llm, llm_lane)
        # Everything loaded so far lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (about 85 ms, on the event loop).
        gc.freeze()
        log.info("models loaded in %.1f s (asr %s on %s, mode %s; llm %s via %s; tts %s)",
                 time.monotonic() - t0, settings.asr_model, asr.device, settings.asr_mode,
                 responder.name, settings.llm_backend, tts.name)
        return cls(vad, asr, llm, responder, tts, Registry(), Lane("vad"), Lane("asr"),
                   llm_lane, Lane("tts"),
                   ImageLane(settings.image_workers, settings.max_image_jobs))

    @property
    def lanes(self) -> tuple[Lane, ...]:
        return (self.vad_lane, self.asr_lane, self.llm_lane, self.tts_lane)

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()
        self.image_lane.close()


def make_responder(settings: Settings, llm: LanguageModel | None, lane: Lane) -> Responder:
    """The configured language backend behind the one Responder interface."""
    from server.stages.cloud import AnthropicResponder, OpenAIResponder
    from server.stages.llm import LlamaModel, LocalResponder

    if settings.llm_backend == "local":
        if not isinstance(llm, LlamaModel):
            raise ConfigError("the local backend needs its model loaded")
        return LocalResponder(llm, lane)
    common: dict[str, Any] = {"model": settings.llm_model, "api_key": settings.llm_api_key,
              "base_url": settings.llm_base_url or None, "timeout": settings.llm_timeout_s,
              "retries": settings.llm_retries, "vision": settings.can_see}
    if settings.llm_backend == "anthropic":
        return AnthropicResponder(**common)
    return OpenAIResponder(**common, compatible=settings.llm_backend == "openai-compatible")
