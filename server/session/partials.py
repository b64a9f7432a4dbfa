"""Partial transcripts while the user speaks: a preview every `partial_interval_ms`, and
only the words two consecutive previews agree on reach the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from realtime import server_events as se
from server.response.run import Emit
from server.runtime.config import Settings
from server.runtime.engines import SessionEngines
from server.stages import Float32

log = logging.getLogger(__name__)


class Partials:
    def __init__(self, owner: str, engines: SessionEngines, settings: Settings, emit: Emit,
                 speaking: Callable[[], str | None],
                 heard: Callable[[str], None] = lambda text: None) -> None:
        """``speaking``: the item of the utterance being heard now, if any; ``heard``
        takes each preview's words, while that utterance goes on."""
        self.owner, self.engines, self.settings, self.emit = owner, engines, settings, emit
        self._speaking, self._heard = speaking, heard
        self.task: asyncio.Task[None] | None = None
        self._at_ms = 0
        self._words: list[str] = []
        self._sent = 0

    def restart(self, onset_ms: int) -> None:
        """A new utterance, heard from ``onset_ms``."""
        self._at_ms, self._words, self._sent = onset_ms, [], 0

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def maybe(self, item_id: str, now_ms: int, audio: Callable[[], Float32]) -> None:
        """Start a preview of the utterance so far (``audio``) if the last one is done and
        the interval has passed (``now_ms``: the input audio's end)."""
        if self.task is not None and not self.task.done():
            return
        if now_ms - self._at_ms < self.settings.partial_interval_ms:
            return
        self._at_ms = now_ms
        self.task = asyncio.create_task(self._run(item_id, audio()))

    async def _run(self, item_id: str, audio: Float32) -> None:
        asr = self.engines.asr
        try:
            result = await self.engines.asr_lane.run(
                lambda: asr.transcribe(audio, partial=True), owner=self.owner)
        except Exception:  # a failed preview costs nothing: the final transcript decides
            log.debug("partial transcription failed", exc_info=True)
            return
        if item_id == self._speaking():
            self._heard(result.text)
        words = result.text.split()
        # Local agreement: send only the words two consecutive hypotheses agree on.
        agreed = 0
        while (agreed < min(len(words), len(self._words))
               and words[agreed] == self._words[agreed]):
            agreed += 1
        self._words = words
        if agreed > self._sent and item_id == self._speaking():
            new = words[self._sent:agreed]
            delta = (" " if self._sent else "") + " ".join(new)
            self._sent = agreed
            await self.emit(se.input_audio_transcription_delta(item_id, delta))
