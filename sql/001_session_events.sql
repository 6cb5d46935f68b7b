-- The sink table of the stream -> database direction, exactly as the sync-layer document
-- defines it. ds-sync fills it with binary COPY; ds_offset is the stream offset of the
-- control event that committed the row.
CREATE TABLE IF NOT EXISTS public.session_events (
    id SERIAL PRIMARY KEY,
    stream_name TEXT NOT NULL,
    event_key TEXT,
    event_type TEXT,
    operation TEXT,
    payload JSONB NOT NULL,
    ds_offset TEXT,
    received_at TIMESTAMPTZ DEFAULT NOW()
);
