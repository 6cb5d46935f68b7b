//! Creating and extending a publication (and its insert-only companion), checks first:
//!
//! ```text
//!  resolve tables ─▶ catalog facts ─▶ identity::plan (all refusals at once, nothing changed)
//!    ─▶ REPLICA IDENTITY FULL where whole rows need it (logged, one short transaction each)
//!    ─▶ one transaction: [SET publish_via_partition_root] CREATE / ALTER .. ADD TABLE
//! ```
//!
//! [`ensure`] is what `run` and `dev` do at start: create the publications when missing, add
//! missing tables, and hold every published table to the same rules (a table already
//! published that breaks the application's writes is reported, not refused: refusing would
//! not repair it).

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::pg::PgError;
use crate::pg::ident::{TableRef, quote, resolve_table, validate_publication_name};

use super::identity::{self, Publishing, Refusal, RelationFacts, TableFacts};
use super::show::{FILTER_COLUMNS_SQL, PublicationInfo, show};
use super::{
    Changes, PublicationError, Request, TableSpec, execute, insert_only_name, table_clause,
};

/// Options of every publication ds-sync creates.
const VIA_ROOT: &str = "publish_via_partition_root = true";
/// The companion publishes only what needs no replica identity.
const INSERT_ONLY_OPTIONS: &str = "publish = 'insert, truncate', publish_via_partition_root = true";
/// Why ds-sync sets REPLICA IDENTITY FULL, for the log.
const WHY_FULL: &str = "updates must carry TOASTed values they leave unchanged";

/// A table of a request, resolved, with its catalog facts.
struct Resolved {
    spec: TableSpec,
    table: TableRef,
    facts: TableFacts,
    insert_only: bool,
}

/// Creates the publication and its insert-only companion (possibly empty, so that
/// insert-only tables can be added later without a new slot).
///
/// # Errors
///
/// [`PublicationError::Refused`] (nothing changed) when a table cannot be published as
/// asked; [`PublicationError::AlreadyExists`]; lookup and server errors.
pub async fn create(
    client: &Client,
    name: &str,
    req: &Request,
) -> Result<Changes, PublicationError> {
    validate_publication_name(name)?;
    let companion = insert_only_name(name);
    validate_publication_name(&companion)?;
    if req.tables.is_empty() && req.insert_only.is_empty() {
        return Err(PublicationError::NoTables);
    }
    let resolved = resolve(client, req).await?;
    let main = for_tables(&clauses(&resolved, false)?);
    let inserts = for_tables(&clauses(&resolved, true)?);
    let statements = [
        (
            format!("CREATE PUBLICATION {}{main} WITH ({VIA_ROOT})", quote(name)),
            name,
        ),
        (
            format!(
                "CREATE PUBLICATION {}{inserts} WITH ({INSERT_ONLY_OPTIONS})",
                quote(&companion)
            ),
            companion.as_str(),
        ),
    ];
    let filters = filter_columns(client, &resolved, &statements, name).await?;
    let full = plan_all(&resolved, true, true, &filters, req)?;
    identity::set_full(client, &full, WHY_FULL).await?;
    in_transaction(client, &statements, "creating").await?;
    Ok(Changes {
        created: true,
        added: resolved.iter().map(|r| r.table.display_name()).collect(),
        full: full.iter().map(|r| r.display_name()).collect(),
        via_root: false,
    })
}

