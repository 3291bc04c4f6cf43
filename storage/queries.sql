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
SELECT candidate FROM generate_series($1::integer, $2::integer) AS candidate
WHERE NOT EXISTS (SELECT 1 FROM vmid_allocations WHERE vmid = candidate AND status <> 'released')
ORDER BY candidate LIMIT 1;

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

-- pending_commands --
-- A server's unfinished commands in arrival order. $1 server_id
SELECT * FROM commands WHERE server_id = $1 AND status IN ('queued', 'accepted') ORDER BY position;

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
