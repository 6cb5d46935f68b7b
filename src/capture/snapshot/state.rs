//! The snapshot's bookkeeping in `ds_sync.snapshots` / `ds_sync.snapshot_streams`
//! (sql/004_snapshot.sql), and the pure decision whether a start must snapshot.

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::pg::PgError;

use super::SnapshotMode;

/// What `ds_sync.snapshots` says about a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// No snapshot was ever started for the slot.
    Never,
    /// A snapshot started and did not finish (crash, kill, lost connection).
    Unfinished,
    /// The last snapshot finished.
    Done,
}

/// Why a start snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The slot is created now.
    NewSlot,
    /// The last snapshot did not finish.
    Unfinished,
    /// `--snapshot always`.
    Always,
    /// The server invalidated the slot (`--on-slot-lost recreate`).
    SlotLost,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NewSlot => "the slot is new",
            Reason::Unfinished => "the previous snapshot did not finish",
            Reason::Always => "--snapshot always",
            Reason::SlotLost => "the slot was lost (--on-slot-lost recreate)",
        }
    }
}

/// Whether this start snapshots. `initial`: when the slot is created, and again when a
/// snapshot did not finish. `always`: every start. `never`: never.
pub fn decide(mode: SnapshotMode, slot_exists: bool, recorded: Recorded) -> Option<Reason> {
    match mode {
        SnapshotMode::Never => None,
        SnapshotMode::Always => Some(Reason::Always),
        SnapshotMode::Initial if recorded == Recorded::Unfinished => Some(Reason::Unfinished),
        SnapshotMode::Initial if !slot_exists => Some(Reason::NewSlot),
        SnapshotMode::Initial => None,
    }
}

/// The slot's record.
pub async fn load(sql: &Client, slot: &str) -> Result<Recorded, PgError> {
    let row = sql
        .query_opt(
            "SELECT state FROM ds_sync.snapshots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("reading ds_sync.snapshots", &e))?;
    Ok(match row.map(|r| r.get::<_, String>(0)).as_deref() {
        None => Recorded::Never,
        Some("done") => Recorded::Done,
        Some(_) => Recorded::Unfinished,
    })
}

/// Marks a snapshot as started; done before the slot is created, so a crash at any later
/// point is seen by the next start.
pub async fn begin(sql: &Client, slot: &str) -> Result<(), PgError> {
    sql.execute(
        "INSERT INTO ds_sync.snapshots (slot_name, state) VALUES ($1, 'running') \
         ON CONFLICT (slot_name) DO UPDATE SET state = 'running', consistent_point = NULL, \
         rows_sent = 0, started_at = now(), finished_at = NULL",
        &[&slot],
    )
    .await
    .map_err(|e| PgError::query("recording the snapshot start", &e))?;
    Ok(())
}

/// Records the slot's consistent point.
pub async fn set_point(sql: &Client, slot: &str, lsn: Lsn) -> Result<(), PgError> {
    sql.execute(
        "UPDATE ds_sync.snapshots SET consistent_point = $2::text::pg_lsn WHERE slot_name = $1",
        &[&slot, &lsn.to_string()],
    )
    .await
    .map_err(|e| PgError::query("recording the snapshot's consistent point", &e))?;
    Ok(())
}

/// Marks the snapshot as finished: every row is in the streams.
pub async fn finish(sql: &Client, slot: &str, rows: u64) -> Result<(), PgError> {
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    sql.execute(
        "UPDATE ds_sync.snapshots SET state = 'done', rows_sent = $2, finished_at = now() \
         WHERE slot_name = $1",
        &[&slot, &rows],
    )
    .await
    .map_err(|e| PgError::query("recording the snapshot's end", &e))?;
    Ok(())
}

/// Every stream the slot's tables wrote to, for the reset before a snapshot that follows
/// another: those earlier snapshots wrote to (`ds_sync.snapshot_streams`) and those changes
/// wrote to (`ds_sync.table_streams`, per-key streams included), so that no stream keeps
/// a row deleted while no slot streamed its changes.
pub async fn streams(sql: &Client, slot: &str) -> Result<Vec<String>, PgError> {
    let rows = sql
        .query(
            "SELECT stream_name FROM ds_sync.snapshot_streams WHERE slot_name = $1 \
             UNION SELECT stream_name FROM ds_sync.table_streams WHERE slot_name = $1 \
             ORDER BY stream_name",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("reading the streams of the slot's tables", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records a stream before the snapshot's first message to it is sent.
pub async fn record_stream(sql: &Client, slot: &str, stream: &str) -> Result<(), PgError> {
    sql.execute(
        "INSERT INTO ds_sync.snapshot_streams (slot_name, stream_name) VALUES ($1, $2) \
         ON CONFLICT DO NOTHING",
        &[&slot, &stream],
    )
    .await
    .map_err(|e| PgError::query("recording a snapshot stream", &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_snapshots_new_slots_and_unfinished_snapshots_only() {
        use Recorded::*;
        let m = SnapshotMode::Initial;
        assert_eq!(decide(m, false, Never), Some(Reason::NewSlot));
        assert_eq!(decide(m, false, Done), Some(Reason::NewSlot));
        assert_eq!(decide(m, true, Unfinished), Some(Reason::Unfinished));
        assert_eq!(decide(m, false, Unfinished), Some(Reason::Unfinished));
        assert_eq!(decide(m, true, Done), None);
        assert_eq!(
            decide(m, true, Never),
            None,
            "a slot made elsewhere is taken as is"
        );
    }

    #[test]
    fn always_and_never_ignore_the_record() {
        for slot in [false, true] {
            for r in [Recorded::Never, Recorded::Unfinished, Recorded::Done] {
                assert_eq!(decide(SnapshotMode::Always, slot, r), Some(Reason::Always));
                assert_eq!(decide(SnapshotMode::Never, slot, r), None);
            }
        }
    }
}
