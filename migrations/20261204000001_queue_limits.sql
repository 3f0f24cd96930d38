-- Operating a queue (host/src/queue/limits.rs): pause, cluster-wide
-- concurrency limits, a start rate. A queue without a row, or with these
-- columns NULL, claims as before.
ALTER TABLE queues
    -- Workers claim none of the queue's jobs while set; submissions go on.
    ADD COLUMN paused               boolean NOT NULL DEFAULT false,
    -- Most jobs of the queue running at once, across all workers.
    ADD COLUMN max_running          integer CHECK (max_running > 0),
    -- Most jobs of one concurrency_key running at once.
    ADD COLUMN max_running_per_key  integer CHECK (max_running_per_key > 0),
    -- At most rate_limit attempt starts in any window of rate_period_ms.
    ADD COLUMN rate_limit           integer CHECK (rate_limit > 0),
    ADD COLUMN rate_period_ms       bigint CHECK (rate_period_ms >= 1000),
    -- The queue's recent attempt starts, counted in buckets of a twentieth
    -- of its rate period: rate_counts[i] starts in bucket rate_buckets[i]
    -- (the bucket's number since the epoch). Only the buckets a window can
    -- still reach are kept, so the row stays small at any rate
    -- (store/claim.rs says how a claim counts them).
    ADD COLUMN rate_buckets         bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN rate_counts          integer[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT queues_rate_whole CHECK ((rate_limit IS NULL) = (rate_period_ms IS NULL)),
    -- Whether a claim must take the queue's row lock and count: the plain
    -- claim skips a queue where this is set (Store::claim).
    ADD COLUMN limited boolean NOT NULL GENERATED ALWAYS AS (
        paused OR max_running IS NOT NULL OR max_running_per_key IS NOT NULL
        OR rate_limit IS NOT NULL) STORED;

-- A job's concurrency key (a tenant, say): max_running_per_key counts
-- running jobs by it.
ALTER TABLE jobs ADD COLUMN concurrency_key text;

-- A limited claim counts the queue's running jobs, by key: this index holds
-- only running jobs, so the count reads as many entries as there are
-- attempts in flight, however long the queue.
CREATE INDEX jobs_running_idx ON jobs (queue, concurrency_key) WHERE state = 'running';
