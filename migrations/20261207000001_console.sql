-- Sessions of the web console (host/src/console/session.rs). The browser
-- holds a random session id in an HttpOnly cookie; PostgreSQL holds only
-- its SHA-256, so a read of this table opens no session. Every API process
-- sees every session, and a session ends when its row does (logout, expiry)
-- or when the token it was opened with is no longer configured.
CREATE TABLE console_sessions (
    id_sha256     bytea PRIMARY KEY CHECK (length(id_sha256) = 32),
    -- SHA-256 of the API token pasted at login; NULL on an open API.
    token_sha256  bytea CHECK (length(token_sha256) = 32),
    -- Sent back in every state-changing form of the session.
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry_idx ON console_sessions (expires_at);

-- Attempt activity in 10-second buckets, folded or not yet folded: what the
-- queue listing's last minute and hour and the console's per-minute chart
-- read (host/src/store/queue_stats.rs).
CREATE VIEW queue_activity_current AS
    SELECT queue, bucket, started, succeeded, failed FROM queue_activity
    UNION ALL
    SELECT l.queue, date_bin('10 seconds', l.at, timestamptz 'epoch'),
           a.started, a.succeeded, a.failed
    FROM job_transition_log l, attempt_activity(l.from_state, l.to_state, l.jobs) a;

-- The peak linear memory of each attempt's guest, in bytes (the sandbox's
-- memory limiter, host/src/sandbox/guest.rs): the console's attempt
-- timeline and `GET /v1/jobs/{id}/attempts` show it beside fuel and time.
-- NULL for attempts recorded before, and for rescued or cancelled ones.
ALTER TABLE job_attempts ADD COLUMN memory_bytes bigint CHECK (memory_bytes >= 0);
