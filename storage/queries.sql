-- Named queries. Each block: `-- name --`, a one-line description listing its parameters, the statement.
-- storage/queries.py is the only module that knows these names.

-- insert_server --
-- Insert a server and return it. $1 id, $2 tenant, $3 name, $4 spec (jsonb), $5 state, $6 desired_state
INSERT INTO servers (id, tenant, name, spec, state, desired_state)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- get_server --
-- One server by id, live or deleted. $1 id
SELECT * FROM servers WHERE id = $1;

-- get_tenant_server --
-- One server by id, only if it belongs to the tenant. $1 id, $2 tenant
SELECT * FROM servers WHERE id = $1 AND tenant = $2;

-- transition_server --
-- Compare-and-set a server's state on (id, version); no row means a stale write. $1 id, $2 expected version, $3 new state, $4 last_error, $5 deleted (bool)
UPDATE servers
SET state = $3,
    version = version + 1,
    last_error = $4,
    deleted_at = CASE WHEN $5 THEN coalesce(deleted_at, now()) END
WHERE id = $1 AND version = $2
RETURNING *;

-- set_server_placement --
-- Compare-and-set where a server lives on (id, version). $1 id, $2 expected version, $3 node, $4 vmid, $5 ip, $6 game_port, $7 generation
UPDATE servers
SET node = $3, vmid = $4, ip = $5, game_port = $6, generation = $7, version = version + 1
WHERE id = $1 AND version = $2
RETURNING *;

-- set_server_desired_state --
-- Compare-and-set what a server should converge to on (id, version). $1 id, $2 expected version, $3 desired_state
UPDATE servers SET desired_state = $3, version = version + 1
WHERE id = $1 AND version = $2
RETURNING *;

-- append_journal --
-- Append the next journal entry of a server (seq follows the newest); returns it. $1 server_id, $2 from_state, $3 to_state, $4 event, $5 command_id, $6 epoch, $7 detail
INSERT INTO journal (server_id, seq, from_state, to_state, event, command_id, epoch, detail)
SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6, $7 FROM journal WHERE server_id = $1
RETURNING *;

-- list_journal --
-- A server's journal entries after a seq, oldest first. $1 server_id, $2 after seq, $3 limit
SELECT * FROM journal WHERE server_id = $1 AND seq > $2 ORDER BY seq LIMIT $3;

-- reserve_vmid --
-- Record a live reservation of a VMID for a server. $1 vmid, $2 server_id
INSERT INTO vmid_allocations (vmid, server_id, status) VALUES ($1, $2, 'reserved') RETURNING *;

-- mark_vmid_foreign --
-- Record a VMID found in Proxmox that is not ours, so it is never allocated. $1 vmid
INSERT INTO vmid_allocations (vmid, server_id, status) VALUES ($1, NULL, 'foreign') RETURNING *;

-- free_vmid --
-- The lowest VMID in a range with no live allocation, or NULL. $1 low, $2 high
-- The lowest free value is the range's first or one past a live one, so only those are tried: the
-- cost follows the allocations, not the size of the range (a sorted series of 10,000 took ~10 ms).
SELECT min(candidate) FROM (
    SELECT $1::integer AS candidate
    UNION ALL
    SELECT vmid + 1 FROM vmid_allocations WHERE status <> 'released' AND vmid >= $1 AND vmid < $2
) AS c
WHERE candidate <= $2
  AND NOT EXISTS (SELECT 1 FROM vmid_allocations WHERE vmid = candidate AND status <> 'released');

-- reserve_ip --
-- Record a live reservation of an IP address for a server. $1 ip, $2 server_id
INSERT INTO ip_allocations (ip, server_id, status) VALUES ($1, $2, 'reserved') RETURNING *;

-- reserve_port --
-- Record a live reservation of a game port on a node for a server. $1 node, $2 port, $3 server_id
INSERT INTO port_allocations (node, port, server_id, status) VALUES ($1, $2, $3, 'reserved') RETURNING *;

