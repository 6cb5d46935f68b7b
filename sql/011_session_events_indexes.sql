-- Indexes the readers of session_events need, and what retention needs.
--   (stream_name, id)   one stream's events in the order they were stored:
--                       SELECT ... WHERE stream_name = $1 ORDER BY id [WHERE id > $last LIMIT n]
--   (received_at)       recent events (WHERE received_at > now() - interval '1 hour'), and
--                       `ds-sync prune`, which deletes by received_at in bounded batches.
-- On a large existing table CREATE INDEX blocks writes while it builds: create them first
-- with CREATE INDEX CONCURRENTLY under these names, and this file adopts them.
CREATE INDEX IF NOT EXISTS session_events_stream_id_idx
    ON public.session_events (stream_name, id);
CREATE INDEX IF NOT EXISTS session_events_received_at_idx
    ON public.session_events (received_at);

-- Dead letters are pruned by age (`ds-sync prune --dead-letters-older-than`).
CREATE INDEX IF NOT EXISTS dead_letters_created_at_idx ON ds_sync.dead_letters (created_at);

-- How ds-sync partitions a table it made partitioned (`ds-sync init --partition-by`): the
-- interval names its partitions and tells `run` which ones to create ahead of time.
CREATE TABLE IF NOT EXISTS ds_sync.partitioning (
    table_name TEXT PRIMARY KEY,
    part_interval TEXT NOT NULL CHECK (part_interval IN ('day', 'week', 'month')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
