-- Ingest (stream -> database) bookkeeping. The offsets themselves live in
-- ds_sync.stream_offsets (002), written in the same transaction as the rows they cover.

-- The streams a running ds-sync ingests, and what each subscription is doing. The set is
-- changed by `ds-sync subscribe` / `unsubscribe` (which NOTIFY ds_sync_subscriptions);
-- the state columns are written by the running ds-sync. `generation` grows on every
-- subscribe, so re-subscribing restarts a subscription that stopped (closed stream, 410).
CREATE TABLE IF NOT EXISTS ds_sync.subscriptions (
    stream_name TEXT PRIMARY KEY,
    generation BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    up_to_date BOOLEAN NOT NULL DEFAULT false,
    last_event_at TIMESTAMPTZ,
    state_at TIMESTAMPTZ
);

-- Stream data that could not be stored as session_events rows (not JSON, not an array, not
-- UTF-8, over the size limit, refused by jsonb). Written in the transaction that advances
-- the stream's offset past it, so nothing is skipped without a trace. `raw` holds the whole
-- data, or only its first bytes when `truncated` (then `size` is the full length).
CREATE TABLE IF NOT EXISTS ds_sync.dead_letters (
    id BIGSERIAL PRIMARY KEY,
    stream_name TEXT NOT NULL,
    ds_offset TEXT COLLATE "C" NOT NULL,
    error TEXT NOT NULL,
    raw BYTEA NOT NULL,
    size BIGINT NOT NULL,
    truncated BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_stream_idx ON ds_sync.dead_letters (stream_name, id);
