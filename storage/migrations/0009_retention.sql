-- 0009_retention: settled commands can be found by age, so that they can be forgotten
-- (storage/retention.py). Every agent report is a command: without pruning the inbox only grows.
CREATE INDEX commands_settled ON commands (updated_at) WHERE status IN ('done', 'rejected');
