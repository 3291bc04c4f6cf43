"""The only code that talks to Proxmox VE.

- `protocol`: the async `ProxmoxDriver` protocol and the values it takes and returns.
- `driver`: `ProxmoxerDriver`, the implementation: idempotent, level-based operations.
- `client`: proxmoxer on a thread pool (one session per thread), 0/1 booleans, retries.
- `guests`: reading the world: the guest at a VMID, its node, marks and power state.
- `tasks`: UPIDs and waiting for tasks.
- `marks`: the ownership marks (description owner line, tags).
- `guestconfig`: the wanted container config and the minimal change to reach it.
- `errors`: the typed errors and the one translator from PVE's wording.
- `settings`: `ProxmoxSettings`, passed in by the caller.

docs/proxmox.md describes the retry and timeout policy and the stale-lock runbook.
"""
