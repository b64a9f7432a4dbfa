"""The root of Voxwire's exception tree and the protocol's own error.

They live in the protocol package, the bottom layer, so that every other package (models,
server, client) can extend the tree without importing anything above itself, and so that
``realtime.server_events.error_event`` can turn any of them into an `error` event.
``server.errors`` grows the tree.
"""


class VoxwireError(Exception):
    """Base of every error Voxwire raises on purpose."""

    code = "voxwire_error"


class ProtocolError(VoxwireError):
    """A client event is malformed or not allowed now. Carries the Realtime error fields."""

    code = "invalid_request_error"

    def __init__(
        self, message: str, *, code: str = "invalid_event", param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.event_id = event_id
