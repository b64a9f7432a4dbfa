"""Root of Voxwire's exception tree.

It lives at the bottom layer so that every package (models, server, client) can
extend it without importing anything above itself. ``server.errors`` grows the tree.
"""


class VoxwireError(Exception):
    """Base of every error Voxwire raises on purpose."""

    code = "voxwire_error"


class ModelError(VoxwireError):
    """A model is missing, incomplete or fails its checksum."""

    code = "model_error"