-- set_allocations_status --
-- Move every live allocation of a server from one status to another; returns the count per kind. $1 server_id, $2 from statuses (text[]), $3 to status
WITH vmids AS (
    UPDATE vmid_allocations SET status = $3, updated_at = now()
    WHERE server_id = $1 AND status = ANY ($2::text[]) RETURNING 1
), ips AS (
    UPDATE ip_allocations SET status = $3, updated_at = now()
    WHERE server_id = $1 AND status = ANY ($2::text[]) RETURNING 1
), ports AS (
    UPDATE port_allocations SET status = $3, updated_at = now()
    WHERE server_id = $1 AND status = ANY ($2::text[]) RETURNING 1
)
SELECT (SELECT count(*) FROM vmids) AS vmids, (SELECT count(*) FROM ips) AS ips,
       (SELECT count(*) FROM ports) AS ports;

-- insert_idempotency_key --
-- Claim a (tenant, key) for a request; fails if the key is taken. $1 tenant, $2 key, $3 fingerprint, $4 expires_at
INSERT INTO idempotency_keys (tenant, key, fingerprint, expires_at)
VALUES ($1, $2, $3, $4)
RETURNING *;

-- get_idempotency_key --
-- The record of a (tenant, key), expired or not. $1 tenant, $2 key
SELECT * FROM idempotency_keys WHERE tenant = $1 AND key = $2;

-- complete_idempotency_key --
-- Store the first answer to a request, once. $1 tenant, $2 key, $3 server_id, $4 response_status, $5 response_body
UPDATE idempotency_keys
SET server_id = $3, response_status = $4, response_body = $5
WHERE tenant = $1 AND key = $2 AND response_status IS NULL
RETURNING *;

-- delete_expired_idempotency_keys --
-- Forget keys whose expiry has passed; returns how many. $1 now
WITH gone AS (DELETE FROM idempotency_keys WHERE expires_at <= $1 RETURNING 1)
SELECT count(*) FROM gone;

-- enqueue_command --
-- Put a command in a server's inbox. $1 id, $2 server_id, $3 kind, $4 payload (jsonb)
INSERT INTO commands (id, server_id, kind, payload) VALUES ($1, $2, $3, $4) RETURNING *;

-- get_command --
-- One command by id. $1 id
SELECT * FROM commands WHERE id = $1;

-- settle_command --
-- Record a command's outcome if it is still in the expected status. $1 id, $2 expected status, $3 new status, $4 result (jsonb)
UPDATE commands SET status = $3, result = $4
WHERE id = $1 AND status = $2
RETURNING *;

-- insert_token --
-- Store a new API token's hash. $1 id, $2 token_hash, $3 tenant, $4 role, $5 label
INSERT INTO api_tokens (id, token_hash, tenant, role, label) VALUES ($1, $2, $3, $4, $5) RETURNING *;

-- get_token_by_hash --
-- The live (not revoked) token with this hash. $1 token_hash
SELECT * FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL;

-- revoke_token --
-- Revoke a token by id; returns it if it was live. $1 id
UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING *;

-- live_tokens --
-- Every live (not revoked) token, oldest first, for an operator choosing which to revoke. No parameters
SELECT * FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at, id;

-- register_replica --
-- Record (or refresh) a live replica. $1 id, $2 host, $3 pid, $4 http_port
INSERT INTO replicas (id, host, pid, http_port) VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, http_port = excluded.http_port,
    heartbeat_at = now();

-- heartbeat --
-- Refresh a replica's heartbeat; no row means it was presumed dead and removed. $1 id
UPDATE replicas SET heartbeat_at = now() WHERE id = $1 RETURNING heartbeat_at;

