-- A guest can log more lines than an integer counts within one attempt's
-- wall-clock limit; the counter of dropped lines saturates at the top of a
-- bigint instead (host/src/sandbox/capture.rs).
ALTER TABLE job_attempts ALTER COLUMN logs_dropped TYPE bigint;
