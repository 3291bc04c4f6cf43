"""The local stand-in world: everything the control plane talks to, runnable on one machine.

- `standin_game`: a stand-in Minecraft server that answers Server List Ping (stdlib only, so the
  agent can download it as the "launcher" and run it from any directory).
- `files`: a loopback HTTP file server for the launcher and deterministic fake mod jars, with their
  real sizes and hashes, and deliberately tampered variants.

Agents in the lab are the reference agent (`zlh_actors.agent`) on loopback IPs (127.x.y.z: Linux
routes all of 127/8 to lo), with a lab game command such as
`{python} {launcher} --host {ip} --port {port} --warmup 0.5`.
"""
