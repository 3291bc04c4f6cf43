-- 0005_reconciler: the record of every reconciliation pass.

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
