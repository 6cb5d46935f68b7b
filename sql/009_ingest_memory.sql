-- What each subscription holds in memory (rows waiting for their control event or their
-- commit, bytes received and not decoded yet), and the most it held since its subscription
-- started in the running ds-sync; written about once a second by the state reporter.
ALTER TABLE ds_sync.subscriptions
    ADD COLUMN IF NOT EXISTS buffered_bytes BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS peak_buffered_bytes BIGINT NOT NULL DEFAULT 0;
