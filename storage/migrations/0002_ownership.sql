-- 0002_ownership: what the actor runtime needs from the database.

-- The shard of a server, computed exactly as zlh_actors.runtime.shards.shard_of does in Python (a test
-- keeps the two equal): the first 32 bits of the MD5 of the id's text form, modulo the shard count.
CREATE FUNCTION zlh_shard(server_id uuid, shard_count integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (('x' || substr(md5(server_id::text), 1, 8))::bit(32)::bigint % shard_count)::integer
$$;

-- Every command wakes its server's owner, whichever replica enqueued it, and every outcome wakes the
-- replica waiting for it. Triggers rather than application code, so no path can forget; the
-- notifications are delivered at commit, never for a rolled-back command.
CREATE FUNCTION commands_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('zlh_commands', NEW.server_id::text);
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('zlh_command_outcomes', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER commands_notify AFTER INSERT OR UPDATE OF status ON commands
    FOR EACH ROW EXECUTE FUNCTION commands_notify();
