//! What each subcommand does: connect, call the layer that owns the work, print the result.

use crate::config::{Settings, merge_or};
use crate::pg::PgTarget;
use crate::{publication, schema, slot};

use super::CliError;
use super::args::{
    Command, ConfigCommand, PublicationCommand, SlotCommand, StreamCommand, TableArgs,
};
use super::options::RunOptions;
use super::output::{Printer, TableReport};

/// Runs one subcommand.
pub async fn run(command: Command, settings: &Settings) -> Result<(), CliError> {
    let out = Printer::new(settings.output.value);
    match command {
        Command::Slot(cmd) => slot_command(cmd, settings, &out).await,
        Command::Publication(cmd) => publication_command(cmd, settings, &out).await,
        Command::Init(args) => init(&args, settings, &out).await,
        Command::Prune(args) => prune(&args, settings, &out).await,
        Command::Config(ConfigCommand::Show { run }) => config_show(&run, settings, &out),
        Command::Run { capture } => super::run::run(&capture, settings).await,
        Command::Dev { capture } => super::run::dev(&capture, settings).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => super::bench::bench(&args, settings).await,
        #[cfg(not(feature = "bench"))]
        Command::Bench { .. } => Err(CliError::BenchNotBuilt),
        Command::Subscribe {
            streams,
            reset_offset,
        } => super::ingest::subscribe(&streams, reset_offset, settings, &out).await,
        Command::Unsubscribe { streams } => {
            super::ingest::unsubscribe(&streams, settings, &out).await
        }
        Command::Subscriptions => super::ingest::subscriptions(settings, &out).await,
        Command::Snapshot(args) => request_snapshot(&args, settings, &out).await,
        Command::Health { url } => health(url.as_deref(), settings, &out).await,
        Command::Stream(StreamCommand::Adopt { streams }) => {
            adopt_streams(&streams, settings, &out).await
        }
    }
}

/// `ds-sync health`: exit 0 when the running ds-sync is ready, 1 with the reason otherwise.
async fn health(url: Option<&str>, settings: &Settings, out: &Printer) -> Result<(), CliError> {
    use crate::observe::health;
    let listen = settings.listen.as_ref().map(|l| l.value.as_str());
    let url = health::readyz_url(url, listen)?;
    health::check(&url).await?;
    out.message(&format!("ready ({url})"), &url)
}

/// `ds-sync stream adopt`: see `capture::adopt`.
async fn adopt_streams(
    streams: &[String],
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    let mut client = target(settings)?.connect().await?;
    schema::apply(&mut client).await?;
    let ds = crate::ds::DsClient::new(
        &settings.ds_server_url.value,
        crate::ds::ClientOptions {
            access: settings.ds_access()?,
            ..crate::ds::ClientOptions::default()
        },
    )?;
    for stream in streams {
        let adopted = crate::capture::adopt::adopt(&client, &ds, stream).await?;
        out.message(
            &format!(
                "adopted {stream} (epoch {}): reset sent; the next `ds-sync run` writes it with this database's changes and snapshots the tables routed to it again",
                adopted.epoch
            ),
            stream,
        )?;
    }
    Ok(())
}

pub(super) fn target(settings: &Settings) -> Result<PgTarget, CliError> {
    let env = |k: &str| std::env::var(k).ok();
    Ok(settings.postgres(&env)?)
}

