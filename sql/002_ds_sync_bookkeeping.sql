-- ds-sync's own bookkeeping lives in the ds_sync schema (created by the migration runner
-- together with ds_sync.migrations).

-- The last committed offset of each ingested stream. It is written in the same transaction
-- as the rows it covers, so a restart resumes exactly after the last committed event.
-- Offsets are opaque strings that sort bytewise: compare them with COLLATE "C".
CREATE TABLE IF NOT EXISTS ds_sync.stream_offsets (
    stream_name TEXT PRIMARY KEY,
    ds_offset TEXT COLLATE "C" NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
