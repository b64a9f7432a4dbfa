"""Camera frames and image parts: decode, check, bound and downscale (Pillow). CPU-bound:
every session's images go through one `ImageLane`, a few threads shared server-wide, so
image bombs sent from many sessions at once cannot multiply the memory they cost."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from server.errors import LimitError, ProtocolError
from server.stages import ImageData

T = TypeVar("T")

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
            if img.width * img.height > max_pixels:  # from the header: no pixel read yet
                raise LimitError(f"image has {img.width}x{img.height} pixels, more than "
                                 f"{max_pixels}", code="image_too_large")
            if img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 of the size when that will do
                img.draft(img.mode, (max_side, max_side))
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise LimitError(f"image has too many pixels ({exc})", code="image_too_large") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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


class ImageLane:
    """Where every session's images are decoded: ``workers`` threads, and at most
    ``max_jobs`` images running or waiting across the server. One more is refused at once
    (`server_busy`) rather than queued: a waiting image holds its encoded bytes, and the
    client can send it again."""

    def __init__(self, workers: int = 1, max_jobs: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="voxwire-images")
        self.max_jobs = max_jobs
        self._jobs = 0  # counted until the thread is done, even if the caller went away
        self._lock = threading.Lock()

    @property
    def jobs(self) -> int:
        return self._jobs

    async def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._jobs >= self.max_jobs:
                raise LimitError(f"the server is busy decoding {self._jobs} images; send this "
                                 "one again in a moment", code="server_busy")
            self._jobs += 1
        try:
            future = self._pool.submit(fn)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[T] | None = None) -> None:
        with self._lock:
            self._jobs -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
