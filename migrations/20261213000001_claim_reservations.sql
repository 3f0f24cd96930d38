-- A limited claim that holds the queue's row lock only for a short
-- transaction of its own (Store::claim_limited in host/src/store/claim.rs).
--
-- Until now claim_limited_jobs held the queue's row from its lock to its
-- commit, across the update of every job it claimed, so two workers'
-- claims of one queue took turns and each waited 1.5-1.8 ms for the other's
-- commit (docs/benchmarks.md, "Queue limits"). Now a queue without a
-- per-key limit is claimed in two transactions:
--
-- 1. reserve_claim_places, under the queue's row lock, works out what the
--    limits leave as the locked claim does and reserves that many places,
--    which count as running in the queue's running bound and as starts in
--    its rate from then on. It commits at once.
-- 2. claim_reserved_jobs, without the queue's lock, locks the reservation's
--    row, claims up to its places, and records how many it started, when.
--
-- Each reservation first folds in the queue's reservations whose claims
-- are done: their unused places leave the bound and the rate, and the
-- starts move from the bucket they were reserved in to the bucket of their
-- moment. Until then a reservation's places count as starts in the bucket
-- of its expiry: a claim starts nothing after it, so that is no earlier
-- than any start the places stand for.
--
-- A claimer that stalls or dies between the two leaves its reservation
-- unclaimed. Once it expires, its claim takes nothing, and the next
-- reservation deletes it and returns its places. A claim that locked the
-- reservation's row in time keeps it: the fold skips a locked row (counted
-- as unclaimed meanwhile) and folds it as done once the claim commits.
--
-- A count (when the bound leaves no room) adds to the running jobs, in
-- the same snapshot, every place a reservation holds and has not used: a
-- reservation is either unclaimed (its places count) or claimed and
-- committed (its jobs run), never neither.
--
-- A settings write deletes the queue's reservations once it holds the
-- queue's row (put_queue and set_queue_paused, host/src/store/queues.rs),
-- waiting for the claims that locked theirs, as it waits for plain claims:
-- no claim starts a job under the settings before it, and no reservation
-- folds into rate buckets a new period has renumbered.
CREATE TABLE claim_reservations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue       text NOT NULL,
    -- Places reserved: in the queue's running bound, and starts in its rate.
    places      int NOT NULL CHECK (places > 0),
    -- The rate bucket the places count in until folded (NULL: no rate).
    rate_bucket bigint,
    -- After this the claim may no longer use the places.
    expires_at  timestamptz NOT NULL,
    -- Jobs the claim started, and when; NULL until it claims.
    started     int CHECK (started BETWEEN 0 AND places),
    started_at  timestamptz,
    CONSTRAINT claim_reservations_started_whole CHECK ((started IS NULL) = (started_at IS NULL))
);
CREATE INDEX claim_reservations_queue_idx ON claim_reservations (queue);

-- The queue's running jobs, plus every place its reservations hold and
-- have not used, in one snapshot: what a count must see.
CREATE FUNCTION running_or_reserved(p_queue text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM jobs WHERE state = 'running' AND queue = p_queue)
           + (SELECT COALESCE(sum(places - COALESCE(started, 0)), 0)
              FROM claim_reservations WHERE queue = p_queue)
$$;

-- A queue's rate counts (`queues.rate_buckets`, `rate_counts`) with
-- `p_add_counts` added to `p_add_buckets`, keeping only the buckets from
-- `p_oldest` on (none when it is NULL: the queue has no rate) that hold
-- starts. The one place where both limited claims below change the counts.
CREATE FUNCTION rate_counts_added(p_buckets bigint[], p_counts int[],
                                  p_add_buckets bigint[], p_add_counts int[],
                                  p_oldest bigint, OUT buckets bigint[], OUT counts int[])
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(array_agg(s.b ORDER BY s.b), '{}'), COALESCE(array_agg(s.c ORDER BY s.b), '{}')
    FROM (SELECT w.b, sum(w.c)::int AS c
          FROM (SELECT u.b, u.c FROM unnest(p_buckets, p_counts) AS u(b, c)
                UNION ALL
                SELECT a.b, a.c FROM unnest(p_add_buckets, p_add_counts) AS a(b, c)) AS w
          WHERE w.b >= p_oldest
          GROUP BY w.b
          HAVING sum(w.c) > 0) AS s
$$;