/// Adds tables to the publication (insert-only ones to its companion, created when missing
/// unless `slot` exists already: see [`PublicationError::CompanionAfterSlot`]). A missing
/// companion is never created empty here: a slot asked for it would stop at older WAL.
///
/// # Errors
///
/// As [`create`], and [`PublicationError::NotFound`], [`PublicationError::AllTables`],
/// [`PublicationError::PublishedOtherwise`], [`PublicationError::PartitionsSeparately`].
pub async fn add(
    client: &Client,
    name: &str,
    req: &Request,
    slot: Option<&str>,
) -> Result<Changes, PublicationError> {
    if req.tables.is_empty() && req.insert_only.is_empty() {
        return Err(PublicationError::NoTables);
    }
    let info = show(client, name).await?;
    if info.all_tables {
        return Err(PublicationError::AllTables(name.to_owned()));
    }
    let resolved = resolve(client, req).await?;
    for r in &resolved {
        check_membership(&info, r)?;
    }
    let companion = insert_only_name(name);
    let mut statements: Vec<(String, &str)> = Vec::new();
    let via_root = needs_via_root(&info, &resolved)?;
    if via_root {
        statements.push((set_via_root(name), name));
        if info.insert_only_publication.is_some() {
            statements.push((set_via_root(&companion), companion.as_str()));
        }
    }
    let main = clauses(&resolved, false)?;
    if !main.is_empty() {
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote(name),
            main.join(", ")
        );
        statements.push((sql, name));
    }
    let inserts = clauses(&resolved, true)?;
    if !inserts.is_empty() {
        let sql = match info.insert_only_publication {
            Some(_) => format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote(&companion),
                inserts.join(", ")
            ),
            None => {
                validate_publication_name(&companion)?;
                refuse_companion_after_slot(client, &companion, slot).await?;
                let list = for_tables(&inserts);
                format!(
                    "CREATE PUBLICATION {}{list} WITH ({INSERT_ONLY_OPTIONS})",
                    quote(&companion)
                )
            }
        };
        statements.push((sql, companion.as_str()));
    }
    let filters = filter_columns(client, &resolved, &statements, name).await?;
    let full = plan_all(&resolved, info.updates(), info.deletes(), &filters, req)?;
    identity::set_full(client, &full, WHY_FULL).await?;
    in_transaction(client, &statements, "altering").await?;
    Ok(Changes {
        created: false,
        added: resolved.iter().map(|r| r.table.display_name()).collect(),
        full: full.iter().map(|r| r.display_name()).collect(),
        via_root,
    })
}

/// What `run` does at start: creates the publications from `req` when missing, adds the
/// tables they lack, and holds every published table to the rules of [`identity`]
/// (REPLICA IDENTITY FULL where needed; tables that break writes are logged).
///
/// # Errors
///
/// [`PublicationError::NotFound`] when the publication is missing and `req` names no table;
/// [`PublicationError::PartitionsSeparately`]; refusals as in [`create`] and [`add`].
pub async fn ensure(
    client: &Client,
    name: &str,
    req: &Request,
    slot: Option<&str>,
) -> Result<Changes, PublicationError> {
    let info = match show(client, name).await {
        Ok(info) => info,
        Err(PublicationError::NotFound(_))
            if req.tables.is_empty() && req.insert_only.is_empty() =>
        {
            return Err(PublicationError::NotFound(name.to_owned()));
        }
        Err(PublicationError::NotFound(_)) => return create(client, name, req).await,
        Err(e) => return Err(e),
    };
    let separate: Vec<String> = info
        .tables
        .iter()
        .filter(|t| t.partition && !info.via_root)
        .map(|t| format!("{}.{}", t.schema, t.table))
        .collect();
    if !separate.is_empty() {
        return Err(PublicationError::PartitionsSeparately {
            publication: name.to_owned(),
            tables: separate.join(", "),
        });
    }
    let missing = missing_tables(client, &info, req).await?;
    let mut changes = Changes::default();
    // A FOR ALL TABLES publication lists every table, so only insert-only tables can be
    // missing from it, and `add` refuses those.
    if !(missing.tables.is_empty() && missing.insert_only.is_empty()) {
        changes = add(client, name, &missing, slot).await?;
    }
    let info = show(client, name).await?;
    changes
        .full
        .extend(hold_published(client, &info, req).await?);
    Ok(changes)
}

/// The tables of `req` that neither publication lists yet.
async fn missing_tables(
    client: &Client,
    info: &PublicationInfo,
    req: &Request,
) -> Result<Request, PublicationError> {
    let mut missing = Request {
        policy: req.policy,
        ..Request::default()
    };
    for (specs, into) in [
        (&req.tables, &mut missing.tables),
        (&req.insert_only, &mut missing.insert_only),
    ] {
        for spec in specs {
            // Compare by the catalog's names: `items`, `public.items` and `"items"` are one
            // table, and `items` in another schema is not.
            let table = resolve_table(client, &spec.table).await?;
            if info.table(&table.schema, &table.name).is_none() {
                into.push(spec.clone());
            }
        }
    }
    Ok(missing)
}

