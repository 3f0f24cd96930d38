-- reserve_claim_places (migration 20261213000001) with generic plans for
-- its statements.
--
-- PL/pgSQL prepares each statement of a function once per connection, but
-- under plan_cache_mode = auto it plans a statement with parameters afresh
-- at each of its first five executions, and at every later one where a
-- plan for the given values looks cheaper than the generic plan. Every
-- statement of a reservation reads or writes one queue's few rows through
-- their indexes, which no value changes. Counted per statement by the
-- server (log_statement_stats) over limited drains, a worker connection's
-- second to sixth reservation took 1.3-1.4 ms of PostgreSQL's CPU before
-- this and 0.7-0.9 ms after it, as the later ones (0.8-1.0 ms) do
-- (docs/benchmarks.md, "Queue limits").
ALTER FUNCTION reserve_claim_places(text, bigint, int, float8)
    SET plan_cache_mode = force_generic_plan;
