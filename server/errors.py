"""Voxwire's exception tree (rooted in ``realtime.errors``). Exceptions become `error` events
in one function, ``realtime.server_events.error_event``."""

from models.errors import ModelError
from realtime.errors import ProtocolError, VoxwireError

__all__ = [
    "AudioFormatError",
    "BackendError",
    "ConfigError",
    "LimitError",
    "ModelError",
    "ProtocolError",
    "StageError",
    "StoreError",
    "StoreQuotaError",
    "StoreUnavailable",
    "TranscriptionTimeout",
    "VoxwireError",
    "WorkCancelled",
]


class ConfigError(VoxwireError):
    """A setting has an invalid value."""

    code = "invalid_config"


class AudioFormatError(ProtocolError):
    """Audio bytes that cannot be decoded in the session's format."""

    def __init__(self, message: str, *, event_id: str | None = None) -> None:
        super().__init__(message, code="invalid_audio", event_id=event_id)


class LimitError(ProtocolError):
    """A configured limit was crossed."""

    def __init__(self, message: str, *, code: str = "limit_exceeded",
                 event_id: str | None = None) -> None:
        super().__init__(message, code=code, event_id=event_id)


class StageError(VoxwireError):
    """A pipeline stage (vad, asr, llm, tts) failed while serving a turn."""

    code = "stage_failed"

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.code = f"{stage}_failed"


class TranscriptionTimeout(StageError):
    """A transcription ran past its time budget (audio that is not speech, a busy machine):
    the turn's transcription fails, and no answer is made from it."""

    def __init__(self, message: str) -> None:
        super().__init__("asr", message)
        self.code = "transcription_timeout"


class BackendError(StageError):
    """The language model backend failed: a refused key, a rate limit, a timeout, ..."""

    def __init__(self, message: str, *, code: str = "llm_failed") -> None:
        super().__init__("llm", message)
        self.code = code


class StoreError(VoxwireError):
    """The history store failed to read or write (a database error, an unreachable server)."""

    code = "store_failed"


class WorkCancelled(VoxwireError):
    """Work that nobody waits for any more (a dropped speculation, a closed session) was
    stopped before its end."""

    code = "cancelled"


class StoreUnavailable(StoreError):
    """The history store cannot be reached or written: the session goes on, unsaved."""

    code = "store_unavailable"


class StoreQuotaError(StoreError):
    """A session wrote all the history it may, or the whole store is full."""

    code = "store_quota_exceeded"
