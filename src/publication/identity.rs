//! Replica identity: what a table needs before it joins a publication, so that publishing it
//! never breaks the application's writes and every update reaches clients as a whole row.
//!
//! PostgreSQL refuses UPDATE and DELETE on a table whose publications publish them unless the
//! table has a replica identity it can log (a primary key, a `USING INDEX` index, or `FULL`),
//! and, from version 15, unless a publication's column list covers that identity (`FULL`
//! with any column list is refused). For a partitioned table the check applies to each
//! partition, where the rows are. So [`plan`] refuses such a table with the fix, before any
//! change: add a key, set an identity, or publish the table insert-only.
//!
//! The columns a row filter reads must be part of that identity too (also from 15); they are
//! only known once PostgreSQL has parsed the filter, so the caller reads them from a dry run
//! (see `membership`).
//!
//! An UPDATE that leaves a TOASTed value unchanged does not log it; only `REPLICA IDENTITY
//! FULL` makes the old row (with that value, inlined) part of the WAL. To send whole rows,
//! [`plan`] therefore asks for `FULL` on every published table (and every partition) that has
//! a column whose values can be TOASTed, unless the caller accepts partial updates
//! ([`ToastMode::Partial`]) or may not change tables (`keep_replica_identity`; then the
//! table is refused with the fix). [`set_full`] applies it, one table at a time, with a short
//! lock timeout so that an application's queries never queue behind ds-sync for long.

use std::fmt;

use crate::pg::ident::quote;

mod catalog;

pub use catalog::{ALTER_LOCK_TIMEOUT, set_full, table_facts};

/// How updates carry TOASTed columns they did not change, for docs and `--help`.
pub const TOAST_MODE_DOC: &str = "\
complete: every insert and update carries the whole row in value; tables with TOASTable \
columns need REPLICA IDENTITY FULL, which ds-sync sets unless --keep-replica-identity; \
partial: an UPDATE that leaves a TOASTed value unchanged omits it from value and names it in \
headers.unchanged_toast (clients must keep their previous value), and no table is changed";

/// Whether updates must carry whole rows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ToastMode {
    /// Every insert and update carries the whole row (REPLICA IDENTITY FULL where needed).
    Complete,
    /// Unchanged TOASTed values are left out and named in `headers.unchanged_toast`.
    Partial,
}

/// What ds-sync may do to the tables it publishes, and what it must guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityPolicy {
    pub toast: ToastMode,
    /// Never change an application table (refuse the table instead, with the fix).
    pub keep_replica_identity: bool,
}

impl IdentityPolicy {
    /// Default of `--toast`: whole rows.
    pub const DEFAULT_TOAST: ToastMode = ToastMode::Complete;
    /// Default of `--keep-replica-identity`: ds-sync may set REPLICA IDENTITY FULL.
    pub const DEFAULT_KEEP_REPLICA_IDENTITY: bool = false;
}

impl Default for IdentityPolicy {
    /// The flags' defaults, from the constants above.
    fn default() -> IdentityPolicy {
        IdentityPolicy {
            toast: IdentityPolicy::DEFAULT_TOAST,
            keep_replica_identity: IdentityPolicy::DEFAULT_KEEP_REPLICA_IDENTITY,
        }
    }
}

/// A table's `pg_class.relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Default,
    Nothing,
    Full,
    Index,
}

impl Identity {
    pub fn from_relreplident(code: &str) -> Identity {
        match code {
            "n" => Identity::Nothing,
            "f" => Identity::Full,
            "i" => Identity::Index,
            _ => Identity::Default,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Identity::Default => "DEFAULT",
            Identity::Nothing => "NOTHING",
            Identity::Full => "FULL",
            Identity::Index => "USING INDEX",
        })
    }
}

/// One relation as the checks see it: a plain table, a partitioned table or a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationFacts {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub partitioned: bool,
    pub identity: Identity,
    /// The columns the identity logs for UPDATE and DELETE (the primary key, the index's
    /// columns, or every column for FULL); `None` when it logs none.
    pub key: Option<Vec<String>>,
    /// Every column that is replicated (not dropped, not generated), in table order.
    pub columns: Vec<String>,
    /// The columns among those whose values may be TOASTed (storage other than plain).
    pub toastable: Vec<String>,
}

impl RelationFacts {
    /// `schema.name`.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."name"` for SQL text.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }
}

/// A table to publish and, for a partitioned table, its leaf partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    pub table: RelationFacts,
    pub partitions: Vec<RelationFacts>,
}