/// Applies the rules to tables already published: REPLICA IDENTITY FULL where whole rows
/// need it; a table whose updates cannot be whole is refused; one that breaks the
/// application's writes is logged with the fix. ds-sync's own tables are left alone.
async fn hold_published(
    client: &Client,
    info: &PublicationInfo,
    req: &Request,
) -> Result<Vec<String>, PublicationError> {
    let mut full_names = Vec::new();
    let mut refusals = Vec::new();
    for t in info.tables.iter().filter(|t| t.schema != "ds_sync") {
        let table =
            resolve_table(client, &format!("{}.{}", quote(&t.schema), quote(&t.table))).await?;
        let facts = identity::table_facts(client, table.oid).await?;
        let publishing = Publishing {
            columns: t.columns.as_deref(),
            updates: info.updates() && !t.insert_only,
            deletes: info.deletes() && !t.insert_only,
            filter: t.filter_columns.as_deref(),
        };
        match identity::plan(&facts, publishing, req.policy) {
            Ok(full) => {
                identity::set_full(client, &full, WHY_FULL).await?;
                full_names.extend(full.iter().map(|r| r.display_name()));
            }
            Err(refusal @ Refusal::ToastWithoutFull { .. }) => refusals.push(refusal),
            Err(refusal) => tracing::warn!(
                publication = %info.name, error = %refusal, hint = %refusal.hint(),
                "a published table breaks the application's updates and deletes"
            ),
        }
    }
    if refusals.is_empty() {
        Ok(full_names)
    } else {
        Err(PublicationError::Refused(refusals))
    }
}

/// Resolves the tables of a request and reads their facts.
async fn resolve(client: &Client, req: &Request) -> Result<Vec<Resolved>, PublicationError> {
    check_server_supports(client, req).await?;
    let mut out: Vec<Resolved> = Vec::new();
    for (specs, insert_only) in [(&req.tables, false), (&req.insert_only, true)] {
        for spec in specs {
            let table = resolve_table(client, &spec.table).await?;
            if let Some(seen) = out.iter().find(|r| r.table.oid == table.oid) {
                if seen.insert_only != insert_only {
                    return Err(PublicationError::ListedTwice(table.display_name()));
                }
                continue;
            }
            let facts = identity::table_facts(client, table.oid).await?;
            out.push(Resolved {
                spec: spec.clone(),
                table,
                facts,
                insert_only,
            });
        }
    }
    Ok(out)
}

/// Row filters and column lists exist from PostgreSQL 15 on; an older server would answer
/// the statement with a bare syntax error, so they are refused first, naming the version.
async fn check_server_supports(client: &Client, req: &Request) -> Result<(), PublicationError> {
    let specs = || req.tables.iter().chain(&req.insert_only);
    let wanted = specs()
        .find_map(|s| {
            s.row_filter
                .as_ref()
                .map(|_| ("row filter (--row-filter)", s))
        })
        .or_else(|| {
            specs().find_map(|s| s.columns.as_ref().map(|_| ("column list (--columns)", s)))
        });
    let Some((feature, spec)) = wanted else {
        return Ok(());
    };
    let version = crate::pg::server_version(client).await?;
    if version.has_row_filters() {
        return Ok(());
    }
    Err(PublicationError::NeedsNewerServer {
        feature,
        table: spec.table.clone(),
        version: version.text,
    })
}

/// Plans every table of `resolved`; all refusals are reported together.
fn plan_all<'r>(
    resolved: &'r [Resolved],
    updates: bool,
    deletes: bool,
    filters: &HashMap<u32, Vec<String>>,
    req: &Request,
) -> Result<Vec<&'r RelationFacts>, PublicationError> {
    let mut full = Vec::new();
    let mut refusals = Vec::new();
    for r in resolved {
        let publishing = Publishing {
            columns: r.spec.columns.as_deref(),
            updates: updates && !r.insert_only,
            deletes: deletes && !r.insert_only,
            filter: filters.get(&r.table.oid).map(Vec::as_slice),
        };
        match identity::plan(&r.facts, publishing, req.policy) {
            Ok(relations) => full.extend(relations),
            Err(refusal) => refusals.push(refusal),
        }
    }
    if refusals.is_empty() {
        Ok(full)
    } else {
        Err(PublicationError::Refused(refusals))
    }
}

