//! The source identity: which database, slot and slot incarnation capture writes for, so a
//! refused `Stream-Seq` (409) counts as "already written" only when it is provably this
//! source's own earlier write.
//!
//! `Stream-Seq` values are WAL positions. Within one database they only grow, so a slot's
//! replay can only collide with its own earlier writes. A *different* database (a restore
//! from backup, a new cluster, a dev database recreated) has lower positions: its new rows
//! are refused by a stream another database wrote further, and treating that 409 as
//! "already written" would confirm the slot past rows that never arrived.
//!
//! ```text
//!  ds_sync.sources         slot ─▶ incarnation (random), system identifier, timeline,
//!                                  origin, lenient_below
//!  ds_sync.source_streams  (incarnation, DS server, stream) ─▶ tail offset (HEAD) taken
//!                                  before the incarnation's first POST to the stream
//!  409 on stream S:        HEAD S == recorded tail ─▶ nothing of ours was ever appended,
//!                                  the stream's last write is foreign: stop (ForeignWrite)
//!                          HEAD S moved            ─▶ a replay of our own write: skip
//! ```
//!
//! An incarnation starts whenever ds-sync creates the slot (every slot creation: a restored
//! database has no slot, slots are not in backups), and whenever capture finds a slot it has
//! no matching record of: no row, another system identifier or timeline (a restore to a new
//! cluster, or a point-in-time recovery), or a record kept from before the slot existed.
//! A new incarnation in the same database is safe: its positions are above everything an
//! earlier slot wrote, so it never needs an earlier incarnation's writes to explain a 409.
//!
//! **Promotion.** A physical standby promoted with a failover slot (`--failover-slot`) has
//! the slot, the same system identifier and a new timeline. Its history up to the switch
//! point (the timeline's history file, read with `TIMELINE_HISTORY`) is the old primary's,
//! so the writes the old timeline's incarnation made for changes committed before it are
//! this source's own, replayed from a synced slot that may lag the old primary's: the new
//! incarnation accepts 409s for changes committed before the switch point (as for an
//! upgrade, below), and nothing after it. A new timeline that does not descend from the
//! recorded one (a restore) starts an ordinary new incarnation.
//!
//! **Upgrade.** Streams written by a ds-sync from before this bookkeeping have no records.
//! The migration marks every slot that existed then as `legacy`, with the WAL position of
//! the upgrade: its first run adopts it, and a 409 for a change committed before that
//! position is accepted as the earlier version's write (it could only have written those).

use std::sync::Arc;

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::pg::replication_session::ReplicationSession;
use crate::pg::{PgError, PgTarget};

use super::error::CaptureError;

/// How an incarnation began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// ds-sync created the slot.
    Created,
    /// ds-sync found a slot it had no matching record of.
    Adopted,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Created => "created",
            Origin::Adopted => "adopted",
        }
    }
}

/// One slot incarnation of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIdentity {
    pub slot: String,
    pub incarnation: String,
    pub system_identifier: Option<String>,
    pub timeline: Option<i64>,
    /// 409s for changes committed before this position may be an earlier version's writes.
    pub lenient_below: Option<Lsn>,
}

impl SourceIdentity {
    /// For errors and logs: `slot s, incarnation …, system …, timeline …`.
    pub fn describe(&self) -> String {
        format!(
            "slot {}, incarnation {}, system {}, timeline {}",
            self.slot,
            self.incarnation,
            self.system_identifier.as_deref().unwrap_or("unknown"),
            self.timeline.map_or("unknown".into(), |t| t.to_string())
        )
    }

    /// True when a 409 for a change committed at `commit_lsn` may come from a write of the
    /// ds-sync version before the upgrade (see the module documentation).
    pub fn lenient_for(&self, commit_lsn: Lsn) -> bool {
        self.lenient_below.is_some_and(|below| commit_lsn < below)
    }
}

/// The server's system identifier and timeline; `None` where the role may not read them.
async fn system(sql: &Client) -> (Option<String>, Option<i64>) {
    let id = sql
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get::<_, String>(0));
    (id, timeline(sql).await)
}

/// The timeline WAL is written on: read from the current WAL file's name, which changes the
/// moment a standby is promoted (the last checkpoint's timeline changes only once the
/// checkpoint the promotion requested has finished); the last checkpoint's on a server in
/// recovery, where there is no current WAL file.
async fn timeline(sql: &Client) -> Option<i64> {
    let from_wal_file = sql
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8",
            &[],
        )
        .await;
    match from_wal_file {
        Ok(row) => Some(row.get(0)),
        Err(_) => sql
            .query_one("SELECT timeline_id::int8 FROM pg_control_checkpoint()", &[])
            .await
            .ok()
            .map(|r| r.get::<_, i64>(0)),
    }
}

