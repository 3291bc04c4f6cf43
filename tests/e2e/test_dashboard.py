"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a live replica.

No browser is ever downloaded: Playwright launches `/usr/bin/chromium` (scripts/test installs it on
CI, see `ensure_chromium` in scripts/lib.sh). A missing browser fails the test; it is not skipped.

The user's walk: sign in, create a server from the form, watch its row reach `running` with no
reload and no polling (a window marker survives, one main-frame navigation, exactly one list GET),
its journal timeline grow live, a stop cancelled in the confirm dialog, a refused start shown as
the problem's title, and a confirmed delete reach `deleted`. The page's stream is routed through
the test and dropped once mid-provisioning: the page must resume with `?since=` the last cursor it
was given. The admin's walk uses a real browser WebSocket (under the page's CSP) and sees the shard
map, the replicas and a drift found by "Reconcile now". Every request stays on the service's
origin. Screenshots go to the test's tmp_path and to `<repo>/test-output/`.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright, expect

from tests.e2e import harness

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
FOREIGN_VMID = 19999  # the top of the default VMID range: never allocated in a short test
SLOW = 60_000  # ms: provisioning and deletion on a loaded machine
QUICK = 15_000  # ms: anything the page does by itself

expect.set_options(timeout=QUICK)  # the default 5 s is tight on a loaded two-core machine


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


async def sign_in(page: Page, base: str, token: str) -> None:
    await page.goto(base + "/")
    await page.get_by_label("API token").fill(token)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("stream-status")).to_have_attribute("data-status", "live")
    await expect(page.get_by_test_id("who")).not_to_be_empty()  # the list and the admin probe are done


async def test_the_page_and_its_files_are_public_typed_and_confined(control: harness.Control) -> None:
    base = control.base_urls[0]
    host = urllib.parse.urlsplit(base).netloc
    async with control.http.get(base + "/") as response:  # no Authorization header
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
        headers = response.headers
    assert '<script type="module" src="/ui/app.js">' in page
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy
    assert "frame-ancestors 'none'" in policy
    assert headers["Cache-Control"] == "no-cache"
    async with control.http.get(base + "/", headers={"If-None-Match": headers["ETag"]}) as response:
        assert response.status == 304
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with control.http.get(f"{base}/ui/{name}") as response:
            assert response.status == 200, name
            assert response.content_type == kind
            assert "Content-Security-Policy" in response.headers
    for path in ("/ui/index.html", "/ui/__init__.py", "/ui/..%2F__init__.py", "/ui/"):
        async with control.http.get(base + path) as response:
            assert response.status == 404, path
    async with control.http.get(base + "/v1/servers") as response:  # the API stays closed
        assert response.status == 401


