-- Signals between `ds-sync snapshot` and the running capture, read in WAL order.
--
-- ds-sync adds this table to its publication; capture decodes its inserts and never sends
-- them to a stream. Kinds:
--   snapshot  a request to (re-)send the existing rows of table_name;
--   low/high  the watermarks around one key-ordered chunk read of request_id, whose keys are
--             those after chunk_start (NULL: from the first key); chunk_end is the chunk's
--             last key (NULL on high: the chunk was the table's last);
--   done      every chunk of request_id is in the streams.
CREATE TABLE IF NOT EXISTS ds_sync.signals (
    id BIGSERIAL PRIMARY KEY,
    slot_name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('snapshot', 'low', 'high', 'done')),
    table_name TEXT NOT NULL,
    request_id BIGINT,
    chunk_start TEXT[],
    chunk_end TEXT[],
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Tables whose existing rows a snapshot of the slot sent (or is sending): a published table
-- missing here is snapshotted when capture first sees it.
CREATE TABLE IF NOT EXISTS ds_sync.snapshot_tables (
    slot_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    PRIMARY KEY (slot_name, table_name)
);