/// Records a new incarnation for `slot`, which ds-sync has just created at `start_lsn`.
pub async fn created(
    sql: &Client,
    slot: &str,
    start_lsn: Lsn,
) -> Result<Arc<SourceIdentity>, CaptureError> {
    let identity = begin(sql, slot, Origin::Created, start_lsn, None).await?;
    tracing::info!(source = %identity.describe(), "new source incarnation: the slot was created");
    Ok(identity)
}

/// The incarnation of an existing slot whose confirmed position is `position`: the
/// recorded one when it matches this server, a new (adopted) one otherwise.
pub async fn establish(
    sql: &Client,
    target: &PgTarget,
    slot: &str,
    position: Lsn,
) -> Result<Arc<SourceIdentity>, CaptureError> {
    let row = sql
        .query_opt(
            "SELECT incarnation, system_identifier, timeline, origin, \
                    lenient_below::text, start_lsn::text \
             FROM ds_sync.sources WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("reading ds_sync.sources", &e))?;
    let (system_identifier, timeline) = system(sql).await;
    let Some(row) = row else {
        let identity = begin(sql, slot, Origin::Adopted, position, None).await?;
        tracing::info!(source = %identity.describe(), "new source incarnation: a slot without a record was adopted");
        return Ok(identity);
    };
    let incarnation: Option<String> = row.get(0);
    let lenient = recorded_lsn(row.get(4), "lenient_below")?;
    let start = recorded_lsn(row.get(5), "start_lsn")?.unwrap_or(Lsn::ZERO);
    match incarnation {
        None => {
            let identity = begin(sql, slot, Origin::Adopted, position, lenient).await?;
            tracing::info!(source = %identity.describe(), "new source incarnation: adopted a slot written by an earlier ds-sync version");
            Ok(identity)
        }
        Some(incarnation)
            if row.get::<_, Option<String>>(1) == system_identifier
                && row.get::<_, Option<i64>>(2) == timeline
                && position >= start =>
        {
            Ok(Arc::new(SourceIdentity {
                slot: slot.to_string(),
                incarnation,
                system_identifier,
                timeline,
                lenient_below: lenient,
            }))
        }
        Some(old) if row.get::<_, Option<String>>(1) == system_identifier && position >= start => {
            let recorded = row.get::<_, Option<i64>>(2);
            let switch = match (recorded, timeline) {
                (Some(from), Some(now)) => switch_point(target, from, now).await,
                _ => None,
            };
            match switch.filter(|switch| position <= *switch) {
                Some(switch) => {
                    let lenient = Some(lenient.map_or(switch, |l| l.max(switch)));
                    let identity = begin(sql, slot, Origin::Adopted, position, lenient).await?;
                    tracing::warn!(source = %identity.describe(), previous = %old, switch_point = %switch, "new source incarnation: the server was promoted from the recorded timeline; changes committed before the switch point count as written by the previous one");
                    Ok(identity)
                }
                None => {
                    let identity = begin(sql, slot, Origin::Adopted, position, None).await?;
                    tracing::warn!(source = %identity.describe(), previous = %old, "new source incarnation: the server's timeline does not descend from the recorded one (a restore or point-in-time recovery)");
                    Ok(identity)
                }
            }
        }
        Some(old) => {
            let identity = begin(sql, slot, Origin::Adopted, position, None).await?;
            tracing::warn!(source = %identity.describe(), previous = %old, "new source incarnation: the slot does not match the recorded one (another server, timeline or an older slot)");
            Ok(identity)
        }
    }
}

/// Where timeline `now` left timeline `from`, when `now` descends from it: read from the
/// history file (`TIMELINE_HISTORY`) on a replication session. `None` when it does not
/// descend, or the history cannot be read (said as a warning: the caller then starts an
/// ordinary new incarnation, which stops at the first replayed write rather than skip one).
async fn switch_point(target: &PgTarget, from: i64, now: i64) -> Option<Lsn> {
    if now <= from {
        return None;
    }
    let history = async {
        let mut session = ReplicationSession::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        let rows = session
            .simple_query(
                &format!("TIMELINE_HISTORY {now}"),
                "reading the timeline history",
            )
            .await
            .map_err(|e| e.to_string());
        session.terminate().await;
        let rows = rows?;
        rows.first()
            .and_then(|row| row.get(1).cloned().flatten())
            .ok_or_else(|| "TIMELINE_HISTORY returned no content".to_owned())
    };
    match history.await {
        Ok(text) => left_timeline_at(&text, from),
        Err(reason) => {
            tracing::warn!(timeline = now, %reason, "cannot read the timeline history");
            None
        }
    }
}

/// In a timeline history file (`parentTLI<TAB>switchpoint<TAB>reason` per line), the
/// position where the history left timeline `from`; `None` when `from` is not an ancestor
/// or its line does not parse. Pure.
fn left_timeline_at(history: &str, from: i64) -> Option<Lsn> {
    history.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let parent: i64 = fields.next()?.parse().ok()?;
        let switch: Lsn = fields.next()?.parse().ok()?;
        (parent == from).then_some(switch)
    })
}

