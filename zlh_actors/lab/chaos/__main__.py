"""`python -m zlh_actors.lab.chaos --seed S --replicas R --servers N --minutes M`: one seeded chaos run.

Prints the seed and the command that replays it first, progress while it runs, then the summary
table; exits 0 when no invariant was violated and everything settled, 1 otherwise (2 for bad
arguments). A run that cannot go on (a replica that never starts, a database it cannot reach, an
error in the run itself) is one line `chaos: <what>` on stderr and status 1, Ctrl-C status 130: the
person running it wants the cause, not the harness's traceback. See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from zlh_actors.lab.chaos import driver


def parse(argv: Sequence[str]) -> driver.Options:
    parser = argparse.ArgumentParser(
        prog="python -m zlh_actors.lab.chaos",
        description="A seeded chaos run against the lab, with control-plane replicas as real processes.",
    )
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: a random one)")
    parser.add_argument("--replicas", type=int, default=3, help="control-plane replicas (default 3)")
    parser.add_argument("--servers", type=int, default=300, help="servers created over the run (default 300)")
    parser.add_argument("--minutes", type=float, default=15.0, help="length of the chaos phase (default 15)")
    parser.add_argument("--tenants", type=int, default=3, choices=(1, 2, 3), help="tenants (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="lab and replica logs (default: a temp dir)")
    parser.add_argument(
        "--database-url", default=None, help="PostgreSQL server for the run's database (DATABASE_URL)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's database afterwards")
    parser.add_argument(
        "--settle-timeout", type=float, default=None, help="seconds to wait for quiescence (default: scaled)"
    )
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.servers < 0 or args.minutes <= 0:
        parser.error("--replicas must be at least 1, --servers at least 0, --minutes above 0")
    return driver.Options(
        seed=secrets.randbelow(2**31) if args.seed is None else args.seed,
        replicas=args.replicas,
        servers=args.servers,
        minutes=args.minutes,
        tenants=args.tenants,
        directory=args.dir,
        database_url=args.database_url,
        keep=args.keep,
        settle_timeout=args.settle_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    # The fake Proxmox's access log and the lab's chatter would drown the run's own lines.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # fakepve runs in this process: each connection its flaky network drops on purpose is a traceback.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        result = asyncio.run(driver.run(options, say=lambda line: print(line, flush=True)))
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # any failure of the run is reported as one line
        print(f"chaos: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(result.table(), flush=True)
    return 0 if result.ok else 1


def _one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
