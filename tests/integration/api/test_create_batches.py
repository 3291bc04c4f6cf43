"""Creates on one replica: duplicates wait for the request in flight, recent answers are replayed from
memory, and concurrent creates are written in one batch, each bad one failing alone."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg
import pytest

from storage import allocations, database, idempotency, launchers
from tests import helpers
from zlh_actors import config, errors
from zlh_actors.proxmox import protocol
from zlh_actors.servers import create, requests

TENANT = "acme"
VERSIONS = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}
SETTINGS = config.Settings(
    vmid_range=(100, 199),
    ip_subnet=ipaddress.IPv4Network("10.77.0.0/24"),
    ip_gateway=ipaddress.IPv4Address("10.77.0.1"),
    game_ports=(25565, 25665),
)


class Nodes:
    """A driver that only answers `nodes` (all placement asks of it)."""

    def __init__(self, *names: str) -> None:
        self.listing = [protocol.NodeInfo(name, True, 1_000_000) for name in names]

    async def nodes(self) -> list[protocol.NodeInfo]:
        return self.listing


def placement(*names: str) -> create.Placement:
    return create.Placement(Nodes(*(names or ("pve1",))))  # type: ignore[arg-type]


@pytest.fixture
async def pinned(pool: asyncpg.Pool) -> asyncpg.Pool:
    async with database.acquire(pool) as conn:
        await launchers.pin(conn, "1.21.1", "0.16.14", "1.0.1", "https://example.test/l.jar", "0" * 64, 1)
    return pool


def body(name: str, **changes: Any) -> dict[str, Any]:
    return {"name": name, **VERSIONS, **changes}


async def post(
    pool: asyncpg.Pool,
    where: create.Placement,
    key: str,
    data: dict[str, Any],
    settings: config.Settings = SETTINGS,
) -> create.Answer:
    """What `POST /v1/servers` does once it has authenticated and read the body."""
    return await create.create(
        pool,
        settings,
        where,
        tenant=TENANT,
        key=key,
        fingerprint=idempotency.fingerprint("POST", "/v1/servers", data),
        parse=lambda: requests.parse_create(data, settings),
    )


def in_use(pool: asyncpg.Pool) -> int:
    return pool.get_size() - pool.get_idle_size()


async def test_duplicates_wait_for_the_request_in_flight_without_a_connection(pinned: asyncpg.Pool) -> None:
    where = placement()
    blocker = await pinned.acquire()  # holds the allocation lock: the first request waits for it
    held = blocker.transaction()
    await held.start()
    await allocations.lock(blocker)
    try:
        calls = [asyncio.create_task(post(pinned, where, "k1", body("one"))) for _ in range(10)]

        async def all_waiting() -> bool:
            flight = where.front.flights.get((TENANT, "k1"))
            lock_waits = await pinned.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            return flight is not None and flight.waiting == 9 and lock_waits == 1

        await helpers.assert_eventually(all_waiting, message="nine duplicates and the first waiting")
        # The blocker's connection and the first request's; none for the nine duplicates.
        assert in_use(pinned) == 2
        # A different request under the key waits for the first too: whether it is refused depends
        # on whether the first stores an answer.
        different = asyncio.create_task(post(pinned, where, "k1", body("other")))

        async def ten_waiting() -> bool:
            return where.front.flights[(TENANT, "k1")].waiting == 10

        await helpers.assert_eventually(ten_waiting, message="the different request waiting too")
        assert in_use(pinned) == 2
    finally:
        await held.rollback()
        await pinned.release(blocker)
    with pytest.raises(errors.IdempotencyMismatch):
        await different
    answers = await asyncio.gather(*calls)
    assert sorted(answer.replayed for answer in answers) == [False] + [True] * 9
    assert len({answer.body["id"] for answer in answers}) == 1
    assert all(answer.status == 202 and answer.body == answers[0].body for answer in answers)
    assert await pinned.fetchval("SELECT count(*) FROM servers") == 1


async def test_a_completed_answer_is_replayed_from_memory_until_near_its_expiry(
    pinned: asyncpg.Pool, db_url: str
) -> None:
    where = placement()
    first = await post(pinned, where, "k1", body("one"))
    closed = await database.create_pool(db_url, max_size=1)
    await closed.close()  # anything that needs the database now fails
    again = await post(closed, where, "k1", body("one"))
    assert (again.status, again.body, again.replayed) == (202, first.body, True)
    with pytest.raises(errors.IdempotencyMismatch):
        await post(closed, where, "k1", body("two"))
    # A key that expires within the margin is always looked up in the database.
    short = dataclasses.replace(SETTINGS, idempotency_ttl=create.MARGIN.total_seconds() / 2)
    await post(pinned, where, "k2", body("two"), short)
    with pytest.raises(errors.StorageUnavailable):
        await post(closed, where, "k2", body("two"), short)
    replayed = await post(pinned, where, "k2", body("two"), short)
    assert replayed.replayed


async def test_concurrent_creates_share_one_transaction_and_allocate_as_one_at_a_time(
    pinned: asyncpg.Pool,
) -> None:
    where = placement("pve1", "pve2")
    answers = await asyncio.gather(*(post(pinned, where, f"k{n}", body(f"s{n}")) for n in range(20)))
    assert where.front.batches <= 2
    assert where.front.fallbacks == 0
    assert all(answer.status == 202 and not answer.replayed for answer in answers)
    assert sorted(answer.body["vmid"] for answer in answers) == list(range(100, 120))
    assert sorted(int(ipaddress.IPv4Address(a.body["ip"])) for a in answers) == [
        int(ipaddress.IPv4Address("10.77.0.2")) + n for n in range(20)
    ]
    by_node: dict[str, list[int]] = {}
    for answer in answers:
        by_node.setdefault(answer.body["node"], []).append(answer.body["game_port"])
    assert set(by_node) == {"pve1", "pve2"}  # placement counts the batch's own servers as pending
    for ports in by_node.values():
        assert sorted(ports) == list(range(25565, 25565 + len(ports)))
    rows = await pinned.fetch(
        "SELECT k.response_body, s.version, s.state, j.seq, c.kind FROM idempotency_keys k "
        "JOIN servers s ON s.id = k.server_id JOIN journal j ON j.server_id = s.id "
        "JOIN commands c ON c.server_id = s.id"
    )
    assert len(rows) == 20
    assert {(r["version"], r["state"], r["seq"], r["kind"]) for r in rows} == {(2, "requested", 1, "create")}
    stored = {r["response_body"]["id"]: r["response_body"] for r in rows}
    assert all(stored[answer.body["id"]] == answer.body for answer in answers)


async def test_a_bad_request_in_a_batch_fails_alone(pinned: asyncpg.Pool) -> None:
    where = placement()
    await post(pinned, where, "taken", body("taken"))
    unpinned = body("odd", fabric={"loader": "0.0.1", "installer": "1.0.1"})
    results = await asyncio.gather(
        *(post(pinned, where, f"k{n}", body(f"s{n}")) for n in range(5)),
        post(pinned, where, "again", body("taken")),  # a live name: rolls the batch back
        post(pinned, where, "odd", unpinned),  # refused before the batch writes anything
        return_exceptions=True,
    )
    assert [type(result).__name__ for result in results] == ["Answer"] * 5 + ["NameTaken", "BadRequest"]
    assert where.front.fallbacks == 1
    assert await pinned.fetchval("SELECT count(*) FROM servers") == 6
    assert await pinned.fetchval("SELECT count(*) FROM idempotency_keys") == 6  # nothing stored for failures
    retried = await post(pinned, where, "odd", body("odd"))  # the failed key is free for a fixed request
    assert retried.status == 202


async def test_a_different_request_under_a_key_whose_first_request_failed_runs(pinned: asyncpg.Pool) -> None:
    """The first request under a key fails (a taken name) and stores nothing, so the key holds
    nothing: a different request under it, sent while the first was in flight, is served, not
    refused with a 422 for a key that turned out free (and would have been served when sent again)."""
    where = placement()
    await post(pinned, where, "taken", body("dup"))
    blocker = await pinned.acquire()
    held = blocker.transaction()
    await held.start()
    await allocations.lock(blocker)
    try:
        first = asyncio.create_task(post(pinned, where, "k", body("dup")))

        async def in_flight() -> bool:
            return (TENANT, "k") in where.front.flights

        await helpers.assert_eventually(in_flight, message="the first request in flight")
        second = asyncio.create_task(post(pinned, where, "k", body("fresh")))

        async def waiting() -> bool:
            return where.front.flights[(TENANT, "k")].waiting == 1

        await helpers.assert_eventually(waiting, message="the second request waiting for the first")
    finally:
        await held.rollback()
        await pinned.release(blocker)
    with pytest.raises(errors.NameTaken):
        await first
    answer = await second
    assert answer.status == 202
    assert not answer.replayed
    assert answer.body["name"] == "fresh"
    assert await pinned.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k'") == 1


async def test_a_batch_replays_stored_answers_and_reuses_expired_keys(pinned: asyncpg.Pool) -> None:
    first = await post(pinned, placement(), "old", body("old"))
    stored = await post(pinned, placement(), "kept", body("kept"))
    await pinned.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 days', "
        "expires_at = now() - interval '1 day' WHERE key = 'old'"
    )
    where = placement()  # another replica: nothing in memory
    again, kept, mismatch = await asyncio.gather(
        post(pinned, where, "old", body("new")),
        post(pinned, where, "kept", body("kept")),
        post(pinned, where, "kept", body("other")),
        return_exceptions=True,
    )
    assert isinstance(again, create.Answer)
    assert not again.replayed
    assert again.body["id"] != first.body["id"]
    assert isinstance(kept, create.Answer)
    assert kept.replayed
    assert kept.body == stored.body
    assert isinstance(mismatch, errors.IdempotencyMismatch)


async def test_a_key_claimed_by_another_replica_is_replayed_from_it(pinned: asyncpg.Pool) -> None:
    ours, theirs = placement(), placement()
    results = await asyncio.gather(
        *(post(pinned, where, "k", body("one")) for where in (ours, theirs) for _ in range(3))
    )
    assert len({result.body["id"] for result in results}) == 1
    assert sorted(result.replayed for result in results) == [False] + [True] * 5
    assert await pinned.fetchval("SELECT count(*) FROM servers") == 1


async def test_duplicates_are_not_validated_again_but_a_bad_body_is_still_a_400(pinned: asyncpg.Pool) -> None:
    where = placement()
    parsed: list[str] = []

    async def send(key: str, data: dict[str, Any]) -> create.Answer:
        def parse() -> requests.CreateRequest:
            parsed.append(key)
            return requests.parse_create(data, SETTINGS)

        return await create.create(
            pinned,
            SETTINGS,
            where,
            tenant=TENANT,
            key=key,
            fingerprint=idempotency.fingerprint("POST", "/v1/servers", data),
            parse=parse,
        )

    answers = await asyncio.gather(*(send("k", body("one")) for _ in range(5)))
    assert [a.replayed for a in answers].count(False) == 1
    await send("k", body("one"))  # replayed from memory
    assert parsed == ["k"]  # only the request that created the server was validated
    with pytest.raises(errors.BadRequest):
        await send("k", body("Not A Name"))  # invalid and a reused key: the 400 comes first
    with pytest.raises(errors.IdempotencyMismatch):
        await send("k", body("two"))


async def test_the_node_list_is_read_once_for_concurrent_creates_and_again_after_a_failure() -> None:
    class Slow:
        def __init__(self) -> None:
            self.calls = 0
            self.release = asyncio.Event()
            self.fail = False

        async def nodes(self) -> list[protocol.NodeInfo]:
            self.calls += 1
            await self.release.wait()
            if self.fail:
                raise errors.Transient("Proxmox is down")
            return [protocol.NodeInfo("pve1", True, 1000)]

    driver = Slow()
    where = create.Placement(driver)  # type: ignore[arg-type]
    where.warm()  # a create arrived: the read starts before anyone needs it
    readers = [asyncio.create_task(where.nodes()) for _ in range(5)]
    await asyncio.sleep(0)  # every task has started: the read waits in the driver, the readers on it
    driver.release.set()
    assert [len(listing) for listing in await asyncio.gather(*readers)] == [1] * 5
    assert driver.calls == 1
    assert len(await where.nodes()) == 1  # cached
    assert driver.calls == 1
    always_stale = create.Placement(driver, ttl=0)  # type: ignore[arg-type]
    driver.fail = True
    with pytest.raises(errors.Transient):
        await always_stale.nodes()  # the read's error reaches its reader
    driver.fail = False
    assert len(await always_stale.nodes()) == 1  # and the next one reads again
    assert driver.calls == 3


class Starts:
    """The replica's inbox as the create path sees it: the commands it expects, the servers it wakes,
    and how many creates were still being answered when it woke them."""

    def __init__(self) -> None:
        self.placement = create.Placement(Nodes("pve1"), starts=self)  # type: ignore[arg-type]
        self.expected: list[uuid.UUID] = []
        self.woken: list[uuid.UUID] = []
        self.answering: list[int] = []  # at each wake-up

    def expect(self, command_ids: Iterable[uuid.UUID]) -> None:
        self.expected.extend(command_ids)

    def wake(self, server_ids: Iterable[uuid.UUID]) -> None:
        self.woken.extend(server_ids)
        self.answering.append(self.placement.front._answering)

    async def woken_at_least(self, count: int) -> list[uuid.UUID]:
        return await helpers.at_least(self.woken, count, message=f"{count} servers woken")


async def test_new_servers_are_started_once_every_create_is_answered(
    pinned: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(create, "START_WITHIN", 60.0)  # longer than this test may take
    starts = Starts()
    where = starts.placement
    # A create still being answered holds back the start of every server created meanwhile.
    with where.front.answering():
        answers = await asyncio.gather(
            *(post(pinned, where, f"k{n}", body(f"s{n}")) for n in range(10)),
            post(pinned, where, "k0", body("s0")),  # a duplicate
        )
        answers.append(await post(pinned, where, "alone", body("alone")))  # a batch of its own
        # Their commands were expected before their commits (the inbox skips their notifications).
        commands = {r["id"]: r["server_id"] for r in await pinned.fetch("SELECT id, server_id FROM commands")}
        assert sorted(starts.expected) == sorted(commands)
    # The servers are woken, each once, when nothing is being answered any more.
    created = sorted(uuid.UUID(answer.body["id"]) for answer in answers if not answer.replayed)
    assert sorted(await starts.woken_at_least(11)) == created == sorted(commands.values())
    assert len(starts.woken) == 11
    assert starts.answering
    assert set(starts.answering) == {0}


async def test_a_new_server_starts_within_its_bound_while_creates_keep_coming(
    pinned: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(create, "START_WITHIN", 0.2)
    starts = Starts()
    with starts.placement.front.answering():  # a create that is not answered during the test
        answer = await post(pinned, starts.placement, "k", body("s"))
        assert await starts.woken_at_least(1) == [uuid.UUID(answer.body["id"])]
        assert starts.answering == [1]
