-- Who runs the maintenance services (scheduler, rescuer): one worker at a
-- time, elected by holding this row's term. A term lasts until expires_at
-- unless renewed; a leader that dies or stalls past it is replaced by the
-- next worker that asks (host/src/maintenance/elector.rs).
CREATE TABLE maintenance_leader (
    name        text PRIMARY KEY,        -- one row per leadership: 'maintenance'
    leader_id   text NOT NULL,           -- the worker id holding the term
    elected_at  timestamptz NOT NULL,    -- when this leader's first term began
    expires_at  timestamptz NOT NULL     -- when the term ends unless renewed
);
