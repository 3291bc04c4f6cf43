-- The whole schema of zlh-actors, as replaying storage/migrations/ produces it (a test checks that
-- the two are equal). Read this file to learn the schema; change it only together with a new
-- migration. The migration runner keeps its history in schema_migrations, which is not listed here.

-- The persisted lifecycle states (statemachines.lifecycle.STATES; a test keeps the two equal). A new
-- state in the chart needs a migration that replaces this function.
CREATE FUNCTION zlh_states() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY[
        'requested',
        'provisioning.cloning',
        'provisioning.configuring',
        'provisioning.booting',
        'provisioning.enrolling',
        'provisioning.installing',
        'starting',
        'running',
        'stopping',
        'stopped',
        'crashed',
        'failed.provisioning',
        'failed.starting',
        'failed.stopping',
        'lost',
        'deleting.stopping_game',
        'deleting.stopping_container',
        'deleting.destroying',
        'deleting.releasing',
        'deleted'
    ]
$$;

CREATE TABLE servers (
    id uuid PRIMARY KEY,
    tenant text NOT NULL CHECK (tenant ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    spec jsonb NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    state text NOT NULL CONSTRAINT servers_state_known CHECK (state = ANY (zlh_states())),
    desired_state text NOT NULL DEFAULT 'running'
        CHECK (desired_state IN ('running', 'stopped', 'deleted')),
    node text,
    vmid integer CHECK (vmid BETWEEN 100 AND 999999999),
    ip inet,
    game_port integer CHECK (game_port BETWEEN 1 AND 65535),
    generation integer NOT NULL DEFAULT 1 CHECK (generation >= 1),
    version bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    CONSTRAINT servers_deleted_at_matches_state CHECK ((state = 'deleted') = (deleted_at IS NOT NULL))
);

-- Two live servers may not share a name within a tenant; a deleted one frees its name.
CREATE UNIQUE INDEX servers_live_name ON servers (tenant, name) WHERE deleted_at IS NULL;
CREATE INDEX servers_tenant_created ON servers (tenant, created_at, id);

-- Every UPDATE of a server must be a compare-and-set: it bumps the row version by exactly one.
-- A writer that does not know the version it read cannot produce a valid row.
CREATE FUNCTION servers_require_version_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version <> OLD.version + 1 THEN
        RAISE EXCEPTION 'server % updated without a version bump (% -> %)', OLD.id, OLD.version, NEW.version
            USING ERRCODE = 'check_violation', CONSTRAINT = 'servers_version_bump';
    END IF;
    IF NEW.id <> OLD.id OR NEW.tenant <> OLD.tenant OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'server % identity columns are immutable', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'servers_identity_immutable';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER servers_version_bump BEFORE UPDATE ON servers
    FOR EACH ROW EXECUTE FUNCTION servers_require_version_bump();

CREATE FUNCTION servers_forbid_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'servers are never deleted, only marked deleted (server %)', OLD.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'servers_soft_delete_only';
END;
$$;

CREATE TRIGGER servers_soft_delete_only BEFORE DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION servers_forbid_delete();

-- The transition journal: append-only, one gapless sequence per server, each entry starting where
-- the previous one ended.
CREATE TABLE journal (
    server_id uuid NOT NULL REFERENCES servers (id),
    seq integer NOT NULL CHECK (seq >= 1),
    from_state text CONSTRAINT journal_from_state_known CHECK (from_state = ANY (zlh_states())),
    to_state text NOT NULL CONSTRAINT journal_to_state_known CHECK (to_state = ANY (zlh_states())),
    event text NOT NULL CHECK (event ~ '^[a-z][a-z_]*$'),
    command_id uuid,
    epoch bigint,
    detail text,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, seq),
    CONSTRAINT journal_first_entry_has_no_origin CHECK ((seq = 1) = (from_state IS NULL))
);

CREATE INDEX journal_at ON journal (at);

CREATE FUNCTION journal_check_append() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last journal%ROWTYPE;
BEGIN
    -- Serialize appends per server so two writers cannot both read the same tail.
    PERFORM 1 FROM servers WHERE id = NEW.server_id FOR UPDATE;
    SELECT * INTO last FROM journal WHERE server_id = NEW.server_id ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        IF NEW.seq <> 1 THEN
            RAISE EXCEPTION 'journal of server % must start at seq 1, not %', NEW.server_id, NEW.seq
                USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_gapless';
        END IF;
    ELSIF NEW.seq <> last.seq + 1 THEN
        RAISE EXCEPTION 'journal of server % continues at seq %, not %', NEW.server_id, last.seq + 1, NEW.seq
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_gapless';
    ELSIF NEW.from_state IS DISTINCT FROM last.to_state THEN
        RAISE EXCEPTION 'journal of server % is at %, an entry cannot start from %',
                NEW.server_id, last.to_state, NEW.from_state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_continuous';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER journal_append BEFORE INSERT ON journal
    FOR EACH ROW EXECUTE FUNCTION journal_check_append();

