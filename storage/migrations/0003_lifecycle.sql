-- 0003_lifecycle: what provisioning needs: pinned Fabric launchers, agent credentials, agent reports.

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
