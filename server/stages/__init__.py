"""Pipeline stages, each a small interface with swappable engines.

The session talks to these Protocols only; it never knows which vendor is behind them.
All methods are blocking and CPU-bound: callers run them in a worker lane.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models import locate

Float32 = npt.NDArray[np.float32]


def resolve(name_or_path: str, stage: str) -> Path:
    """An embedded model by manifest name, or any local path the user points at."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    return locate(name_or_path, stage)


class VadStream(Protocol):
    """Per-session VAD state: 16 kHz samples in, one speech probability per window out."""

    window_ms: int

    def probabilities(self, samples: Float32) -> list[float]: ...


class VoiceActivityModel(Protocol):
    def new_stream(self) -> VadStream: ...


class Denoiser(Protocol):
    """Per-session noise suppression on the 16 kHz input stream.

    ``process`` takes any number of samples and returns the denoised audio time-aligned
    with the input: output sample i is input sample i, the engine's own delay already taken
    out. It may therefore return fewer samples than it has been given, by at most
    ``delay_ms`` (the engine's delay plus its framing and resampling); ``flush`` returns
    those held back, as if silence followed, and the stream goes on from there."""

    delay_ms: float

    def process(self, samples: Float32) -> Float32: ...
    def flush(self) -> Float32: ...


class NoiseSuppressor(Protocol):
    """A loaded suppressor; each session gets streams of its own. ``limit_db``: the most
    a stream may take off the input (the rest of the noisy signal is mixed back in)."""

    name: str

    def new_stream(self, limit_db: float) -> Denoiser: ...


class EchoStream(Protocol):
    """Per-session echo cancellation on the 16 kHz input stream.

    ``far`` takes the audio the client is playing (the far end), ``near`` the microphone
    audio captured while it played; call ``far`` for a stretch of time before ``near`` for
    the same stretch. ``near`` returns the microphone audio with the far end's echo taken
    out, time-aligned with its input; like a `Denoiser` it may hold back less than a frame
    (``delay_ms``), which ``flush`` gives back as if silence followed. The engine finds
    the echo's delay itself: the caller gives the far end when the client plays it."""

    delay_ms: float

    def far(self, samples: Float32) -> None: ...
    def near(self, samples: Float32) -> Float32: ...
    def flush(self) -> Float32: ...


class EchoCanceller(Protocol):
    """A loaded echo canceller; each session gets a stream of its own."""

    name: str

    def new_stream(self) -> EchoStream: ...


class TurnModel(Protocol):
    """Whether a turn sounds finished, from its audio: ``audio`` is the turn so far at
    16 kHz, its silence included (the engine keeps as much of the end as it reads); the
    answer is the probability, in [0, 1], that the speaker has finished."""

    name: str

    def complete(self, audio: Float32) -> float: ...


class TurnText(Protocol):
    """Whether a turn reads finished, from its words: ``text`` is the transcript of the
    turn so far; the answer is the probability, in [0, 1], that it is a finished turn."""

    name: str

    def complete(self, text: str) -> float: ...


@dataclass(frozen=True)
class Transcript:
    text: str
    # What the engine reports about how it got the text, by names of its own choosing;
    # a turn's metrics record each as ``asr_<name>``.
    details: Mapping[str, float] = field(default_factory=dict)


class Transcriber(Protocol):
    """Speech to text. ``partial``: a preview of an utterance still being spoken, where
    speed counts more than accuracy (an engine may treat it as any other call). ``stop``:
    set when nobody waits for the transcript any more; an engine may end early then."""

    name: str

    def transcribe(self, audio: Float32, *, partial: bool = False,
                   stop: threading.Event | None = None) -> Transcript: ...


@dataclass(frozen=True)
class ImageData:
    """A checked, downscaled image, ready for any backend."""

    media_type: str  # "image/jpeg" or "image/png"
    data: bytes
    width: int
    height: int

    def base64(self) -> str:
        return base64.b64encode(self.data).decode()

    def data_uri(self) -> str:
        return f"data:{self.media_type};base64,{self.base64()}"


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user", "assistant" or "tool"
    content: str
    images: tuple[ImageData, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # for role "tool": the call this answers


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]  # a leading "system" message carries the instructions
    temperature: float
    max_tokens: int
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"  # "auto", "none", "required" or "function" (with no tools,
    tool_name: str | None = None  # nothing is sent); "function" calls the tool named here
    session: str = ""  # who asks: lanes take turns between sessions; caches may be per session
    speculative: bool = field(default=False, compare=False)  # for a turn not yet confirmed
    # True while the request is still a speculation: its work then waits for other
    # sessions' (checked by the lane in its own thread, each time it picks a job).
    background: Callable[[], bool] | None = field(default=None, compare=False)
    # For a spoken answer: true while its client holds so much of it unplayed that its
    # next words are not urgent; they may then wait for other sessions' work.
    ahead: Callable[[], bool] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    index: int
    delta: str


@dataclass(frozen=True)
class Finished:
    """The last event of an answer the backend finished: why it stopped and what it cost.

    ``reason`` is "stop", "length" (the ``max_tokens`` cap cut it short) or "tool_calls";
    token counts are None where the backend did not say."""

    reason: str = "stop"
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None  # of the input tokens, those a prompt cache held


ResponderEvent = TextDelta | ToolCallStart | ToolCallArguments | Finished


class LanguageModel(Protocol):
    """A blocking, in-process text model (llama.cpp): run it in a worker lane."""

    name: str

    def stream(
        self, messages: list[ChatMessage], *, temperature: float, max_tokens: int,
        stop: threading.Event, session: str = "",
    ) -> Iterator[str]: ...

    def forget(self, session: str) -> None:
        """The session has ended: what is kept for its next turn may go to others."""


class Responder(Protocol):
    """Whatever answers a turn: the embedded model, OpenAI, Anthropic, a compatible server.

    ``stream`` is an async generator; closing it (``aclose``) must stop the work at once,
    closing the HTTP stream for remote backends. Failures raise ``BackendError``.
    """

    name: str
    can_see: bool
    can_use_tools: bool

    def stream(self, request: ChatRequest) -> AsyncGenerator[ResponderEvent, None]: ...

    async def prepare(self, request: ChatRequest) -> int:
        """Get ready for ``request``, whose last message is the user's words so far, in a
        turn still being spoken: the embedded model computes them into its prompt, so that
        the answer to the whole turn computes only the rest. Optional work, done only when
        it costs nobody anything; returns the tokens computed (0 for a remote backend,
        whose provider caches prompt prefixes itself). Never raises for that reason."""
        ...


class Synthesizer(Protocol):
    """A loaded TTS engine speaking one or more voices, all at one sample rate.

    ``synthesize`` yields float32 audio in [-1, 1] as it is made, checks ``stop`` between
    pieces and ends early once it is set. ``voice`` is one of ``voices``; another raises
    ``ValueError``. Calls come from the engine's own lane, one at a time."""

    name: str  # the engine, as the TTS registry names it
    voices: tuple[str, ...]  # what clients name in `audio.output.voice`
    sample_rate: int

    def synthesize(self, text: str, voice: str, stop: threading.Event) -> Iterator[Float32]: ...
