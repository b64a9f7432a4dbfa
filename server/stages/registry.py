"""Every engine of every stage by name: what it is, its own defaults, where its loader is.

Adding an engine is one module with a loader and one line here. A loader is named as
``"module:function"`` and imported only when its engine is used: listing the engines
(``voxwire serve --help``, the settings' checks) imports no model library, and an engine
whose package is missing fails only when someone asks for it.

Loaders, by stage (each engine runs in a worker lane of its own, made by ``Engines``):

- vad: ``load(settings) -> VoiceActivityModel``
- turn: ``load(settings) -> TurnModel`` (semantic turn detection, from the audio)
- turn-text: ``load(settings) -> TurnText`` (semantic turn detection, from the words)
- asr: ``load(settings) -> Transcriber``
- tts: ``load(settings, voices) -> list[Synthesizer]``: the named voices (each an embedded
  model's name or a path), one synthesizer per model the engine keeps; each gets a lane
- llm: ``load(settings, lane, model) -> Responder``: ``model`` is an embedded language
  model already loaded (or None), ``lane`` the one it runs in
- denoise: ``load(settings) -> NoiseSuppressor``: its streams run in the VAD lane, each
  session's in front of its VAD
- aec: ``load(settings) -> EchoCanceller``: its streams run in the VAD lane, each session's
  in front of its noise suppressor and its VAD
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from server.errors import ConfigError

if TYPE_CHECKING:
    from server.runtime.config import Settings
    from server.runtime.lanes import Lane
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
    )

    VadLoader = Callable[[Settings], VoiceActivityModel]
    TurnLoader = Callable[[Settings], TurnModel]
    TurnTextLoader = Callable[[Settings], TurnText]
    AsrLoader = Callable[[Settings], Transcriber]
    TtsLoader = Callable[[Settings, Sequence[str]], list[Synthesizer]]
    LlmLoader = Callable[[Settings, Lane, LanguageModel | None], Responder]
    DenoiseLoader = Callable[[Settings], NoiseSuppressor]
    AecLoader = Callable[[Settings], EchoCanceller]


@dataclass(frozen=True)
class Engine:
    about: str
    loader: str  # "module:function"
    default: str = ""  # the model (vad, asr, llm) or voice (tts) used when none is named


@dataclass(frozen=True)
class Backend(Engine):
    """A language backend: besides its default model, where its API key comes from and
    whether it sees images unless told (``--llm-vision auto``)."""

    key_variable: str = ""
    sees: bool = False
    needs_url: bool = False  # --llm-base-url is required


E = TypeVar("E", bound=Engine)
L = TypeVar("L")


@dataclass(frozen=True)
class Stage(Generic[E, L]):
    name: str
    engines: Mapping[str, E]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.engines)

    def get(self, name: str) -> E:
        try:
            return self.engines[name]
        except KeyError:
            raise ConfigError(f"no {self.name} engine {name!r} (known: "
                              f"{', '.join(self.engines)})") from None

    def loader(self, name: str) -> L:
        module, _, function = self.get(name).loader.partition(":")
        try:
            found = getattr(importlib.import_module(module), function)
        except ImportError as exc:
            raise ConfigError(f"the {self.name} engine {name!r} is not installed: {exc}") from exc
        return cast(L, found)


VAD: Stage[Engine, VadLoader] = Stage("vad", {
    "silero": Engine("Silero VAD (onnxruntime)", "server.stages.vad:load", "silero-vad"),
})
TURN: Stage[Engine, TurnLoader] = Stage("turn", {
    "smart-turn": Engine("Smart Turn v3.2 (onnxruntime)", "server.stages.turn_smart:load",
                         "smart-turn-v3.2"),
})
ASR: Stage[Engine, AsrLoader] = Stage("asr", {
    "whisper": Engine("Whisper (faster-whisper, CTranslate2)", "server.stages.asr:load",
                      "tiny.en"),
})
TTS: Stage[Engine, TtsLoader] = Stage("tts", {
    "piper": Engine("Piper voices (onnxruntime)", "server.stages.tts:load", "joe"),
    "hibari": Engine("hibari, Kokoro-distilled voices (onnxruntime)",
                     "server.stages.tts_hibari:load", "heart"),
})
LLM: Stage[Backend, LlmLoader] = Stage("llm", {
    "local": Backend("llama.cpp, in process", "server.stages.llm:load", "smollm2-135m"),
    "openai": Backend("OpenAI's API", "server.stages.cloud:load_openai", "gpt-4o-mini",
                      key_variable="OPENAI_API_KEY", sees=True),
    "anthropic": Backend("Anthropic's API", "server.stages.cloud:load_anthropic",
                         "claude-haiku-4-5", key_variable="ANTHROPIC_API_KEY", sees=True),
    "openai-compatible": Backend("any OpenAI-compatible server (vLLM, Ollama, llama.cpp)",
                                 "server.stages.cloud:load_compatible",
                                 key_variable="OPENAI_API_KEY", needs_url=True),
})
DENOISE: Stage[Engine, DenoiseLoader] = Stage("denoise", {
    "rnnoise": Engine("RNNoise (Xiph), 48 kHz, 20 ms delay", "server.stages.denoise_rnnoise:load",
                      "rnnoise"),
    "deepfilternet": Engine("DeepFilterNet3 (libDF C runtime), 48 kHz, 30 ms delay",
                            "server.stages.denoise_dfn:load", "deepfilternet3"),
})
AEC: Stage[Engine, AecLoader] = Stage("aec", {
    "webrtc": Engine("WebRTC AEC3 (the livekit wheel's audio processing module), 10 ms frames",
                     "server.stages.aec_webrtc:load"),
})
TURN_TEXT: Stage[Engine, TurnTextLoader] = Stage("turn-text", {
    "smollm2": Engine("SmolLM2-135M's end-of-message probability (llama.cpp)",
                      "server.stages.turn_text:load", "smollm2-135m"),
})
