"""The reconciler: the database is the source of truth, and this brings Proxmox and the agents back to it.

- `drift`: the pure `diff(servers, guests, agents) -> [Drift]`, with no I/O.
- `repairs`: what the owning actor does about a drift it is sent (chart events), and the command
  payload the two share.
- `loop`: the periodic (and on-demand) pass over the shards this replica owns.
- `reports`: the stored report of each pass, and the latest ones for the admin API.

See docs/reconciler.md.
"""
