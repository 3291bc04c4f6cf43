-- Named queries. Each block: `-- name --`, a one-line description listing its parameters, the statement.
-- storage/queries.py is the only module that knows these names.

-- insert_server --
-- Insert a server and return it. $1 id, $2 tenant, $3 name, $4 spec (jsonb), $5 state, $6 desired_state
INSERT INTO servers (id, tenant, name, spec, state, desired_state)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- check_lease_and_get_server --
-- check_lease and get_server in one statement: always one row, lease_epoch NULL when the lease is not held, the server's columns NULL when it does not exist. $1 shard, $2 owner, $3 lease timeout (interval), $4 server id, $5 journal_notify for the transaction ('on'; 'off' when the caller announces its journal entries itself)
SELECT lease.epoch AS lease_epoch, s.*
FROM (
    SELECT (
        SELECT l.epoch FROM shard_leases l
        WHERE l.shard = $1 AND l.owner = $2
          AND EXISTS (SELECT 1 FROM replicas r WHERE r.id = $2 AND r.heartbeat_at > now() - $3::interval)
        FOR SHARE OF l
    ) AS epoch
) lease
CROSS JOIN (SELECT set_config('zlh.journal_notify', $5, true)) AS journal_notify
LEFT JOIN servers s ON s.id = $4;

-- get_server --
-- One server by id, live or deleted. $1 id
SELECT * FROM servers WHERE id = $1;

-- get_tenant_server --
-- One server by id, only if it belongs to the tenant. $1 id, $2 tenant
SELECT * FROM servers WHERE id = $1 AND tenant = $2;

-- transition_server --
-- Compare-and-set a server's state on (id, version) and append its journal entry, in one statement; no row means a stale write (and nothing was written). $1 id, $2 expected version, $3 new state, $4 last_error, $5 deleted (bool), $6 from_state, $7 event, $8 command_id, $9 epoch, $10 detail
-- The row is locked first and only at the expected version: a concurrent writer makes this one wait,
-- then find the version moved on and write nothing (as a plain compare-and-set would), instead of
-- reaching the journal's continuity check. The journal entry goes in before the row changes (the
-- UPDATE waits for it), as the journal's triggers expect to lock and read the row as it was.
WITH locked AS (
    SELECT id FROM servers WHERE id = $1 AND version = $2 FOR UPDATE
), entry AS (
    INSERT INTO journal (server_id, seq, from_state, to_state, event, command_id, epoch, detail)
    SELECT $1, coalesce(max(seq), 0) + 1, $6, $3, $7, $8, $9, $10 FROM journal
    WHERE server_id = $1
    HAVING EXISTS (SELECT 1 FROM locked)
    RETURNING seq
)
UPDATE servers
SET state = $3,
    version = version + 1,
    last_error = $4,
    deleted_at = CASE WHEN $5 THEN coalesce(deleted_at, now()) END
WHERE id = $1 AND version = $2 AND EXISTS (SELECT 1 FROM entry)
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