-- live_replicas --
-- Replicas with a fresh heartbeat whose lease connection is still open. $1 lease timeout (interval), $2 lease application_name prefix
SELECT r.id FROM replicas r
WHERE r.heartbeat_at > now() - $1::interval
  AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = $2 || r.id::text)
ORDER BY r.id;

-- stale_replicas --
-- Other replicas whose heartbeat is older than the lease timeout. $1 lease timeout (interval), $2 own id
SELECT id FROM replicas WHERE heartbeat_at <= now() - $1::interval AND id <> $2;

-- terminate_replica_backends --
-- Close every database session of a replica: those named for it and those holding its shard locks. $1 replica id, $2 lock namespace
SELECT count(pg_terminate_backend(pid)) FROM (
    SELECT a.pid FROM pg_stat_activity a
    WHERE a.application_name LIKE 'zlh-%:' || $1::uuid::text AND a.pid <> pg_backend_pid()
    UNION
    SELECT k.pid FROM pg_locks k JOIN shard_leases l ON l.shard = k.objid::integer
    WHERE k.locktype = 'advisory' AND k.classid::bigint = $2::bigint AND k.objsubid = 2 AND k.granted
      AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.owner = $1::uuid AND k.pid <> pg_backend_pid()
) doomed;

-- delete_replica --
-- Forget a replica; its leases keep their epochs and lose their owner. $1 id
DELETE FROM replicas WHERE id = $1;

-- ensure_shards --
-- Create the lease rows of shards 0 .. count-1 that do not exist yet. $1 shard count
INSERT INTO shard_leases (shard) SELECT generate_series(0, $1::integer - 1) ON CONFLICT (shard) DO NOTHING;

-- lease_candidates --
-- Shards below the count not owned by any of the given live replicas, free ones first. $1 shard count, $2 live replica ids (uuid[])
SELECT shard FROM shard_leases
WHERE shard < $1 AND (owner IS NULL OR owner <> ALL ($2::uuid[]))
ORDER BY owner IS NOT NULL, shard;

-- try_lock_shard --
-- Take a shard's session advisory lock without waiting; true if taken. $1 lock namespace, $2 shard
SELECT pg_try_advisory_lock($1::integer, $2::integer);

-- unlock_shard --
-- Release a shard's session advisory lock. $1 lock namespace, $2 shard
SELECT pg_advisory_unlock($1::integer, $2::integer);

-- acquire_lease --
-- Take a shard's lease: bump its epoch (the fencing token) and record the owner. $1 shard, $2 owner
UPDATE shard_leases SET epoch = epoch + 1, owner = $2, acquired_at = now() WHERE shard = $1 RETURNING epoch;

-- release_lease --
-- Give a shard's lease up (its epoch stays; the next owner bumps it). $1 shard, $2 owner
UPDATE shard_leases SET owner = NULL, acquired_at = NULL WHERE shard = $1 AND owner = $2;

-- check_lease --
-- The epoch of a shard's lease if the owner holds it and its heartbeat is fresh, locked against a takeover until commit. $1 shard, $2 owner, $3 lease timeout (interval)
SELECT l.epoch FROM shard_leases l
WHERE l.shard = $1 AND l.owner = $2
  AND EXISTS (SELECT 1 FROM replicas r WHERE r.id = $2 AND r.heartbeat_at > now() - $3::interval)
FOR SHARE OF l;

-- fence_replica_leases --
-- Take every lease from an evicted replica, with new epochs, so nothing it sends later can pass the fence. $1 replica id
UPDATE shard_leases SET owner = NULL, acquired_at = NULL, epoch = epoch + 1 WHERE owner = $1;

-- list_leases --
-- Every shard lease with its owner. No parameters
SELECT shard, epoch, owner, acquired_at FROM shard_leases ORDER BY shard;

