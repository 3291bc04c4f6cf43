"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a live replica.

The browser is Debian's `/usr/bin/chromium`, never a download (`browser.py`; scripts/test installs it
on CI, see `ensure_chromium` in scripts/lib.sh). A missing browser fails the test; it is not skipped.

The user's walk: sign in, create a server from the form, watch its row reach `running` with no
reload and no polling (a window marker survives, one main-frame navigation, exactly one list GET),
its journal timeline, opened while provisioning, grow live, a stop cancelled in the confirm dialog,
a refused start shown as the problem's title, and a confirmed delete reach `deleted`; the page's
journal reader, given pages of two entries, still reads the whole journal. The page's stream is
routed through the test and dropped once mid-provisioning: the page must resume with `?since=` the
last cursor it was given. A token revoked while signed in signs the page out at its next API call.
In a second tab: a bad token is refused; a sign-out while the admin probe is in flight keeps the
probe's late answer out of the next session; the admin, over a real browser WebSocket (under the
page's CSP), sees the shard map, the replicas, a drift found by "Reconcile now", and a server whose
`last_error` is an agent's markup, shown as text and never run. Every request stays on the
service's origin. Screenshots go to the test's tmp_path and to `<repo>/test-output/`.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Page, Route, expect

from storage import tokens
from tests import helpers
from tests.e2e import browser, harness
from zlh_actors import service
from zlh_actors.api import dashboard
from zlh_actors.lab import replicas, world

FOREIGN_VMID = 19999  # the top of the default VMID range: never allocated in a short test
SLOW = 60_000  # ms: provisioning and deletion on a loaded machine
QUICK = 15_000  # ms: anything the page does by itself
# Free text an agent may report (the `detail` of a crash, which becomes the server's `last_error`).
MARKUP = "<img src=x onerror=window.__xss=1>"

expect.set_options(timeout=QUICK)  # the default 5 s is tight on a loaded two-core machine


async def submit_token(page: Page, token: str) -> None:
    await page.get_by_label("API token").fill(token)
    await page.get_by_test_id("sign-in").click()


async def sign_in(page: Page, base: str, token: str) -> None:
    await page.goto(base + "/")
    await submit_token(page, token)
    await expect(page.get_by_test_id("stream-status")).to_have_attribute("data-status", "live")
    await expect(page.get_by_test_id("who")).not_to_be_empty()  # the list and the admin probe are done


@pytest.fixture
async def patient(lab: world.Lab, db_url: str, pool: asyncpg.Pool) -> AsyncIterator[harness.Control]:
    """The `control` fixture's replica, but its crash policy waits 10 minutes before a restart: a
    crashed server keeps its state and `last_error` while the test looks at them."""
    made = await replicas.prepare_database(lab, db_url)
    settings = harness.settings_for(lab, db_url, crash_backoff=3600.0)
    async with service.running(settings, db_url):
        client = harness.Control([f"http://127.0.0.1:{settings.port}"], made, lab, pool)
        try:
            yield client
        finally:
            await client.close()


async def crash_with_markup(control: harness.Control, server_id: str, who: str) -> None:
    """The server's own agent (its real token) reports a crash whose detail is `MARKUP`."""
    server = await control.wait_state(server_id, "running", who=who)
    enrollment = json.loads((control.lab.agents()[server["vmid"]].state_dir / "enrollment.json").read_text())
    seq = await control.settled_report_seq(server_id)
    report = {
        "generation": enrollment["generation"],
        "seq": seq + 1,
        "state": "crashed",
        "manifest_sha256": "",
        "detail": MARKUP,
    }
    url = f"{control.base_urls[0]}/agent/v1/servers/{server_id}/status"
    headers = {"Authorization": f"Bearer {enrollment['token']}"}
    async with control.http.post(url, json=report, headers=headers) as response:
        assert response.status == 202, await response.text()
    crashed = await control.wait_state(server_id, "crashed", who=who)
    assert crashed["last_error"] == f"agent reported crashed: {MARKUP}"


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
    assets = {name: kind for name, kind in dashboard.FILES.items() if name != "index.html"}
    assert {"app.js", "api.js", "stream.js", "session.js", "style.css"} <= set(assets)
    for name, kind in assets.items():
        async with control.http.get(f"{base}/ui/{name}") as response:
            assert response.status == 200, name
            assert response.content_type == kind
            assert "Content-Security-Policy" in response.headers
    for path in ("/ui/index.html", "/ui/__init__.py", "/ui/..%2F__init__.py", "/ui/"):
        async with control.http.get(base + path) as response:
            assert response.status == 404, path
    async with control.http.get(base + "/v1/servers") as response:  # the API stays closed
        assert response.status == 401


