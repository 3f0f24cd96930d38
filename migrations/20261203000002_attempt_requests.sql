-- The outbound HTTP requests of each attempt (host/src/sandbox/outbound/
-- audit.rs): the first few in full, the rest counted. Older attempts made
-- none.
ALTER TABLE job_attempts
    ADD COLUMN requests jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN requests_dropped bigint NOT NULL DEFAULT 0;
