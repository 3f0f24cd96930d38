-- A queue's rate starts are counted in buckets numbered under the period
-- they were recorded with (claim_limited_jobs: a start at t ms is in bucket
-- floor(t / (period / 20))). A bucket number means nothing under another
-- period: after a longer period, the old numbers lay ahead of every new
-- one and held the queue at its rate for good; after a shorter one, they
-- lay behind every window and the starts were forgotten, admitting up to
-- twice the rate. So put_queue (host/src/store/queues.rs) renumbers them
-- when the period changes: each old bucket's starts move to the new bucket
-- holding the old bucket's end, a moment no earlier than any of them, so a
-- start is counted in every window that holds it (and, for less than one
-- old bucket, in some that do not: the rate may admit a little less right
-- after the change, never more). Without a period, no starts are kept.
CREATE FUNCTION rate_buckets_for_period(p_buckets bigint[], p_counts int[],
                                        p_from_ms bigint, p_to_ms bigint,
                                        OUT buckets bigint[], OUT counts int[])
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_from_ms = p_to_ms THEN p_buckets
                ELSE COALESCE(array_agg(moved.b ORDER BY moved.b), '{}') END,
           CASE WHEN p_from_ms = p_to_ms THEN p_counts
                ELSE COALESCE(array_agg(moved.c ORDER BY moved.b), '{}') END
    FROM (
        SELECT floor((u.b + 1)::float8 * p_from_ms / p_to_ms)::bigint AS b, sum(u.c)::int AS c
        FROM unnest(p_buckets, p_counts) AS u(b, c)
        WHERE p_from_ms IS NOT NULL AND p_to_ms IS NOT NULL AND p_from_ms <> p_to_ms
        GROUP BY 1
    ) AS moved
$$;