CREATE FUNCTION journal_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'journal_append_only';
END;
$$;

CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
    FOR EACH ROW EXECUTE FUNCTION journal_forbid_change();

-- A server's state and its journal never disagree: at commit, the newest journal entry must end in
-- the state the row holds. A state change without its journal entry cannot commit.
CREATE FUNCTION servers_check_journal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    newest text;
BEGIN
    SELECT to_state INTO newest FROM journal WHERE server_id = NEW.id ORDER BY seq DESC LIMIT 1;
    IF newest IS DISTINCT FROM (SELECT state FROM servers WHERE id = NEW.id) THEN
        RAISE EXCEPTION 'server % is in state % but its journal ends in %', NEW.id, NEW.state, newest
            USING ERRCODE = 'check_violation', CONSTRAINT = 'servers_state_journaled';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER servers_state_journaled AFTER INSERT OR UPDATE OF state ON servers
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION servers_check_journal();

-- Allocations: a VMID, an IP and a (node, port) have at most one live holder. 'foreign' marks an id
-- found in Proxmox that is not ours, so it is never handed out; 'released' rows are history.
CREATE TABLE vmid_allocations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vmid integer NOT NULL CHECK (vmid BETWEEN 100 AND 999999999),
    server_id uuid REFERENCES servers (id),
    status text NOT NULL CHECK (status IN ('reserved', 'in_use', 'releasing', 'released', 'foreign')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT vmid_allocations_owner CHECK ((status = 'foreign') = (server_id IS NULL))
);

CREATE UNIQUE INDEX vmid_allocations_live ON vmid_allocations (vmid) WHERE status <> 'released';
CREATE UNIQUE INDEX vmid_allocations_one_per_server ON vmid_allocations (server_id)
    WHERE status IN ('reserved', 'in_use');

CREATE TABLE ip_allocations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ip inet NOT NULL,
    server_id uuid REFERENCES servers (id),
    status text NOT NULL CHECK (status IN ('reserved', 'in_use', 'releasing', 'released', 'foreign')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ip_allocations_owner CHECK ((status = 'foreign') = (server_id IS NULL))
);

CREATE UNIQUE INDEX ip_allocations_live ON ip_allocations (ip) WHERE status <> 'released';
CREATE UNIQUE INDEX ip_allocations_one_per_server ON ip_allocations (server_id)
    WHERE status IN ('reserved', 'in_use');

CREATE TABLE port_allocations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node text NOT NULL,
    port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    server_id uuid REFERENCES servers (id),
    status text NOT NULL CHECK (status IN ('reserved', 'in_use', 'releasing', 'released', 'foreign')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT port_allocations_owner CHECK ((status = 'foreign') = (server_id IS NULL))
);

CREATE UNIQUE INDEX port_allocations_live ON port_allocations (node, port) WHERE status <> 'released';
CREATE UNIQUE INDEX port_allocations_one_per_server ON port_allocations (server_id)
    WHERE status IN ('reserved', 'in_use');

-- Idempotency keys: one record per (tenant, key); the fingerprint is a hash of the method, path and
-- canonical body, so a reused key with another request can be told apart from a retry.
CREATE TABLE idempotency_keys (
    tenant text NOT NULL,
    key text NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    fingerprint bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
    server_id uuid REFERENCES servers (id),
    response_status integer CHECK (response_status BETWEEN 100 AND 599),
    response_body jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, key),
    CONSTRAINT idempotency_keys_response_complete CHECK ((response_status IS NULL) = (response_body IS NULL)),
    CONSTRAINT idempotency_keys_expiry_after_creation CHECK (expires_at > created_at)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- The command inbox: every command for a server, in arrival order, with its outcome.
CREATE TABLE commands (
    id uuid PRIMARY KEY,
    position bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    server_id uuid NOT NULL REFERENCES servers (id),
    kind text NOT NULL CHECK (kind ~ '^[a-z][a-z_]*$'),
    payload jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'accepted', 'rejected', 'done')),
    result jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT commands_outcome_has_result CHECK ((status = 'queued') = (result IS NULL))
);

