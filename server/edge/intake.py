"""Client events on their way into a session, whatever door they came through (a WebSocket
message, a WebRTC data channel message): the rate and byte limits, the size limits, the
parse. What is wrong becomes an `error` event; the session goes on."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import realtime as p
from server.errors import LimitError, ProtocolError
from server.runtime.config import Settings
from server.session.core import Session

log = logging.getLogger(__name__)

# What parsing costs is the number of values, not the bytes: 3.5 MB of small keys took
# 155 ms, 4 MB of one base64 string 4 ms. A worker thread would not help: json's C parser
# holds the GIL from start to end. So the values are bounded (each needs a comma, and
# counting them is a millisecond a few MB): this many take about 5 ms to parse.
MAX_VALUES = 20_000


class RateLimit:
    """A token bucket: ``rate`` units (events, bytes) per second, bursts of ``burst_s``
    seconds' worth, and never less than ``at_least`` (so that the largest unit fits)."""

    def __init__(self, rate: float, burst_s: float, at_least: float = 1.0) -> None:
        self.rate, self.capacity = rate, max(rate * burst_s, at_least)
        self.tokens, self.at = self.capacity, time.monotonic()
        self._warned = 0.0

    def take(self, cost: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def should_warn(self) -> bool:
        """At most one warning a second, so the warnings themselves do not flood."""
        now = time.monotonic()
        if now - self._warned >= 1.0:
            self._warned = now
            return True
        return False


class Intake:
    """One connection's client events into its ``session``, within the settings' limits."""

    def __init__(self, settings: Settings, session: Session,
                 handle: Callable[[p.ClientEvent], Awaitable[None]] | None = None) -> None:
        self.settings, self.session = settings, session
        self._handle = handle or session.handle  # a door may take some events itself
        self._events = RateLimit(settings.max_events_per_s, burst_s=2.0)
        # a byte budget too: a few large events cost more than many small ones
        self._bytes = RateLimit(settings.max_bytes_per_s, burst_s=2.0,
                                at_least=settings.max_message_bytes)

    async def take(self, message: str | bytes) -> None:
        """Apply one client message; what is wrong with it is told as an `error` event."""
        st, session = self.settings, self.session
        size = _size(message)
        if not (self._events.take() and self._bytes.take(size)):
            if self._events.should_warn():
                await session.error(LimitError(
                    f"more than {st.max_events_per_s:g} events or {st.max_bytes_per_s:.0f} "
                    "bytes per second; events are being dropped", code="rate_limited"))
            return
        try:
            await self._handle(self.parse(message, size))
        except ProtocolError as exc:
            await session.error(exc)
        except Exception as exc:
            log.exception("unexpected error handling an event")
            await session.error(exc)

    def parse(self, message: str | bytes, size: int) -> p.ClientEvent:
        """Parse a client message whose parsing costs a few milliseconds at most. Only image
        events may be larger than --max-event-bytes: the text is searched first, the event
        checked after."""
        limit = self.settings.max_event_bytes
        too_large = LimitError(f"a message of {size} bytes is over the {limit} byte limit for "
                               "events without an image", code="message_too_large")
        if size > limit and not (isinstance(message, str) and "input_image" in message):
            raise too_large
        if isinstance(message, str) and message.count(",") > MAX_VALUES:
            raise LimitError(f"a message may hold at most {MAX_VALUES} values",
                             code="message_too_complex")
        event = p.parse_client_event(message)
        if size > limit and not p.carries_image(event):
            too_large.event_id = event.event_id
            raise too_large
        return event


def _size(message: str | bytes) -> int:
    """The message's size in bytes (str.isascii is O(1): only other text is encoded)."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode())