-- servers_needing_attention --
-- Servers of the given shards that have queued or accepted commands, or are not at rest. $1 shard count, $2 shards (integer[]), $3 rest states (text[])
SELECT s.id FROM servers s
WHERE zlh_shard(s.id, $1) = ANY ($2::integer[])
  AND (s.state <> ALL ($3::text[])
       OR EXISTS (SELECT 1 FROM commands c WHERE c.server_id = s.id AND c.status IN ('queued', 'accepted')))
ORDER BY s.id;

-- queued_commands --
-- A server's queued commands in arrival order, locked for settling. $1 server_id
SELECT * FROM commands WHERE server_id = $1 AND status = 'queued' ORDER BY position FOR UPDATE;

-- accepted_commands --
-- A server's accepted, unfinished commands. $1 server_id
SELECT * FROM commands WHERE server_id = $1 AND status = 'accepted' ORDER BY position FOR UPDATE;

-- newest_journal_entry --
-- A server's newest journal entry: how and when it entered its current state. $1 server_id
SELECT * FROM journal WHERE server_id = $1 ORDER BY seq DESC LIMIT 1;

-- set_server_last_error --
-- Compare-and-set a server's last error without changing its state. $1 id, $2 expected version, $3 last_error
UPDATE servers SET last_error = $3, version = version + 1
WHERE id = $1 AND version = $2
RETURNING *;

-- lock_allocations --
-- Serialize allocation among concurrent creates until the transaction ends. $1 lock key
SELECT pg_advisory_xact_lock($1::bigint);

-- free_ip --
-- The lowest host address of a subnet (skipping the given ones) with no live allocation, or NULL. $1 first address (inet), $2 number of candidates, $3 excluded addresses (inet[])
-- As free_vmid: the first address, or one past a live or excluded one (a /16 as a sorted series
-- took ~40 ms, inside the allocation lock every create holds).
SELECT min(candidate) AS ip FROM (
    SELECT $1::inet AS candidate
    UNION ALL
    SELECT ip + 1 FROM ip_allocations
    WHERE status <> 'released' AND ip >= $1::inet AND ip < $1::inet + ($2::bigint - 1)
    UNION ALL
    SELECT x + 1 FROM unnest($3::inet[]) AS x WHERE x >= $1::inet AND x < $1::inet + ($2::bigint - 1)
) AS c
WHERE NOT (candidate = ANY ($3::inet[]))
  AND NOT EXISTS (SELECT 1 FROM ip_allocations WHERE ip = candidate AND status <> 'released');

-- free_port --
-- The lowest port of a range with no live allocation on the node, or NULL. $1 node, $2 low, $3 high
-- As free_vmid: the range's first port, or one past a live one on the node.
SELECT min(candidate) FROM (
    SELECT $2::integer AS candidate
    UNION ALL
    SELECT port + 1 FROM port_allocations
    WHERE node = $1 AND status <> 'released' AND port >= $2 AND port < $3
) AS c
WHERE candidate <= $3
  AND NOT EXISTS (
    SELECT 1 FROM port_allocations WHERE node = $1 AND port = candidate AND status <> 'released'
  );

-- vmid_to_foreign --
-- Hand a server's live VMID over to 'foreign' (Proxmox holds it for someone else). $1 server_id, $2 vmid
UPDATE vmid_allocations SET status = 'foreign', server_id = NULL, updated_at = now()
WHERE server_id = $1 AND vmid = $2 AND status IN ('reserved', 'in_use')
RETURNING *;

-- get_launcher --
-- The pinned launcher of a (Minecraft, loader, installer) triple. $1 minecraft_version, $2 loader_version, $3 installer_version
SELECT * FROM launchers WHERE minecraft_version = $1 AND loader_version = $2 AND installer_version = $3;

-- pin_launcher --
-- Pin (or re-pin) the launcher of a triple. $1 minecraft_version, $2 loader_version, $3 installer_version, $4 url, $5 sha256, $6 size
INSERT INTO launchers (minecraft_version, loader_version, installer_version, url, sha256, size)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (minecraft_version, loader_version, installer_version)
DO UPDATE SET url = excluded.url, sha256 = excluded.sha256, size = excluded.size, pinned_at = now()
RETURNING *;

