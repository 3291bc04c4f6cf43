-- 0008_journal_announce: a transaction may take over the announcement of its journal entries.
--
-- The trigger NOTIFYs `zlh_journal` per entry, in the writing transaction; PostgreSQL serializes the
-- commits of transactions that NOTIFY until their WAL flush is done. An actor's transaction, which
-- writes most entries, sets `zlh.journal_notify` to `off` for itself (the lease check does, in the
-- same statement: zlh_actors/runtime/fencing.py) and its replica announces after the commit,
-- coalesced (zlh_actors/runtime/announcer.py). Every other writer is announced as before.
CREATE OR REPLACE FUNCTION journal_notify() RETURNS trigger
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
