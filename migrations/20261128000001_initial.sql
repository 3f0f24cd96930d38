-- TaskFlow's data model. docs/data-model.md explains every table, column and
-- index; host/src/store/state.rs documents the job state machine.
-- Never edit an applied migration: add a new one.

-- A job's place in its lifecycle. Who moves a job out of each state is
-- documented on `JobState` in host/src/store/state.rs.
CREATE TYPE job_state AS ENUM (
    'scheduled',  -- waiting for its run_at
    'available',  -- due, waiting for a worker
    'running',    -- leased by a worker
    'retrying',   -- failed, waiting out its backoff until run_at
    'succeeded',  -- finished with an output
    'dead',       -- failed for good (the dead-letter state)
    'cancelled'   -- stopped by a user
);

-- How one attempt ended.
CREATE TYPE attempt_outcome AS ENUM (
    'succeeded',
    'failed',         -- the guest returned an error or the sandbox stopped it
    'lease_expired',  -- the worker vanished; the rescuer ended the attempt
    'cancelled'       -- a user cancelled the job while it ran
);

-- Uploaded task components, content-addressed.
CREATE TABLE modules (
    hash        text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{64}$'),  -- sha256 of bytes, lowercase hex
    size_bytes  bigint NOT NULL CHECK (size_bytes > 0),
    bytes       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Fencing tokens. One sequence for all jobs: a token is unique and every
-- claim of a job gets a larger token than the claim before it.
CREATE SEQUENCE lease_tokens AS bigint;

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,  -- UUIDv7: ordered by creation time
    module_hash         text NOT NULL REFERENCES modules (hash),
    queue               text NOT NULL,
    priority            smallint NOT NULL DEFAULT 0,  -- higher runs first
    state               job_state NOT NULL,
    input               bytea NOT NULL,
    output              bytea,
    -- Attempts started over the job's whole life; numbers attempt records.
    attempt             integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- `attempt` when the job was last requeued by a user (0 if never):
    -- attempt - attempt_base attempts have been used of max_attempts.
    attempt_base        integer NOT NULL DEFAULT 0 CHECK (attempt_base >= 0),
    max_attempts        integer NOT NULL CHECK (max_attempts > 0),
    timeout_ms          integer NOT NULL CHECK (timeout_ms > 0),
    fuel                bigint NOT NULL CHECK (fuel > 0),
    memory_limit_bytes  bigint NOT NULL CHECK (memory_limit_bytes > 0),
    run_at              timestamptz NOT NULL,
    -- The fencing token of the latest claim; a worker's writes must carry it.
    lease_token         bigint,
    -- While running: when the rescuer next asks Redis whether the lease is alive.
    lease_expires_at    timestamptz,
    worker_id           text,
    idempotency_key     text,
    -- sha256 of the submission, to tell a retried request from a conflicting one.
    request_fingerprint bytea,
    last_error          jsonb,  -- {"kind": ..., "message": ...} of the latest failed attempt
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    attempted_at        timestamptz,  -- start of the latest attempt
    finished_at         timestamptz,  -- when it reached succeeded, dead or cancelled
    CHECK ((state = 'running') = (lease_expires_at IS NOT NULL))
);

-- The claim path: the next due jobs of one queue, in priority order.
CREATE INDEX jobs_claim_idx ON jobs (queue, priority DESC, run_at, id) WHERE state = 'available';
-- The scheduler: scheduled and retrying jobs by due time.
CREATE INDEX jobs_due_idx ON jobs (run_at) WHERE state IN ('scheduled', 'retrying');
-- The rescuer: running jobs whose lease should be checked.
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
-- Idempotent submission, enforced by the database rather than a racy check.
CREATE UNIQUE INDEX jobs_idempotency_key_idx ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Listing jobs newest first, filtered by state or queue (keyset pagination on id).
CREATE INDEX jobs_state_list_idx ON jobs (state, id);
CREATE INDEX jobs_queue_list_idx ON jobs (queue, id);

-- One row per finished attempt, written by whoever ended it (the worker, the
-- rescuer, or a cancel), in the same statement as the job's transition.
CREATE TABLE job_attempts (
    job_id         uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    lease_token    bigint NOT NULL,
    attempt        integer NOT NULL,
    worker_id      text NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL DEFAULT now(),
    outcome        attempt_outcome NOT NULL,
    error_kind     text,
    error_message  text,
    fuel_consumed  bigint,
    duration_us    bigint,
    logs           jsonb NOT NULL DEFAULT '[]',  -- [{"source", "level", "message"}], bounded
    logs_dropped   integer NOT NULL DEFAULT 0,   -- lines dropped past the bound
    PRIMARY KEY (job_id, lease_token)
);
