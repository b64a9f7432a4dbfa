"""Load every engine once per process, by its registry name, each in a worker lane of its own."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from models import load_manifest
from server.errors import ConfigError
from server.runtime.config import Settings
from server.runtime.lanes import Lane, WorkLane
from server.runtime.metrics import Registry
from server.session.images import ImageLane
from server.stages import (
    EchoCanceller,
    LanguageModel,
    NoiseSuppressor,
    Responder,
    Synthesizer,
    Transcriber,
    TurnModel,
    TurnText,
    VoiceActivityModel,
    resolve,
)
from server.stages import registry as engines_registry

__all__ = ["Engines", "SessionEngines", "Speaker", "make_responder", "resolve", "voice_plan"]

T = TypeVar("T")
M = TypeVar("M")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speaker:
    """A loaded TTS engine and the lane it runs in."""

    engine: Synthesizer
    lane: WorkLane


class ImageRunner(Protocol):
    """Where images are decoded (`ImageLane`)."""

    async def run(self, fn: Callable[[], T]) -> T: ...


class SessionEngines(Protocol):
    """What a session (and its responses) needs of the engines: the stage interfaces, the
    lanes to run them in, the voices and the metrics registry. `Engines` is the real one;
    tests fill it with deterministic fakes."""

    @property
    def vad(self) -> VoiceActivityModel: ...
    @property
    def turn(self) -> TurnModel | None:
        """The turn model, when the server loaded one (semantic turn detection)."""
        ...
    @property
    def turn_text(self) -> TurnText | None:
        """The text turn model, when the server loaded one: it reads a pause's words."""
        ...
    @property
    def asr(self) -> Transcriber: ...
    @property
    def llm(self) -> LanguageModel | None: ...
    @property
    def responder(self) -> Responder: ...
    @property
    def registry(self) -> Registry: ...
    @property
    def denoiser(self) -> NoiseSuppressor | None: ...
    @property
    def echo_canceller(self) -> EchoCanceller | None: ...
    @property
    def vad_lane(self) -> WorkLane: ...
    @property
    def asr_lane(self) -> WorkLane: ...
    @property
    def turn_lane(self) -> WorkLane: ...
    @property
    def image_lane(self) -> ImageRunner: ...
    @property
    def lanes(self) -> tuple[WorkLane, ...]: ...
    @property
    def voice(self) -> str: ...
    @property
    def voices(self) -> tuple[str, ...]: ...
    def speaker(self, voice: str) -> tuple[Speaker, str]: ...


@dataclass
class Engines:
    vad: VoiceActivityModel
    asr: Transcriber
    llm: LanguageModel | None  # the embedded model, when the local backend is in use
    responder: Responder
    tts: Synthesizer  # the engine of the default voice
    registry: Registry
    vad_lane: Lane
    asr_lane: Lane
    llm_lane: Lane
    tts_lane: WorkLane
    image_lane: ImageLane = field(default_factory=ImageLane)  # shared by every session
    more_tts: tuple[Speaker, ...] = ()  # the other voices' engines, each with its own lane
    denoiser: NoiseSuppressor | None = None  # for sessions that ask; runs in the VAD lane
    echo_canceller: EchoCanceller | None = None  # the same
    turn: TurnModel | None = None  # with --turn-engine none, no turn model
    turn_text: TurnText | None = None  # with --turn-text-engine none (or no turn model), none
    turn_lane: Lane = field(default_factory=lambda: Lane("turn"))

    @classmethod
    def load(cls, settings: Settings) -> Engines:
        t0 = time.monotonic()
        vad = engines_registry.VAD.loader(settings.vad_engine)(settings)
        turn = load_turn(settings)
        turn_text = load_turn_text(settings) if turn is not None else None
        asr = engines_registry.ASR.loader(settings.asr_engine)(settings)
        speakers = load_voices(settings)
        denoiser = (None if settings.denoise_engine == "none" else
                    engines_registry.DENOISE.loader(settings.denoise_engine)(settings))
        canceller = (None if settings.aec_engine == "none" else
                     engines_registry.AEC.loader(settings.aec_engine)(settings))
        llm_lane = Lane("llm")
        responder = make_responder(settings, None, llm_lane)
        model = getattr(responder, "model", None)  # the embedded model, for tests and benches
        # Everything loaded so far lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (about 85 ms, on the event loop).
        gc.freeze()
        log.info("models loaded in %.1f s (asr %s via %s; llm %s via %s; voices %s)",
                 time.monotonic() - t0, settings.asr_model, settings.asr_engine,
                 responder.name, settings.llm_backend,
                 ", ".join(f"{v} ({s.engine.name})" for s in speakers for v in s.engine.voices))
        return cls(vad, asr, model, responder, speakers[0].engine, Registry(), Lane("vad"),
                   Lane("asr"), llm_lane, speakers[0].lane,
                   ImageLane(settings.image_workers, settings.max_image_jobs),
                   more_tts=tuple(speakers[1:]), denoiser=denoiser,
                   echo_canceller=canceller, turn=turn, turn_text=turn_text)

    @property
    def speakers(self) -> tuple[Speaker, ...]:
        return (Speaker(self.tts, self.tts_lane), *self.more_tts)

    @property
    def voice(self) -> str:
        """The server's default voice."""
        return self.tts.voices[0]

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(v for s in self.speakers for v in s.engine.voices)

    def speaker(self, voice: str) -> tuple[Speaker, str]:
        """The engine that speaks ``voice``, and the voice; the default one for a voice
        the server lacks."""
        for speaker in self.speakers:
            if voice in speaker.engine.voices:
                return speaker, voice
        return self.speakers[0], self.voice

    @property
    def lanes(self) -> tuple[WorkLane, ...]:
        return (self.vad_lane, self.turn_lane, self.asr_lane, self.llm_lane,
                *(s.lane for s in self.speakers))

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()
        self.image_lane.close()