/// A position column of `ds_sync.sources` (NULL: not recorded); text that is not an LSN is
/// an error naming the column. Pure.
fn recorded_lsn(text: Option<&str>, column: &str) -> Result<Option<Lsn>, CaptureError> {
    text.map(str::parse::<Lsn>)
        .transpose()
        .map_err(|source| CaptureError::BadLsn {
            what: format!("ds_sync.sources.{column}"),
            source,
        })
}

async fn begin(
    sql: &Client,
    slot: &str,
    origin: Origin,
    start_lsn: Lsn,
    lenient_below: Option<Lsn>,
) -> Result<Arc<SourceIdentity>, CaptureError> {
    let (system_identifier, timeline) = system(sql).await;
    let lenient = lenient_below.map(|l| l.to_string());
    let row = sql
        .query_one(
            "INSERT INTO ds_sync.sources AS s (slot_name, incarnation, system_identifier, timeline, \
                 origin, start_lsn, lenient_below) \
             VALUES ($1, gen_random_uuid()::text, $2, $3, $4, $5::text::pg_lsn, $6::text::pg_lsn) \
             ON CONFLICT (slot_name) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
                 system_identifier = EXCLUDED.system_identifier, timeline = EXCLUDED.timeline, \
                 origin = EXCLUDED.origin, start_lsn = EXCLUDED.start_lsn, \
                 lenient_below = EXCLUDED.lenient_below, recorded_at = now() \
             RETURNING incarnation",
            &[
                &slot,
                &system_identifier,
                &timeline,
                &origin.as_str(),
                &start_lsn.to_string(),
                &lenient,
            ],
        )
        .await
        .map_err(|e| PgError::query("recording the source incarnation", &e))?;
    Ok(Arc::new(SourceIdentity {
        slot: slot.to_string(),
        incarnation: row.get(0),
        system_identifier,
        timeline,
        lenient_below,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_before_the_upgrade_are_treated_leniently() {
        let mut id = SourceIdentity {
            slot: "s".into(),
            incarnation: "i".into(),
            system_identifier: Some("7".into()),
            timeline: Some(1),
            lenient_below: None,
        };
        let at = Lsn::from_u64;
        assert!(!id.lenient_for(at(5)));
        id.lenient_below = Some(at(100));
        assert!(id.lenient_for(at(99)));
        assert!(!id.lenient_for(at(100)));
        let text = id.describe();
        assert!(
            text.contains("incarnation i") && text.contains("system 7"),
            "{text}"
        );
    }

    #[test]
    fn the_switch_point_is_read_for_an_ancestor_timeline_only() {
        let history = "1\t0/3000198\tno recovery target specified\n\
                       \n2\t0/5000000\tno recovery target specified\n";
        assert_eq!(
            left_timeline_at(history, 1),
            Some(Lsn::from_u64(0x300_0198))
        );
        assert_eq!(
            left_timeline_at(history, 2),
            Some(Lsn::from_u64(0x500_0000))
        );
        assert_eq!(left_timeline_at(history, 3), None);
        assert_eq!(left_timeline_at("# comment\n1\tnot-an-lsn\tx\n", 1), None);
    }

    #[test]
    fn recorded_positions_parse_and_a_bad_one_is_an_error_naming_its_column() {
        assert_eq!(recorded_lsn(None, "start_lsn").unwrap(), None);
        assert_eq!(
            recorded_lsn(Some("1/AB"), "start_lsn").unwrap(),
            Some(Lsn::from_u64(0x1_0000_00AB))
        );
        let err = recorded_lsn(Some("1/XY"), "lenient_below").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ds_sync.sources.lenient_below") && text.contains("'1/XY'"),
            "{text}"
        );
        assert!(!err.is_transient());
    }
}