@pytest.mark.timeout(240)
async def test_a_user_and_an_admin_drive_the_dashboard_in_chromium(
    patient: harness.Control, tmp_path: Path
) -> None:
    control = patient
    base = control.base_urls[0]
    # Another tenant's server, provisioning meanwhile; it crashes with markup before the admin looks.
    marked = await control.create("marked", who="beta")
    async with browser.chromium() as chromium:
        # ---- the user: create, watch, look, act, delete; the stream dropped once on the way
        page = await (await chromium.new_context(viewport={"width": 1400, "height": 1000})).new_page()
        watch = browser.Watch(page)
        route = browser.StreamRoute()
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
        item = f"/v1/servers/{server_id}"
        shown = await row.get_attribute("data-state")
        assert str(shown).startswith(("requested", "provisioning.")), shown
        async with page.expect_response(lambda answer: answer.url.startswith(base + item + "/events")) as got:
            await row.get_by_test_id("open-timeline").click()
        answered = [entry["to"] for entry in (await (await got.value).json())["items"]]
        await expect(page.get_by_test_id("timeline-name")).to_have_text("from-the-page")
        await expect(row).to_have_attribute("data-state", "running", timeout=SLOW)
        await expect(row.get_by_test_id("state")).to_have_class(re.compile(r"\bstate-running\b"))

        # The drop happened mid-provisioning and the page resumed exactly where it had been.
        assert route.dropped_after is not None
        assert len(route.urls) == 2, route.urls
        assert browser.since(route.urls[0]) is None
        assert browser.since(route.urls[1]) == route.dropped_after

        # The timeline was opened while provisioning (the journal it read had no `running` yet) and
        # grew live into the whole journal.
        assert "running" not in answered, answered
        journal = await control.journal_states(server_id)
        assert journal[0] == "requested"
        assert journal[-1] == "running"
        entries = page.get_by_test_id("timeline-entry")
        await expect(entries).to_have_count(len(journal))
        assert [await entry.get_attribute("data-to") for entry in await entries.all()] == journal
        browser.save(await page.screenshot(full_page=True), tmp_path, "dashboard-user.png")

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

        await read_the_journal_in_pages_of_two(page, watch, control, server_id)
        await page.get_by_test_id("sign-out").click()
        await expect(page.get_by_test_id("signin-form")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
        await revoke_while_signed_in(page, control)

        # ---- a bad token, a sign-out during the admin probe, then the admin, in a fresh tab with a
        # real WebSocket: shards, drift, and the other tenant's server whose last error is markup
        await control.lab.plant_foreign(FOREIGN_VMID)
        page = await (await chromium.new_context(viewport={"width": 1400, "height": 1400})).new_page()
        watch = browser.Watch(page)
        await page.goto(base + "/")
        await submit_token(page, "zlh_not-a-token")
        refused = page.get_by_test_id("error-text")
        await expect(refused).to_contain_text("invalid or revoked token")
        await expect(page.get_by_test_id("signin-form")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
        await sign_out_during_the_admin_probe(page, watch, control.tokens)
        await crash_with_markup(control, marked["id"], "beta")
        await sign_in(page, base, control.tokens["admin"])
        await expect(page.get_by_test_id("who")).to_have_text("admin")
        _, shards, _ = await control.call("GET", "/admin/v1/shards", who="admin")
        [replica] = shards["replicas"]
        rows = page.get_by_test_id("shard-row")
        await expect(rows).to_have_count(8)
        for lease in shards["shards"]:
            shard = page.locator(f'[data-testid="shard-row"][data-shard="{lease["shard"]}"]')
            await expect(shard.get_by_test_id("owner")).to_have_attribute("title", replica["id"])
            await expect(shard.get_by_test_id("epoch")).to_have_text(str(lease["epoch"]))
        await expect(page.get_by_test_id("replica-row")).to_have_attribute("data-replica", replica["id"])
        await page.get_by_test_id("reconcile").click()
        foreign = page.locator('[data-testid="drift-item"][data-kind="foreign"]')
        await expect(foreign).to_contain_text(f"vmid {FOREIGN_VMID}")
        await expect(page.get_by_test_id("drift-report")).to_have_attribute("data-replica", replica["id"])
        admin_row = page.locator(f'[data-testid="server-row"][data-server-id="{server_id}"]')
        await expect(admin_row).to_have_attribute("data-state", "deleted")  # admins see every tenant

        # The agent's markup is the crashed server's last error, shown as text: no element, no script.
        marked_row = page.locator(f'[data-testid="server-row"][data-server-id="{marked["id"]}"]')
        await expect(marked_row).to_have_attribute("data-state", "crashed")
        await expect(marked_row.get_by_test_id("last-error")).to_have_text(
            f"agent reported crashed: {MARKUP}"
        )
        assert await page.locator("img").count() == 0
        assert await page.evaluate("typeof window.__xss") == "undefined"

        streams = [url for url in watch.sockets if urllib.parse.urlsplit(url).path == "/v1/stream"]
        assert streams, watch.sockets
        picture = await page.screenshot(full_page=True)
        assert len(picture) > 10_000
        browser.save(picture, tmp_path, "dashboard.png")
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


async def read_the_journal_in_pages_of_two(
    page: Page, watch: browser.Watch, control: harness.Control, server_id: str
) -> None:
    """The page's own journal reader, with pages of two entries, reads the whole journal: it asks
    with `after=` the last seq it got until a page comes back short."""
    events = ("GET", f"/v1/servers/{server_id}/events")
    before = watch.calls()[events]
    read = await page.evaluate(
        """async ([id, token]) => {
            const api = await import("/ui/api.js");
            const request = (method, path) => api.call(token, method, path);
            return (await api.readJournal(request, id, 2)).map((entry) => entry.to);
        }""",
        [server_id, control.tokens["alpha"]],
    )
    journal = await control.journal_states(server_id)
    assert read == journal
    pages = len(journal) // 2 + 1  # the last page is the short one (empty when the journal is even)

    async def all_seen() -> bool:
        return watch.calls()[events] - before == pages

    await helpers.assert_eventually(all_seen, timeout=QUICK / 1000, message=f"not {pages} pages")


async def revoke_while_signed_in(page: Page, control: harness.Control) -> None:
    """A token revoked while signed in: the stream, already authenticated, does not notice; the next
    API call is a 401, which signs the page out, says why and forgets the token."""
    async with control.pool.acquire() as conn:
        token, secret = await tokens.create(conn, "gamma", "user", "revoked by test_dashboard")
    await sign_in(page, control.base_urls[0], secret)
    async with control.pool.acquire() as conn:
        await tokens.revoke(conn, token.id)
    await expect(page.get_by_test_id("stream-status")).to_have_attribute("data-status", "live")
    await page.get_by_test_id("create-name").fill("after-revoke")
    await page.get_by_test_id("create-submit").click()
    await expect(page.get_by_test_id("signin-form")).to_be_visible()
    await expect(page.get_by_test_id("error-text")).to_have_text(
        "The API refused the token: invalid or revoked token"
    )
    await expect(page.get_by_test_id("create-form")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    assert await control.pool.fetchval("SELECT count(*) FROM servers WHERE tenant = 'gamma'") == 0


async def sign_out_during_the_admin_probe(page: Page, watch: browser.Watch, known: dict[str, str]) -> None:
    """Sign out while the admin probe (GET /admin/v1/shards) is held, let its answer through, sign in
    as a user: the late answer must not show the admin panels nor load the drift report."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold_the_first(held: Route) -> None:
        if not arrived.is_set():
            arrived.set()
            await release.wait()
        await held.continue_()

    await page.route("**/admin/v1/shards", hold_the_first)
    await submit_token(page, known["admin"])
    async with asyncio.timeout(QUICK / 1000):
        await arrived.wait()
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("signin-form")).to_be_visible()
    async with page.expect_response("**/admin/v1/shards") as late:
        release.set()
    assert (await late.value).status == 200
    await submit_token(page, known["alpha"])
    await expect(page.get_by_test_id("who")).to_have_text("user")
    await expect(page.get_by_test_id("admin")).to_be_hidden()
    assert ("GET", "/admin/v1/drift") not in watch.calls()
    await page.unroute("**/admin/v1/shards", hold_the_first)
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("signin-form")).to_be_visible()
