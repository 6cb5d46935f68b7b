-- Slots whose ds_sync.snapshot_tables is complete: it lists every table a snapshot of the
-- slot covered, even when that is none. Written by the initial snapshot, and when capture
-- adopts a slot it did not snapshot (made by `ds-sync slot create`, or from before this
-- table existed), with the tables published at that moment. For such a slot, a published
-- table missing from ds_sync.snapshot_tables joined the publication later (while capture ran
-- or while it was stopped) and is snapshotted.
CREATE TABLE IF NOT EXISTS ds_sync.snapshot_baselines (
    slot_name TEXT PRIMARY KEY,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
