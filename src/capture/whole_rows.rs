//! Whole rows while streaming. `run` sets REPLICA IDENTITY FULL on the published tables
//! that need it before the slot decodes anything (see `publication::identity`); this keeps
//! that true for what changes later, and says so when it was not true:
//!
//! * **A Relation message** arrives for every table before its first change in a session,
//!   and again after DDL: a table added to the publication by hand, a partition attached to
//!   a partitioned table. Each is checked like a table `run` publishes, and gets FULL when it
//!   lacks it (logged; `--keep-replica-identity` or `--toast partial` turn this off). Changes
//!   written before that moment were logged without the old row.
//! * **An update without a TOASTed value** (`headers.unchanged_toast`) can therefore still
//!   arrive: WAL written before the table's replica identity became FULL, or while it was
//!   something else. It is sent as it is (the value is never invented, never null), and with
//!   `--toast complete` a warning names the table and the fix: `ds-sync snapshot --table T`
//!   sends every row of T again, whole. Warnings repeat at most once a minute per table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::publication::identity::{self, Publishing, Refusal};
use crate::publication::{self, ToastMode};

use super::message::{RowMessage, TableInfo};
use super::snapshot::SIGNAL_SCHEMA;
use super::source::SourceConfig;

/// How often an incomplete update of one table is reported.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// See the module documentation. Shared by reference: the warning counters sit behind a
/// lock that is held for a map update only.
#[derive(Debug, Default)]
pub struct WholeRows {
    /// Per table oid: when its incomplete updates were last reported, and how many since.
    warned: Mutex<HashMap<u32, (Option<Instant>, u64)>>,
}

impl WholeRows {
    /// Checks a table capture has just seen a Relation message for, and sets REPLICA
    /// IDENTITY FULL when whole rows need it and the policy allows. Best effort: a failure
    /// is logged, and capture goes on (the change itself is still delivered as sent).
    pub async fn relation(&self, sql: &Client, source: &SourceConfig, table: &TableInfo) {
        let relation = &table.relation;
        if source.policy.toast == ToastMode::Partial || relation.namespace == SIGNAL_SCHEMA {
            return;
        }
        if let Err(e) = self.check(sql, source, table).await {
            tracing::warn!(table = %table.qualified_name(), error = %e, "cannot check the replica identity of a published table");
        }
    }

    async fn check(
        &self,
        sql: &Client,
        source: &SourceConfig,
        table: &TableInfo,
    ) -> Result<(), publication::PublicationError> {
        let relation = &table.relation;
        let info = publication::show(sql, &source.publication).await?;
        let Some(published) = info.table(&relation.namespace, &relation.name) else {
            return Ok(());
        };
        let facts = identity::table_facts(sql, relation.oid).await?;
        let publishing = Publishing {
            columns: published.columns.as_deref(),
            updates: info.updates() && !published.insert_only,
            deletes: info.deletes() && !published.insert_only,
            filter: published.filter_columns.as_deref(),
        };
        match identity::plan(&facts, publishing, source.policy) {
            Ok(full) if full.is_empty() => {}
            Ok(full) => {
                let why = "a published table (or a partition of one) lacked it while streaming";
                identity::set_full(sql, &full, why).await?;
            }
            Err(refusal @ Refusal::ToastWithoutFull { .. }) => tracing::warn!(
                table = %table.qualified_name(), error = %refusal, hint = %refusal.hint(),
                "updates of a published table can reach clients without unchanged TOASTed values"
            ),
            Err(refusal) => tracing::warn!(
                table = %table.qualified_name(), error = %refusal, hint = %refusal.hint(),
                "a published table breaks the application's updates and deletes"
            ),
        }
        Ok(())
    }

    /// Reports an update sent without unchanged TOASTed values, with `--toast complete`.
    pub fn change(&self, source: &SourceConfig, table: &TableInfo, row: &RowMessage) {
        let Some(columns) = row.message["headers"]["unchanged_toast"].as_array() else {
            return;
        };
        let columns: Vec<&str> = columns.iter().filter_map(|c| c.as_str()).collect();
        self.unchanged(source, table, &columns);
    }

    /// As [`WholeRows::change`], for a message written straight to JSON: `columns` are the
    /// names in its `headers.unchanged_toast` (none: nothing to report).
    pub fn unchanged(&self, source: &SourceConfig, table: &TableInfo, columns: &[&str]) {
        if source.policy.toast == ToastMode::Partial || columns.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let entry = warned.entry(table.relation.oid).or_insert((None, 0));
        entry.1 += 1;
        if entry
            .0
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return;
        }
        let count = std::mem::take(&mut entry.1);
        entry.0 = Some(now);
        let name = table.qualified_name();
        tracing::warn!(
            table = %name,
            columns = %columns.join(", "),
            updates = count,
            hint = %format!("`ds-sync snapshot --table {name}` sends every row again, whole"),
            "updates reached clients without unchanged TOASTed values (written before the table's replica identity was FULL); they are named in headers.unchanged_toast"
        );
    }
}
