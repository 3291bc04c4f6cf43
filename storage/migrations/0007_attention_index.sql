-- 0007_attention_index: the sweep's query reads an index of the servers that can need attention
-- instead of computing the shard of every row.

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
