-- 0004_journal_notify: a global, resumable order of journal entries for GET /v1/stream, and a
-- notification per entry so every replica's stream hears about every entry.

-- The stream's order is (txid, position), not position alone. A position is taken at insert, but
-- transactions commit in any order: a reader that saw position 105 committed may later see 104 commit,
-- and a cursor at 105 would skip it for ever. txid is the writing transaction's id, and no entry
-- whose txid is below the oldest transaction still running (pg_snapshot_xmin) can appear any more, so
-- the prefix of the order below that horizon is final: a cursor into it never misses an entry.
-- txid is raised to the server's previous entry's when smaller (a transaction that took its id early
-- and appended after a younger one committed), so each server's entries follow their seq in the
-- order. Both columns are set by the journal_order trigger, never by writers. The sequence's cache
-- must stay 1: per-session caches would hand out positions out of the order of the inserts.
CREATE SEQUENCE journal_position AS bigint;

ALTER TABLE journal ADD COLUMN position bigint, ADD COLUMN txid xid8;

-- Entries written before this migration get positions in the order they were written (each server's
-- by seq, servers interleaved by time), all with this transaction's id. The append-only trigger
-- exists to stop application writes; this one-time backfill goes around it.
ALTER TABLE journal DISABLE TRIGGER journal_append_only;
UPDATE journal j
SET position = o.n, txid = pg_current_xact_id()
FROM (
    SELECT server_id, seq, row_number() OVER (ORDER BY written, server_id, seq) AS n
    FROM (SELECT server_id, seq, max(at) OVER (PARTITION BY server_id ORDER BY seq) AS written FROM journal) w
) o
WHERE j.server_id = o.server_id AND j.seq = o.seq;
ALTER TABLE journal ENABLE TRIGGER journal_append_only;
SELECT setval('journal_position', coalesce(max(position), 0) + 1, false) FROM journal;

ALTER TABLE journal ALTER COLUMN position SET NOT NULL, ALTER COLUMN txid SET NOT NULL;
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
-- the journal: the payload is for people reading the channel, not for ordering.
CREATE FUNCTION journal_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('zlh_journal', json_build_object(
        'position', NEW.position,
        'txid', NEW.txid::text,
        'server_id', NEW.server_id,
        'tenant', (SELECT tenant FROM servers WHERE id = NEW.server_id)
    )::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER journal_notify AFTER INSERT ON journal
    FOR EACH ROW EXECUTE FUNCTION journal_notify();
