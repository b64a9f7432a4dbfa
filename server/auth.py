"""Who may connect: API keys (Bearer header, or the browser subprotocol form) and origins."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path

from websockets.datastructures import Headers

from server.config import Settings
from server.errors import ConfigError

KEY_PROTOCOL = "openai-insecure-api-key."  # how browser Realtime clients pass a key


def load_keys(settings: Settings) -> tuple[str, ...]:
    keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
    if settings.api_keys_file:
        path = Path(settings.api_keys_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read --api-keys-file {path}: {exc}") from exc
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return tuple(keys)


def check_exposure(settings: Settings, keys: tuple[str, ...]) -> None:
    """Without keys, listen on loopback only, unless the operator insists."""
    if keys or settings.insecure_public:
        return
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"refusing to listen on {host} without API keys: set "
                          "VOXWIRE_API_KEYS (or --api-keys-file), or pass --insecure-public")


def offered_key(headers: Headers) -> str | None:
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        for proto in value.split(","):
            proto = proto.strip()
            if proto.startswith(KEY_PROTOCOL):
                return proto[len(KEY_PROTOCOL):]
    return None


def key_id(key: str | None) -> str:
    """A short fingerprint to count sessions per key without keeping the key around."""
    return hashlib.sha256((key or "").encode()).hexdigest()[:16]


def key_ok(offered: str | None, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every key (no early exit that leaks which)."""
    if offered is None:
        return False
    good = False
    for key in keys:
        good |= hmac.compare_digest(offered.encode(), key.encode())
    return good


def origin_ok(headers: Headers, allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin; other clients (the SDK, `voxwire talk`) do not and are allowed."""
    origin = headers.get("Origin")
    return not allowed or origin is None or origin in allowed
