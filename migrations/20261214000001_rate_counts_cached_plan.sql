-- rate_counts_added (migration 20261213000001) in PL/pgSQL instead of SQL,
-- with the same arguments, result and query.
--
-- PostgreSQL 15 plans a SQL-language function's query again at every call
-- (it keeps no plans for them), and a limited claim calls this one twice
-- per reservation: pg_stat_statements on a queue claimed a hundred jobs at
-- a time showed each call planned anew, the two statements that call it
-- taking about half of reserve_claim_places (docs/benchmarks.md, "Queue
-- limits"). PL/pgSQL keeps the query's plan for the session.
CREATE OR REPLACE FUNCTION rate_counts_added(p_buckets bigint[], p_counts int[],
                                             p_add_buckets bigint[], p_add_counts int[],
                                             p_oldest bigint, OUT buckets bigint[],
                                             OUT counts int[])
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    SELECT COALESCE(array_agg(s.b ORDER BY s.b), '{}'), COALESCE(array_agg(s.c ORDER BY s.b), '{}')
    INTO buckets, counts
    FROM (SELECT w.b, sum(w.c)::int AS c
          FROM (SELECT u.b, u.c FROM unnest(p_buckets, p_counts) AS u(b, c)
                UNION ALL
                SELECT a.b, a.c FROM unnest(p_add_buckets, p_add_counts) AS a(b, c)) AS w
          WHERE w.b >= p_oldest
          GROUP BY w.b
          HAVING sum(w.c) > 0) AS s;
END
$fn$;
