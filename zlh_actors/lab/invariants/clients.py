"""Invariants 1 and 7: what the clients were answered and shown.

1. One server per (tenant, idempotency key), and every replayed create got the first answer. From
   the database alone: a completed key names the server its stored answer names, of its own tenant;
   no two keys name one server; every server is named by exactly one key (a server no key names
   was created twice, or outside the keyed path); no key is left claimed without an answer (claim
   and answer commit together). From the log: every 2xx answer under one key is the stored first
   answer, status and body, so every one of them names the same server; and no replay under a key
   with a stored 2xx answer was refused with a 4xx other than 429 (a 5xx or no answer is allowed).
   Assumes no key expired during the run (`ZLH_IDEMPOTENCY_TTL`): an expired key may legitimately
   create a second server.
7. Every server a tenant saw (in an answer, a list, an event, the stream; and every server a create
   answered it with) is a server of that tenant.
"""

from __future__ import annotations

import collections
import uuid

from zlh_actors.lab.invariants import model


def check_keys(database: model.Database, log: model.ClientLog | None) -> list[model.Violation]:
    servers = database.by_id()
    found: list[str] = []
    keys = {(key.tenant, key.key): key for key in database.keys}
    naming: dict[uuid.UUID, list[model.Key]] = collections.defaultdict(list)
    for key in sorted(database.keys, key=lambda key: (key.tenant, key.key)):
        name = f"key {key.key!r} of tenant {key.tenant}"
        if key.response_status is None:
            found.append(f"{name} was claimed but never answered")
            continue
        if not 200 <= key.response_status < 300:
            continue
        answered = model.decoded(key.response_body)
        stored_id = answered.get("id") if isinstance(answered, dict) else None
        if key.server_id is None or str(key.server_id) != stored_id:
            found.append(f"{name} names server {key.server_id}, its stored answer {stored_id}")
        if key.server_id is None:
            continue
        naming[key.server_id].append(key)
        server = servers.get(key.server_id)
        if server is None:
            found.append(f"{name} names server {key.server_id}, which the database does not know")
        elif server.tenant != key.tenant:
            found.append(f"{name} names server {server.id} of tenant {server.tenant}")
    for server in sorted(servers.values(), key=lambda server: str(server.id)):
        named = naming.get(server.id, [])
        if not named:
            found.append(
                f"server {server.id} ({server.tenant}/{server.name}) is named by no idempotency key: "
                "created twice under one key, or outside the keyed path"
            )
        elif len(named) > 1:
            found.append(
                f"server {server.id} is named by {len(named)} keys: {', '.join(k.key for k in named)}"
            )
    if log is not None:
        found.extend(_replays(keys, log))
        found.extend(_refused_replays(keys, log))
    return [model.Violation(1, detail) for detail in found]


def _replays(keys: dict[tuple[str, str], model.Key], log: model.ClientLog) -> list[str]:
    answers: dict[tuple[str, str], list[model.CreateAnswer]] = collections.defaultdict(list)
    for answer in log.answers:
        if answer.server_id is not None:
            answers[answer.tenant, answer.key].append(answer)
    found = []
    for (tenant, key), got in sorted(answers.items()):
        name = f"key {key!r} of tenant {tenant}"
        ids = sorted({answer.server_id for answer in got if answer.server_id is not None})
        if len(ids) > 1:
            found.append(f"{name} was answered with {len(ids)} servers: {', '.join(ids)}")
        record = keys.get((tenant, key))
        if record is None:
            found.append(f"{name} was answered with server {ids[0]}, but the database has no such key")
            continue
        first = model.decoded(record.response_body)
        differing = [a for a in got if (a.status, dict(a.body or {})) != (record.response_status, first)]
        if differing:
            fields = sorted(
                {
                    field
                    for answer in differing
                    for field in set(answer.body or {}) | set(first or {})
                    if (answer.body or {}).get(field) != (first or {}).get(field)
                }
            )
            found.append(
                f"{name}: {len(differing)} of {len(got)} answers differ from the first answer "
                f"(fields {', '.join(fields) or 'none'}; status {record.response_status})"
            )
    return found


def _refused_replays(keys: dict[tuple[str, str], model.Key], log: model.ClientLog) -> list[str]:
    """Replays refused with a 4xx (409, 422, ...) under a key whose stored first answer is a 2xx.

    A replay of an answered key must get that answer back; a refusal means the service lost or
    misread the record. 429 (shed before the key was looked at), 5xx and no answer (the service
    could not answer) are allowed: the client may retry.
    """
    refused: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for answer in log.answers:
        if answer.status is not None and 400 <= answer.status < 500 and answer.status != 429:
            refused[answer.tenant, answer.key].append(answer.status)
    found = []
    for (tenant, key), statuses in sorted(refused.items()):
        record = keys.get((tenant, key))
        if record is None or record.response_status is None or not 200 <= record.response_status < 300:
            continue
        found.append(
            f"key {key!r} of tenant {tenant}: {len(statuses)} replays refused "
            f"({', '.join(map(str, sorted(statuses)))}), though its first answer is {record.response_status}"
        )
    return found


def check_tenants(database: model.Database, log: model.ClientLog | None) -> list[model.Violation]:
    if log is None:
        return []
    servers = {str(server.id): server for server in database.servers}
    found = []
    seen = set()
    for sighting in _sightings(log):
        if sighting in seen:
            continue
        seen.add(sighting)
        server = servers.get(sighting.server_id)
        if server is None:
            found.append(
                f"tenant {sighting.tenant} saw server {sighting.server_id} ({sighting.source}), "
                "which the database does not know"
            )
        elif server.tenant != sighting.tenant:
            found.append(
                f"tenant {sighting.tenant} saw server {server.id} of tenant {server.tenant} "
                f"({sighting.source})"
            )
    return [model.Violation(7, detail) for detail in found]


def _sightings(log: model.ClientLog) -> list[model.Sighting]:
    created = [
        model.Sighting(answer.tenant, answer.server_id, "create")
        for answer in log.answers
        if answer.server_id is not None
    ]
    return created + log.sightings


def checked_keys(database: model.Database, log: model.ClientLog | None) -> int:
    """(tenant, key) pairs of the database and of the log, and servers."""
    pairs = {(key.tenant, key.key) for key in database.keys}
    if log is not None:
        pairs |= {(answer.tenant, answer.key) for answer in log.answers}
    return len(pairs) + len(database.servers)


def checked_tenants(log: model.ClientLog | None) -> int:
    return 0 if log is None else len(set(_sightings(log)))