-- prune_settled_commands --
-- Forget at most $2 commands settled (done or rejected) longer ago than $1, skipping any another replica is forgetting at the same time; returns how many. $1 age (interval), $2 limit
-- ARRAY(...) runs the subquery once, through commands_settled, and deletes by primary key (an IN
-- could be planned as a join that scans the table, and re-run its LIMIT).
WITH gone AS (
    DELETE FROM commands WHERE id = ANY (ARRAY(
        SELECT id FROM commands
        WHERE status IN ('done', 'rejected') AND updated_at < now() - $1::interval
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING 1
)
SELECT count(*) FROM gone;

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
-- Revoke a token by id and NOTIFY the channel with its hash (hex) in the same statement; returns it if it was live. $1 id, $2 channel
WITH revoked AS (
    UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING *
)
SELECT r.* FROM revoked AS r CROSS JOIN LATERAL (SELECT pg_notify($2, encode(r.token_hash, 'hex'))) AS n;

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

-- lock_lease_candidates --
-- Take without waiting the advisory locks of up to $5 shards below the count that no live replica owns, free ones first; returns the shards locked. $1 lock namespace, $2 shard count, $3 live replica ids but our own (uuid[]), $4 shards we hold (integer[]), $5 how many
-- One statement for the whole batch. MATERIALIZED keeps the lock call out of the candidates' scan
-- (a plain subquery gets it pushed into its scan, before the sort, and every candidate is locked):
-- the locks are tried in order over the sorted candidates, and the LIMIT stops once it has enough.
WITH candidates AS MATERIALIZED (
    SELECT shard FROM shard_leases
    WHERE shard < $2 AND (owner IS NULL OR owner <> ALL ($3::uuid[])) AND shard <> ALL ($4::integer[])
    ORDER BY owner IS NOT NULL, shard
)
SELECT shard FROM candidates
WHERE pg_try_advisory_lock($1::integer, shard)
LIMIT $5;

-- unlock_shards --
-- Release the session advisory locks of shards. $1 lock namespace, $2 shards (integer[])
SELECT pg_advisory_unlock($1::integer, shard) FROM unnest($2::integer[]) AS shard;

-- take_leases --
-- Take the leases of shards whose advisory locks we hold: bump each epoch (the fencing token) under the row lock and record the owner; a row still share-locked by a write in flight is skipped (no row for it). $1 shards (integer[]), $2 owner
UPDATE shard_leases SET epoch = epoch + 1, owner = $2, acquired_at = now()
WHERE shard IN (SELECT shard FROM shard_leases WHERE shard = ANY ($1::integer[]) FOR UPDATE SKIP LOCKED)
RETURNING shard, epoch;

-- release_lease --
-- Give a shard's lease up (its epoch stays; the next owner bumps it). $1 shard, $2 owner
UPDATE shard_leases SET owner = NULL, acquired_at = NULL WHERE shard = $1 AND owner = $2;

-- check_lease --
-- The epoch of a shard's lease if the owner holds it and its heartbeat is fresh, locked against a takeover until commit. $1 shard, $2 owner, $3 lease timeout (interval), $4 journal_notify for the transaction ('on'; 'off' when the caller announces its journal entries itself: migration 0008)
SELECT l.epoch FROM shard_leases l
CROSS JOIN (SELECT set_config('zlh.journal_notify', $4, true)) AS journal_notify
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
-- Servers of the given shards that are not at rest or have queued or accepted commands. $1 shard count, $2 shards (integer[])
-- Both halves read a partial index of the few rows that can need attention (servers_unsettled,
-- commands_pending), so the cost follows the work in progress, not the number of servers: the
-- shard (an MD5) is computed for those rows only, deleted and resting servers are never read.
SELECT id FROM (
    SELECT id FROM servers WHERE NOT zlh_at_rest(state)
    UNION
    SELECT server_id FROM commands WHERE status IN ('queued', 'accepted')
) AS pending
WHERE zlh_shard(id, $1) = ANY ($2::integer[])
ORDER BY id;

-- accepted_commands --
-- A server's accepted, unfinished commands. $1 server_id
SELECT * FROM commands WHERE server_id = $1 AND status = 'accepted' ORDER BY position FOR UPDATE;

-- announce_command --
-- NOTIFY a command's owner as the enqueue trigger does, for a command whose insert announced nothing (a report). $1 server_id, $2 command id
SELECT pg_notify('zlh_commands', $1::uuid::text || ' ' || $2::uuid::text);

-- pending_commands --
-- A server's queued and accepted commands in arrival order, locked for settling: what one actor transaction applies and finishes. $1 server_id
SELECT * FROM commands WHERE server_id = $1 AND status IN ('queued', 'accepted') ORDER BY position FOR UPDATE;

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

-- revoke_agent_tokens --
-- Revoke every agent token of a server. $1 server_id
UPDATE agent_tokens SET revoked_at = now() WHERE server_id = $1 AND revoked_at IS NULL;

-- get_agent_report --
-- The newest accepted agent report of a server. $1 server_id
SELECT * FROM agent_reports WHERE server_id = $1;

-- find_agent_callback_token --
-- The live agent token with this hash, with its server's current generation. $1 token_hash
SELECT t.*, s.generation AS server_generation
FROM agent_tokens t JOIN servers s ON s.id = t.server_id
WHERE t.token_hash = $1 AND t.revoked_at IS NULL;

-- record_agent_report_command --
-- Keep a report if it is newer than the stored one for the same or an older generation and, only then, enqueue it as a `report` command, in one statement; no row means stale. $1 server_id, $2 generation, $3 seq, $4 state, $5 manifest_sha256, $6 detail, $7 command id, $8 command payload (jsonb)
WITH kept AS (
    INSERT INTO agent_reports AS r (server_id, generation, seq, state, manifest_sha256, detail)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (server_id) DO UPDATE
    SET generation = excluded.generation, seq = excluded.seq, state = excluded.state,
        manifest_sha256 = excluded.manifest_sha256, detail = excluded.detail, received_at = now()
    WHERE r.generation < excluded.generation OR (r.generation = excluded.generation AND r.seq < excluded.seq)
    RETURNING server_id
)
INSERT INTO commands (id, server_id, kind, payload)
SELECT $7, server_id, 'report', $8 FROM kept
RETURNING *;

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

-- forget_foreign_vmid --
-- Forget that a VMID holds a stranger's guest (it held our orphan, now destroyed): it can be allocated again. $1 vmid
DELETE FROM vmid_allocations WHERE vmid = $1 AND status = 'foreign' RETURNING vmid;

-- live_vmids --
-- The VMIDs of a range that have a live allocation, ours or foreign, with its status. $1 low, $2 high
SELECT vmid, status FROM vmid_allocations WHERE status <> 'released' AND vmid BETWEEN $1 AND $2 ORDER BY vmid;

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

-- get_idempotency_keys --
-- The records of several (tenant, key) pairs, expired or not. $1 tenants (text[]), $2 keys (text[])
SELECT k.* FROM idempotency_keys k
JOIN unnest($1::text[], $2::text[]) AS u (tenant, key) ON k.tenant = u.tenant AND k.key = u.key;

-- forget_idempotency_keys --
-- Delete those of several keys that have expired, so they can be claimed again; returns them. $1 tenants (text[]), $2 keys (text[])
DELETE FROM idempotency_keys k
USING unnest($1::text[], $2::text[]) AS u (tenant, key)
WHERE k.tenant = u.tenant AND k.key = u.key AND k.expires_at <= now()
RETURNING k.tenant, k.key;

-- claim_idempotency_keys --
-- Claim several keys, in (tenant, key) order; a key held by someone else is skipped (after its holder ends). Returns the claimed ones. $1 tenants (text[]), $2 keys (text[]), $3 fingerprints (bytea[]), $4 expires_at (timestamptz[])
INSERT INTO idempotency_keys (tenant, key, fingerprint, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[]) AS u (tenant, key, fingerprint, expires_at)
ORDER BY tenant, key
ON CONFLICT DO NOTHING
RETURNING tenant, key;

-- complete_idempotency_keys --
-- Store the first answers of several claimed keys, once; returns the keys completed. $1 tenants (text[]), $2 keys (text[]), $3 server ids (uuid[]), $4 response statuses (integer[]), $5 response bodies (jsonb[])
UPDATE idempotency_keys k
SET server_id = u.server_id, response_status = u.status, response_body = u.body
FROM unnest($1::text[], $2::text[], $3::uuid[], $4::integer[], $5::jsonb[]) AS u (tenant, key, server_id, status, body)
WHERE k.tenant = u.tenant AND k.key = u.key AND k.response_status IS NULL
RETURNING k.tenant, k.key;

-- insert_servers --
-- Insert several servers and return them. $1 ids (uuid[]), $2 tenants (text[]), $3 names (text[]), $4 specs (jsonb[]), $5 state, $6 desired_state
INSERT INTO servers (id, tenant, name, spec, state, desired_state)
SELECT u.id, u.tenant, u.name, u.spec, $5, $6
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS u (id, tenant, name, spec)
RETURNING *;

-- append_first_journal_entries --
-- The first journal entry (seq 1, from nothing) of several new servers; returns their server ids. $1 server ids (uuid[]), $2 to_state, $3 event
INSERT INTO journal (server_id, seq, from_state, to_state, event)
SELECT id, 1, NULL, $2, $3 FROM unnest($1::uuid[]) AS id
RETURNING server_id;

-- set_servers_placement --
-- Compare-and-set where several servers live on (id, version). $1 ids (uuid[]), $2 expected versions (bigint[]), $3 nodes (text[]), $4 vmids (integer[]), $5 ips (inet[]), $6 game ports (integer[]), $7 generation
UPDATE servers s
SET node = u.node, vmid = u.vmid, ip = u.ip, game_port = u.game_port, generation = $7, version = s.version + 1
FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::integer[], $5::inet[], $6::integer[])
    AS u (id, version, node, vmid, ip, game_port)
WHERE s.id = u.id AND s.version = u.version
RETURNING s.*;

-- enqueue_commands --
-- Put one command of a kind in each of several servers' inboxes. $1 ids (uuid[]), $2 server ids (uuid[]), $3 kind, $4 payload (jsonb)
INSERT INTO commands (id, server_id, kind, payload)
SELECT u.id, u.server_id, $3, $4 FROM unnest($1::uuid[], $2::uuid[]) AS u (id, server_id)
RETURNING *;

-- reserve_free_vmids --
-- Reserve the lowest free VMIDs of a range, one per server in order, or none at all when the range has too few; returns the reservations. $1 low, $2 high, $3 server ids (uuid[])
-- Each gap between live allocations (and the range's ends) gives its lowest values, and only the
-- gaps before the first free values needed are expanded: the cost follows the allocations and the count.
WITH taken AS (
    SELECT $1::integer - 1 AS vmid
    UNION ALL
    SELECT vmid FROM vmid_allocations WHERE status <> 'released' AND vmid BETWEEN $1 AND $2
), gaps AS (
    SELECT vmid + 1 AS first, coalesce(lead(vmid) OVER (ORDER BY vmid) - 1, $2) AS last FROM taken
), counted AS (
    SELECT first, last, sum(last - first + 1) OVER (ORDER BY first) - (last - first + 1) AS before
    FROM gaps WHERE first <= last
), free AS (
    SELECT vmid, row_number() OVER (ORDER BY vmid) AS n
    FROM counted, generate_series(first, least(last, first + cardinality($3::uuid[]) - 1)) AS vmid
    WHERE before < cardinality($3::uuid[])
), pairs AS (
    SELECT free.vmid, s.server_id FROM free JOIN unnest($3::uuid[]) WITH ORDINALITY AS s (server_id, n) USING (n)
)
INSERT INTO vmid_allocations (vmid, server_id, status)
SELECT vmid, server_id, 'reserved' FROM pairs
WHERE (SELECT count(*) FROM pairs) = cardinality($3::uuid[])
RETURNING *;

-- reserve_free_ips --
-- Reserve the lowest free host addresses of a subnet (skipping the given ones), one per server in order, or none at all when too few are free; returns the reservations. $1 first address (inet), $2 number of candidates, $3 excluded addresses (inet[]), $4 server ids (uuid[])
-- As reserve_free_vmids, over the offsets from the first address.
WITH taken AS (
    SELECT -1::bigint AS offs
    UNION
    SELECT ip - $1::inet FROM ip_allocations
    WHERE status <> 'released' AND ip >= $1::inet AND ip < $1::inet + $2::bigint
    UNION
    SELECT x - $1::inet FROM unnest($3::inet[]) AS x WHERE x >= $1::inet AND x < $1::inet + $2::bigint
), gaps AS (
    SELECT offs + 1 AS first, coalesce(lead(offs) OVER (ORDER BY offs) - 1, $2::bigint - 1) AS last FROM taken
), counted AS (
    SELECT first, last, sum(last - first + 1) OVER (ORDER BY first) - (last - first + 1) AS before
    FROM gaps WHERE first <= last
), free AS (
    SELECT $1::inet + offs AS ip, row_number() OVER (ORDER BY offs) AS n
    FROM counted, generate_series(first, least(last, first + cardinality($4::uuid[]) - 1)) AS offs
    WHERE before < cardinality($4::uuid[])
), pairs AS (
    SELECT free.ip, s.server_id FROM free JOIN unnest($4::uuid[]) WITH ORDINALITY AS s (server_id, n) USING (n)
)
INSERT INTO ip_allocations (ip, server_id, status)
SELECT ip, server_id, 'reserved' FROM pairs
WHERE (SELECT count(*) FROM pairs) = cardinality($4::uuid[])
RETURNING *;

-- reserve_free_ports --
-- Reserve the lowest free game ports of a range on a node, one per server in order, or none at all when too few are free; returns the reservations. $1 node, $2 low, $3 high, $4 server ids (uuid[])
-- As reserve_free_vmids, per node.
WITH taken AS (
    SELECT $2::integer - 1 AS port
    UNION ALL
    SELECT port FROM port_allocations WHERE node = $1 AND status <> 'released' AND port BETWEEN $2 AND $3
), gaps AS (
    SELECT port + 1 AS first, coalesce(lead(port) OVER (ORDER BY port) - 1, $3) AS last FROM taken
), counted AS (
    SELECT first, last, sum(last - first + 1) OVER (ORDER BY first) - (last - first + 1) AS before
    FROM gaps WHERE first <= last
), free AS (
    SELECT port, row_number() OVER (ORDER BY port) AS n
    FROM counted, generate_series(first, least(last, first + cardinality($4::uuid[]) - 1)) AS port
    WHERE before < cardinality($4::uuid[])
), pairs AS (
    SELECT free.port, s.server_id FROM free JOIN unnest($4::uuid[]) WITH ORDINALITY AS s (server_id, n) USING (n)
)
INSERT INTO port_allocations (node, port, server_id, status)
SELECT $1, port, server_id, 'reserved' FROM pairs
WHERE (SELECT count(*) FROM pairs) = cardinality($4::uuid[])
RETURNING *;