-- list_launchers --
-- Every pinned launcher. No parameters
SELECT * FROM launchers ORDER BY minecraft_version, loader_version, installer_version;

-- issue_agent_token --
-- Store (or replace) the callback token of a server's generation. $1 server_id, $2 generation, $3 token_hash
INSERT INTO agent_tokens (server_id, generation, token_hash) VALUES ($1, $2, $3)
ON CONFLICT (server_id, generation)
DO UPDATE SET token_hash = excluded.token_hash, issued_at = now(), revoked_at = NULL
RETURNING *;

-- find_agent_token --
-- The live agent token with this hash. $1 token_hash
SELECT * FROM agent_tokens WHERE token_hash = $1 AND revoked_at IS NULL;

-- revoke_agent_tokens --
-- Revoke every agent token of a server. $1 server_id
UPDATE agent_tokens SET revoked_at = now() WHERE server_id = $1 AND revoked_at IS NULL;

-- record_agent_report --
-- Keep a report if it is newer than the stored one for the same or an older generation; no row means stale. $1 server_id, $2 generation, $3 seq, $4 state, $5 manifest_sha256, $6 detail
INSERT INTO agent_reports AS r (server_id, generation, seq, state, manifest_sha256, detail)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (server_id) DO UPDATE
SET generation = excluded.generation, seq = excluded.seq, state = excluded.state,
    manifest_sha256 = excluded.manifest_sha256, detail = excluded.detail, received_at = now()
WHERE r.generation < excluded.generation OR (r.generation = excluded.generation AND r.seq < excluded.seq)
RETURNING *;

-- get_agent_report --
-- The newest accepted agent report of a server. $1 server_id
SELECT * FROM agent_reports WHERE server_id = $1;

-- pending_memory_by_node --
-- Memory promised to live servers whose containers are not yet running, per node. No parameters
SELECT node, sum((spec -> 'resources' ->> 'memory_mb')::integer) AS memory_mb FROM servers
WHERE node IS NOT NULL AND deleted_at IS NULL AND (state = 'requested' OR state LIKE 'provisioning.%')
GROUP BY node;

-- forget_idempotency_key --
-- Delete one expired key so it can be claimed again. $1 tenant, $2 key
DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND expires_at <= now() RETURNING key;

-- list_servers --
-- A page of servers, oldest first, after a (created_at, id) cursor; NULL tenant means all tenants and NULL state means any. $1 tenant, $2 state or state prefix ending in '.', $3 cursor created_at, $4 cursor id, $5 limit
SELECT * FROM servers
WHERE ($1::text IS NULL OR tenant = $1)
  AND ($2::text IS NULL OR state = $2 OR (right($2, 1) = '.' AND starts_with(state, $2)))
  AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))
ORDER BY created_at, id
LIMIT $5;

-- list_replicas --
-- Every registered replica with its heartbeat age in seconds. No parameters
SELECT id, host, pid, http_port, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::double precision AS heartbeat_age
FROM replicas ORDER BY started_at, id;

-- actor_summaries --
-- State and last transition of the given servers. $1 server ids (uuid[])
SELECT s.id, s.tenant, s.name, s.state, s.desired_state, s.generation, j.event AS last_event, j.at AS last_at
FROM servers s
LEFT JOIN LATERAL (SELECT event, at FROM journal WHERE server_id = s.id ORDER BY seq DESC LIMIT 1) j ON true
WHERE s.id = ANY ($1::uuid[]);

-- journal_horizon --
-- The newest entry in the stream's order that no running transaction can still precede (none when empty). No parameters
SELECT txid, position FROM journal
WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid DESC, position DESC
LIMIT 1;

