-- 0009_retention: settled commands can be found by age, so that they can be forgotten
-- (zlh_actors/reconciler/retention.py). Every agent report is a command: without pruning the inbox only grows.
-- IF NOT EXISTS: on a large table an operator may build it first, CONCURRENTLY (systemd/README.md).
CREATE INDEX IF NOT EXISTS commands_settled ON commands (updated_at) WHERE status IN ('done', 'rejected');
