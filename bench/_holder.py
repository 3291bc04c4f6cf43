"""A process that holds one session advisory lock until it is killed: `bench.failover`'s floor.

    python -m bench._holder DATABASE_URL KEY

It prints `held` once the lock is taken, then waits for ever. Killed with SIGKILL, it leaves
PostgreSQL to notice the closed socket and drop the lock, which is all a replica's death gives its
peers; how long that takes on this machine is the least any takeover can take.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

NAMESPACE = 0x7A6C6862  # "zlhb": apart from the shard locks' namespace


async def hold(url: str, key: int) -> None:
    conn = await asyncpg.connect(url, server_settings={"application_name": f"zlh-bench-holder:{key}"})
    await conn.execute("SELECT pg_advisory_lock($1::integer, $2::integer)", NAMESPACE, key)
    print("held", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(hold(sys.argv[1], int(sys.argv[2])))
