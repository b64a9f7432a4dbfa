"""Embedded models: manifest, installation, verification and lookup."""

from models.errors import ModelError
from models.registry import ModelSpec, ModelStatus, get_spec, load_manifest, locate, status
from realtime.errors import VoxwireError

__all__ = [
    "ModelError",
    "ModelSpec",
    "ModelStatus",
    "VoxwireError",
    "get_spec",
    "load_manifest",
    "locate",
    "status",
]
