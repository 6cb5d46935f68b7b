-- A probe row: each capture session inserts one into ds_sync.signals (which is published)
-- right after the walsender starts, and confirms keepalive positions only once the probe has
-- come back decoded. A slot that skips the publication's changes can then not be moved past
-- them by keepalives.
ALTER TABLE ds_sync.signals DROP CONSTRAINT IF EXISTS signals_kind_check;
ALTER TABLE ds_sync.signals ADD CONSTRAINT signals_kind_check
    CHECK (kind IN ('snapshot', 'low', 'high', 'done', 'probe'));
