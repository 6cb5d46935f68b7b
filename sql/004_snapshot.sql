-- Initial snapshots of capture slots (DB -> stream).
--
-- A row is written with state 'running' before the slot is created, and set to 'done' only
-- after every snapshot row was acknowledged by the DS server. A start that finds 'running'
-- knows the last snapshot did not finish (its exported snapshot died with its session), so it
-- recreates the slot, resets the streams listed below and snapshots again.
CREATE TABLE IF NOT EXISTS ds_sync.snapshots (
    slot_name TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    consistent_point pg_lsn,
    rows_sent BIGINT NOT NULL DEFAULT 0,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);

-- Every stream a snapshot of the slot wrote to, recorded before its first message is sent,
-- so a restarted or repeated snapshot can send each of them a reset.
CREATE TABLE IF NOT EXISTS ds_sync.snapshot_streams (
    slot_name TEXT NOT NULL,
    stream_name TEXT NOT NULL,
    PRIMARY KEY (slot_name, stream_name)
);
