"""Short-lived tokens for browsers (the Realtime API's ephemeral keys).

An app's backend mints one with a real key (`POST /v1/realtime/client_secrets`, or the beta
`POST /v1/realtime/sessions`) and hands it to the page, which connects with it where it
would pass a key. A token opens one connection, before it expires; the session it opens
starts with the configuration given at minting and counts against the minting key's
session limit. Only a hash of each token is kept: in memory (`Tokens`), or, when replicas
share a PostgreSQL store, in its `tokens` table (`SharedTokens`), where a token minted on
one replica is redeemed once on any other: the redemption deletes its row in one
transaction.

The table is bounded in all (MAX_LIVE) and per key (a quota of live tokens and a minting
rate), so that one key cannot fill it and lock every other key out until its tokens expire.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from realtime import Json, without_nulls
from server.errors import LimitError, ProtocolError
from server.runtime.store import PostgresStore

PREFIX = "ek_"
MAX_LIVE = 1024
PER_KEY = 64  # live tokens one key may hold
MINTS_PER_S = 10.0  # per key, bursts of BURST_S seconds' worth
BURST_S = 2.0
MIN_TTL_S, MAX_TTL_S = 10, 3600  # what `expires_after.seconds` may ask for
Shape = Literal["beta", "ga"]


@dataclass(frozen=True)
class Grant:
    key_id: str  # fingerprint of the key that minted it
    session: Json  # session configuration, applied when the connection opens
    deadline: float  # time.monotonic()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, max_live: int = MAX_LIVE, per_key: int = PER_KEY,
                 mints_per_s: float = MINTS_PER_S) -> None:
        self.max_live = max_live
        self.configure(per_key, mints_per_s)
        self._live: dict[str, Grant] = {}
        self._per_key: Counter[str] = Counter()  # live tokens by key fingerprint
        self._allowance: dict[str, tuple[float, float]] = {}  # key -> (mints left, when)

    def configure(self, per_key: int, mints_per_s: float) -> None:
        self.per_key, self.mints_per_s = per_key, mints_per_s

    def __len__(self) -> int:
        return len(self._live)

    def mint(self, key_id: str, session: Json, ttl_s: float) -> tuple[str, int]:
        """A new token and when it expires (Unix seconds)."""
        self.sweep()
        self.check_rate(key_id)
        if self._per_key[key_id] >= self.per_key:
            raise LimitError(f"this key holds {self.per_key} live tokens; wait for some to be "
                             "used or to expire", code="too_many_tokens_for_key")
        if len(self._live) >= self.max_live:
            raise LimitError(f"{self.max_live} tokens are live; wait for some to expire",
                             code="too_many_tokens")
        token = PREFIX + secrets.token_urlsafe(32)
        self._live[_digest(token)] = Grant(key_id, session, time.monotonic() + ttl_s)
        self._per_key[key_id] += 1
        return token, int(time.time() + ttl_s)

    def check_rate(self, key_id: str) -> None:
        """A token bucket per key (only real keys mint, so there are few); LimitError when
        it is empty."""
        now, burst = time.monotonic(), self.mints_per_s * BURST_S
        left, at = self._allowance.get(key_id, (burst, now))
        left = min(burst, left + (now - at) * self.mints_per_s)
        ok = left >= 1
        self._allowance[key_id] = (left - 1 if ok else left, now)
        if not ok:
            raise LimitError(f"this key mints at most {self.mints_per_s:g} tokens a second",
                             code="token_rate_limited")

    def _forget(self, digest: str) -> Grant | None:
        grant = self._live.pop(digest, None)
        if grant is not None:
            self._per_key[grant.key_id] -= 1
            if not self._per_key[grant.key_id]:
                del self._per_key[grant.key_id]
        return grant

    def redeem(self, token: str | None) -> Grant | None:
        """The token's grant if it is live; it cannot be used again either way."""
        if not token or not token.startswith(PREFIX):
            return None
        grant = self._forget(_digest(token))
        if grant is None or grant.deadline <= time.monotonic():
            return None
        return grant

    def sweep(self) -> None:
        now = time.monotonic()
        for digest in [d for d, g in self._live.items() if g.deadline <= now]:
            self._forget(digest)


def mint_request(shape: Shape, body: object, default_ttl_s: float) -> tuple[Json, float]:
    """The session configuration and lifetime a mint request asks for.

    Beta (`/v1/realtime/sessions`): the body is the session configuration. GA
    (`/v1/realtime/client_secrets`): ``{"session": {...}, "expires_after": {"anchor":
    "created_at", "seconds": N}}``, both optional.
    """
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object", code="invalid_value")
    asked: Json = without_nulls(body)  # an explicit null means "not set", as in every event
    if shape == "beta":
        return asked, default_ttl_s
    session = asked.get("session", {})
    if not isinstance(session, dict):
        raise ProtocolError("session must be an object", code="invalid_value", param="session")
    if session.get("type", "realtime") not in ("realtime", "transcription"):
        raise ProtocolError("only realtime and transcription sessions can be minted "
                            "(session.type)", code="invalid_value", param="session.type")
    expires = asked.get("expires_after", {})
    if not isinstance(expires, dict) or expires.get("anchor", "created_at") != "created_at":
        raise ProtocolError('expires_after must be {"anchor": "created_at", "seconds": N}',
                            code="invalid_value", param="expires_after")
    seconds = expires.get("seconds", default_ttl_s)
    if "seconds" in expires and (type(seconds) is not int
                                 or not MIN_TTL_S <= seconds <= MAX_TTL_S):
        raise ProtocolError(f"expires_after.seconds must be a whole number in "
                            f"[{MIN_TTL_S}, {MAX_TTL_S}]", code="invalid_value",
                            param="expires_after.seconds")
    return session, float(seconds)


class SharedTokens:
    """Tokens kept in PostgreSQL, for replicas behind one balancer. The limits are those of
    ``local`` (live tokens per key and in all, counted in the table; the minting rate per
    key, counted by each replica)."""

    def __init__(self, store: PostgresStore, local: Tokens) -> None:
        self.store, self.local = store, local

    async def mint(self, key_id: str, session: Json, ttl_s: float) -> tuple[str, int]:
        self.local.check_rate(key_id)
        token = PREFIX + secrets.token_urlsafe(32)
        expires_at = await self.store.put_token(_digest(token), key_id, session, ttl_s,
                                                self.local.per_key, self.local.max_live)
        return token, int(expires_at)

    async def redeem(self, token: str | None) -> Grant | None:
        if not token or not token.startswith(PREFIX):
            return None
        found = await self.store.take_token(_digest(token))
        if found is None:
            return None
        key_id, session, left_s = found
        return Grant(key_id, session, time.monotonic() + left_s)
