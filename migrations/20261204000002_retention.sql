-- How long a queue keeps its finished jobs (host/src/queue/retention.rs),
-- in seconds; NULL takes the default (succeeded 7 days, dead and cancelled
-- 30 days, passed by the pruner), 0 keeps them forever.
ALTER TABLE queues
    ADD COLUMN retain_succeeded_s  bigint CHECK (retain_succeeded_s >= 0),
    ADD COLUMN retain_dead_s       bigint CHECK (retain_dead_s >= 0),
    ADD COLUMN retain_cancelled_s  bigint CHECK (retain_cancelled_s >= 0);

-- The pruner (host/src/maintenance/pruner.rs): the finished jobs of one
-- queue and state, oldest first, so each pass reads only expired entries,
-- and the distinct queues that have finished jobs (a loose index scan).
CREATE INDEX jobs_retention_idx ON jobs (queue, state, finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
