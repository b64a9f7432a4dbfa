"""Who may connect: API keys (Bearer header, or the browser subprotocol form) and origins."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from websockets.datastructures import Headers

from server.errors import ConfigError
from server.runtime.config import Settings

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


def bearer_key(headers: Headers) -> str | None:
    auth = headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def offered_key(headers: Headers) -> str | None:
    bearer = bearer_key(headers)
    if bearer is not None:
        return bearer
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


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _split_host(value: str) -> tuple[str, str]:
    """``name:port``, ``[v6]:port`` or a bare name -> (name, port), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest.removeprefix(":")
    name, _, port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    return name, port


def _origin_host(origin: str) -> tuple[str, str] | None:
    """An Origin's (name, port), the port left empty where it is the scheme's default."""
    try:
        parts = urlsplit(origin)
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if name is None or parts.scheme not in ("http", "https"):
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    return name, "" if port in (None, default) else str(port)


def origin_ok(headers: Headers, allowed: tuple[str, ...], any_by_default: bool = False) -> bool:
    """Browsers send Origin; other clients (the SDK, `voxwire talk`) do not and are allowed.

    A page from this very server (Origin matches Host) is always allowed. Otherwise an
    Origin must be in ``allowed``; with no list, a server with keys takes any Origin (a page
    needs a key or token anyway) and one without keys only pages on this machine, so that
    no website a user visits can open sessions in their name.
    """
    origin = headers.get("Origin")
    if origin is None or origin in allowed:
        return True
    seen = _origin_host(origin)
    if seen is None:
        return False
    host = _split_host(headers.get("Host", ""))
    if seen == host or (seen[0] == host[0] and host[1] in ("80", "443") and not seen[1]):
        return True  # same origin
    if allowed:
        return False
    return any_by_default or seen[0].strip("[]") in LOOPBACK_NAMES


def trusted_hosts(settings: Settings) -> frozenset[str]:
    """Host names a server without keys answers to, besides loopback and IP literals."""
    names = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
    return frozenset({*names, settings.host.lower(), *LOOPBACK_NAMES})


def host_ok(host: str | None, trusted: frozenset[str]) -> bool:
    """Against DNS rebinding: a page on evil.example whose name now points at 127.0.0.1
    reaches this server as the same origin, but its requests still say Host: evil.example."""
    if host is None:
        return True  # not a browser: browsers always send Host
    name, _ = _split_host(host)
    if name in trusted or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