async def test_a_user_and_an_admin_drive_the_dashboard_in_chromium(
    control: harness.Control, tmp_path: Path
) -> None:
    base = control.base_urls[0]
    async with chromium() as browser:
        # ---- the user: create, watch, look, act, delete; the stream dropped once on the way
        page = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
        watch = Watch(page)
        route = StreamRoute()
        await page.route_web_socket("**/v1/stream**", route.handle)
        await sign_in(page, base, control.tokens["alpha"])
        await expect(page.get_by_test_id("who")).to_have_text("user")
        await expect(page.get_by_test_id("no-servers")).to_be_visible()
        await page.evaluate("window.zlhMarker = 'no reload'")
        loaded = watch.calls()

        route.drop_when = lambda data: str(data.get("to", "")).startswith("provisioning.")
        await page.get_by_test_id("create-name").fill("from-the-page")
        await page.get_by_test_id("create-submit").click()
        row = page.locator('[data-testid="server-row"][data-name="from-the-page"]')
        await expect(row).to_be_visible()
        server_id = await row.get_attribute("data-server-id")
        assert server_id is not None
        await row.get_by_test_id("open-timeline").click()
        await expect(page.get_by_test_id("timeline-name")).to_have_text("from-the-page")
        await expect(row).to_have_attribute("data-state", "running", timeout=SLOW)
        await expect(row.get_by_test_id("state")).to_have_class(re.compile(r"\bstate-running\b"))

        # The drop happened mid-provisioning and the page resumed exactly where it had been.
        assert route.dropped_after is not None
        assert len(route.urls) == 2, route.urls
        assert since(route.urls[0]) is None
        assert since(route.urls[1]) == route.dropped_after

        # The timeline, opened while provisioning, grew live into the whole journal.
        journal = await control.journal_states(server_id)
        assert journal[0] == "requested"
        assert journal[-1] == "running"
        entries = page.get_by_test_id("timeline-entry")
        await expect(entries).to_have_count(len(journal))
        assert [await entry.get_attribute("data-to") for entry in await entries.all()] == journal
        save(await page.screenshot(full_page=True), tmp_path, "dashboard-user.png")

        # Confirmation: cancelled means nothing sent; a refused command shows the problem's title.
        await row.get_by_test_id("stop").click()
        await expect(page.get_by_test_id("confirm")).to_be_visible()
        await page.get_by_test_id("confirm-no").click()
        await expect(page.get_by_test_id("confirm")).to_be_hidden()
        await row.get_by_test_id("start").click()
        await page.get_by_test_id("confirm-yes").click()
        await expect(page.get_by_test_id("error-text")).to_have_text(
            "start is not allowed while the server is running"
        )
        await row.get_by_test_id("delete").click()
        await expect(page.get_by_test_id("confirm")).to_contain_text("from-the-page")
        await page.get_by_test_id("confirm-yes").click()
        await expect(row).to_have_attribute("data-state", "deleted", timeout=SLOW)
        await expect(row.get_by_test_id("delete")).to_be_disabled()
        assert (await control.get(server_id))["state"] == "deleted"
        await expect(entries.last).to_have_attribute("data-to", "deleted")

        # No reload, no polling: one list load, and every later request was a user's action.
        assert await page.evaluate("window.zlhMarker") == "no reload"
        assert watch.navigations == 1
        assert loaded == Counter({("GET", "/v1/servers"): 1, ("GET", "/admin/v1/shards"): 1})
        item = f"/v1/servers/{server_id}"
        assert watch.calls() - loaded == Counter(
            {
                ("POST", "/v1/servers"): 1,
                ("GET", item + "/events"): 1,
                ("POST", item + "/start"): 1,
                ("DELETE", item): 1,
            }
        )
        watch.assert_one_origin(base, route.urls)
        assert watch.errors == []

        await page.get_by_test_id("sign-out").click()
        await expect(page.get_by_test_id("signin-form")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0

        # ---- a bad token, then the admin, in a fresh tab with a real WebSocket: shards, drift
        await control.lab.plant_foreign(FOREIGN_VMID)
        page = await (await browser.new_context(viewport={"width": 1400, "height": 1400})).new_page()
        watch = Watch(page)
        await page.goto(base + "/")
        await page.get_by_label("API token").fill("zlh_not-a-token")
        await page.get_by_test_id("sign-in").click()
        refused = page.get_by_test_id("error-text")
        await expect(refused).to_contain_text("invalid or revoked token")
        await expect(page.get_by_test_id("signin-form")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
        await sign_in(page, base, control.tokens["admin"])
        await expect(page.get_by_test_id("who")).to_have_text("admin")
        _, shards, _ = await control.call("GET", "/admin/v1/shards", who="admin")
        [replica] = shards["replicas"]
        rows = page.get_by_test_id("shard-row")
        await expect(rows).to_have_count(8)
        for lease in shards["shards"]:
            shown = page.locator(f'[data-testid="shard-row"][data-shard="{lease["shard"]}"]')
            await expect(shown.get_by_test_id("owner")).to_have_attribute("title", replica["id"])
            await expect(shown.get_by_test_id("epoch")).to_have_text(str(lease["epoch"]))
        await expect(page.get_by_test_id("replica-row")).to_have_attribute("data-replica", replica["id"])
        await page.get_by_test_id("reconcile").click()
        foreign = page.locator('[data-testid="drift-item"][data-kind="foreign"]')
        await expect(foreign).to_contain_text(f"vmid {FOREIGN_VMID}")
        await expect(page.get_by_test_id("drift-report")).to_have_attribute("data-replica", replica["id"])
        admin_row = page.locator(f'[data-testid="server-row"][data-server-id="{server_id}"]')
        await expect(admin_row).to_have_attribute("data-state", "deleted")  # admins see every tenant
        streams = [url for url in watch.sockets if urllib.parse.urlsplit(url).path == "/v1/stream"]
        assert streams, watch.sockets
        picture = await page.screenshot(full_page=True)
        assert len(picture) > 10_000
        save(picture, tmp_path, "dashboard.png")
        watch.assert_one_origin(base, [])
        assert watch.errors == []

        # The browser enforces the page's policy: a connection to another origin never leaves.
        violated = await page.evaluate(
            """() => new Promise((resolve) => {
                document.addEventListener("securitypolicyviolation", (e) => resolve(e.effectiveDirective));
                setTimeout(() => resolve("no violation within 10 s"), 10000);
                fetch("http://192.0.2.1/").catch(() => {});
            })"""
        )
        assert violated == "connect-src"