/// How a table is (to be) published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publishing<'a> {
    /// The column list, `None` for every column.
    pub columns: Option<&'a [String]>,
    /// Whether a publication of the table publishes UPDATE.
    pub updates: bool,
    /// Whether a publication of the table publishes DELETE.
    pub deletes: bool,
    /// The columns its row filter reads, when it has one.
    pub filter: Option<&'a [String]>,
}

/// Why REPLICA IDENTITY FULL cannot be set where whole rows need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFull {
    /// `--keep-replica-identity`: ds-sync may not change the table.
    Kept,
    /// The table is published with a column list, which PostgreSQL refuses with FULL.
    ColumnList,
}

/// A table that cannot be published as asked. Each says what would go wrong; [`hint`]
/// says how to fix it.
///
/// [`hint`]: Refusal::hint
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{relation} {}: published with its updates and deletes, every UPDATE and DELETE on \
         {table} would fail",
        lacks_key(*.identity)
    )]
    NoKey {
        table: String,
        /// `table T` or `partition P of table T`.
        relation: String,
        identity: Identity,
    },
    #[error(
        "{relation} has REPLICA IDENTITY FULL, and {table} is published with a column list: \
         PostgreSQL then refuses every UPDATE and DELETE on it"
    )]
    FullWithColumnList { table: String, relation: String },
    #[error(
        "the column list of {table} leaves out {missing}, which {relation} needs to identify \
         rows: PostgreSQL would refuse every UPDATE and DELETE on it"
    )]
    ColumnListMissesKey {
        table: String,
        relation: String,
        missing: String,
    },
    #[error(
        "the row filter of {table} reads {missing}, which is not part of the replica identity \
         of {relation}: PostgreSQL would refuse every UPDATE and DELETE on it"
    )]
    FilterOutsideKey {
        table: String,
        relation: String,
        missing: String,
    },
    #[error(
        "{table} has columns whose values can be TOASTed ({columns}) and replica identity \
         {identity}: an UPDATE that leaves such a value unchanged would reach clients without it"
    )]
    ToastWithoutFull {
        table: String,
        columns: String,
        identity: Identity,
        why: NoFull,
    },
}

/// Why a relation's identity logs no key, for [`Refusal::NoKey`].
fn lacks_key(identity: Identity) -> &'static str {
    match identity {
        Identity::Nothing => "has replica identity NOTHING",
        Identity::Index => "has replica identity USING INDEX, but its index is gone",
        Identity::Default | Identity::Full => {
            "has no primary key (which its replica identity DEFAULT would use)"
        }
    }
}

impl Refusal {
    /// The fix, as full sentences.
    pub fn hint(&self) -> String {
        match self {
            Refusal::NoKey { table, .. } => format!(
                "Add a primary key (ALTER TABLE {table} ADD PRIMARY KEY (...)), or give it a \
                 replica identity (ALTER TABLE {table} REPLICA IDENTITY FULL, or REPLICA \
                 IDENTITY USING INDEX on a unique index of NOT NULL columns), or publish it \
                 insert-only with --insert-only {table} (its updates and deletes are then not \
                 captured)."
            ),
            Refusal::FullWithColumnList { table, .. } => format!(
                "Publish every column of {table} (no --columns), or give it a primary key and \
                 REPLICA IDENTITY DEFAULT with the key in the column list."
            ),
            Refusal::ColumnListMissesKey { table, missing, .. } => {
                format!("Add {missing} to the column list of {table} (--columns).")
            }
            Refusal::FilterOutsideKey { table, .. } => format!(
                "Filter on key columns only, or make every column part of the identity (ALTER \
                 TABLE {table} REPLICA IDENTITY FULL; ds-sync sets it itself for tables with \
                 TOASTable columns unless --toast partial or --keep-replica-identity)."
            ),
            Refusal::ToastWithoutFull {
                table,
                why: NoFull::Kept,
                ..
            } => format!(
                "Set it yourself (ALTER TABLE {table} REPLICA IDENTITY FULL), or let ds-sync set \
                 it (without --keep-replica-identity), or accept partial updates with --toast \
                 partial (unchanged values are then named in headers.unchanged_toast)."
            ),
            Refusal::ToastWithoutFull {
                table,
                why: NoFull::ColumnList,
                ..
            } => format!(
                "REPLICA IDENTITY FULL, which whole rows need, is refused by PostgreSQL with a \
                 column list: publish every column of {table}, leave the TOASTable columns out \
                 of --columns, or accept partial updates with --toast partial."
            ),
        }
    }
}

