//! `ds-sync run` and `ds-sync dev`: options merged into a capture configuration, signals
//! turned into shutdown, and for `dev` the throwaway servers around it.

use std::time::Duration;

use crate::capture::CaptureConfig;
use crate::capture::batch::Limits;
use crate::capture::route::{Router, Template, parse_route_option};
use crate::capture::snapshot::SnapshotOptions;
use crate::capture::source::SourceConfig;
use crate::config::{Settings, Source};
use crate::ds::{ClientOptions, DsAccess, DsClient};
use crate::embedded::{DsServer, DsServerOptions, LocalPostgres, PostgresOptions};
use crate::pg::PgTarget;
use crate::pg::ident::{validate_publication_name, validate_slot_name};

use crate::publication::IdentityPolicy;

use super::CliError;
use super::args::CaptureArgs;
use super::options::{CaptureOptions, RunOptions};
use super::stop::Stop;

/// Runs capture until a signal.
pub async fn run(args: &CaptureArgs, settings: &Settings) -> Result<(), CliError> {
    let opts = options(args, settings)?;
    let stop = Stop::install(opts.capture.shutdown_timeout());
    let result = run_until_stopped(&opts, args, settings, &stop).await;
    stop.outcome(result)
}

/// The options of `run` and `dev`, merged once (see `options`).
fn options(args: &CaptureArgs, settings: &Settings) -> Result<RunOptions, CliError> {
    RunOptions::resolve(
        args,
        &settings.arg_sources,
        &settings.capture_file,
        &settings.ingest_file,
    )
}

async fn run_until_stopped(
    opts: &RunOptions,
    args: &CaptureArgs,
    settings: &Settings,
    stop: &Stop,
) -> Result<(), CliError> {
    let target = super::commands::target(settings)?;
    let ingest = super::ingest::config(
        &opts.ingest,
        &args.ingest,
        settings,
        &target,
        &stop.shutdown,
    )
    .await?;
    let maintenance = super::ingest::maintenance(&opts.ingest, &target, ingest.is_some());
    let cfg = if args.ingest.no_capture {
        None
    } else {
        Some(capture_config(
            &opts.capture,
            settings,
            target,
            &settings.ds_server_url.value,
            settings.ds_access()?,
        )?)
    };
    super::ingest::run_directions(
        cfg,
        ingest,
        maintenance,
        settings,
        &stop.shutdown,
        &stop.hard_stop,
    )
    .await
}

/// The capture configuration from the merged options: checked names, parsed routes, and
/// the lower bounds the limits need.
fn capture_config(
    opts: &CaptureOptions,
    settings: &Settings,
    target: PgTarget,
    ds_url: &str,
    access: DsAccess,
) -> Result<CaptureConfig, CliError> {
    let slot = settings.slot.value.clone();
    let publication = settings.publication.value.clone();
    validate_slot_name(&slot).map_err(|e| CliError::Invalid(e.to_string()))?;
    validate_publication_name(&publication).map_err(|e| CliError::Invalid(e.to_string()))?;
    let limits = Limits {
        max_messages: opts.batch_max_messages.value.max(1),
        max_bytes: opts.batch_max_bytes.value.max(1),
        linger: Duration::from_millis(opts.linger_ms.value),
    };
    let ds = DsClient::new(
        ds_url,
        ClientOptions {
            request_timeout: Duration::from_millis(opts.request_timeout_ms.value),
            access,
            ..ClientOptions::default()
        },
    )?;
    let cfg = CaptureConfig {
        source: SourceConfig {
            target,
            slot,
            publication,
            tables: opts.tables.value.clone(),
            insert_only: opts.insert_only.value.clone(),
            policy: IdentityPolicy {
                toast: opts.toast.value,
                keep_replica_identity: opts.keep_replica_identity.value,
            },
            takeover: opts.takeover.value,
            failover: opts.failover_slot.value,
            protocol: opts.pgoutput_protocol.value,
        },
        ds,
        router: router(opts)?,
        limits,
        max_buffer_bytes: opts.max_buffer_bytes.value,
        max_in_flight: opts.max_in_flight.value,
        snapshot: SnapshotOptions {
            mode: opts.snapshot.value,
            workers: opts.snapshot_workers.value.max(1),
            chunk_rows: opts.snapshot_chunk_rows.value.max(1),
        },
        whole_rows: crate::capture::whole_rows::WholeRows::default(),
        on_slot_lost: opts.on_slot_lost.value,
        standby_takeover_after: Duration::from_millis(opts.standby_takeover_after_ms.value),
    };
    let stream_labels = opts.metrics_stream_labels.value;
    crate::observe::capture().configured(cfg.max_buffer_bytes, stream_labels);
    Ok(cfg)
}

/// The stream template and the per-table routes, parsed.
fn router(opts: &CaptureOptions) -> Result<Router, CliError> {
    let invalid = |e: crate::capture::route::RouteError| CliError::Invalid(e.to_string());
    let mut routes = Vec::new();
    for raw in &opts.routes.value {
        routes.push(parse_route_option(raw).map_err(invalid)?);
    }
    Router::new(
        Template::parse(&opts.stream_template.value).map_err(invalid)?,
        routes,
    )
    .map_err(invalid)
}

/// The table `dev` creates and captures unless `--tables` (or its env var or file key)
/// names others.
const DEMO_TABLE_NAME: &str = "items";

const DEMO_TABLE: &str = "CREATE TABLE IF NOT EXISTS items (\
    id SERIAL PRIMARY KEY, title TEXT NOT NULL, body TEXT, created_at TIMESTAMPTZ DEFAULT NOW())";