CREATE INDEX commands_pending ON commands (server_id, position) WHERE status IN ('queued', 'accepted');

-- Settled commands by age, for pruning (0009_retention, zlh_actors/reconciler/retention.py): every agent report is
-- a command, so the inbox would otherwise only grow.
CREATE INDEX commands_settled ON commands (updated_at) WHERE status IN ('done', 'rejected');

-- A command's status only moves forward: queued -> accepted | rejected, accepted -> done. A report
-- asks for nothing to converge to, so the transaction that applies it may settle it queued -> done
-- (0006_command_notify).
CREATE FUNCTION commands_check_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT (
        (OLD.status = 'queued' AND NEW.status IN ('accepted', 'rejected'))
        OR (OLD.status = 'queued' AND NEW.status = 'done' AND NEW.kind = 'report')
        OR (OLD.status = 'accepted' AND NEW.status = 'done')
    ) THEN
        RAISE EXCEPTION 'command % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'commands_status_forward';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER commands_status_forward BEFORE UPDATE ON commands
    FOR EACH ROW EXECUTE FUNCTION commands_check_status();

-- Replicas and shard leases: the epoch is the fencing token every actor write is checked against.
CREATE TABLE replicas (
    id uuid PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL CHECK (pid > 0),
    http_port integer CHECK (http_port BETWEEN 1 AND 65535),
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shard_leases (
    shard integer PRIMARY KEY CHECK (shard >= 0),
    epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    owner uuid REFERENCES replicas (id) ON DELETE SET NULL,
    acquired_at timestamptz
);

-- API tokens: only a SHA-256 of the token is kept.
CREATE TABLE api_tokens (
    id uuid PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    tenant text NOT NULL CHECK (tenant ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    role text NOT NULL CHECK (role IN ('user', 'admin')),
    label text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- The shard of a server, computed exactly as zlh_actors.runtime.shards.shard_of does in Python (a test
-- keeps the two equal): the first 32 bits of the MD5 of the id's text form, modulo the shard count.
CREATE FUNCTION zlh_shard(server_id uuid, shard_count integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (('x' || substr(md5(server_id::text), 1, 8))::bit(32)::bigint % shard_count)::integer
$$;

-- Every command wakes its server's owner, whichever replica enqueued it (the payload is the server's
-- id and the command's), and every outcome a waiter may wait for wakes the replica waiting for it:
-- a command submitted through the API leaving `queued`. Nobody waits for a report or a drift, nor
-- for accepted -> done, and a commit that NOTIFYs is serialized with every other one until its WAL
-- flush (0006_command_notify). Triggers rather than application code, so no path can forget; the
-- one exception is an agent's report, which has one path (the agent callback) and is announced by
-- it after the commit, only when another replica owns the server. The notifications are delivered
-- at commit, never for a rolled-back command.
CREATE FUNCTION commands_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('zlh_commands', NEW.server_id::text || ' ' || NEW.id::text);
    ELSE
        PERFORM pg_notify('zlh_command_outcomes', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER commands_notify AFTER INSERT ON commands
    FOR EACH ROW WHEN (NEW.kind <> 'report') EXECUTE FUNCTION commands_notify();

CREATE TRIGGER commands_notify_outcome AFTER UPDATE OF status ON commands
    FOR EACH ROW WHEN (OLD.status = 'queued' AND NEW.status <> 'queued' AND NEW.kind NOT IN ('report', 'drift'))
    EXECUTE FUNCTION commands_notify();

-- The catalog of Fabric launchers an operator has pinned: a create may only name a pinned triple,
-- so every server is built from bytes whose hash the control plane knew beforehand.
CREATE TABLE launchers (
    minecraft_version text NOT NULL CHECK (minecraft_version ~ '^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$'),
    loader_version text NOT NULL CHECK (loader_version ~ '^[0-9A-Za-z][0-9A-Za-z._+-]{0,31}$'),
    installer_version text NOT NULL CHECK (installer_version ~ '^[0-9A-Za-z][0-9A-Za-z._+-]{0,31}$'),
    url text NOT NULL CHECK (url ~ '^https?://'),
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint CHECK (size > 0),
    pinned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (minecraft_version, loader_version, installer_version)
);

-- The bearer token an agent uses for its callbacks: one per server and generation, hashed.
CREATE TABLE agent_tokens (
    server_id uuid NOT NULL REFERENCES servers (id),
    generation integer NOT NULL CHECK (generation >= 1),
    token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    issued_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (server_id, generation)
);

-- The newest accepted report of each server's agent. Sequence numbers only grow: a replayed or
-- reordered report matches no row and is ignored.
CREATE TABLE agent_reports (
    server_id uuid PRIMARY KEY REFERENCES servers (id),
    generation integer NOT NULL CHECK (generation >= 1),
    seq bigint NOT NULL CHECK (seq >= 0),
    state text NOT NULL CHECK (state IN ('installing', 'installed', 'install_failed', 'starting', 'ready',
                                         'stopped', 'crashed')),
    manifest_sha256 text CHECK (manifest_sha256 ~ '^[0-9a-f]{64}$'),
    detail text,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- The stream's order of journal entries (0004_journal_notify; the argument is in docs/stream.md): the
-- stream is ordered by (txid, position). A position is taken at insert and transactions commit in any
-- order, so position alone cannot be a cursor; no entry whose txid is below the oldest running
-- transaction (pg_snapshot_xmin) can appear any more, so the order is final below that horizon.
-- txid is raised to the server's previous entry's when smaller, so each server's entries follow their
-- seq. Both columns are set by the journal_order trigger, never by writers. The sequence's cache must
-- stay 1: per-session caches would hand out positions out of the order of the inserts.
CREATE SEQUENCE journal_position AS bigint;

ALTER TABLE journal ADD COLUMN position bigint NOT NULL, ADD COLUMN txid xid8 NOT NULL;
ALTER SEQUENCE journal_position OWNED BY journal.position;
ALTER TABLE journal ADD CONSTRAINT journal_position_unique UNIQUE (position);
CREATE INDEX journal_stream_order ON journal (txid, position);

-- Takes the server's row lock first (as journal_append does), so the position is drawn after the
-- previous entry of the server committed and is larger than its position.
CREATE FUNCTION journal_assign_order() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM servers WHERE id = NEW.server_id FOR UPDATE;
    NEW.position := nextval('journal_position');
    NEW.txid := greatest(
        pg_current_xact_id(),
        (SELECT txid FROM journal WHERE server_id = NEW.server_id ORDER BY seq DESC LIMIT 1)
    );
    RETURN NEW;
END;
$$;

CREATE TRIGGER journal_order BEFORE INSERT ON journal
    FOR EACH ROW EXECUTE FUNCTION journal_assign_order();

-- Delivered at commit, never for a rolled-back entry. Listeners treat it as a wake-up and re-read
-- the journal: the payload is for people reading the channel, not for ordering. A transaction that
-- sets `zlh.journal_notify` to `off` announces its entries itself, after its commit (0008: an actor's
-- replica, coalesced, zlh_actors/runtime/announcer.py); the trigger stays quiet for it.
CREATE FUNCTION journal_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('zlh.journal_notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('zlh_journal', json_build_object(
            'position', NEW.position,
            'txid', NEW.txid::text,
            'server_id', NEW.server_id,
            'tenant', (SELECT tenant FROM servers WHERE id = NEW.server_id)
        )::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER journal_notify AFTER INSERT ON journal
    FOR EACH ROW EXECUTE FUNCTION journal_notify();

-- One row per pass of one replica over the shards it owned: what drifted and what was done about it.
-- Repairs of a server are journaled by its actor; for what belongs to no live server (an orphan
-- container destroyed, a VMID marked foreign) this is the only record.
CREATE TABLE reconcile_reports (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replica_id uuid NOT NULL,
    trigger text NOT NULL CHECK (trigger IN ('periodic', 'on_demand')),
    shards integer[] NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    drifts jsonb NOT NULL CHECK (jsonb_typeof(drifts) = 'array'),
    error text,
    CONSTRAINT reconcile_reports_finished_after_start CHECK (finished_at >= started_at)
);

CREATE INDEX reconcile_reports_newest ON reconcile_reports (replica_id, finished_at DESC);

-- Whether a state is at rest: nothing to do until a command, a report or the reconciler arrives.
-- zlh_actors/servers/actor.py REST_STATES must list the same states (a test keeps them equal).
-- Being a plain SQL expression, it is inlined into queries and index predicates alike, so a query
-- that says `NOT zlh_at_rest(state)` can use the index below.
CREATE FUNCTION zlh_at_rest(state text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT state IN ('running', 'stopped', 'failed.provisioning', 'failed.starting', 'failed.stopping',
                     'deleted')
$$;

-- The servers with work in progress: a handful at any time, whereas most rows are at rest (and
-- deleted rows stay for ever). Every sweep and every takeover's rescan reads it; servers with
-- queued or accepted commands come from the commands_pending index.
CREATE INDEX servers_unsettled ON servers (id) WHERE NOT zlh_at_rest(state);