/// Checks one table and returns the relations that need REPLICA IDENTITY FULL (the table
/// and its partitions, as they lack it). Pure: no change is made here.
///
/// # Errors
///
/// The first [`Refusal`] that applies.
pub fn plan<'f>(
    facts: &'f TableFacts,
    publishing: Publishing<'_>,
    policy: IdentityPolicy,
) -> Result<Vec<&'f RelationFacts>, Refusal> {
    let table = facts.table.display_name();
    let holders: Vec<&RelationFacts> = if facts.table.partitioned {
        facts.partitions.iter().collect()
    } else {
        vec![&facts.table]
    };
    if publishing.updates || publishing.deletes {
        for relation in &holders {
            check_key(&table, relation, publishing.columns)?;
        }
    }
    let full = plan_full(facts, &table, publishing, policy)?;
    if let Some(filter) = publishing.filter
        && (publishing.updates || publishing.deletes)
    {
        for relation in &holders {
            let becomes_full = full.iter().any(|r| r.oid == relation.oid);
            check_filter(&table, relation, filter, becomes_full)?;
        }
    }
    Ok(full)
}

/// The relations that need FULL for whole rows in updates, or why they cannot have it.
fn plan_full<'f>(
    facts: &'f TableFacts,
    table: &str,
    publishing: Publishing<'_>,
    policy: IdentityPolicy,
) -> Result<Vec<&'f RelationFacts>, Refusal> {
    if !publishing.updates || policy.toast == ToastMode::Partial {
        return Ok(Vec::new());
    }
    let toastable: Vec<&str> = facts
        .table
        .toastable
        .iter()
        .filter(|c| publishing.columns.is_none_or(|list| list.contains(c)))
        .map(String::as_str)
        .collect();
    if toastable.is_empty() {
        return Ok(Vec::new());
    }
    let lacking: Vec<&RelationFacts> = std::iter::once(&facts.table)
        .chain(&facts.partitions)
        .filter(|r| r.identity != Identity::Full)
        .collect();
    let Some(first) = lacking.first() else {
        return Ok(Vec::new());
    };
    let why = if publishing.columns.is_some() {
        Some(NoFull::ColumnList)
    } else if policy.keep_replica_identity {
        Some(NoFull::Kept)
    } else {
        None
    };
    match why {
        Some(why) => Err(Refusal::ToastWithoutFull {
            table: table.to_owned(),
            columns: toastable.join(", "),
            identity: first.identity,
            why,
        }),
        None => Ok(lacking),
    }
}

/// From PostgreSQL 15, the columns a row filter reads must be part of the replica identity
/// of a table whose updates or deletes are published.
fn check_filter(
    table: &str,
    relation: &RelationFacts,
    filter: &[String],
    becomes_full: bool,
) -> Result<(), Refusal> {
    if becomes_full || relation.identity == Identity::Full {
        return Ok(());
    }
    let key = relation.key.as_deref().unwrap_or_default();
    let missing: Vec<&str> = filter
        .iter()
        .filter(|c| !key.contains(c))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Refusal::FilterOutsideKey {
        table: table.to_owned(),
        relation: relation_name(table, relation),
        missing: missing.join(", "),
    })
}

/// `table T`, or `partition P of table T`.
fn relation_name(table: &str, relation: &RelationFacts) -> String {
    if relation.display_name() == table {
        format!("table {table}")
    } else {
        format!("partition {} of table {table}", relation.display_name())
    }
}

/// The identity of `relation` must log a key the column list covers.
fn check_key(
    table: &str,
    relation: &RelationFacts,
    columns: Option<&[String]>,
) -> Result<(), Refusal> {
    let name = relation_name(table, relation);
    let Some(key) = &relation.key else {
        return Err(Refusal::NoKey {
            table: table.to_owned(),
            relation: name,
            identity: relation.identity,
        });
    };
    let Some(list) = columns else {
        return Ok(());
    };
    if relation.identity == Identity::Full {
        return Err(Refusal::FullWithColumnList {
            table: table.to_owned(),
            relation: name,
        });
    }
    let missing: Vec<&str> = key
        .iter()
        .filter(|k| !list.contains(k))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Refusal::ColumnListMissesKey {
        table: table.to_owned(),
        relation: name,
        missing: missing.join(", "),
    })
}

#[cfg(test)]
mod tests;
