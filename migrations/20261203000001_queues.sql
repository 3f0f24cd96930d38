-- What the operator of a queue grants its tasks (host/src/queue/). A queue
-- without a row grants nothing; jobs name queues freely and do not need one.
CREATE TABLE queues (
    name           text PRIMARY KEY,
    -- AllowedHost entries in their printed form (queue/allowed_host.rs).
    allowed_hosts  text[] NOT NULL DEFAULT '{}',
    -- Configuration a task may read: a JSON object of strings.
    config         jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- A queue's secrets, sealed (queue/secret_key.rs): only a server holding the
-- key that sealed them (key_id) can open them, and each opens only as its own
-- queue and name.
CREATE TABLE queue_secrets (
    queue          text NOT NULL REFERENCES queues (name) ON DELETE CASCADE,
    name           text NOT NULL,
    -- Hosts the value may be sent to, like queues.allowed_hosts.
    allowed_hosts  text[] NOT NULL,
    key_id         text NOT NULL,
    nonce          bytea NOT NULL,
    ciphertext     bytea NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, name)
);