-- journal_committed_after --
-- Every tenant's entries after a cursor in the stream's order, with the server's tenant; held marks entries not yet final (they sort after every final one). $1 cursor txid, $2 cursor position, $3 limit
SELECT j.*, s.tenant, j.txid >= pg_snapshot_xmin(pg_current_snapshot()) AS held
FROM journal j JOIN servers s ON s.id = j.server_id
WHERE (j.txid, j.position) > ($1::xid8, $2::bigint)
ORDER BY j.txid, j.position
LIMIT $3;

-- journal_replay --
-- A tenant's entries (NULL: every tenant's) after one cursor up to a final one, in the stream's order. $1 after txid, $2 after position, $3 up-to txid, $4 up-to position, $5 tenant, $6 limit
SELECT j.* FROM journal j JOIN servers s ON s.id = j.server_id
WHERE (j.txid, j.position) > ($1::xid8, $2::bigint)
  AND (j.txid, j.position) <= ($3::xid8, $4::bigint)
  AND ($5::text IS NULL OR s.tenant = $5)
ORDER BY j.txid, j.position
LIMIT $6;

-- count_journal_events_since --
-- How many of a server's journal entries with this event are newer than a moment. $1 server_id, $2 event, $3 since (timestamptz)
SELECT count(*) FROM journal WHERE server_id = $1 AND event = $2 AND at > $3;

-- live_allocation_counts --
-- How many reserved or in-use allocations of each kind a server holds. $1 server_id
SELECT (SELECT count(*) FROM vmid_allocations WHERE server_id = $1 AND status IN ('reserved', 'in_use')) AS vmids,
       (SELECT count(*) FROM ip_allocations WHERE server_id = $1 AND status IN ('reserved', 'in_use')) AS ips,
       (SELECT count(*) FROM port_allocations WHERE server_id = $1 AND status IN ('reserved', 'in_use')) AS ports;

-- reconcile_servers --
-- The live servers of the given shards, as the reconciler compares them. $1 shard count, $2 shards (integer[])
SELECT id, state, desired_state, node, vmid, host(ip) AS ip, generation, version FROM servers
WHERE deleted_at IS NULL AND zlh_shard(id, $1) = ANY ($2::integer[])
ORDER BY id;

-- reconcile_servers_by_id --
-- The given servers, live or deleted, as the reconciler compares them. $1 server ids (uuid[])
SELECT id, state, desired_state, node, vmid, host(ip) AS ip, generation, version FROM servers
WHERE id = ANY ($1::uuid[])
ORDER BY id;

-- live_vmids --
-- The VMIDs of a range that have a live allocation, ours or foreign. $1 low, $2 high
SELECT vmid FROM vmid_allocations WHERE status <> 'released' AND vmid BETWEEN $1 AND $2 ORDER BY vmid;

-- has_queued_command --
-- Whether a server has a queued command of this kind. $1 server_id, $2 kind
SELECT EXISTS (SELECT 1 FROM commands WHERE server_id = $1 AND kind = $2 AND status = 'queued');

-- insert_reconcile_report --
-- Record one reconciliation pass. $1 replica_id, $2 trigger, $3 shards (integer[]), $4 started_at, $5 finished_at, $6 drifts (jsonb array), $7 error
INSERT INTO reconcile_reports (replica_id, trigger, shards, started_at, finished_at, drifts, error)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *;

-- latest_reconcile_reports --
-- The newest reconciliation report of every registered replica. No parameters
SELECT DISTINCT ON (r.replica_id) r.* FROM reconcile_reports r
WHERE r.replica_id IN (SELECT id FROM replicas)
ORDER BY r.replica_id, r.finished_at DESC, r.id DESC;

-- prune_reconcile_reports --
-- Forget reports that found nothing once older than $1, and every report once older than $2. $1 quiet age (interval), $2 any age (interval)
DELETE FROM reconcile_reports
WHERE finished_at < now() - $2::interval OR (drifts = '[]'::jsonb AND finished_at < now() - $1::interval);
