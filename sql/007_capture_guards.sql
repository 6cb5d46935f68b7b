-- What capture needs to stay correct across runs, databases and processes.

-- Every stream each table has written to (changes, TRUNCATE resets, snapshots), recorded
-- before the stream's first message from the table is sent, so that a TRUNCATE resets every
-- stream the table ever wrote to, also those of earlier runs and per-key streams.
CREATE TABLE IF NOT EXISTS ds_sync.table_streams (
    slot_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    stream_name TEXT NOT NULL,
    PRIMARY KEY (slot_name, table_name, stream_name)
);

-- The source identity of each slot: one incarnation per slot ds-sync created (or adopted),
-- with the server's system identifier and timeline. A restored or new database has no slot
-- (slots are not in backups), so it gets a new incarnation.
--   origin 'created'  ds-sync created the slot;
--          'adopted'  ds-sync found a slot it had no (matching) record of;
--          'legacy'   the slot existed when this migration ran (an upgrade): its first run
--                     adopts it, and 409s for changes committed before lenient_below (the
--                     WAL position at the upgrade) may come from the earlier version's writes.
CREATE TABLE IF NOT EXISTS ds_sync.sources (
    slot_name TEXT PRIMARY KEY,
    incarnation TEXT,
    system_identifier TEXT,
    timeline BIGINT,
    origin TEXT NOT NULL CHECK (origin IN ('created', 'adopted', 'legacy')),
    start_lsn pg_lsn,
    lenient_below pg_lsn,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO ds_sync.sources (slot_name, origin, lenient_below)
SELECT slot_name, 'legacy', pg_current_wal_lsn()
FROM pg_replication_slots
WHERE database = current_database() AND plugin = 'pgoutput'
ON CONFLICT (slot_name) DO NOTHING;

-- The tail offset (HEAD Stream-Next-Offset) of each stream before an incarnation's first
-- POST to it, per DS server. A 409 on a stream whose tail never moved past this cannot be a
-- replay of the incarnation's own write: capture stops instead of skipping the row.
CREATE TABLE IF NOT EXISTS ds_sync.source_streams (
    incarnation TEXT NOT NULL,
    ds_server TEXT NOT NULL,
    stream_name TEXT NOT NULL,
    tail_before TEXT COLLATE "C" NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (incarnation, ds_server, stream_name)
);

-- Streams adopted by `ds-sync stream adopt`: this database's Stream-Seq values for the stream
-- carry the epoch as a prefix that sorts above every earlier value (of any source), and the
-- tables routed to it are snapshotted again by the next capture start.
CREATE TABLE IF NOT EXISTS ds_sync.stream_epochs (
    stream_name TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    resnapshot_pending BOOLEAN NOT NULL DEFAULT true,
    adopted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who captures from each slot: every `ds-sync run` raises the epoch when it starts, renews a
-- short lease while it runs, and stops when it finds a higher epoch (it was taken over).
CREATE TABLE IF NOT EXISTS ds_sync.slot_owners (
    slot_name TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    owner TEXT NOT NULL,
    lease_until TIMESTAMPTZ,
    prev_lease_until TIMESTAMPTZ,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
