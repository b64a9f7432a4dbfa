"""One typed settings object for the whole server, filled from flags and VOXWIRE_* variables."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_type_hints

from server.errors import ConfigError
from server.stages import registry

Device = Literal["auto", "cpu", "cuda"]
Toggle = Literal["auto", "on", "off"]
AsrMode = Literal["short", "padded"]
CacheScope = Literal["shared", "session"]
TurnType = Literal["server_vad", "semantic_vad"]

DEFAULT_INSTRUCTIONS = (
    "You are Voxwire, a helpful voice assistant. Always answer in English, in one to three short "
    "spoken sentences. Do not use lists, markdown or emoji."
)


@dataclass(frozen=True)
class Settings:
    """Every knob of the server. Field docs double as the CLI help."""

    host: str = "127.0.0.1"
    port: int = 8765
    api_keys: str = field(default="", repr=False, metadata={"flag": False})  # VOXWIRE_API_KEYS
    api_keys_file: str = ""  # one key per line
    insecure_public: bool = False  # listen beyond loopback without keys
    allowed_origins: str = ""  # comma-separated; empty allows any browser origin
    token_ttl_s: float = 60.0  # lifetime of a browser token (POST /v1/realtime/sessions)
    log_level: str = "INFO"
    # Models: an embedded name from the manifest, or a path to a local model.
    asr_model: str = ""  # "" picks the ASR engine's default (tiny.en for whisper)
    asr_mode: AsrMode = "short"
    asr_window_s: float = 15.0  # the short path's mel window; 0: the utterance's own length
    # Hypotheses the short path's final transcript keeps (beam search; 1: greedy, faster,
    # more slipped words). Partials always keep one.
    asr_beam_size: int = 5
    # Time bound on one transcription, which holds the ASR lane every session shares:
    # this many seconds plus asr_budget_ratio times the audio's duration; past it the
    # turn's transcription fails with transcription_timeout (see server/stages/asr.py).
    asr_budget_s: float = 5.0
    asr_budget_ratio: float = 1.0
    device: Device = "auto"
    asr_threads: int = 2
    llm_backend: str = field(default="local", metadata={"choices": registry.LLM.names})
    llm_model: str = ""  # "" picks the backend's default (server/stages/registry.py)
    llm_base_url: str = ""
    llm_api_key: str = field(default="", repr=False, metadata={"flag": False})
    llm_timeout_s: float = 30.0
    llm_retries: int = 2
    llm_vision: Toggle = "auto"
    llm_threads: int = 1
    llm_context: int = 2048
    # "session": never reuse a KV-cache prefix across sessions (no prompt timing between
    # clients; a cold prefill when sessions alternate); "shared": reuse it (faster)
    llm_cache_scope: CacheScope = "shared"
    llm_contexts: int = 4  # llama.cpp contexts: answers made at once, taking turns per token
    # KV caches of sessions whose context another session took, kept so that their next
    # turn computes only its new words (about 23 KB a token; oldest dropped first)
    llm_saved_mib: int = 256
    tts_voice: str = ""  # the default voice; "" picks the TTS engine's (joe for piper)
    tts_threads: int = 1
    # Engines, by their names in server/stages/registry.py. Every engine runs in a worker
    # lane of its own; each voice listed in `voices` loads (with its engine) at start.
    vad_engine: str = field(default="silero", metadata={"choices": registry.VAD.names})
    asr_engine: str = field(default="whisper", metadata={"choices": registry.ASR.names})
    tts_engine: str = field(default="piper", metadata={"choices": registry.TTS.names})
    # More voices a client may pick (`audio.output.voice`), comma-separated, each
    # ENGINE:VOICE (hibari:heart) or an embedded voice's name; "all": every embedded voice
    voices: str = ""
    # Conversation defaults (a client may change them with session.update).
    instructions: str = DEFAULT_INSTRUCTIONS
    temperature: float = 0.2
    max_output_tokens: int = 160
    history_turns: int = 8
    # Turn detection defaults (OpenAI server_vad semantics).
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 96
    barge_in_ms: int = 300
    partial_interval_ms: int = 800
    speculate: bool = True  # transcribe at the first silence, before the turn is confirmed
    speculate_answer: bool = True  # and answer it (LLM, first clause TTS) behind a gate
    # While the user speaks, each partial transcript's words go into the embedded model's
    # prompt (KV cache), so that the answer computes only the words after them.
    prepare_words: bool = True
    first_clause_words: int = 4
    # A first sentence with no comma is cut for TTS after at most this many words.
    first_max_words: int = 8
    # Speech over a playing answer that says only these (phrases, by commas) is a backchannel:
    # the answer plays on (server/session/overlap.py), as it does for a sound with no words
    # shorter than barge_in_ms. "": any speech over the answer interrupts it.
    backchannel_words: str = ("mm-hm, mhm, hm, mm, uh-huh, uh, um, ah, oh, aha, yeah, yes, "
                              "yep, yup, right, okay, ok, sure, i see, got it, all right, "
                              "alright, cool, nice, wow, really, true, exactly, go on")
    echo_guard: float = 0.5  # echo likeness above which speech is the assistant's own; 0: off
    # Noise suppression, for sessions that ask (`audio.input.noise_reduction`): the engine
    # (server/stages/registry.py; "none": not loaded, the setting is then accepted and
    # ignored) and the most each type may take off the noise, in dB (100: no limit).
    # Measured (python -m bench.noise): Whisper's WER on noisy speech rises with the limit
    # (RNNoise: 32.8 % at 12 dB, 41.0 % at 24 dB, 43.5 % unlimited; 33.1 % with none), so
    # both types take at most 12 dB until a stronger far_field is shown to help.
    denoise_engine: str = field(default="rnnoise",
                                metadata={"choices": (*registry.DENOISE.names, "none")})
    denoise_near_db: float = 12.0
    denoise_far_db: float = 12.0
    # Echo cancellation, for sessions that ask (`session.voxwire.echo_cancellation`): the
    # engine (server/stages/registry.py; "none": not loaded, the field is then accepted and
    # ignored, and the echo guard alone keeps the assistant from interrupting itself).
    aec_engine: str = field(default="webrtc", metadata={"choices": (*registry.AEC.names, "none")})
    # Semantic turn detection (`semantic_vad`): at a pause, the turn model judges whether the
    # turn so far sounds finished; the session's eagerness sets when it is first asked, how
    # sure it must be and the longest pause that still waits (server/stages/turns.py).
    turn_detection: TurnType = "server_vad"  # what new sessions get until they say otherwise
    # and, with semantic_vad, their eagerness until they say otherwise
    eagerness: str = field(default="auto", metadata={"choices": ("low", "medium", "high",
                                                                  "auto")})
    # The turn model, loaded at start (about 9 MB). "none": not loaded; semantic_vad
    # sessions are then ended by silence alone, as server_vad ones are.
    turn_engine: str = field(default="smart-turn",
                             metadata={"choices": (*registry.TURN.names, "none")})
    # The text turn model, beside it: the words of a pause's transcript hold a turn that
    # reads unfinished open a while longer ("none": the audio decides alone).
    turn_text_engine: str = field(default="smollm2",
                                  metadata={"choices": (*registry.TURN_TEXT.names, "none")})
    turn_threads: int = 1
    turn_recheck_ms: int = 250  # the turn model is asked again this often while a pause lasts
    # Limits.
    max_message_bytes: int = 4 * 1024 * 1024
    max_utterance_s: float = 30.0
    max_append_s: float = 15.0  # audio in one input_audio_buffer.append
    audio_rate: float = 1.5  # audio seconds a session may send per second, after the burst
    audio_burst_s: float = 30.0  # audio a session may send at once, faster than real time
    max_buffer_s: float = 120.0
    max_sessions: int = 64
    max_sessions_per_key: int = 16
    max_events_per_s: float = 100.0  # per connection (audio in 20 ms chunks is 50/s)
    idle_timeout_s: float = 600.0
    max_session_s: float = 4 * 3600.0
    input_queue: int = 4
    send_queue: int = 512
    first_token_timeout_s: float = 20.0
    shutdown_grace_s: float = 5.0
    # A WebRTC call whose ICE and DTLS have not completed this long after its answer is closed.
    webrtc_connect_timeout_s: float = 10.0
    no_webrtc: bool = False  # refuse WebRTC offers (404): clients use the WebSocket
    # A session may be resumed (?voxwire_resume=sess_...) this long after it was last used.
    resume_ttl_s: float = 900.0
    # STUN and TURN servers for every WebRTC call, behind NAT: a JSON array of RTCIceServer
    # objects as a browser takes them ([{"urls": "turn:HOST:3478", "username": "...",
    # "credential": "..."}]), better from VOXWIRE_ICE_SERVERS than from the command line,
    # which every user of the machine can read. aiortc uses the first STUN URL and the first
    # TURN URL; host candidates stay on --host.
    ice_servers: str = field(default="", repr=False)
    # UDP ports for the calls' media, LOW-HIGH (a call takes one; when all are taken, the
    # next offer is refused with 503); "": any ephemeral port
    rtc_ports: str = ""
    heap_trim_s: float = 10.0  # hand freed native memory back this often; 0: never
    # Edge limits.
    max_event_bytes: int = 1024 * 1024  # events without an image; image events: max_message_bytes
    max_bytes_per_s: float = 2 * 1024 * 1024  # per connection, bursts of two seconds' worth
    max_connections_per_ip: int = 32  # open TCP connections from one client address
    max_pending_handshakes_per_ip: int = 16  # connections not yet through their handshake
    max_pending_handshakes: int = 256  # the same, from all addresses together
    # Proxies (a balancer: addresses or networks, comma-separated) whose connections are not
    # held to the per-address caps above: every user behind one shares its address.
    trusted_proxies: str = ""
    allowed_hosts: str = ""  # comma-separated Host names a keyless server also answers
    metrics_public: bool = False  # with keys configured, /metrics without a key
    kiosk_any_server: bool = False  # let /kiosk?url= point at another server
    max_tokens_per_key: int = 64  # live browser tokens one key may hold
    token_mints_per_s: float = 10.0  # per key, bursts of two seconds' worth
    # sqlite:///path.db, postgresql://user:pass@host/db or "none" (repr hides a password)
    store: str = field(default="sqlite:///~/.local/share/voxwire/history.db", repr=False)
    record: bool = False  # also keep each turn's audio (user and assistant) in the store
    retention_days: float = 0.0  # 0 keeps history forever
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 16_000_000  # checked from the header, before any pixel is read
    image_max_side: int = 768
    frame_max_age_s: float = 10.0
    # Memory and storage budgets.
    max_items: int = 1000  # conversation items per session
    max_conversation_bytes: int = 16 * 1024 * 1024  # per session, items and their images
    max_item_bytes: int = 32 * 1024  # one client item, its text and fields (images apart)
    max_outbox_bytes: int = 8 * 1024 * 1024  # server events waiting for a slow client
    image_workers: int = 1  # threads decoding images, shared by every session
    max_image_jobs: int = 4  # image decodes running or waiting, server-wide
    max_stored_text_bytes: int = 16 * 1024  # per text field of a stored turn; longer is cut
    max_store_bytes_per_session: int = 32 * 1024 * 1024  # history one session may write
    store_max_mb: float = 0.0  # the whole history database; 0: no limit

    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`trusted_proxies` as networks (an address is a network of one)."""
        out = []
        for item in (x.strip() for x in self.trusted_proxies.split(",")):
            if item:
                try:
                    out.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ConfigError(f"--trusted-proxies: {item!r} is not an IP address or "
                                      "network (for example 10.0.0.5 or 10.0.0.0/8)") from None
        return out

    def __post_init__(self) -> None:
        self.proxy_networks()  # checked at start
        for name, choices in _choices().items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        backend = registry.LLM.get(self.llm_backend)
        for name, stage, engine in (("llm_model", registry.LLM, self.llm_backend),
                                    ("asr_model", registry.ASR, self.asr_engine),
                                    ("tts_voice", registry.TTS, self.tts_engine)):
            if not getattr(self, name):
                object.__setattr__(self, name, stage.get(engine).default)
        if backend.needs_url and not self.llm_base_url:
            raise ConfigError(f"--llm-backend {self.llm_backend} needs --llm-base-url "
                              "(for example http://127.0.0.1:8000/v1)")
        if self.llm_backend != "local" and not self.llm_model:
            raise ConfigError(f"--llm-backend {self.llm_backend} needs --llm-model")
        if self.turn_detection == "semantic_vad" and self.turn_engine == "none":
            raise ConfigError("--turn-detection semantic_vad needs a turn model "
                              "(--turn-engine smart-turn)")
        ice_servers(self.ice_servers)
        port_range(self.rtc_ports)
        for name, ok in (
            ("port", 0 <= self.port < 65536),
            ("token_ttl_s", 1.0 <= self.token_ttl_s <= 3600.0),
            ("webrtc_connect_timeout_s", 0.1 <= self.webrtc_connect_timeout_s <= 120.0),
            ("resume_ttl_s", 0.0 <= self.resume_ttl_s <= 30 * 86400.0),
            ("asr_threads", self.asr_threads >= 1),
            ("asr_window_s", 0.0 <= self.asr_window_s <= 30.0),
            ("asr_beam_size", 1 <= self.asr_beam_size <= 10),
            ("asr_budget_s", self.asr_budget_s > 0),
            ("asr_budget_ratio", self.asr_budget_ratio >= 0),
            ("llm_threads", self.llm_threads >= 1),
            ("llm_contexts", 1 <= self.llm_contexts <= 16),
            ("llm_saved_mib", self.llm_saved_mib >= 0),
            ("tts_threads", self.tts_threads >= 1),
            ("vad_threshold", 0.0 < self.vad_threshold < 1.0),
            ("denoise_near_db", 0.0 < self.denoise_near_db <= 100.0),
            ("denoise_far_db", 0.0 < self.denoise_far_db <= 100.0),
            ("silence_duration_ms", 0 < self.silence_duration_ms <= 10_000),
            ("turn_threads", self.turn_threads >= 1),
            ("first_clause_words", self.first_clause_words >= 1),
            ("first_max_words", self.first_max_words >= 1),
            ("turn_recheck_ms", 32 <= self.turn_recheck_ms <= 5000),
            ("max_output_tokens", self.max_output_tokens >= 1),
            ("max_sessions", self.max_sessions >= 1),
            ("input_queue", self.input_queue >= 1),
            ("send_queue", self.send_queue >= 1),
            ("llm_retries", 0 <= self.llm_retries <= 10),
            ("llm_timeout_s", self.llm_timeout_s > 0),
            ("image_max_side", 64 <= self.image_max_side <= 4096),
            ("heap_trim_s", self.heap_trim_s >= 0),
            ("max_append_s", 0.1 <= self.max_append_s <= 60.0),
            ("audio_rate", self.audio_rate >= 1.0),
            ("audio_burst_s", self.audio_burst_s >= self.max_append_s),
            ("max_items", self.max_items >= 8),
            ("max_conversation_bytes", self.max_conversation_bytes >= 64 * 1024),
            ("max_item_bytes", 1024 <= self.max_item_bytes <= self.max_conversation_bytes),
            ("max_outbox_bytes", self.max_outbox_bytes >= 64 * 1024),
            ("image_workers", 1 <= self.image_workers <= 16),
            ("max_image_jobs", self.max_image_jobs >= self.image_workers),
            ("max_image_pixels", self.max_image_pixels >= self.image_max_side ** 2),
            ("max_stored_text_bytes", self.max_stored_text_bytes >= 256),
            ("max_store_bytes_per_session", self.max_store_bytes_per_session >= 64 * 1024),
            ("store_max_mb", self.store_max_mb >= 0),
            ("max_event_bytes", self.max_event_bytes >= 1024),
            ("max_bytes_per_s", self.max_bytes_per_s > 0),
            ("max_connections_per_ip", self.max_connections_per_ip >= 1),
            ("max_pending_handshakes_per_ip", self.max_pending_handshakes_per_ip >= 1),
            ("max_pending_handshakes", self.max_pending_handshakes >= 1),
            ("max_tokens_per_key", self.max_tokens_per_key >= 1),
            ("token_mints_per_s", self.token_mints_per_s > 0),
        ):
            if not ok:
                raise ConfigError(f"invalid setting {name}={getattr(self, name)!r}")

    @property
    def can_see(self) -> bool:
        """Whether the backend gets images: on for OpenAI and Anthropic unless turned off."""
        if self.llm_vision == "auto":
            return registry.LLM.get(self.llm_backend).sees
        return self.llm_vision == "on"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server entry of --ice-servers (an RTCIceServer)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


