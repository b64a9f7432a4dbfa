"""What every part of the protocol shares: JSON values, the two dialects, ids."""

from __future__ import annotations

import secrets
from typing import Any, Literal

Dialect = Literal["ga", "beta"]
Json = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


# Keys whose explicit null means something of its own (turn detection off, no idle
# timeout, noise reduction off); every other null a client sends means "not set".
_MEANINGFUL_NULLS = frozenset({"turn_detection", "idle_timeout_ms", "noise_reduction",
                               "input_audio_noise_reduction"})
# Values taken as they are: a tool's JSON schema may hold nulls of its own ("default": null).
_OPAQUE = frozenset({"parameters"})


def without_nulls(value: Any) -> Any:
    """``value`` with every ``"key": null`` dropped (at any depth), except the keys whose null
    has a meaning: clients such as LiveKit's send an explicit null for each field they leave
    unset, and OpenAI takes it as unset. Iterative, so deep nesting cannot exhaust the stack."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        src, dst = stack.pop()
        pairs = src.items() if isinstance(src, dict) else enumerate(src)
        for key, inner in pairs:
            if inner is None and isinstance(src, dict) and key not in _MEANINGFUL_NULLS:
                continue
            if isinstance(inner, dict | list) and key not in _OPAQUE:
                copy: Any = {} if isinstance(inner, dict) else []
                stack.append((inner, copy))
                inner = copy
            if isinstance(dst, dict):
                dst[key] = inner
            else:
                dst.append(inner)
    return root


def json_size(value: object, *, skip: frozenset[str] = frozenset()) -> int:
    """About how many bytes ``value`` takes as JSON, without encoding it: string lengths
    plus a little per value. Values under a key in ``skip`` count as nothing. Iterative,
    so a deeply nested client item cannot exhaust the stack."""
    size, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            size += (len(v) if v.isascii() else 4 * len(v)) + 2  # UTF-8: up to 4 bytes
        elif isinstance(v, dict):
            size += 2
            for key, inner in v.items():
                size += len(str(key)) + 4
                if key not in skip:
                    stack.append(inner)
        elif isinstance(v, list | tuple):
            size += 2 + len(v)
            stack.extend(v)
        else:
            size += 8
    return size
