-- A cancelled attempt keeps its place under its queue's `max_running` and
-- `max_running_per_key` until its guest has surely stopped.
--
-- A cancel ends a running attempt in PostgreSQL at once
-- (`cancel_if_unfinished` in host/src/store/actions.rs), but its guest runs
-- until its worker's next heartbeat round reads the revocation, up to a
-- third of the lease TTL later. Until now the place freed with the cancel,
-- so another job could start meanwhile: one guest more than the limit per
-- job cancelled (docs/failure-semantics.md, "Queue limits").
--
-- Now the cancel also writes the attempt here. The row holds its place
-- until the attempt's worker reports it (`finish_if_lease_matches` in
-- host/src/store/execution.rs deletes it on that report, whose outcome is
-- then `Stale`) or, if none comes, until `held_until`: one lease TTL after
-- the cancel (the one the attempt's claim granted, or the API's if longer),
-- by when the guest's grant has lapsed. `requeue_if_finished` waits for
-- the same moment before a retry may start. A rescuer's report does not
-- release the row: it does not know the guest has stopped.
--
-- The running bound (`queues.running_bound`) needs no change: a row
-- appears only in the statement that takes its job out of `running`, so
-- running plus held never grows but by a claim.
CREATE TABLE stopping_attempts (
    job_id          uuid NOT NULL,
    lease_token     bigint NOT NULL,
    queue           text NOT NULL,
    concurrency_key text,
    held_until      timestamptz NOT NULL,
    PRIMARY KEY (job_id, lease_token)
);

-- As in migration 20261213000001, plus the places held by cancelled
-- attempts; the signature is unchanged, so binaries on either side of this
-- migration call it alike.
CREATE OR REPLACE FUNCTION running_or_reserved(p_queue text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM jobs WHERE state = 'running' AND queue = p_queue)
           + (SELECT count(*) FROM stopping_attempts
              WHERE queue = p_queue AND held_until > now())
           + (SELECT COALESCE(sum(places - COALESCE(started, 0)), 0)
              FROM claim_reservations WHERE queue = p_queue)
$$;

-- As in migration 20261213000001, except that the count per key adds the
-- places held by cancelled attempts.
CREATE OR REPLACE FUNCTION claim_limited_jobs(p_queue text, p_worker text, p_limit bigint,
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
        FROM (SELECT placed.k, count(*) AS n
              FROM (SELECT concurrency_key AS k FROM jobs
                    WHERE state = 'running' AND queue = p_queue
                    UNION ALL
                    SELECT concurrency_key FROM stopping_attempts
                    WHERE queue = p_queue AND held_until > now()) AS placed
              GROUP BY placed.k) AS per_key;
        counted_now := true;
    ELSIF lim.max_running IS NOT NULL THEN
        IF lim.running_bound IS NOT NULL
           AND lim.running_bound + p_limit <= lim.max_running THEN
            running_now := lim.running_bound;
        ELSE
            running_now := running_or_reserved(p_queue);
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

    RETURN QUERY SELECT false, * FROM start_claimed_jobs(chosen, p_queue, p_worker, claimed_at,
                                                         p_ttl_ms);

    -- An idle poll that took the bound and found nothing leaves the row
    -- as it was: no new version of it each poll.
    IF cardinality(chosen) = 0 AND NOT counted_now THEN
        RETURN;
    END IF;
    -- The chosen jobs are locked by this transaction and were available,
    -- so the update above started every one of them.
    UPDATE queues SET
        (rate_buckets, rate_counts) = (
            SELECT r.buckets, r.counts
            FROM rate_counts_added(lim.rate_buckets, lim.rate_counts, ARRAY[now_bucket],
                                   ARRAY[cardinality(chosen)], now_bucket - p_buckets) r),
        running_bound = running_now + cardinality(chosen)
    WHERE name = p_queue;
END
$fn$;
