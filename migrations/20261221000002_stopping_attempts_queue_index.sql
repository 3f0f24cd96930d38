-- no-transaction
-- The places a queue's cancelled attempts hold, as the limited claims
-- count them (`running_or_reserved` and `claim_limited_jobs`, migration
-- 20261221000001). Built CONCURRENTLY like every index since migration
-- 20261219000001 (docs/data-model.md, "Changing the schema"), though the
-- table is new: a failed build leaves an invalid index and this file
-- unapplied; drop the index CONCURRENTLY and migrate again.
CREATE INDEX CONCURRENTLY stopping_attempts_queue_idx ON stopping_attempts (queue, held_until);
