"""How servers, journal entries and commands look on the wire (the REST API's JSON shapes)."""

from __future__ import annotations

from typing import Any

from storage import commands, journal, servers


def server(row: servers.Server) -> dict[str, Any]:
    spec = row.spec
    return {
        "id": str(row.id),
        "name": row.name,
        "state": row.state,
        "desired_state": row.desired_state,
        "node": row.node,
        "vmid": row.vmid,
        "ip": None if row.ip is None else str(row.ip),
        "game_port": row.game_port,
        "generation": row.generation,
        "last_error": row.last_error,
        "minecraft_version": spec.get("minecraft_version"),
        "fabric": spec.get("fabric"),
        "resources": spec.get("resources"),
        "mods": [mod["name"] for mod in spec.get("mods", [])],
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "deleted_at": None if row.deleted_at is None else row.deleted_at.isoformat(),
    }


def event(entry: journal.Entry) -> dict[str, Any]:
    return {
        "server_id": str(entry.server_id),
        "seq": entry.seq,
        "from": entry.from_state,
        "to": entry.to_state,
        "event": entry.event,
        "command_id": None if entry.command_id is None else str(entry.command_id),
        "detail": entry.detail,
        "at": entry.at.isoformat(),
    }


def command(row: commands.Command) -> dict[str, Any]:
    return {"id": str(row.id), "kind": row.kind, "status": row.status, "result": row.result}
