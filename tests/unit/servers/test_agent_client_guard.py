"""A signed call to an agent runs the lease check of the step it is made in, and is not sent once
the lease is lost (`guard`)."""

from __future__ import annotations

import asyncio

import pytest

from tests import helpers
from zlh_actors import errors, guard
from zlh_actors.servers import agent_client


async def test_a_guarded_agent_call_is_not_sent_once_the_lease_is_lost() -> None:
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()  # no answer: the call fails as an agent that hung up would

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = agent_client.AgentClient(b"k" * 32, port)

    def lost() -> None:
        raise errors.OwnershipLost("another replica owns the server now")

    try:
        with guard.guarded(lost), pytest.raises(errors.OwnershipLost):
            await agent.start_game("127.0.0.1", 1)
        assert connections == 0

        # The same call outside a guarded block reaches the agent (so the count above can see one).
        with pytest.raises(errors.Transient):
            await agent.start_game("127.0.0.1", 1)

        async def reached() -> bool:
            return connections == 1

        await helpers.assert_eventually(reached, timeout=5)
    finally:
        await agent.close()
        server.close()
        await server.wait_closed()
