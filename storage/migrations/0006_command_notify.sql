-- 0006_command_notify: fewer notifying commits per command, and a report settles when applied.

-- PostgreSQL serializes the commits of transactions that NOTIFY until their WAL flush is done (so
-- that notifications queue in commit order): they get no group commit, and each one nobody needs
-- costs a flush of its own. So an outcome is announced only where a waiter may be listening for it
-- (zlh_actors/runtime/inbox.py `submit`): a command submitted through the API leaving `queued`.
-- Nobody waits for an agent's report or a reconciler's drift, nor for `accepted -> done`.
--
-- The enqueue notification carries the command's id after the server's, so the replica that
-- enqueued a command and woke its own actor directly can tell its own notification from another
-- replica's (a wake-up skipped wrongly would still be caught by the sweep). An agent's report is not
-- announced by the trigger at all: the agent callback is the one path that enqueues reports, and
-- after the commit it wakes the owner itself, directly when its replica owns the server's shard (no
-- notifying commit at all), else with a NOTIFY of its own (zlh_actors/api/agent_callbacks.py).
DROP TRIGGER commands_notify ON commands;

CREATE OR REPLACE FUNCTION commands_notify() RETURNS trigger
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

-- A report asks for nothing to converge to: once applied it is finished, so the transaction that
-- applies it settles it `done` directly instead of leaving it `accepted` for another transaction.
CREATE OR REPLACE FUNCTION commands_check_status() RETURNS trigger
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
