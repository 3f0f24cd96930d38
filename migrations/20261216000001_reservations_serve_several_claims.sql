-- A reservation that serves several claims of its worker while the queue
-- is far from its limits (Store::claim_limited in host/src/store/claim.rs).
--
-- Each limited claim used to reserve its places first: one more
-- transaction per claim, which cost PostgreSQL about 1 ms of CPU a claim,
-- all of what a limited drain spent beyond an unlimited one
-- (docs/benchmarks.md, "Queue limits"). Now a reservation may take up to
-- p_claims times the claim's places, but never more than half of what the
-- limits leave, so near a limit it takes what the claim asks, as before.
-- The worker claims from it until it is closed: by a claim that comes back
-- short (no more jobs wait), by a claim that uses its last place, or by its
-- expiry (a worker that stops or dies with one open leaves its places held
-- until then, as a worker stalled between the two steps does). Until it is
-- folded, its places count as running and as starts in
-- the bucket of its expiry, used or not; at the fold, what it started moves
-- to the bucket of its last claim, never earlier than any of its starts,
-- so every window that holds one of them counts it.
ALTER TABLE claim_reservations ADD COLUMN closed boolean NOT NULL DEFAULT false;
UPDATE claim_reservations SET closed = true WHERE started IS NOT NULL;

DROP FUNCTION reserve_claim_places(text, bigint, int, float8);
DROP FUNCTION claim_reserved_jobs(bigint, text, float8);

-- Step 1, as in migration 20261213000001 but for how many places it
-- reserves, and that it returns them.
CREATE FUNCTION reserve_claim_places(p_queue text, p_limit bigint, p_claims int,
                                     p_buckets int, p_expiry_ms float8)
RETURNS TABLE (unlimited boolean, keyed boolean, reservation bigint, places bigint)
LANGUAGE plpgsql
-- Every statement reads or writes one queue's few rows by their indexes
-- (migration 20261215000001).
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    lim record;
    bucket_ms float8;
    folded_at timestamptz;
    returned bigint;
    moved_buckets bigint[];
    moved_counts int[];
    running_now bigint;
    reserved_at timestamptz;
    expires timestamptz;
    now_bucket bigint;
    expiry_bucket bigint;
    window_starts bigint;
    -- What the limits leave; NULL while none applies.
    room bigint;
    budget bigint;
    new_id bigint;
BEGIN
    SELECT limited, paused, max_running, max_running_per_key, rate_limit, rate_period_ms,
           rate_buckets, rate_counts, running_bound
    INTO lim FROM queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR NOT lim.limited THEN
        RETURN QUERY SELECT true, false, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF lim.paused THEN
        RETURN;
    END IF;
    IF lim.max_running_per_key IS NOT NULL THEN
        RETURN QUERY SELECT false, true, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    bucket_ms := lim.rate_period_ms::float8 / p_buckets;

    folded_at := clock_timestamp();
    WITH done AS (
        SELECT r.id FROM claim_reservations r
        WHERE r.queue = p_queue AND (r.closed OR r.expires_at < folded_at)
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

    IF NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'available' AND j.queue = p_queue) THEN
        room := 0;
        running_now := lim.running_bound - returned;
    ELSIF lim.max_running IS NOT NULL THEN
        -- The bound is good enough while it leaves room for every place
        -- this reservation may take.
        IF lim.running_bound IS NOT NULL
           AND lim.running_bound - returned + p_limit * p_claims <= lim.max_running THEN
            running_now := lim.running_bound - returned;
        ELSE
            running_now := running_or_reserved(p_queue);
        END IF;
        room := lim.max_running - running_now;
    END IF;
    reserved_at := clock_timestamp();
    expires := reserved_at + p_expiry_ms * interval '1 millisecond';
    IF lim.rate_limit IS NOT NULL THEN
        now_bucket := floor(extract(epoch FROM reserved_at) * 1000 / bucket_ms)::bigint;
        expiry_bucket := floor(extract(epoch FROM expires) * 1000 / bucket_ms)::bigint;
        SELECT COALESCE(sum(c), 0) INTO window_starts
        FROM rate_counts_added(lim.rate_buckets, lim.rate_counts, moved_buckets,
                               moved_counts, now_bucket - p_buckets) r, unnest(r.counts) AS c;
        room := LEAST(room, lim.rate_limit - window_starts);
    END IF;
    -- What the claim asks, or places for p_claims claims where that leaves
    -- at least as much again to the others. LEAST and GREATEST skip NULLs.
    budget := GREATEST(LEAST(p_limit, room), LEAST(p_limit * p_claims, room / 2), 0);

    IF budget > 0 THEN
        INSERT INTO claim_reservations (queue, places, rate_bucket, expires_at)
        VALUES (p_queue, budget, expiry_bucket, expires)
        RETURNING id INTO new_id;
        RETURN QUERY SELECT false, false, new_id, budget;
    END IF;

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

-- Step 2: claims up to p_limit of the reservation's places left, or nothing
-- once it is closed, has expired or is gone (folded after expiring, or
-- deleted by a settings write). Closes it when the claim comes back short
-- or uses its last place.
CREATE FUNCTION claim_reserved_jobs(p_reservation bigint, p_worker text, p_limit bigint,
                                    p_ttl_ms float8)
RETURNS TABLE (id uuid, module_hash text, queue text, input bytea, attempt int,
               attempt_base int, max_attempts int, timeout_ms int, fuel bigint,
               memory_limit_bytes bigint, lease_token bigint, attempted_at timestamptz,
               run_at timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    res record;
    claimed_at timestamptz;
    wanted bigint;
    chosen uuid[];
    used bigint;
BEGIN
    SELECT r.queue, r.places, COALESCE(r.started, 0) AS started, r.expires_at INTO res
    FROM claim_reservations r
    WHERE r.id = p_reservation AND NOT r.closed
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    claimed_at := clock_timestamp();
    IF claimed_at > res.expires_at THEN
        RETURN;
    END IF;
    wanted := LEAST(p_limit, res.places - res.started);
    chosen := ARRAY(
        SELECT j.id FROM jobs j
        WHERE j.state = 'available' AND j.queue = res.queue
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT wanted
        FOR UPDATE SKIP LOCKED);
    used := res.started + cardinality(chosen);
    UPDATE claim_reservations
    SET started = used, started_at = claimed_at,
        closed = cardinality(chosen) < wanted OR used = res.places
    WHERE id = p_reservation;
    RETURN QUERY SELECT * FROM start_claimed_jobs(chosen, res.queue, p_worker, claimed_at,
                                                  p_ttl_ms);
END
$fn$;
