"""The in-container agent and the protocol the control plane uses to talk to it.

Pure modules, imported by the control plane as well as by the agent:

- `signing`: HMAC signatures on the control plane's commands (`sign`, `verify`).
- `manifest`: the install manifest, its strict parser and its canonical hash (`manifest_sha256`).
- `wire`: paths, request and report shapes, and their parsers.
- `plan`: which files an install fetches, keeps and deletes.

The reference agent (`python -m zlh_actors.agent`, console script `zlh-agent`): `config` (flags),
`state` (the state directory), `install` (verified downloads), `game` and `ping` (the game process
and its Server List Ping), `reporter` (ordered status reports), `lifecycle` (the agent's states),
`api` (HTTP) and `main` (composition root). See docs/agent.md.
"""