async fn slot_command(
    cmd: SlotCommand,
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    let target = target(settings)?;
    let client = target.connect().await?;
    let default_slot = || settings.slot.value.clone();
    match cmd {
        SlotCommand::Create {
            name,
            temporary,
            if_not_exists,
            failover,
        } => {
            let name = name.unwrap_or_else(default_slot);
            let how = slot::CreateSlot {
                temporary,
                if_not_exists,
                failover,
            };
            let created = slot::create_reporting(&client, &target, &name, how).await?;
            out.created_slot(&created)
        }
        SlotCommand::Drop { name, force } => {
            let dropped = slot::drop(&client, &name, force).await?;
            out.dropped_slot(&dropped)
        }
        SlotCommand::List => out.slots(&slot::list(&client).await?),
        SlotCommand::Status { name } => {
            let name = name.unwrap_or_else(default_slot);
            let info = slot::status(&client, &name).await?;
            out.slots(std::slice::from_ref(&info))?;
            if info.is_lost() {
                return Err(CliError::SlotLost(name));
            }
            if info.wal_status.as_deref() == Some("unreserved") {
                tracing::warn!(slot = %name, "slot is about to lose WAL it needs (wal_status = unreserved)");
            }
            Ok(())
        }
    }
}

async fn publication_command(
    cmd: PublicationCommand,
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    let client = target(settings)?.connect().await?;
    let pick = |name: Option<String>| name.unwrap_or_else(|| settings.publication.value.clone());
    let request = |t: &TableArgs| {
        let (file, cli) = (&settings.capture_file, &settings.arg_sources);
        let policy = publication::IdentityPolicy {
            toast: merge_or(
                cli.value("toast", t.toast),
                file.toast,
                publication::IdentityPolicy::DEFAULT_TOAST,
            )
            .value,
            keep_replica_identity: merge_or(
                cli.value("keep_replica_identity", Some(t.keep_replica_identity)),
                file.keep_replica_identity,
                publication::IdentityPolicy::DEFAULT_KEEP_REPLICA_IDENTITY,
            )
            .value,
        };
        publication::build_request(
            &t.tables,
            &t.insert_only,
            &t.row_filters,
            &t.column_lists,
            policy,
        )
    };
    match cmd {
        PublicationCommand::Create { name, tables } => {
            let name = pick(name);
            let changes = publication::create(&client, &name, &request(&tables)?).await?;
            let text = format!("created publication {name}{}", described(&changes));
            out.message(&text, &name)
        }
        PublicationCommand::Add { name, tables } => {
            let name = pick(name);
            let slot = settings.slot.value.as_str();
            let changes = publication::add(&client, &name, &request(&tables)?, Some(slot)).await?;
            let text = format!(
                "added {} to publication {name}{}",
                changes.added.join(", "),
                described(&changes)
            );
            out.message(&text, &name)
        }
        PublicationCommand::Remove { name, tables } => {
            let name = pick(name);
            publication::remove(&client, &name, &tables).await?;
            out.message(
                &format!("removed {} from publication {name}", tables.join(", ")),
                &name,
            )
        }
        PublicationCommand::Show { name } => {
            out.publication(&publication::show(&client, &pick(name)).await?)
        }
        PublicationCommand::Drop { name } => {
            let name = pick(name);
            publication::drop(&client, &name).await?;
            out.message(&format!("dropped publication {name}"), &name)
        }
    }
}

/// What a create or add changed besides the publication, for its output line.
fn described(changes: &publication::Changes) -> String {
    let mut text = String::new();
    if changes.via_root {
        text.push_str("; partitions are now published through their partitioned tables");
    }
    if !changes.full.is_empty() {
        text.push_str(&format!(
            "; set REPLICA IDENTITY FULL on {} so that updates carry whole rows",
            changes.full.join(", ")
        ));
    }
    text
}

async fn init(
    args: &super::args::InitArgs,
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    use crate::retention::partitions::{self, Form, Partitioning};
    let mut client = target(settings)?.connect().await?;
    let migrations = schema::apply(&mut client).await?;
    let partitioned_now = match args.partition_by {
        Some(interval) => {
            partitions::partition(&mut client, interval).await? == Partitioning::Created
        }
        None => false,
    };
    let table = match partitions::form(&client).await? {
        Form::Partitioned(interval) => TableReport {
            form: "partitioned",
            interval: interval.map(crate::retention::PartitionInterval::as_str),
            partitioned_now,
        },
        Form::Plain | Form::Missing => TableReport {
            form: "plain",
            interval: None,
            partitioned_now: false,
        },
    };
    let facts = schema::server_facts(&client).await?;
    let checks = schema::checks(&facts);
    out.init_report(&migrations, &table, &checks)?;
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(CliError::Prerequisites { failed });
    }
    Ok(())
}

