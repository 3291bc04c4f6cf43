"""How a replica's process runs Python's cyclic garbage collector.

A replica holds many long-lived objects: a task, a mailbox and frames per resident actor (one per
server touched in the last `idle_timeout` seconds), the pools' connections, the caches. With
CPython's default thresholds (700, 10, 10) a full collection, which walks every one of them, came
every few seconds under load and stopped the event loop for 60-170 ms at 11,000 resident actors
(bench/stream.py, 500 callbacks a second; it found nothing to free). No request, callback or
heartbeat is served during such a pause, so one of them every five seconds set the stream's p99.

Nearly all of a replica's garbage is freed by reference counting the moment it is dropped; the
cyclic collector only finds reference cycles, which are few here (an exception kept with its
traceback, say). So a replica collects young objects less often, and the whole heap rarely:

- the first generation is collected after 50,000 new tracked objects instead of 700 (a few ms of
  pause at a time, instead of a fraction of one much more often);
- the second after 20 of those, the full collection after 100 of the second's (and then only once
  CPython's own rule finds the long-lived objects grown by a quarter since the last one);
- what startup made (modules, settings, the application) is frozen once the replica serves: no
  collection walks it again. It is freed as usual if its last reference goes; only cycles among
  it would outlive their use, and startup objects live as long as the process.

Cyclic garbage therefore waits longer to be freed: memory a little higher between full
collections, never lost. `configure` before the event loop starts, `freeze_startup` once serving.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def configure() -> None:
    """Set the replica's collection thresholds (process-wide)."""
    gc.set_threshold(*THRESHOLDS)


def freeze_startup() -> None:
    """Collect once, then exempt every object alive now from later collections."""
    gc.collect()
    gc.freeze()
