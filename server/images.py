"""Camera frames and image parts: decode, check, bound and downscale (Pillow). Pure, CPU-bound:
callers run it in a worker lane."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from server.errors import LimitError, ProtocolError
from server.stages import ImageData

_DATA_URI = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,(.*)$", re.S | re.I)
ACCEPTED = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


def parse_data_uri(uri: str, *, max_bytes: int) -> bytes:
    match = _DATA_URI.match(uri)
    if match is None:
        raise ProtocolError("image_url must be a data URI: data:image/png;base64,...",
                            code="invalid_image", param="image_url")
    # Base64 is 4/3 of the bytes: refuse before decoding what is obviously too large.
    if len(match.group(2)) * 3 // 4 > max_bytes + 3:
        raise LimitError(f"image is larger than {max_bytes} bytes", code="image_too_large")
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("image data is not valid base64", code="invalid_image",
                            param="image_url") from exc


def prepare(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> ImageData:
    """Check an encoded image and return it downscaled to ``max_side`` as JPEG (or PNG)."""
    if len(data) > max_bytes:
        raise LimitError(f"image is larger than {max_bytes} bytes", code="image_too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
            if img.format not in ACCEPTED:
                raise ProtocolError(f"image format {img.format} is not supported; send PNG or "
                                    "JPEG", code="invalid_image", param="image_url")
            if img.width * img.height > max_pixels:
                raise LimitError(f"image has {img.width}x{img.height} pixels, more than "
                                 f"{max_pixels}", code="image_too_large")
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ProtocolError(f"image could not be decoded: {exc}", code="invalid_image",
                            param="image_url") from exc
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if (img.mode in ("RGBA", "LA", "P") and "transparency" in img.info) or img.mode in (
            "RGBA", "LA"):
        img.convert("RGBA").save(out, format="PNG", optimize=True)
        kind = "image/png"
    else:
        img.convert("RGB").save(out, format="JPEG", quality=85)
        kind = "image/jpeg"
    return ImageData(kind, out.getvalue(), img.width, img.height)
