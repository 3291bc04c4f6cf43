"""The local stand-in world: everything the control plane talks to, runnable on one machine.

Development and tests only: `cluster` imports fakepve (AGPL, a dev dependency), which nothing
outside this package and the tests may import. See docs/lab.md.

- `world`: `Lab`, the async context manager that runs all of it; `python -m zlh_actors.lab` runs
  one on its own until SIGINT/SIGTERM (`__main__`).
- `cluster`: fakepve as a two-node Proxmox cluster over HTTPS, with the Fabric template and an API
  token, on its own thread; helpers that act behind the control plane's back.
- `agents`: the agent supervisor, a reference agent process per running container, on the
  container's loopback IP (127.x.y.z: Linux routes all of 127/8 to lo).
- `processes`, `lifeline`: which processes belong to a container, and making them die with it.
- `settings`: lab.env, launchers.json and mods.json, which a control plane loads.
- `files`: the file server for the launcher and deterministic fake mod jars, with their real
  sizes and hashes, and deliberately tampered variants.
- `standin_game`: a stand-in Minecraft server that answers Server List Ping (stdlib only, so the
  agent can download it as the "launcher" and run it from any directory).

Nothing is imported here, so that `files` and `standin_game` stay importable without fakepve.
"""