/// `ds-sync dev`: capture against throwaway servers unless real ones are given.
pub async fn dev(args: &CaptureArgs, settings: &Settings) -> Result<(), CliError> {
    let mut opts = options(args, settings)?;
    if opts.capture.tables.source == Source::Default {
        opts.capture.tables.value = vec![DEMO_TABLE_NAME.into()];
    }
    let stop = Stop::install(opts.capture.shutdown_timeout());
    let (shutdown, hard_stop) = (stop.shutdown.clone(), stop.hard_stop.clone());
    let local_pg = if settings.postgres_url_source() == Source::Unset {
        eprintln!("starting a throwaway PostgreSQL cluster...");
        let pg = tokio::task::spawn_blocking(|| LocalPostgres::start(&PostgresOptions::default()))
            .await
            .map_err(|e| CliError::Invalid(format!("starting PostgreSQL: {e}")))??;
        Some(pg)
    } else {
        None
    };
    let target = match &local_pg {
        Some(pg) => {
            PgTarget::parse(&pg.url("postgres"), None).map_err(crate::config::ConfigError::from)?
        }
        None => super::commands::target(settings)?,
    };
    let ds_server = if settings.ds_server_url.source == Source::Default {
        Some(start_local_ds().await?)
    } else {
        None
    };
    let ds_url = ds_server
        .as_ref()
        .map_or_else(|| settings.ds_server_url.value.clone(), DsServer::url);
    // The throwaway server needs no credentials; a given one gets the configured ones.
    let access = match ds_server {
        Some(_) => DsAccess::default(),
        None => settings.ds_access()?,
    };
    let mut client = target.connect().await?;
    crate::schema::apply(&mut client).await?;
    client
        .batch_execute(DEMO_TABLE)
        .await
        .map_err(|e| crate::pg::PgError::query("creating the demo table items", &e))?;
    let cfg = if args.ingest.no_capture {
        None
    } else {
        let cfg = capture_config(
            &opts.capture,
            settings,
            target.clone(),
            &ds_url,
            access.clone(),
        )?;
        dev_slot(&client, &cfg).await?;
        Some(cfg)
    };
    let tables = &opts.capture.tables.value;
    print_dev_banner(local_pg.as_ref(), &target, &ds_url, tables, cfg.is_some());
    let ingest =
        super::ingest::dev_config(&opts.ingest, &args.ingest, &target, &ds_url, access).await?;
    let maintenance = super::ingest::maintenance(&opts.ingest, &target, ingest.is_some());
    let result =
        super::ingest::run_directions(cfg, ingest, maintenance, settings, &shutdown, &hard_stop)
            .await;
    drop(ds_server);
    drop(local_pg);
    eprintln!("stopped; throwaway servers removed");
    stop.outcome(result)
}

/// The publication and slot of `dev`, made before the banner invites inserts so that no row
/// falls before the slot. A lost slot is left to capture, which recreates it with
/// `--on-slot-lost recreate`.
async fn dev_slot(client: &tokio_postgres::Client, cfg: &CaptureConfig) -> Result<(), CliError> {
    let slot = async {
        crate::capture::source::ensure_publication(client, &cfg.source).await?;
        crate::capture::source::ensure_slot(client, &cfg.source).await
    };
    match slot.await {
        Err(crate::capture::CaptureError::SlotLost(_))
            if cfg.on_slot_lost == crate::capture::slot_lost::OnSlotLost::Recreate =>
        {
            Ok(())
        }
        other => other.map(|_| ()).map_err(CliError::from),
    }
}

/// Port 4437 (the DS default) when free, so printed URLs are predictable; any port otherwise.
async fn start_local_ds() -> Result<DsServer, CliError> {
    let preferred = DsServerOptions {
        port: 4437,
        ..DsServerOptions::default()
    };
    match DsServer::start(preferred).await {
        Ok(s) => Ok(s),
        Err(_) => Ok(DsServer::start(DsServerOptions::default()).await?),
    }
}

fn print_dev_banner(
    local_pg: Option<&LocalPostgres>,
    target: &PgTarget,
    ds_url: &str,
    tables: &[String],
    capture: bool,
) {
    let psql_url = local_pg.map_or_else(|| target.to_string(), |pg| pg.url("postgres"));
    if !capture {
        eprintln!(
            "\nds-sync dev is running without capture: the servers are there for another ds-sync.\n\n\
             \x20 Postgres   {target}\n\
             \x20 DS server  {ds_url}\n\n\
             Connect:\n\
             \x20 psql '{psql_url}'\n\n\
             Ctrl-C removes the throwaway servers.\n"
        );
        return;
    }
    let first = tables
        .first()
        .cloned()
        .unwrap_or_else(|| DEMO_TABLE_NAME.into());
    let stream = format!("{}/v1/stream/pg-{first}", ds_url.trim_end_matches('/'));
    eprintln!(
        "\nds-sync dev is running: changes to {tables} flow into DS streams.\n\n\
         \x20 Postgres   {target}\n\
         \x20 DS server  {ds_url}\n\
         \x20 stream     {stream}\n\n\
         Tail the stream over SSE:\n\
         \x20 curl -N '{stream}?offset=-1&live=sse'\n\n\
         Insert a row:\n\
         \x20 psql '{psql_url}' -c \"INSERT INTO items (title, body) VALUES ('hello', 'world')\"\n\n\
         Ctrl-C stops capture and removes the throwaway servers.\n",
        tables = tables.join(", ")
    );
}
