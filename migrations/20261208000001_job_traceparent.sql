-- The W3C `traceparent` a job's spans are children of (job/trace_context.rs,
-- telemetry/traces.rs): the submission's span, or the caller's. NULL when
-- the submission carried none and the API exports no traces. The length
-- check is NOT VALID so that adding it reads none of the existing rows
-- (all NULL).
ALTER TABLE jobs ADD COLUMN traceparent text;
ALTER TABLE jobs ADD CONSTRAINT jobs_traceparent_length
    CHECK (octet_length(traceparent) = 55) NOT VALID;
