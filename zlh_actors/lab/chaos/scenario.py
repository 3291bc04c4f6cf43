"""The operations of a chaos run: one task per planned server, playing its script through the REST API.

A server's task sleeps until its planned time, creates it (the plan says how), then follows its
fate: a delete as soon as the create answers; a delete the moment its tenant's stream shows it
entering a given provisioning step; stops, starts and restarts, each after the server came to
rest (or at once, racing the previous one, when the plan says hurry), then perhaps a delete; or
nothing. A server that comes to rest in a failed state is retried as many times as its script
allows. When the stream has not shown a state within a wait, the task asks `GET /v1/servers/{id}`
instead, so a stalled stream slows the scenario down but never stalls it.

Alongside, every tenant lists its servers every few seconds, and then probes one server of another
tenant (`client.Api.probe`): more sightings for invariant 7, taken while servers are created, failed
over and deleted.

When the run's time is up (`stop`), no more servers are created and the listings end; scripts
already under way play to their end (with the faults healed by then), within a bound the driver
sets, so every planned kind of command is sent even on a slow machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from zlh_actors.lab.chaos import client, plan, streams
from zlh_actors.servers import actor

# The order a server goes through to running; a delete aimed at a step fires once this far or beyond.
ORDER = ("requested", *plan.STEPS, "running")
STEP_WAIT = 30.0  # a step not reached by then (the server failed, the stream lags): delete anyway
REST_WAIT = 20.0  # then ask the API rather than the stream
LIST_INTERVAL = 5.0
PROBE_STRIDE = 7919  # a prime: successive probes spread over the other tenants' servers
FAILED = "failed."


def delete_label(fate: str, step: str | None = None) -> str:
    """The tally's name for a delete of a server with this fate."""
    if fate == "quick_delete":
        return "delete, right after create"
    if fate == "delete_at" and step is not None:
        return f"delete, in {step.removeprefix('provisioning.')}"
    return "delete"


def _reached(step: str) -> Callable[[str | None], bool]:
    def done(state: str | None) -> bool:
        if state is None:
            return False
        return state not in ORDER or ORDER.index(state) >= ORDER.index(step)

    return done


def _rests(state: str | None) -> bool:
    return state in actor.REST_STATES


class Scenario:
    def __init__(
        self, api: client.Api, tracker: streams.Tracker, chosen: plan.Plan, stop: asyncio.Event
    ) -> None:
        self._api, self._tracker, self._plan, self._stop = api, tracker, chosen, stop
        self._started = 0.0

    async def run(self) -> None:
        """Every server's script to its end, and the tenants' listings until `stop`."""
        self._started = asyncio.get_running_loop().time()
        listers = [
            asyncio.create_task(self._list(tenant, route), name=f"chaos:list-{tenant}")
            for route, tenant in enumerate(self._plan.tenants)
        ]
        try:
            await asyncio.gather(*(self._play(script) for script in self._plan.scripts))
        finally:
            for lister in listers:
                lister.cancel()
            await asyncio.gather(*listers, return_exceptions=True)

    async def _pause(self, seconds: float) -> bool:
        """Sleep, unless the run ends first; True if it is still on."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _list(self, tenant: str, route: int) -> None:
        tick = 0
        while await self._pause(LIST_INTERVAL):
            await self._api.list_all(tenant, route)
            others = [
                answer.server_id
                for answer in self._api.log.answers
                if answer.tenant != tenant and answer.server_id is not None
            ]
            if others:
                await self._api.probe(tenant, others[(tick * PROBE_STRIDE) % len(others)], route)
            tick += 1
            route += 1

    async def _play(self, script: plan.Script) -> None:
        loop = asyncio.get_running_loop()
        if not await self._pause(max(0.0, script.at - (loop.time() - self._started))):
            return
        server = await self._api.create(script)
        if server is None or not isinstance(server.get("id"), str):
            return
        server_id: str = server["id"]
        if script.fate == "quick_delete":
            await self._delete(script, server_id)
        elif script.fate == "delete_at" and script.step is not None:
            await self._tracker.wait(server_id, _reached(script.step), STEP_WAIT)
            await self._delete(script, server_id)
        elif script.fate == "lifecycle":
            await self._lifecycle(script, server_id)
        else:
            await self._rest(script, server_id)
        await self._api.events(script.tenant, server_id, script.index)

    async def _delete(self, script: plan.Script, server_id: str) -> None:
        kind = delete_label(script.fate, script.step)
        await self._api.command(script, server_id, "delete", kind, script.index)

    async def _lifecycle(self, script: plan.Script, server_id: str) -> None:
        retries = script.retries
        for number, action in enumerate(script.actions):
            if not action.hurry:
                retries = await self._rest(script, server_id, retries)
            await asyncio.sleep(action.pause)
            await self._api.command(script, server_id, action.kind, action.kind, script.index + number)
        if script.final_delete:
            await self._rest(script, server_id, retries)
            await self._delete(script, server_id)

    async def _rest(self, script: plan.Script, server_id: str, retries: int | None = None) -> int:
        """Wait until the server rests, retrying it while it rests failed and retries are left."""
        left = script.retries if retries is None else retries
        route = script.index
        while True:
            state = await self._settled_state(script, server_id, route)
            if state is None or not state.startswith(FAILED) or left == 0:
                break
            left -= 1
            route += 1
            await self._api.command(script, server_id, "retry", "retry", route)
        return left

    async def _settled_state(self, script: plan.Script, server_id: str, route: int) -> str | None:
        if await self._tracker.wait(server_id, _rests, REST_WAIT):
            return self._tracker.state(server_id)
        found = await self._api.get(script.tenant, server_id, route)
        state = None if found is None else found.get("state")
        return state if isinstance(state, str) and _rests(state) else None
