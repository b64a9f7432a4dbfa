"""The OpenAI Realtime protocol, shared by the server and the clients.

Pure Python: JSON text in, typed client events out; server events built by one constructor
each (``realtime.server_events``), renamed for beta clients only at the edge
(``realtime.dialects.encode``). Both the GA dialect and the beta one
(``OpenAI-Beta: realtime=v1``) are spoken. It imports nothing from the server, and
nothing beyond the standard library, so a client installs it without the server's models.
"""

from realtime.base import (
    Dialect,
    Json,
    json_size,
    new_id,
    without_nulls,
)
from realtime.client_events import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    FrameAppend,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    TranscriptionSessionUpdate,
    carries_image,
    decode_base64,
    dump,
    parse_client_event,
)
from realtime.dialects import (
    beta_name,
    content_for,
    encode,
)
from realtime.errors import (
    ProtocolError,
    VoxwireError,
)
from realtime.session import (
    BETA_MODELS,
    BETA_TRANSCRIBERS,
    DEFAULT_RATE,
    MAX_TEXT_CHARS,
    SAMPLE_RATES,
    AudioFormat,
    SessionConfig,
    TurnDetection,
    apply_session_update,
    max_tokens_value,
    metadata_value,
    modalities_value,
    session_to_wire,
    text_value,
    tool_choice_mode,
    tool_choice_value,
    tools_value,
    voice_value,
    wants,
)

__all__ = [
    "BETA_MODELS",
    "BETA_TRANSCRIBERS",
    "DEFAULT_RATE",
    "MAX_TEXT_CHARS",
    "SAMPLE_RATES",
    "AudioAppend",
    "AudioClear",
    "AudioCommit",
    "AudioFormat",
    "ClientEvent",
    "Dialect",
    "FrameAppend",
    "ItemCreate",
    "ItemDelete",
    "ItemRetrieve",
    "ItemTruncate",
    "Json",
    "ProtocolError",
    "ResponseCancel",
    "ResponseCreate",
    "SessionConfig",
    "SessionUpdate",
    "TranscriptionSessionUpdate",
    "TurnDetection",
    "VoxwireError",
    "apply_session_update",
    "beta_name",
    "carries_image",
    "content_for",
    "decode_base64",
    "dump",
    "encode",
    "json_size",
    "max_tokens_value",
    "metadata_value",
    "modalities_value",
    "new_id",
    "parse_client_event",
    "session_to_wire",
    "text_value",
    "tool_choice_mode",
    "tool_choice_value",
    "tools_value",
    "voice_value",
    "wants",
    "without_nulls",
]
