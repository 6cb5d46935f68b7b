-- Ingest shared across instances: every running ingest registers here, and each
-- subscription is owned by one live instance at a time (README, "HA and scaling").
--
-- An instance renews its own row once per heartbeat (`lease_until = now() + TTL`, on the
-- database's clock), which renews every lease it holds: a subscription's lease is its
-- `owner` column, valid while the owning instance is live. An instance is live while its
-- lease runs and its listening session (`backend_pid`, `backend_start`) is still connected,
-- so a killed process (whose socket the kernel closes) gives its streams up at once and a
-- hung one (whose session lives on) when its lease runs out.
CREATE TABLE IF NOT EXISTS ds_sync.ingest_instances (
    instance_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INT NOT NULL,
    backend_pid INT,
    backend_start TIMESTAMPTZ,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until TIMESTAMPTZ NOT NULL
);

-- The instances that hold their leases now. Without the privileges to see another role's
-- sessions in full, `backend_start` reads NULL and the process id alone is compared.
CREATE OR REPLACE VIEW ds_sync.live_ingest_instances AS
SELECT i.*
FROM ds_sync.ingest_instances i
WHERE i.lease_until > now()
  AND EXISTS (
      SELECT 1 FROM pg_stat_activity a
      WHERE a.pid = i.backend_pid
        AND (a.backend_start IS NULL OR a.backend_start = i.backend_start));

-- Which instance follows each subscription (NULL: none; an instance that is not live
-- holds nothing), and since when.
ALTER TABLE ds_sync.subscriptions
    ADD COLUMN IF NOT EXISTS owner TEXT,
    ADD COLUMN IF NOT EXISTS owned_since TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS subscriptions_owner_idx ON ds_sync.subscriptions (owner);