/// The columns each new row filter reads, by table oid. Only PostgreSQL can parse a filter,
/// so the publication statements run in a transaction that is then rolled back: nothing
/// changes, and the catalog showed the parsed filters in between.
async fn filter_columns(
    client: &Client,
    resolved: &[Resolved],
    statements: &[(String, &str)],
    publication: &str,
) -> Result<HashMap<u32, Vec<String>>, PublicationError> {
    if !resolved.iter().any(|r| r.spec.row_filter.is_some()) {
        return Ok(HashMap::new());
    }
    let begin = |e: tokio_postgres::Error| PgError::query("opening a transaction", &e);
    client.batch_execute("BEGIN").await.map_err(begin)?;
    let parsed = async {
        for (sql, name) in statements {
            execute(client, sql, name, "checking").await?;
        }
        let sql = format!(
            "SELECT c.oid, {FILTER_COLUMNS_SQL} FROM pg_publication_rel pr \
             JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid \
             WHERE p.pubname = $1::text AND pr.prqual IS NOT NULL"
        );
        let rows = client
            .query(sql.as_str(), &[&publication])
            .await
            .map_err(|e| PgError::query("reading the columns of row filters", &e))?;
        Ok::<_, PublicationError>(
            rows.iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get::<_, Option<Vec<String>>>(1).unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }
    .await;
    client
        .batch_execute("ROLLBACK")
        .await
        .map_err(|e| PgError::query("rolling back the check of row filters", &e))?;
    parsed
}

/// A table already in one of the publications may not be added to the other.
fn check_membership(info: &PublicationInfo, r: &Resolved) -> Result<(), PublicationError> {
    let Some(listed) = info.table(&r.table.schema, &r.table.name) else {
        return Ok(());
    };
    if listed.insert_only == r.insert_only {
        return Ok(());
    }
    let (now, asked) = if listed.insert_only {
        ("insert-only", "with its updates and deletes")
    } else {
        ("with its updates and deletes", "insert-only")
    };
    let publication = match (&info.insert_only_publication, listed.insert_only) {
        (Some(companion), true) => companion.clone(),
        _ => info.name.clone(),
    };
    Err(PublicationError::PublishedOtherwise {
        table: r.table.display_name(),
        publication,
        now,
        asked,
    })
}

/// Whether `publish_via_partition_root` must be turned on for the new tables: only when one
/// is partitioned and it is off. Turning it on moves the changes of partitions already
/// published on their own to their partitioned table, so that case is refused instead.
fn needs_via_root(info: &PublicationInfo, resolved: &[Resolved]) -> Result<bool, PublicationError> {
    if info.via_root || !resolved.iter().any(|r| r.facts.table.partitioned) {
        return Ok(false);
    }
    let separate: Vec<String> = info
        .tables
        .iter()
        .filter(|t| t.partition || t.partitioned)
        .map(|t| format!("{}.{}", t.schema, t.table))
        .collect();
    if separate.is_empty() {
        return Ok(true);
    }
    Err(PublicationError::PartitionsSeparately {
        publication: info.name.clone(),
        tables: separate.join(", "),
    })
}

/// See [`PublicationError::CompanionAfterSlot`].
async fn refuse_companion_after_slot(
    client: &Client,
    companion: &str,
    slot: Option<&str>,
) -> Result<(), PublicationError> {
    let Some(slot) = slot else {
        return Ok(());
    };
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1::text",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query(format!("looking up slot '{slot}'"), &e))?
        .is_some();
    if exists {
        return Err(PublicationError::CompanionAfterSlot {
            companion: companion.to_owned(),
            slot: slot.to_owned(),
        });
    }
    Ok(())
}

fn set_via_root(publication: &str) -> String {
    format!("ALTER PUBLICATION {} SET ({VIA_ROOT})", quote(publication))
}

/// The table clauses of one publication.
fn clauses(resolved: &[Resolved], insert_only: bool) -> Result<Vec<String>, PublicationError> {
    resolved
        .iter()
        .filter(|r| r.insert_only == insert_only)
        .map(|r| table_clause(&r.table, &r.spec))
        .collect()
}

/// ` FOR TABLE a, b`, or nothing for a publication that starts empty.
fn for_tables(clauses: &[String]) -> String {
    if clauses.is_empty() {
        String::new()
    } else {
        format!(" FOR TABLE {}", clauses.join(", "))
    }
}

/// Runs publication statements in one transaction: all or none.
async fn in_transaction(
    client: &Client,
    statements: &[(String, &str)],
    doing: &str,
) -> Result<(), PublicationError> {
    let begin = |e: tokio_postgres::Error| PgError::query("opening a transaction", &e);
    client.batch_execute("BEGIN").await.map_err(begin)?;
    for (sql, publication) in statements {
        if let Err(e) = execute(client, sql, publication, doing).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| PgError::query("committing the publication change", &e))?;
    Ok(())
}
