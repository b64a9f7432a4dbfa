"""Embedded models: manifest, installation, verification and lookup."""

from models.errors import ModelError, VoxwireError
from models.registry import ModelSpec, ModelStatus, get_spec, load_manifest, locate, status

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
