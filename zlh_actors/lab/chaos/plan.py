"""The plan of a chaos run: every decision, drawn up front from one `random.Random(seed)`.

A run's operations and faults happen concurrently, so drawing decisions as they happen would make
their order (and with it every later draw) depend on timing. Instead the whole run is decided before
anything starts: for each server, when it is created, how (one request, duplicated keys, a retry
after a client timeout), what happens to it afterwards (deleted at once, deleted as it enters a
given provisioning step, taken through stops, starts and restarts, or kept); and a schedule of
faults, each with its time, kind, duration and parameters. The same seed gives the same plan, so
the same decisions, and `Plan.digest` proves it; what the plan cannot fix is timing (when a replica
is ready again, which servers are running when a fault picks one), so two runs of one seed differ
in their details, not in their intent.

Where a decision needs a target that only exists at run time (a running container, a replica's
lease connection), the plan holds a number `pick` in [0, 1) and the run takes the item at that
fraction of the sorted candidates.

Kinds are dealt from shuffled decks rather than drawn one by one, so every kind of operation and
fault appears in every run large enough to hold a deck (a dozen servers, a dozen faults), and a
small run still exercises everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, Final, TypeVar

T = TypeVar("T")

TENANTS: Final = ("alpha", "beta", "gamma")
# The provisioning steps (and `starting`, which follows them) a delete is aimed at.
STEPS: Final = (
    "provisioning.cloning",
    "provisioning.configuring",
    "provisioning.booting",
    "provisioning.enrolling",
    "provisioning.installing",
    "starting",
)
FATES: Final = (
    "quick_delete",
    "quick_delete",
    *(f"delete_at:{step}" for step in STEPS),
    *("lifecycle",) * 8,
    *("keep",) * 4,
)
CREATES: Final = ("plain",) * 6 + ("duplicate",) * 2 + ("timeout",) * 2
ACTIONS: Final = ("stop", "start", "restart")
# What a lifecycle does before its end: sequences a user would send, so that starts follow stops.
LIFECYCLES: Final = (
    ("stop", "start"),
    ("restart",),
    ("stop", "start", "restart"),
    ("restart", "stop", "start"),
    ("stop",),
    ("stop", "start", "stop", "start"),
)

FAULT_KINDS: Final = (
    "replica.kill",
    "replica.freeze",
    "db.lease",
    "db.listener",
    "pve.task_error",
    "pve.lock",
    "pve.flaky",
    "pve.node_offline",
    "agent.kill",
    "container.destroy",
    "container.stop",
)
# Task errors fakepve can inject (its own catalogue names), by the request they hit.
TASK_ERRORS: Final = (
    ("POST", "/clone", "clone_failed"),
    ("POST", "/status/start", "locked"),
    ("POST", "/status/shutdown", "did_not_stop"),
    ("POST", "/status/stop", "did_not_stop"),
    ("PUT", "/config", "config_lock_timeout"),
    ("DELETE", "/nodes/{node}/lxc/{vmid}", "config_lock_timeout"),
)
LISTENERS: Final = ("zlh-listen:", "zlh-stream:")  # the inbox's and the event stream's LISTEN sessions

CREATE_SPAN = 0.7  # creates are spread over this share of the run, so late ones still see faults
# A lifecycle needs time after its create (provisioning, then each command and its rest): those are
# created early enough to end within the run, in a short run within its first 30 %.
LIFECYCLE_SPAN, LIFECYCLE_NEEDS = 0.3, 60.0
FAULT_START = 3.0  # seconds: the first fault lands after the first servers exist
FAULT_SPAN = 0.97  # faults run almost to the end: quiescence must then repair what the last ones broke
FAULTS_PER_MINUTE = 20
MIN_DECKS = 2  # even a short run gets every kind of fault twice, so one that finds no target is no gap


@dataclasses.dataclass(frozen=True)
class Action:
    """A command to a server: `pause` seconds after the last one rested (or at once if `hurry`)."""

    kind: str  # stop | start | restart
    pause: float
    hurry: bool  # sent without waiting for the server to rest: it races the previous command


@dataclasses.dataclass(frozen=True)
class Script:
    """One server's life, as the plan decides it.

    Attributes:
        at: seconds after the run's start at which it is created.
        create: "plain" (one request), "duplicate" (`copies` concurrent requests with one key,
            to different replicas) or "timeout" (a first request the client abandons after
            `patience` seconds, then retries with the same key).
        fate: "quick_delete" (deleted as soon as the create answers), "delete_at" (deleted as it
            enters `step`), "lifecycle" (`actions`, then deleted if `final_delete`) or "keep".
        retries: how many times a server that rests in a failed state is retried.
    """

    index: int
    tenant: str
    name: str
    key: str
    at: float
    create: str
    copies: int
    patience: float
    fate: str
    step: str | None
    actions: tuple[Action, ...]
    final_delete: bool
    retries: int


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault: `kind` at `at` seconds, undone `duration` seconds later (0: nothing to undo).

    `params` holds the kind's own choices (a replica's index, a node, a drop rate, ...), and `pick`
    the fraction that chooses a target among those existing when it fires.
    """

    at: float
    kind: str
    pick: float
    duration: float
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int
    replicas: int
    seconds: float
    tenants: tuple[str, ...]
    scripts: tuple[Script, ...]
    faults: tuple[Fault, ...]

    def digest(self) -> str:
        """A short hash of every decision: equal for equal seeds and sizes, whatever the timing."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


def _deal(rng: random.Random, deck: Sequence[T]) -> Iterator[T]:
    """Cards from `deck`, reshuffled each time it runs out: every card once per round."""
    while True:
        cards = list(deck)
        rng.shuffle(cards)
        yield from cards


def make(seed: int, *, replicas: int, servers: int, minutes: float, tenants: int = 3) -> Plan:
    if not 1 <= tenants <= len(TENANTS):
        raise ValueError(f"tenants must be 1-{len(TENANTS)}")
    if replicas < 1 or servers < 0 or minutes <= 0:
        raise ValueError("replicas must be at least 1, servers at least 0, minutes above 0")
    rng = random.Random(seed)
    seconds = float(minutes) * 60  # 15 and 15.0 minutes are one plan, with one digest
    chosen = TENANTS[:tenants]
    scripts = _scripts(rng, seed, servers, seconds, chosen)
    faults = _faults(rng, replicas, seconds)
    return Plan(seed, replicas, seconds, chosen, scripts, faults)


def _scripts(
    rng: random.Random, seed: int, count: int, seconds: float, tenants: tuple[str, ...]
) -> tuple[Script, ...]:
    fates, creates, lifecycles = _deal(rng, FATES), _deal(rng, CREATES), _deal(rng, LIFECYCLES)
    finals = _deal(rng, (True, False))
    drafts = []
    for _ in range(count):
        kind, _, step = next(fates).partition(":")
        actions: tuple[Action, ...] = ()
        end = CREATE_SPAN * seconds
        if kind == "lifecycle":
            end = max(LIFECYCLE_SPAN * seconds, end - LIFECYCLE_NEEDS)
            actions = tuple(
                Action(action, round(rng.uniform(0.2, 2.0), 2), rng.random() < 0.25)
                for action in next(lifecycles)
            )
        drafts.append(
            Script(
                index=0,  # numbered once sorted by time
                tenant=rng.choice(tenants),
                name="",
                key="",
                at=round(rng.uniform(0, end), 3),
                create=next(creates),
                copies=rng.randint(2, 3),
                patience=round(rng.uniform(0.001, 0.25), 3),
                fate=kind,
                step=step or None,
                actions=actions,
                final_delete=kind == "lifecycle" and next(finals),
                retries=rng.randint(0, 2),
            )
        )
    drafts.sort(key=lambda draft: draft.at)  # stable: equal times keep the order they were drawn in
    return tuple(
        dataclasses.replace(draft, index=index, name=f"chaos-{index:04d}", key=f"chaos-{seed}-{index}")
        for index, draft in enumerate(drafts)
    )


def _faults(rng: random.Random, replicas: int, seconds: float) -> tuple[Fault, ...]:
    count = max(MIN_DECKS * len(FAULT_KINDS), round(seconds / 60 * FAULTS_PER_MINUTE))
    end = max(FAULT_START + 1, FAULT_SPAN * seconds)
    kinds = _deal(rng, FAULT_KINDS)
    times = sorted(rng.uniform(FAULT_START, end) for _ in range(count))
    return tuple(_fault(rng, round(at, 3), next(kinds), replicas) for at in times)


def _fault(rng: random.Random, at: float, kind: str, replicas: int) -> Fault:
    pick = round(rng.random(), 4)
    params: dict[str, Any] = {}
    duration = 0.0
    if kind == "replica.kill":
        params["replica"] = rng.randrange(replicas)
        duration = round(rng.uniform(1.0, 4.0), 2)  # down before it is restarted
    elif kind == "replica.freeze":
        params["replica"] = rng.randrange(replicas)
        duration = round(rng.uniform(2.0, 5.0), 2)  # past the lease timeout (1.5 s): it is evicted
    elif kind == "db.listener":
        params["app"] = rng.choice(LISTENERS)
    elif kind == "pve.task_error":
        params["rule"] = rng.randrange(len(TASK_ERRORS))
        params["times"] = rng.randint(1, 3)
    elif kind == "pve.lock":
        params["on"] = rng.choice(("template", "container"))
        duration = round(rng.uniform(1.0, 4.0), 2)
    elif kind == "pve.flaky":
        # Which requests drop is fakepve's own draw, not the plan's: only the rates are decided here.
        params.update(drop_rate=round(rng.uniform(0.05, 0.25), 3), hang_rate=round(rng.uniform(0.0, 0.05), 3))
        duration = round(rng.uniform(3.0, 8.0), 2)
    elif kind == "pve.node_offline":
        params["node"] = rng.randrange(2)
        duration = round(rng.uniform(2.0, 6.0), 2)
    return Fault(at, kind, pick, duration, params)


def choose(items: Sequence[T], pick: float) -> T | None:
    """The item at fraction `pick` of `items` (None when there is none)."""
    if not items:
        return None
    return items[min(int(pick * len(items)), len(items) - 1)]
