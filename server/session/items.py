"""A session's items and images: client items (with their images checked in the image
lane), the latest camera frame, and the audio `conversation.item.retrieve` returns."""

from __future__ import annotations

import base64

import realtime as p
from realtime import SessionConfig
from realtime import server_events as se
from server import audio as audio_codec
from server.audio import RATE
from server.errors import ProtocolError
from server.response.run import Emit
from server.runtime.clock import Clock
from server.runtime.config import Settings
from server.runtime.engines import SessionEngines
from server.session import images
from server.session.conversation import Conversation, client_item
from server.stages import Float32, ImageData

MAX_KEPT_AUDIO = 64  # items whose audio conversation.item.retrieve returns, with --record


class Items:
    def __init__(self, engines: SessionEngines, settings: Settings, clock: Clock,
                 conv: Conversation, emit: Emit) -> None:
        self.engines, self.settings, self.clock, self.conv = engines, settings, clock, conv
        self.emit = emit
        self._latest_frame: tuple[ImageData, float] | None = None
        self._item_audio: dict[str, Float32] = {}  # items' audio (16 kHz), with --record

    # ------------------------------------------------------------------ retrieve

    def keep_audio(self, item_id: str, audio: Float32) -> None:
        """An item's audio (16 kHz) for `conversation.item.retrieve`; the latest items only."""
        self._item_audio[item_id] = audio
        while len(self._item_audio) > MAX_KEPT_AUDIO:
            del self._item_audio[next(iter(self._item_audio))]

    async def retrieve(self, ev: p.ItemRetrieve, cfg: SessionConfig) -> None:
        item = self.conv.get(ev.item_id, ev.event_id)
        audio = self._item_audio.get(ev.item_id)
        parts = [i for i, part in enumerate(item.get("content", []))
                 if part.get("type") in ("input_audio", "output_audio", "audio")]
        if audio is not None and parts:
            fmt = cfg.input_format if item.get("role") == "user" else cfg.output_format

            def encode() -> str:
                resampled = audio_codec.resample(audio, RATE, fmt.rate)
                return base64.b64encode(audio_codec.encode(resampled, fmt.type)).decode()

            content = [dict(part) for part in item["content"]]
            content[parts[0]]["audio"] = await self.engines.image_lane.run(encode)
            item = {**item, "content": content}
        await self.emit(se.conversation_item_retrieved(item))

    # ------------------------------------------------------------------ images

    async def image(self, image_url: str, event_id: str | None) -> ImageData:
        """Decode, check and downscale an image in the server's image lane."""
        st = self.settings

        def work() -> ImageData:
            data = images.parse_data_uri(image_url, max_bytes=st.max_image_bytes)
            return images.prepare(data, max_bytes=st.max_image_bytes,
                                  max_pixels=st.max_image_pixels, max_side=st.image_max_side)

        try:
            return await self.engines.image_lane.run(work)
        except ProtocolError as exc:
            exc.event_id = exc.event_id or event_id
            raise

    async def create(self, ev: p.ItemCreate) -> None:
        item = client_item(ev.item, ev.event_id, self.settings.max_item_bytes)
        self.conv.check(item["id"], 0, ev.event_id)  # before decoding any image
        checked: list[ImageData] = []
        for part in item.get("content", []):
            if part.get("type") == "input_image":
                image = await self.image(part["image_url"], ev.event_id)
                part["image_url"] = image.data_uri()  # keep the checked, smaller copy
                checked.append(image)
        prev = self.conv.add(item, ev.previous_item_id, images=checked, event_id=ev.event_id)
        await self.emit(se.conversation_item_added(prev, item))
        await self.emit(se.conversation_item_done(item, prev))

    async def frame(self, ev: p.FrameAppend) -> None:
        image = await self.image(ev.image_url, ev.event_id)
        self._latest_frame = (image, self.clock.monotonic())

    def take_frame(self, cfg: SessionConfig, *, peek: bool = False) -> ImageData | None:
        """The latest camera frame for a spoken turn, if the session asked and it is fresh."""
        frame = self._latest_frame
        if not peek:
            self._latest_frame = None
        if frame is None or not cfg.attach_latest_frame:
            return None
        image, at = frame
        return image if self.clock.monotonic() - at <= self.settings.frame_max_age_s else None