def load_turn(settings: Settings) -> TurnModel | None:
    """The turn model, unless the server runs without one (``--turn-engine none``)."""
    return _optional(engines_registry.TURN, settings.turn_engine, settings)


def load_turn_text(settings: Settings) -> TurnText | None:
    """The text turn model, unless the server runs without one (``--turn-text-engine
    none``)."""
    return _optional(engines_registry.TURN_TEXT, settings.turn_text_engine, settings)


def _optional(stage: engines_registry.Stage[engines_registry.Engine, Callable[[Settings], M]],
              name: str, settings: Settings) -> M | None:
    if name == "none":
        return None
    t0 = time.monotonic()
    model = stage.loader(name)(settings)
    log.info("%s engine %s loaded in %.0f ms", stage.name, name, (time.monotonic() - t0) * 1000)
    return model


def voice_plan(settings: Settings) -> dict[str, list[str]]:
    """The voices to load, by engine, the default voice first: ``--tts-voice`` on
    ``--tts-engine``, then each of ``--voices`` (ENGINE:VOICE, an embedded voice's name,
    or "all": every embedded voice)."""
    embedded = {m.name: m.engine for m in load_manifest() if m.stage == "tts" and m.engine}
    plan: dict[str, list[str]] = {settings.tts_engine: [settings.tts_voice]}
    wanted = [v.strip() for v in settings.voices.split(",") if v.strip()]
    if wanted == ["all"]:
        wanted = [f"{engine}:{name}" for name, engine in embedded.items()]
    for item in wanted:
        engine, sep, voice = item.partition(":")
        if not sep or engine not in engines_registry.TTS.engines:
            engine, voice = embedded.get(item, ""), item
            if not engine:
                raise ConfigError(f"--voices: {item!r} is no embedded voice (known: "
                                  f"{', '.join(embedded)}); name a file as ENGINE:PATH")
        engines_registry.TTS.get(engine)
        if voice not in plan.setdefault(engine, []):
            plan[engine].append(voice)
    return plan


def load_voices(settings: Settings) -> list[Speaker]:
    """Every planned voice's engine, each synthesizer in a lane of its own; the default
    voice's first. Two engines may not answer to the same voice name."""
    speakers: list[Speaker] = []
    seen: dict[str, str] = {}
    for engine, voices in voice_plan(settings).items():
        for synth in _load_tts(settings, engine, voices):
            for voice in synth.voices:
                if voice in seen:
                    raise ConfigError(f"two voices are named {voice!r} ({seen[voice]} and "
                                      f"{synth.name}): name one by its path")
                seen[voice] = synth.name
            speakers.append(Speaker(synth, Lane(f"tts-{synth.name}-{synth.voices[0]}")))
    return speakers


def _load_tts(settings: Settings, engine: str, voices: Sequence[str]) -> list[Synthesizer]:
    loaded = engines_registry.TTS.loader(engine)(settings, voices)
    if not loaded:
        raise ConfigError(f"the {engine} engine loaded no voice of {', '.join(voices)}")
    return loaded


def make_responder(settings: Settings, llm: LanguageModel | None, lane: Lane) -> Responder:
    """The configured language backend behind the one Responder interface; ``llm``, an
    embedded model already loaded, is used rather than loaded again."""
    return engines_registry.LLM.loader(settings.llm_backend)(settings, lane, llm)
