-- A queue limited or paused while a worker's plain claim is under way
-- (Store::claim_unlimited in host/src/store/claim.rs) can no longer be
-- overrun by it.
--
-- The plain claim is one statement, and its snapshot predates anything it
-- waits for. Until now it skipped a limited queue by reading `queues` in
-- that snapshot, so a claim that began just before a limit committed still
-- started its jobs, and a limited claim counting before it committed could
-- not see them: for that moment the queue ran up to one plain claim's jobs
-- over its limit (docs/failure-semantics.md said so). The limited claim
-- counted afresh for ten seconds after each change (`p_settle_ms`) so that
-- the overrun did not outlast that moment.
--
-- Now the plain claim asks `plain_claim_may_take`, which takes a shared
-- lock on the queue's settings and only then reads `queues`, with a
-- snapshot of its own (a VOLATILE function's statements each take one).
-- Every write of a queue's settings takes the same lock exclusively first
-- (`lock_queue_settings` in host/src/store/queues.rs), so it waits for
-- the plain claims that passed the gate to commit, and the plain claims
-- behind it read what it wrote. So once a queue is limited, every job a
-- plain claim started is committed and counted by the next limited claim.
-- The lock is an advisory one because a queue never configured has no row
-- to lock; plain claims share it, so they never wait for each other.
--
-- With that, the running bound needs no settle time: a settings write
-- clears it (`running_bound = NULL`), and the next limited claim counts.
CREATE FUNCTION plain_claim_may_take(p_queue text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('queue_settings:' || p_queue, 0));
    RETURN NOT EXISTS (SELECT 1 FROM queues WHERE name = p_queue AND limited);
END
$fn$;

DROP FUNCTION claim_limited_jobs(text, text, bigint, float8, int, int, float8);

ALTER TABLE queues DROP COLUMN running_counted_at;

-- As in migration 20261210000001, without the settle time.
CREATE FUNCTION claim_limited_jobs(p_queue text, p_worker text, p_limit bigint,
                                   p_ttl_ms float8, p_lookahead int, p_buckets int)
RETURNS TABLE (unlimited boolean, id uuid, module_hash text, queue text, input bytea,
               attempt int, attempt_base int, max_attempts int, timeout_ms int, fuel bigint,
               memory_limit_bytes bigint, lease_token bigint, attempted_at timestamptz,
               run_at timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    lim record;
    -- The queue's running jobs (or more), when a limit needs them.
    running_now bigint;
    counted_now boolean := false;
    -- Running jobs per concurrency key, when max_running_per_key is set.
    key_names text[];
    key_counts bigint[];
    claimed_at timestamptz;
    now_bucket bigint;
    window_starts bigint;
    budget bigint := p_limit;
    chosen uuid[];
BEGIN
    SELECT limited, paused, max_running, max_running_per_key, rate_limit, rate_period_ms,
           rate_buckets, rate_counts, running_bound
    INTO lim FROM queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR NOT lim.limited THEN
        RETURN QUERY SELECT true, NULL::uuid, NULL::text, NULL::text, NULL::bytea, NULL::int,
                            NULL::int, NULL::int, NULL::int, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF lim.paused THEN
        RETURN;
    END IF;

    -- Each statement below takes its snapshot after the lock was granted,
    -- so a count sees every claim of the queue committed before it.
    IF lim.max_running_per_key IS NOT NULL THEN
        SELECT COALESCE(sum(per_key.n), 0), array_agg(per_key.k), array_agg(per_key.n)
        INTO running_now, key_names, key_counts
        FROM (SELECT concurrency_key AS k, count(*) AS n FROM jobs
              WHERE state = 'running' AND queue = p_queue
              GROUP BY concurrency_key) AS per_key;
        counted_now := true;
    ELSIF lim.max_running IS NOT NULL THEN
        IF lim.running_bound IS NOT NULL
           AND lim.running_bound + p_limit <= lim.max_running THEN
            running_now := lim.running_bound;
        ELSE
            SELECT count(*) INTO running_now FROM jobs
            WHERE state = 'running' AND queue = p_queue;
            counted_now := true;
        END IF;
    END IF;
    -- Read after every count: an attempt counted as ended ended before it.
    claimed_at := clock_timestamp();
    budget := LEAST(budget, lim.max_running - running_now);
    IF lim.rate_limit IS NOT NULL THEN
        -- Only limited claims write the buckets, under the lock just taken:
        -- the row read above holds every start.
        now_bucket := floor(extract(epoch FROM claimed_at) * 1000
                            / (lim.rate_period_ms::float8 / p_buckets))::bigint;
        SELECT COALESCE(sum(u.c), 0) INTO window_starts
        FROM unnest(lim.rate_buckets, lim.rate_counts) AS u(b, c)
        WHERE u.b >= now_bucket - p_buckets;
        budget := LEAST(budget, lim.rate_limit - window_starts);
    END IF;
    IF budget <= 0 THEN
        RETURN;
    END IF;

    IF lim.max_running_per_key IS NULL THEN
        chosen := ARRAY(
            SELECT j.id FROM jobs j
            WHERE j.state = 'available' AND j.queue = p_queue
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT budget
            FOR UPDATE SKIP LOCKED);
    ELSE
        -- Looks past the budget for jobs of keys still under their limit,
        -- then keeps, per key, only as many as its limit leaves.
        chosen := ARRAY(
            WITH running AS (
                SELECT u.k, u.n FROM unnest(key_names, key_counts) AS u(k, n)
            ),
            candidates AS (
                SELECT j.id, j.priority, j.run_at, j.concurrency_key FROM jobs j
                WHERE j.state = 'available' AND j.queue = p_queue
                  AND (j.concurrency_key IS NULL OR NOT EXISTS (
                       SELECT 1 FROM running r
                       WHERE r.k = j.concurrency_key AND r.n >= lim.max_running_per_key))
                ORDER BY j.priority DESC, j.run_at, j.id
                LIMIT budget * p_lookahead
                FOR UPDATE SKIP LOCKED
            )
            SELECT c.id FROM (
                SELECT c.*, row_number() OVER (
                    PARTITION BY c.concurrency_key
                    ORDER BY c.priority DESC, c.run_at, c.id) AS key_rank
                FROM candidates c
            ) c
            LEFT JOIN running r ON r.k = c.concurrency_key
            WHERE c.concurrency_key IS NULL
               OR c.key_rank + COALESCE(r.n, 0) <= lim.max_running_per_key
            ORDER BY c.priority DESC, c.run_at, c.id
            LIMIT budget);
    END IF;

    RETURN QUERY
    WITH claimed AS (
            UPDATE jobs j
            SET state = 'running', attempt = j.attempt + 1,
                lease_token = nextval('lease_tokens'), worker_id = p_worker,
                lease_expires_at = claimed_at + p_ttl_ms * interval '1 millisecond',
                attempted_at = claimed_at, updated_at = claimed_at
            WHERE j.id = ANY (chosen)
            RETURNING j.id, j.module_hash, j.queue, j.input, j.attempt, j.attempt_base,
                      j.max_attempts, j.timeout_ms, j.fuel, j.memory_limit_bytes,
                      j.lease_token, j.attempted_at, j.run_at
        ),
        logged AS (
            INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
            SELECT p_queue, 'available', 'running', count(*) FROM claimed HAVING count(*) > 0
        )
        SELECT false, c.id, c.module_hash, c.queue, c.input, c.attempt, c.attempt_base,
               c.max_attempts, c.timeout_ms, c.fuel, c.memory_limit_bytes,
               c.lease_token, c.attempted_at, c.run_at
        FROM claimed c;

    -- An idle poll that took the bound and found nothing leaves the row
    -- as it was: no new version of it each poll.
    IF cardinality(chosen) = 0 AND NOT counted_now THEN
        RETURN;
    END IF;
    -- The chosen jobs are locked by this transaction and were available,
    -- so the update above started every one of them.
    UPDATE queues SET
        (rate_buckets, rate_counts) = (
            SELECT COALESCE(array_agg(s.b ORDER BY s.b), '{}'),
                   COALESCE(array_agg(s.c ORDER BY s.b), '{}')
            FROM (SELECT w.b, sum(w.c)::int AS c FROM (
                      SELECT u.b, u.c FROM unnest(lim.rate_buckets, lim.rate_counts) AS u(b, c)
                      WHERE u.b >= now_bucket - p_buckets
                      UNION ALL
                      SELECT now_bucket, cardinality(chosen)) AS w
                  WHERE lim.rate_limit IS NOT NULL
                  GROUP BY w.b) AS s),
        running_bound = running_now + cardinality(chosen)
    WHERE name = p_queue;
END
$fn$;