/// `ds-sync prune`: see `retention::prune`.
async fn prune(
    args: &super::args::PruneArgs,
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    use crate::retention::prune::{PruneRequest, prune};
    let mut client = target(settings)?.connect().await?;
    schema::apply(&mut client).await?;
    let req = PruneRequest {
        older_than: args.older_than,
        streams: args.streams.clone(),
        dead_letters_older_than: args.dead_letters_older_than,
        batch_rows: args.batch_rows,
        progress: true,
    };
    let summary = prune(&mut client, &req).await?;
    out.prune(&summary)
}

/// `ds-sync config show`: the shared settings and the options `run` would use (given the
/// same flags, env and file), each with its source.
fn config_show(
    run: &super::args::CaptureArgs,
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    let env = |k: &str| std::env::var(k).ok();
    // Settings that cannot work (a malformed --ds-header, an unreadable token file) are
    // reported here rather than at the first request.
    settings.ds_access()?;
    let postgres = match settings.postgres(&env) {
        Ok(t) => Some(t.to_string()),
        Err(crate::config::ConfigError::MissingPostgresUrl) => None,
        Err(e) => return Err(e.into()),
    };
    let options = RunOptions::resolve(
        run,
        &settings.arg_sources,
        &settings.capture_file,
        &settings.ingest_file,
    )?;
    out.config(settings, postgres.as_deref(), &options)
}

/// `ds-sync snapshot --table T`: checks T can be snapshotted while streaming and writes the
/// request; the capture on the slot acts on it when it decodes it. Reading T's publication
/// entry waits for a lock on T from PostgreSQL 16 on, so a wait names who holds it.
async fn request_snapshot(
    args: &super::args::SnapshotArgs,
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    let slot = settings.slot.value.clone();
    let target = target(settings)?;
    let mut client = target.connect().await?;
    schema::apply(&mut client).await?;
    let pid = crate::waits::backend_pid(&client).await?;
    let what = format!("checking {} for a snapshot", args.table);
    let mut monitor = crate::waits::Monitor::new(&target);
    let checking = check_and_request(&client, args, settings);
    let (name, id) = monitor.report_lock_waits(checking, pid, &what).await?;
    out.message(
        &format!("requested a snapshot of {name} (request {id}); capture on slot {slot} sends it"),
        &id.to_string(),
    )
}

/// The checks of `ds-sync snapshot` and its request row: the table's name and the request id.
async fn check_and_request(
    client: &tokio_postgres::Client,
    args: &super::args::SnapshotArgs,
    settings: &Settings,
) -> Result<(String, i64), CliError> {
    use crate::capture::snapshot::{incremental, published_tables, signals};
    let publication = &settings.publication.value;
    let table = crate::pg::ident::resolve_table(client, &args.table)
        .await
        .map_err(|e| CliError::Invalid(format!("--table {}: {e}", args.table)))?;
    let tables = published_tables(client, publication).await?;
    let Some(found) = tables.iter().find(|t| t.info.relation.oid == table.oid) else {
        return Err(CliError::Invalid(format!(
            "table {} is not in publication '{publication}'; add it with `ds-sync publication add {publication} --tables {}`",
            args.table, args.table
        )));
    };
    if let incremental::Chunking::Impossible(why) = incremental::chunkable(client, found).await? {
        return Err(CliError::Invalid(format!(
            "table {} cannot be snapshotted while streaming: {why}",
            args.table
        )));
    }
    signals::ensure_published(client, publication).await?;
    let name = found.info.qualified_name();
    let id = signals::request(client, &settings.slot.value, &name).await?;
    Ok((name, id))
}
