-- The lease TTL each claim granted, kept on the job like `worker_id` and
-- `attempted_at`, so that what ends an attempt outside its worker waits for
-- that worker's next heartbeat round: a retry after a cancel waits it out
-- from the cancel (`requeue_if_finished` in host/src/store/actions.rs), a
-- revocation marker lasts as long (`Leases::revoke`), and the rescuer trusts
-- a key missing after Redis lost its keys only once it has passed
-- (host/src/maintenance/rescuer.rs). Before, each used the TTL of the API or
-- rescuer doing it, and a worker given a TTL over three times longer could
-- still run a cancelled or rescued guest when the job's next attempt
-- started. NULL for claims made before this migration; the plain claim of a
-- binary that predates it leaves an earlier claim's value. Each reader
-- therefore waits at least its own TTL too.
--
-- A column without a default changes only the catalog; the lock timeout
-- bounds how long the ALTER may queue behind running transactions, and
-- everything behind it (docs/data-model.md, "Changing the schema").
SET LOCAL lock_timeout = '5s';
ALTER TABLE jobs ADD COLUMN lease_ttl_ms bigint;

-- As in 20261213000001_claim_reservations.sql, plus `lease_ttl_ms`; the
-- signature is unchanged, so binaries on either side of this migration call
-- it alike.
CREATE OR REPLACE FUNCTION start_claimed_jobs(p_jobs uuid[], p_queue text, p_worker text,
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
                lease_ttl_ms = ceil(p_ttl_ms)::bigint,
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
