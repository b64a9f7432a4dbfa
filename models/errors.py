"""The models' errors, on the tree rooted in ``realtime.errors``."""

from realtime.errors import VoxwireError


class ModelError(VoxwireError):
    """A model is missing, incomplete or fails its checksum."""

    code = "model_error"