# What aiortc takes (aiortc.rtcicetransport): stun:HOST[:PORT], turn:HOST[:PORT] over UDP or
# TCP (?transport=tcp), turns:HOST[:PORT] over TCP; it skips the rest without a word.
_ICE_URL = re.compile(r"(?P<scheme>[a-z]+):(?P<host>[^?:/\s]+)(:(?P<port>[0-9]{1,5}))?"
                      r"(\?transport=(?P<transport>[a-z]+))?")
_ICE_TRANSPORTS = {"stun": (None,), "turn": (None, "udp", "tcp"), "turns": (None, "tcp")}


def ice_servers(text: str) -> tuple[IceServer, ...]:
    """The servers --ice-servers names (raises ConfigError saying what is wrong)."""
    if not text.strip():
        return ()
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"--ice-servers (VOXWIRE_ICE_SERVERS) is not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ConfigError('--ice-servers must be a JSON array of objects like {"urls": '
                          '"turn:turn.example.com:3478", "username": "...", "credential": '
                          '"..."}')
    return tuple(_ice_server(i, entry) for i, entry in enumerate(entries))


def _ice_server(i: int, entry: Any) -> IceServer:
    where = f"--ice-servers[{i}]"
    if not isinstance(entry, dict) or "urls" not in entry:
        raise ConfigError(f'{where} must be an object with "urls"')
    urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
    unknown = set(entry) - {"urls", "username", "credential", "credentialType"}
    if unknown:
        raise ConfigError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    if entry.get("credentialType", "password") != "password":
        raise ConfigError(f'{where}: only "credentialType": "password" is supported')
    username, credential = entry.get("username"), entry.get("credential")
    for name, value in (("username", username), ("credential", credential)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string")
    if not urls:
        raise ConfigError(f'{where}: "urls" is empty')
    for url in urls:
        if not isinstance(url, str):
            raise ConfigError(f"{where}: every URL must be a string, not {url!r}")
        match = _ICE_URL.fullmatch(url)
        if match is None:
            raise ConfigError(f"{where}: {url!r} is not a STUN or TURN URL "
                              "(stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], "
                              "turns:HOST[:PORT])")
        scheme, port = match["scheme"], match["port"]
        if scheme not in _ICE_TRANSPORTS:
            raise ConfigError(f"{where}: {url!r} has the scheme {scheme!r}; use stun, turn "
                              "or turns")
        if match["transport"] not in _ICE_TRANSPORTS[scheme]:
            raise ConfigError(f"{where}: {url!r}: {scheme} does not take transport="
                              f"{match['transport']}")
        if port is not None and not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: {url!r} has no valid port")
        if scheme != "stun" and not (username and credential):
            raise ConfigError(f'{where}: the TURN server {url!r} needs a "username" and a '
                              '"credential"')
    return IceServer(tuple(urls), username, credential)


def port_range(text: str) -> range | None:
    """The ports --rtc-ports names (None: ephemeral ports; raises ConfigError)."""
    if not text.strip():
        return None
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", text)
    low, high = (int(match[1]), int(match[2])) if match else (0, -1)
    if not 0 < low <= high < 65536:
        raise ConfigError(f"--rtc-ports must be LOW-HIGH, two UDP ports from 1 to 65535, the "
                          f"first not above the second (like 40000-40100), not {text!r}")
    return range(low, high + 1)


def _choices() -> dict[str, tuple[str, ...]]:
    """The settings that take one of a few values: a Literal, or an engine registry's names."""
    hints = get_type_hints(Settings)
    out = {f.name: f.metadata.get("choices") or get_args(hints[f.name]) for f in fields(Settings)}
    return {name: choices for name, choices in out.items() if choices}


def _convert(name: str, hint: Any, raw: str) -> Any:
    try:
        if hint is bool:
            return raw.lower() in {"1", "true", "yes", "on"}
        if hint in (int, float):
            return hint(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read {raw!r} as {hint.__name__}") from exc
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--kebab-case` flag per setting; the default comes from the environment."""
    hints = get_type_hints(Settings)
    options = _choices()
    for f in fields(Settings):
        if not f.metadata.get("flag", True):
            continue
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                                action="store_const", const="true",
                                help=f"(env VOXWIRE_{f.name.upper()}=1)")
            continue
        choices = options.get(f.name)
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=None, choices=choices,
            metavar=None if choices else f.name.split("_")[-1].upper(),
            help=f"(env VOXWIRE_{f.name.upper()}, default {f.default!r})",
        )


def from_sources(args: argparse.Namespace | None = None,
                 env: dict[str, str] | None = None) -> Settings:
    """Flags beat environment variables, which beat the defaults."""
    env = dict(os.environ) if env is None else env
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = env.get(f"VOXWIRE_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _convert(f.name, hints[f.name], str(raw))
    backend = registry.LLM.engines.get(values.get("llm_backend", Settings.llm_backend))
    variable = backend.key_variable if backend is not None else ""
    key = values.get("llm_api_key") or (env.get(variable, "") if variable else "")
    if key:
        values["llm_api_key"] = key
    return Settings(**values)