-- Starts an attempt of each of `p_jobs` (available, and locked by the
-- caller's transaction) at `p_at`, with the transition log's row: how
-- both limited claims below end.
CREATE FUNCTION start_claimed_jobs(p_jobs uuid[], p_queue text, p_worker text,
                                   p_at timestamptz, p_ttl_ms float8)
RETURNS TABLE (id uuid, module_hash text, queue text, input bytea, attempt int,
               attempt_base int, max_attempts int, timeout_ms int, fuel bigint,
               memory_limit_bytes bigint, lease_token bigint, attempted_at timestamptz,
               run_at timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH claimed AS (
            UPDATE jobs j
            SET state = 'running', attempt = j.attempt + 1,
                lease_token = nextval('lease_tokens'), worker_id = p_worker,
                lease_expires_at = p_at + p_ttl_ms * interval '1 millisecond',
                attempted_at = p_at, updated_at = p_at
            WHERE j.id = ANY (p_jobs)
            RETURNING j.id, j.module_hash, j.queue, j.input, j.attempt, j.attempt_base,
                      j.max_attempts, j.timeout_ms, j.fuel, j.memory_limit_bytes,
                      j.lease_token, j.attempted_at, j.run_at
        ),
        logged AS (
            INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
            SELECT p_queue, 'available', 'running', count(*) FROM claimed HAVING count(*) > 0
        )
        SELECT c.id, c.module_hash, c.queue, c.input, c.attempt, c.attempt_base,
               c.max_attempts, c.timeout_ms, c.fuel, c.memory_limit_bytes,
               c.lease_token, c.attempted_at, c.run_at
        FROM claimed c;
END
$fn$;

-- Step 1. Returns no row when the queue is paused or nothing can be
-- reserved; one row with `unlimited` set when the queue has no limits (any
-- more), with `keyed` set when it has a per-key limit (the caller claims
-- through claim_limited_jobs); else the reservation.
CREATE FUNCTION reserve_claim_places(p_queue text, p_limit bigint, p_buckets int,
                                     p_expiry_ms float8)
RETURNS TABLE (unlimited boolean, keyed boolean, reservation bigint)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    lim record;
    bucket_ms float8;
    folded_at timestamptz;
    -- What the folded reservations change: places no longer reserved, and
    -- rate counts to add per bucket (negative where they were reserved).
    returned bigint;
    moved_buckets bigint[];
    moved_counts int[];
    running_now bigint;
    reserved_at timestamptz;
    expires timestamptz;
    now_bucket bigint;
    expiry_bucket bigint;
    window_starts bigint;
    budget bigint := p_limit;
    new_id bigint;
BEGIN
    SELECT limited, paused, max_running, max_running_per_key, rate_limit, rate_period_ms,
           rate_buckets, rate_counts, running_bound
    INTO lim FROM queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR NOT lim.limited THEN
        RETURN QUERY SELECT true, false, NULL::bigint;
        RETURN;
    END IF;
    IF lim.paused THEN
        RETURN;
    END IF;
    IF lim.max_running_per_key IS NOT NULL THEN
        RETURN QUERY SELECT false, true, NULL::bigint;
        RETURN;
    END IF;
    bucket_ms := lim.rate_period_ms::float8 / p_buckets;

    -- A reservation whose claim holds its row (a claim that locked it just
    -- before it expired) is left for a later fold, not waited for: until
    -- then it counts as unclaimed.
    folded_at := clock_timestamp();
    WITH done AS (
        SELECT r.id FROM claim_reservations r
        WHERE r.queue = p_queue AND (r.started IS NOT NULL OR r.expires_at < folded_at)
        FOR UPDATE SKIP LOCKED
    ),
    folded AS (
        DELETE FROM claim_reservations r USING done WHERE r.id = done.id
        RETURNING r.rate_bucket, r.places, COALESCE(r.started, 0) AS started, r.started_at
    ),
    moves AS (
        SELECT f.rate_bucket AS b, -f.places AS c FROM folded f
        WHERE f.rate_bucket IS NOT NULL
        UNION ALL
        SELECT floor(extract(epoch FROM f.started_at) * 1000 / bucket_ms)::bigint, f.started
        FROM folded f
        WHERE f.rate_bucket IS NOT NULL AND f.started > 0
    )
    SELECT (SELECT COALESCE(sum(f.places - f.started), 0) FROM folded f), m.buckets, m.counts
    FROM (SELECT array_agg(m.b) AS buckets, array_agg(m.c) AS counts FROM moves m) AS m
    INTO returned, moved_buckets, moved_counts;

    -- Each statement below takes its snapshot after the lock was granted.
    -- Nothing is reserved, or counted, while no job waits: polling an idle
    -- queue writes nothing. Places a claim then finds no job for come back
    -- at the next fold.
    IF NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'available' AND j.queue = p_queue) THEN
        budget := 0;
        running_now := lim.running_bound - returned;
    ELSIF lim.max_running IS NOT NULL THEN
        IF lim.running_bound IS NOT NULL
           AND lim.running_bound - returned + p_limit <= lim.max_running THEN
            running_now := lim.running_bound - returned;
        ELSE
            running_now := running_or_reserved(p_queue);
        END IF;
        budget := LEAST(budget, lim.max_running - running_now);
    END IF;
    -- Read after every count: an attempt counted as ended ended before the
    -- attempts these places start.
    reserved_at := clock_timestamp();
    expires := reserved_at + p_expiry_ms * interval '1 millisecond';
    IF lim.rate_limit IS NOT NULL THEN
        now_bucket := floor(extract(epoch FROM reserved_at) * 1000 / bucket_ms)::bigint;
        expiry_bucket := floor(extract(epoch FROM expires) * 1000 / bucket_ms)::bigint;
        SELECT COALESCE(sum(c), 0) INTO window_starts
        FROM rate_counts_added(lim.rate_buckets, lim.rate_counts, moved_buckets,
                               moved_counts, now_bucket - p_buckets) r, unnest(r.counts) AS c;
        budget := LEAST(budget, lim.rate_limit - window_starts);
    END IF;
    budget := GREATEST(budget, 0);

    IF budget > 0 THEN
        INSERT INTO claim_reservations (queue, places, rate_bucket, expires_at)
        VALUES (p_queue, budget, expiry_bucket, expires)
        RETURNING id INTO new_id;
        RETURN QUERY SELECT false, false, new_id;
    END IF;

    -- A poll that reserved and folded nothing leaves the row as it was: no
    -- new version of it each poll of an idle or a full queue. (A count it
    -- made is not kept: it left no room, so the next poll counts again.)
    IF budget = 0 AND returned = 0 AND moved_buckets IS NULL THEN
        RETURN;
    END IF;
    UPDATE queues SET
        (rate_buckets, rate_counts) = (
            SELECT r.buckets, r.counts
            FROM rate_counts_added(lim.rate_buckets, lim.rate_counts,
                                   moved_buckets || expiry_bucket,
                                   moved_counts || budget::int,
                                   now_bucket - p_buckets) r),
        running_bound = running_now + budget
    WHERE name = p_queue;
END
$fn$;

-- Step 2. Claims up to the reservation's places, or nothing once the
-- reservation has expired or is gone (folded after expiring, or deleted by
-- a settings write).
CREATE FUNCTION claim_reserved_jobs(p_reservation bigint, p_worker text, p_ttl_ms float8)
RETURNS TABLE (id uuid, module_hash text, queue text, input bytea, attempt int,
               attempt_base int, max_attempts int, timeout_ms int, fuel bigint,
               memory_limit_bytes bigint, lease_token bigint, attempted_at timestamptz,
               run_at timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    res record;
    claimed_at timestamptz;
    chosen uuid[];
BEGIN
    SELECT r.queue, r.places, r.expires_at INTO res FROM claim_reservations r
    WHERE r.id = p_reservation AND r.started IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    claimed_at := clock_timestamp();
    IF claimed_at > res.expires_at THEN
        RETURN;
    END IF;
    chosen := ARRAY(
        SELECT j.id FROM jobs j
        WHERE j.state = 'available' AND j.queue = res.queue
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT res.places
        FOR UPDATE SKIP LOCKED);
    UPDATE claim_reservations SET started = cardinality(chosen), started_at = claimed_at
    WHERE id = p_reservation;
    RETURN QUERY SELECT * FROM start_claimed_jobs(chosen, res.queue, p_worker, claimed_at,
                                                  p_ttl_ms);
END
$fn$;

-- The locked claim, now taken by queues with a per-key limit only, as in
-- migration 20261212000001 except that the count of a queue without one
-- adds the places of reservations (a worker may get here for a queue whose
-- per-key limit was lifted since it looked; a queue with one has no
-- reservations), and that it starts its jobs through start_claimed_jobs
-- and counts its starts through rate_counts_added.
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
        FROM (SELECT concurrency_key AS k, count(*) AS n FROM jobs
              WHERE state = 'running' AND queue = p_queue
              GROUP BY concurrency_key) AS per_key;
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
