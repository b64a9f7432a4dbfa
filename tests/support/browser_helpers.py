"""Headless Chromium for the widget and kiosk tests: fake microphone and camera files, a page
that records what the widget saw, and the console errors it printed.

A browser scenario runs on its own event loop in a worker thread (`in_browser_thread`), so
the test's loop serves the server alone and its blocked-loop checks watch server code only.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

T = TypeVar("T")
CHROMIUM = Path("/usr/bin/chromium")
WIDGET = "voxwire-widget"

# Runs in the page before its scripts: keeps a light record of every event the widget saw.
RECORDER = """
window.__voxwire = [];
document.addEventListener("voxwire-event", (e) => {
  const ev = e.detail, r = ev.response || {};
  window.__voxwire.push({type: ev.type, item_id: ev.item_id, status: r.status,
                         audio_end_ms: ev.audio_end_ms, audio_ms: ev.audio_ms,
                         transcript: ev.transcript, at: performance.now()});
});
"""


def write_y4m(path: Path, width: int = 320, height: int = 240, frames: int = 10,
              rgb: tuple[int, int, int] = (40, 150, 90)) -> Path:
    """A few frames of one solid colour, as Y4M 4:2:0 (full-range YCbCr)."""
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    planes = [np.full(width * height, y), np.full(width * height // 4, u),
              np.full(width * height // 4, v)]
    frame = b"FRAME\n" + b"".join(np.clip(p, 0, 255).astype(np.uint8).tobytes() for p in planes)
    header = f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode()
    path.write_bytes(header + frame * frames)
    return path


def chromium_args(wav: Path, y4m: Path | None = None) -> list[str]:
    """Headless flags with a fake microphone playing `wav` once and a camera showing `y4m`."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make sysdeps` installs chromium")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop",
            "--autoplay-policy=no-user-gesture-required",
            # WebRTC on loopback, where the test server offers its media: real addresses in
            # the candidates (not mDNS names), and the loopback interface allowed.
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns"]
    if y4m is not None:
        args.append(f"--use-file-for-fake-video-capture={y4m}")
    return args


@contextmanager
def other_site(html: str, assets: Path | None = None) -> Iterator[str]:
    """Another origin on loopback serving one page, `html`, at its root, and the files
    directly in `assets` (scripts) under /assets/: yields its URL."""
    page = html.encode()
    scripts = {f"/assets/{f.name}": f for f in assets.iterdir()
               if f.suffix in (".js", ".mjs")} if assets is not None else {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            script = scripts.get(path)
            if path != "/" and script is None:
                self.send_error(404)
                return
            body = page if script is None else script.read_bytes()
            kind = "text/html" if script is None else "text/javascript"
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Browser:
    page: Page
    problems: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.page.evaluate(
            f"() => {{ const el = document.querySelector('{WIDGET}'); "
            "return {...el.state, contextTime: el.contextTime, playing: el.playing}; }")
        return state

    async def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = await self.page.evaluate("() => window.__voxwire")
        return events

    async def wait_for(self, condition: str, seconds: float) -> None:
        """Wait until the JavaScript expression `condition` over `state` (the widget's) holds.
        On a timeout, the failure shows the widget's state and the events it saw."""
        try:
            await self.page.wait_for_function(
                f"() => {{ const state = document.querySelector('{WIDGET}').state; "
                f"return Boolean({condition}); }}", timeout=seconds * 1000, polling=100)
        except PlaywrightTimeout:
            raise AssertionError(f"{condition!r} not true after {seconds} s:\n"
                                 f"{await self.diagnosis()}") from None

    async def diagnosis(self) -> str:
        """The widget's state and the types of the events it saw."""
        state = await self.state()
        events = await self.events() or []
        deltas = sum(1 for e in events if str(e.get("type", "")).endswith(".delta"))
        seen = [{k: v for k, v in e.items() if v is not None and k != "at"}
                for e in events if not str(e.get("type", "")).endswith(".delta")]
        return (f"state: {json.dumps(state, default=str)[:3000]}\n"
                f"events ({deltas} deltas left out): {json.dumps(seen[-80:])}\n"
                f"problems: {self.problems}")

    async def shadow_text(self, selector: str) -> str:
        return await self.page.locator(f"{WIDGET} {selector}").first.inner_text()


@asynccontextmanager
async def chromium(args: list[str], width: int = 1100, height: int = 760
                   ) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            seen = Browser(page)

            def console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    seen.problems.append(f"console: {message.text}")

            page.on("console", console)
            page.on("pageerror", lambda exc: seen.problems.append(f"page error: {exc}"))
            await page.add_init_script(RECORDER)
            yield seen
        finally:
            await browser.close()


async def in_browser_thread(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `scenario` on a fresh event loop (not in debug mode) in a worker thread."""
    return await asyncio.to_thread(lambda: asyncio.run(scenario(), debug=False))
