-- The limited claim (Store::claim_limited in host/src/store/claim.rs)
-- without a count of the queue's running jobs at every call.
--
-- Until now each call counted them through jobs_running_idx: an index-only
-- scan that visits the heap for every entry, since rows that changed state
-- moments ago are never all-visible, so the claim cost more the more jobs
-- ran (docs/benchmarks.md, "Where the limited claim's cost goes"). Now the
-- queue's row keeps an upper bound of its running jobs: the last count
-- plus every job claimed since. Only claims start attempts, and limited
-- claims of the queue run one at a time under the row's lock, so the bound
-- stays an upper bound however many attempts end meanwhile. A claim that
-- the bound leaves room for takes it without counting; one it does not
-- counts, and the count becomes the new bound. A queue whose limit is far
-- above what runs counts about once per `max_running` starts; one near its
-- limit counts at every claim, as before.
--
-- One kind of start is not in the bound: a plain claim (the statement for
-- unlimited queues) whose snapshot predates the change that limited the
-- queue, committing after it. So the bound is trusted only when its count
-- was taken `p_settle_ms` after the latest change of the queue's settings
-- (`updated_at`); until then every claim counts, as every claim did.
--
-- The function also no longer ranks candidates by key when the queue has
-- no per-key limit, and works out its budget in PL/pgSQL rather than in
-- the claim statement: the statements that still count do so before the
-- claim's moment is read, so every attempt they saw end ended before the
-- attempts the claim starts (what the chaos suite checks from attempt
-- records).
ALTER TABLE queues
    -- At least as many as the queue's running jobs (NULL: not known):
    -- claim_limited_jobs' count, plus the jobs it and later claims started.
    ADD COLUMN running_bound bigint,
    -- When that count was taken.
    ADD COLUMN running_counted_at timestamptz;

DROP FUNCTION claim_limited_jobs(text, text, bigint, float8, int, int);

-- Returns the claimed jobs; no row when the queue is paused or nothing is
-- free; one row with only `unlimited` set when the queue has no limits
-- (any more): the caller claims it on the plain path.
CREATE FUNCTION claim_limited_jobs(p_queue text, p_worker text, p_limit bigint,
                                   p_ttl_ms float8, p_lookahead int, p_buckets int,
                                   p_settle_ms float8)
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
           rate_buckets, rate_counts, running_bound, running_counted_at, updated_at
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
           AND lim.running_counted_at
               >= lim.updated_at + p_settle_ms * interval '1 millisecond'
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
        running_bound = running_now + cardinality(chosen),
        running_counted_at = CASE WHEN counted_now THEN claimed_at
                                  ELSE lim.running_counted_at END
    WHERE name = p_queue;
END
$fn$;
