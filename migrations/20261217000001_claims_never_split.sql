-- A claim is never split between two reservations
-- (Store::claim_limited in host/src/store/claim.rs).
--
-- A claim that asked for more places than its worker's open reservation had
-- left used to take what was left, then reserve and claim the rest: three
-- round trips, two of them claims, once per reservation (docs/benchmarks.md,
-- "Queue limits"). Now such a claim reserves at once, and passes the open
-- reservation as p_closing: this transaction closes it before the fold, so
-- its unused places come back in the same transaction that reserves the new
-- ones, and the claim takes all its jobs from the new reservation. Otherwise
-- as in migration 20261216000001.
DROP FUNCTION reserve_claim_places(text, bigint, int, int, float8);

CREATE FUNCTION reserve_claim_places(p_queue text, p_limit bigint, p_claims int,
                                     p_buckets int, p_expiry_ms float8, p_closing bigint)
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

    -- The caller's open reservation, which had too few places for its
    -- claim: closed here, so the fold below gives its places back.
    UPDATE claim_reservations r SET closed = true
    WHERE r.id = p_closing AND r.queue = p_queue;

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
