-- The limited claim (claim_limited_jobs, 20261205000002) also returns each
-- claimed job's `run_at`, so a worker can measure how long a job waited
-- past its due time before it started (`taskflow_job_start_delay_seconds`,
-- host/src/worker/metrics.rs). The body is unchanged otherwise; a
-- function's result type can only change by dropping it.
DROP FUNCTION claim_limited_jobs(text, text, bigint, float8, int, int);

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
BEGIN
    SELECT limited, paused, max_running, max_running_per_key, rate_limit, rate_period_ms
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
    -- The claim's moment (`claimed_at`) is read while it runs, after its
    -- snapshot: every attempt it counted as ended ended before it, and it
    -- starts its attempts, and counts them in a rate bucket, then. Not
    -- statement_timestamp(), which is when the call began, before the lock
    -- wait.
    RETURN QUERY
    WITH claim_moment AS (
            SELECT clock_timestamp() AS claimed_at
        ),
        now_bucket AS (
            SELECT floor(extract(epoch FROM (SELECT claimed_at FROM claim_moment)) * 1000
                         / (lim.rate_period_ms::float8 / p_buckets))::bigint AS b
        ),
        in_window AS (
            SELECT u.b, u.c FROM queues q, unnest(q.rate_buckets, q.rate_counts) AS u(b, c)
            WHERE q.name = p_queue AND lim.rate_limit IS NOT NULL
              AND u.b >= (SELECT b FROM now_bucket) - p_buckets
        ),
        running AS (
            SELECT concurrency_key AS key, count(*) AS n FROM jobs
            WHERE state = 'running' AND queue = p_queue
              AND (lim.max_running IS NOT NULL OR lim.max_running_per_key IS NOT NULL)
            GROUP BY concurrency_key
        ),
        budget AS (
            SELECT GREATEST(0, LEAST(
                p_limit::bigint,
                lim.max_running - (SELECT COALESCE(sum(n), 0)::bigint FROM running),
                lim.rate_limit - (SELECT COALESCE(sum(c), 0)::bigint FROM in_window))) AS n
        ),
        candidates AS (
            SELECT j.id, j.priority, j.run_at, j.concurrency_key FROM jobs j
            WHERE j.state = 'available' AND j.queue = p_queue
              AND (lim.max_running_per_key IS NULL OR j.concurrency_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM running r
                   WHERE r.key = j.concurrency_key AND r.n >= lim.max_running_per_key))
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT (SELECT n FROM budget) * CASE WHEN lim.max_running_per_key IS NULL THEN 1 ELSE p_lookahead END
            FOR UPDATE SKIP LOCKED
        ),
        chosen AS (
            SELECT c.id FROM (
                SELECT c.*, row_number() OVER (
                    PARTITION BY c.concurrency_key
                    ORDER BY c.priority DESC, c.run_at, c.id) AS key_rank
                FROM candidates c
            ) c
            LEFT JOIN running r ON r.key = c.concurrency_key
            WHERE lim.max_running_per_key IS NULL OR c.concurrency_key IS NULL
               OR c.key_rank + COALESCE(r.n, 0) <= lim.max_running_per_key
            ORDER BY c.priority DESC, c.run_at, c.id
            LIMIT (SELECT n FROM budget)
        ),
        claimed AS (
            UPDATE jobs j
            SET state = 'running', attempt = j.attempt + 1,
                lease_token = nextval('lease_tokens'), worker_id = p_worker,
                lease_expires_at = m.claimed_at + p_ttl_ms * interval '1 millisecond',
                attempted_at = m.claimed_at, updated_at = m.claimed_at
            FROM chosen, claim_moment m WHERE j.id = chosen.id
            RETURNING j.id, j.module_hash, j.queue, j.input, j.attempt, j.attempt_base,
                      j.max_attempts, j.timeout_ms, j.fuel, j.memory_limit_bytes,
                      j.lease_token, j.attempted_at, j.run_at
        ),
        logged AS (
            INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
            SELECT p_queue, 'available', 'running', count(*) FROM claimed HAVING count(*) > 0
        ),
        counted AS (
            SELECT b, sum(c)::int AS c FROM (
                SELECT b, c FROM in_window
                UNION ALL
                SELECT (SELECT b FROM now_bucket), count(*)::int FROM claimed
            ) AS starts GROUP BY b
        ),
        recorded AS (
            UPDATE queues
            SET rate_buckets = ARRAY(SELECT b FROM counted ORDER BY b),
                rate_counts = ARRAY(SELECT c FROM counted ORDER BY b)
            WHERE name = p_queue AND lim.rate_limit IS NOT NULL
        )
        SELECT false, c.id, c.module_hash, c.queue, c.input, c.attempt, c.attempt_base,
               c.max_attempts, c.timeout_ms, c.fuel, c.memory_limit_bytes,
               c.lease_token, c.attempted_at, c.run_at
        FROM claimed c;
END
$fn$;
