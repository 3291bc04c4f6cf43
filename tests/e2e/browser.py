"""Chromium for the dashboard's tests: the browser, and what the tests watch and route in a page.

Playwright launches Debian's `/usr/bin/chromium` (`executable_path`) and never downloads a browser; a
missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-output"


def executable() -> str:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test does as root)")
    return str(CHROMIUM)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Watch:
    """Everything a page asked for, and every error it logged."""

    def __init__(self, page: Page) -> None:
        self.requests: list[tuple[str, str]] = []
        self.sockets: list[str] = []
        self.errors: list[str] = []
        self.navigations = 0
        page.on("request", lambda request: self.requests.append((request.method, request.url)))
        page.on("websocket", lambda socket: self.sockets.append(socket.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: self._console(message.type, message.text))
        page.on("framenavigated", lambda frame: self._navigated(frame == page.main_frame))

    def _console(self, kind: str, text: str) -> None:
        # Chromium logs every non-2xx fetch as "Failed to load resource"; the test expects some.
        if kind == "error" and not text.startswith("Failed to load resource"):
            self.errors.append(text)

    def _navigated(self, main: bool) -> None:
        self.navigations += main

    def calls(self) -> Counter[tuple[str, str]]:
        """(method, path) of every request but the page's own files."""
        paths = ((method, urllib.parse.urlsplit(url).path) for method, url in self.requests)
        return Counter(call for call in paths if call[1].startswith(("/v1/", "/admin/")))

    def assert_one_origin(self, base: str, routed: list[str]) -> None:
        ws_base = "ws" + base.removeprefix("http")
        foreign = [url for _, url in self.requests if not url.startswith(base + "/")]
        foreign += [url for url in self.sockets + routed if not url.startswith(ws_base + "/")]
        assert foreign == [], foreign


class StreamRoute:
    """The page's stream, routed through the test: forwards both ways, drops one connection once.

    A dropped connection forwards nothing more: what the page saw last is then exactly the cursor
    of the message that triggered the drop, and the page must resume from there.
    """

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.dropped_after: str | None = None  # the cursor of the last message the page was given
        self.drop_when: Callable[[dict[str, Any]], bool] | None = None

    async def handle(self, page_side: WebSocketRoute) -> None:
        self.urls.append(page_side.url)
        server_side = page_side.connect_to_server()
        page_side.on_message(server_side.send)
        cut = False
        last: str | None = None

        async def from_server(message: str | bytes) -> None:
            nonlocal cut, last
            if cut:
                return
            data = json.loads(message)
            page_side.send(message)
            last = data.get("cursor", last)
            if self.drop_when is not None and self.drop_when(data):
                cut, self.drop_when, self.dropped_after = True, None, last
                await server_side.close(code=1000, reason="dropped by the test")
                await page_side.close(code=1001, reason="dropped by the test")

        server_side.on_message(from_server)


def since(url: str) -> str | None:
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("since")
    return values[0] if values else None


def save(png: bytes, tmp_path: Path, name: str) -> None:
    """Keep a screenshot in the test's tmp_path and in `<repo>/test-output/`, which CI can collect."""
    ARTIFACTS.mkdir(exist_ok=True)
    for path in (ARTIFACTS / name, tmp_path / name):
        path.write_bytes(png)
    print(f"dashboard screenshot: {ARTIFACTS / name} (and {tmp_path / name})")
