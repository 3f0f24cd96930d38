-- What the queue listing shows without counting rows
-- (host/src/store/queue_stats.rs): jobs per queue and state, and the
-- starts, successes and failures of each queue in 10-second buckets.
--
-- Every store statement that inserts, moves or deletes jobs appends, in the
-- same statement, what it did to job_transition_log: how many jobs of a
-- queue it moved from one state to another (from_state NULL: inserted;
-- to_state NULL: deleted). The log is insert-only and unindexed, so writers
-- never wait for each other on a counter row, and it commits or rolls back
-- with the statement. (Statement triggers with transition tables would
-- catch every writer, but they halved the drain rate: docs/benchmarks.md.)
-- The counter folder (host/src/maintenance/counter_folder.rs, on the
-- elected leader) moves the log into queue_state_counts and queue_activity
-- about once a second; readers add what is not folded yet, so every count
-- is exact as of the reader's snapshot.

CREATE TABLE job_transition_log (
    queue       text NOT NULL,
    from_state  job_state,
    to_state    job_state,
    jobs        bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    CHECK (from_state IS NOT NULL OR to_state IS NOT NULL)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- Jobs per queue and state, as of the last fold.
CREATE TABLE queue_state_counts (
    queue  text NOT NULL,
    state  job_state NOT NULL,
    jobs   bigint NOT NULL,
    PRIMARY KEY (queue, state)
);

-- Attempts started, and ended succeeded or failed (to retrying or dead),
-- per queue in 10-second buckets; the folder keeps the last two hours.
CREATE TABLE queue_activity (
    queue      text NOT NULL,
    bucket     timestamptz NOT NULL,
    started    bigint NOT NULL,
    succeeded  bigint NOT NULL,
    failed     bigint NOT NULL,
    PRIMARY KEY (queue, bucket)
);

-- How one logged transition changes the counts: +jobs in the state it
-- entered, -jobs in the state it left.
CREATE FUNCTION state_deltas(from_state job_state, to_state job_state, jobs bigint)
RETURNS TABLE (state job_state, jobs bigint) LANGUAGE sql IMMUTABLE AS $$
    SELECT to_state, jobs WHERE to_state IS NOT NULL
    UNION ALL
    SELECT from_state, -jobs WHERE from_state IS NOT NULL
$$;

-- How one logged transition counts in queue_activity: attempts started
-- (entered running), or ended succeeded or failed (left running for
-- retrying or dead).
CREATE FUNCTION attempt_activity(from_state job_state, to_state job_state, jobs bigint,
                                 OUT started bigint, OUT succeeded bigint, OUT failed bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN to_state = 'running' THEN jobs ELSE 0 END,
           CASE WHEN from_state = 'running' AND to_state = 'succeeded' THEN jobs ELSE 0 END,
           CASE WHEN from_state = 'running' AND to_state IN ('retrying', 'dead')
                THEN jobs ELSE 0 END
$$;

-- A TRUNCATE of jobs (by hand: no store statement truncates) empties the
-- counters with it.
CREATE FUNCTION forget_job_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_transition_log;
    DELETE FROM queue_state_counts;
    RETURN NULL;
END $$;

-- No write may slip between the count below and the first logged statement.
LOCK TABLE jobs IN SHARE MODE;

CREATE TRIGGER jobs_forget_counts AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION forget_job_counts();

INSERT INTO queue_state_counts (queue, state, jobs)
SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;
