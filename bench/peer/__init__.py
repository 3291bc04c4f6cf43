"""The design zlh-actors replaces, side by side: the same flow as BullMQ jobs, the same faults.

`python -m bench.peer` runs one seeded scenario (`scenario.py`) twice, each time on a fresh lab with
the same settings and a fresh database: once against zlh-actors (`ours.py`: real `server.py`
replicas behind a round-robin client), once against the peer (`peer.py`, `worker.py`, `jobs.py`,
`records.py`): a job-queue control plane on BullMQ's Python port over Redis, with worker processes,
a table of its own in PostgreSQL, VMIDs from `/cluster/nextid`, Proxmox through proxmoxer.

The peer is meant to be the honest version of that design, used the way BullMQ documents it:
- the client's idempotency key is the job id (`jobId: create-<key>`), BullMQ's deduplication, and
  the row insert is idempotent on the same key, so repeated requests never make a second row or job;
- `attempts: 5` with exponential backoff from 1 s; finished jobs kept a day (auto-removal by age);
- worker `concurrency` 4 per process, stalled-job recovery on (a job whose worker died or froze past
  its lock runs again: BullMQ's documented at-least-once behaviour), `maxStalledCount` at its
  default 1. The lock and stall-check timings are scaled down from the defaults (30 s each) to
  10 s and 5 s, as ours' lease timings are scaled down for the lab (1.5 s leases);
- the jobs are written to be re-runnable (a create resumes with a container its row names, a
  delete counts a gone container as done), per the docs' idempotent-jobs advice.
What the peer lacks is what the platform it stands for lacked, and is listed in `jobs.py`.

Both systems are counted the same way (`observe.py`) and checked by the same checker: ours by the
whole `zlh_actors.lab.invariants.check`, the peer by its pure part `check_containers` over records
built from the peer's rows (invariants 2 and 3; the others are about our database and do not apply).
`report.py` prints the table.
"""
