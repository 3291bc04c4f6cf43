"""The JSON Schemas of the API's bodies, for the OpenAPI document (`openapi.py`).

Each schema is what the handlers produce or accept, spelled from the same constants: states from
the lifecycle chart, the create body's patterns and bounds from `servers.requests` and the
service's settings. Objects are closed (`additionalProperties: false`) both ways: a response with
a field the document does not name fails the contract test, and a request with one is a 400.
"""

from __future__ import annotations

from typing import Any

from statemachines import lifecycle
from zlh_actors import config
from zlh_actors.servers import requests

Schema = dict[str, Any]
UUID: Schema = {"type": "string", "format": "uuid"}
TIME: Schema = {"type": "string", "format": "date-time"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def closed(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    """A closed object: every property required unless named optional, nothing else allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def components(settings: config.Settings) -> dict[str, Schema]:
    """`components.schemas` of the document."""
    state = {"type": "string", "enum": list(lifecycle.STATES)}
    string = {"type": "string"}
    integer = {"type": "integer"}
    command = closed(
        {
            "id": UUID,
            "kind": string,
            "status": {"type": "string", "enum": ["queued", "accepted", "rejected", "done"]},
            "result": {"description": "the actor's answer (null while queued)"},
        }
    )
    server = {
        "id": UUID,
        "name": string,
        "state": state,
        "desired_state": {"type": "string", "enum": ["running", "stopped", "deleted"]},
        "node": nullable(string),
        "vmid": nullable(integer),
        "ip": nullable(string),
        "game_port": nullable(integer),
        "generation": {"type": "integer", "minimum": 1},
        "last_error": nullable(string),
        "minecraft_version": string,
        "fabric": closed({"loader": string, "installer": string}),
        "resources": closed({"memory_mb": integer, "cores": integer, "disk_gb": integer}),
        "mods": {"type": "array", "items": string, "description": "mod names"},
        "created_at": TIME,
        "updated_at": TIME,
        "deleted_at": nullable(TIME),
    }
    unreachable = {
        "type": "array",
        "items": closed({"replica": string, "error": string}),
        "description": "replicas that did not answer",
    }
    report = closed(
        {
            "id": nullable(integer),
            "replica": UUID,
            "trigger": {"type": "string", "enum": ["periodic", "on_demand"]},
            "shards": {"type": "array", "items": integer},
            "started_at": TIME,
            "finished_at": TIME,
            "by_kind": {"type": "object", "additionalProperties": integer},
            "drifts": {
                "type": "array",
                "items": closed(
                    {
                        "kind": string,
                        "server_id": nullable(string),
                        "vmid": nullable(integer),
                        "node": nullable(string),
                        "generation": nullable(integer),
                        "reason": string,
                        "action": string,
                        "command_id": nullable(string),
                    }
                ),
            },
            "error": nullable(string),
        }
    )
    actor = closed(
        {
            "server_id": UUID,
            "replica": UUID,
            "shard": integer,
            "epoch": nullable(integer),
            "mailbox_depth": integer,
            "restarts": integer,
            "tenant": string,
            "name": string,
            "state": state,
            "desired_state": string,
            "last_transition": closed({"event": nullable(string), "at": nullable(TIME)}),
        },
        optional=("tenant", "name", "state", "desired_state", "last_transition"),
    )
    return {
        "Problem": _problem(),
        "CreateServer": _create_body(settings),
        "Server": closed(server),
        "ServerAccepted": closed({**server, "command": command}),
        "ServerDeleting": closed({**server, "command": command}, optional=("command",)),
        "ServerList": closed(
            {"items": {"type": "array", "items": ref("Server")}, "next_cursor": nullable(string)}
        ),
        "Command": command,
        "EventList": closed(
            {
                "items": {
                    "type": "array",
                    "items": closed(
                        {
                            "server_id": UUID,
                            "seq": {"type": "integer", "minimum": 1},
                            "from": {"type": ["string", "null"], "enum": [*lifecycle.STATES, None]},
                            "to": state,
                            "event": string,
                            "command_id": nullable(UUID),
                            "detail": nullable(string),
                            "at": TIME,
                        }
                    ),
                }
            }
        ),
        "Actors": closed(
            {"actors": {"type": "array", "items": actor}, "unreachable": unreachable},
            optional=("unreachable",),
        ),
        "Shards": closed(
            {
                "shards": {
                    "type": "array",
                    "items": closed(
                        {
                            "shard": integer,
                            "epoch": integer,
                            "owner": nullable(UUID),
                            "acquired_at": nullable(TIME),
                        }
                    ),
                },
                "replicas": {
                    "type": "array",
                    "items": closed(
                        {
                            "id": UUID,
                            "host": string,
                            "pid": integer,
                            "http_port": nullable(integer),
                            "started_at": TIME,
                            "heartbeat_at": TIME,
                            "live": {"type": "boolean"},
                            "owned_shards": integer,
                        }
                    ),
                },
                "at": TIME,
            }
        ),
        "Report": report,
        "Reports": closed({"reports": {"type": "array", "items": report}, "unreachable": unreachable}),
    }


def _problem() -> Schema:
    string = {"type": "string"}
    return closed(
        {
            "type": {**string, "description": "`about:blank` or `/problems/<slug>`"},
            "title": string,
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "fields": {
                "type": "object",
                "additionalProperties": string,
                "description": "each invalid field (dotted path, `` for the whole body) and what is wrong",
            },
            "state": string,
            "allowed": {"type": "array", "items": string},
            "key": string,
            "generation": {"type": "integer"},
            "current": {"type": "integer"},
            "server_id": string,
            "reason": string,
        },
        optional=("fields", "state", "allowed", "key", "generation", "current", "server_id", "reason"),
    )


def _create_body(settings: config.Settings) -> Schema:
    version = {"type": "string", "pattern": requests.VERSION.pattern}
    low, high = settings.memory_mb
    url = requests.url_pattern(settings.allow_http_urls)
    property_value = {
        "oneOf": [
            {"type": "boolean"},
            {"type": "integer", "minimum": requests.MIN_JSON_INT, "maximum": requests.MAX_JSON_INT},
            {
                "type": "string",
                "maxLength": requests.MAX_PROPERTY,
                "pattern": requests.PROPERTY_VALUE.pattern,
            },
        ]
    }
    mod = closed(
        {
            "name": {"type": "string", "pattern": requests.MOD_NAME.pattern},
            "url": {"type": "string", "maxLength": requests.MAX_URL, "pattern": url.pattern},
            "sha512": {"type": "string", "pattern": requests.SHA512.pattern},
            "size": {"type": "integer", "minimum": 1, "maximum": requests.MAX_MOD_BYTES},
        }
    )
    body = closed(
        {
            "name": {"type": "string", "pattern": requests.NAME.pattern, "description": "a DNS label"},
            "minecraft_version": version,
            "fabric": closed({"loader": version, "installer": version}),
            "mods": {
                "type": "array",
                "items": mod,
                "maxItems": requests.MAX_MODS,
                "description": "each mod name at most once",
            },
            "properties": {
                "type": "object",
                "properties": {key: property_value for key in sorted(requests.PROPERTIES)},
                "additionalProperties": False,
                "description": "server.properties keys a tenant may set",
            },
            "resources": closed(
                {
                    "memory_mb": {
                        "type": "integer",
                        "minimum": low,
                        "maximum": high,
                        "default": requests.default_memory(settings),
                    },
                    "cores": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": settings.max_cores,
                        "default": requests.DEFAULT_CORES,
                    },
                    "disk_gb": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": settings.max_disk_gb,
                        "default": requests.DEFAULT_DISK_GB,
                    },
                },
                optional=("memory_mb", "cores", "disk_gb"),
            ),
        },
        optional=("mods", "properties", "resources"),
    )
    body["description"] = (
        "Exact versions only, and a Fabric launcher must be pinned for the triple (else 400). "
        "Unknown fields are errors."
    )
    return body
