//! `ds-sync run` and `ds-sync dev`: options merged into a capture configuration, signals
//! turned into shutdown, and for `dev` the throwaway servers around it.

use std::time::Duration;

use crate::capture::CaptureConfig;
use crate::capture::batch::Limits;
use crate::capture::route::{Router, Template, parse_route_option};
use crate::capture::snapshot::{SnapshotMode, SnapshotOptions};
use crate::capture::source::SourceConfig;
use crate::config::{Settings, Source, layered};
use crate::ds::{ClientOptions, DsAccess, DsClient};
use crate::embedded::{DsServer, DsServerOptions, LocalPostgres, PostgresOptions};
use crate::pg::PgTarget;
use crate::pg::ident::{validate_publication_name, validate_slot_name};

use super::CliError;
use super::args::CaptureArgs;
use super::stop::{DEFAULT_SHUTDOWN_TIMEOUT, Stop};

/// Default stream name template: the sync-layer document's `pg-items` for table `items`.
pub const DEFAULT_STREAM_TEMPLATE: &str = "pg-{table}";

/// Runs capture until a signal.
pub async fn run(args: &CaptureArgs, settings: &Settings) -> Result<(), CliError> {
    let stop = Stop::install(shutdown_timeout(args, settings));
    let result = run_until_stopped(args, settings, &stop).await;
    stop.outcome(result)
}

async fn run_until_stopped(
    args: &CaptureArgs,
    settings: &Settings,
    stop: &Stop,
) -> Result<(), CliError> {
    let target = super::commands::target(settings)?;
    let ingest = super::ingest::config(&args.ingest, settings, &target).await?;
    let maintenance =
        super::ingest::maintenance(&args.ingest, settings, &target, ingest.is_some())?;
    let cfg = if args.ingest.no_capture {
        None
    } else {
        Some(capture_config(
            args,
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

/// `--shutdown-timeout-ms` over the `[capture]` key over the default.
fn shutdown_timeout(args: &CaptureArgs, settings: &Settings) -> Duration {
    args.shutdown_timeout_ms
        .or(settings.capture_file.shutdown_timeout_ms)
        .map_or(DEFAULT_SHUTDOWN_TIMEOUT, Duration::from_millis)
}

/// Flags (and their env vars) over the config file's `[capture]` over defaults.
fn capture_config(
    args: &CaptureArgs,
    settings: &Settings,
    target: PgTarget,
    ds_url: &str,
    access: DsAccess,
) -> Result<CaptureConfig, CliError> {
    let file = &settings.capture_file;
    let slot = settings.slot.value.clone();
    let publication = settings.publication.value.clone();
    validate_slot_name(&slot).map_err(|e| CliError::Invalid(e.to_string()))?;
    validate_publication_name(&publication).map_err(|e| CliError::Invalid(e.to_string()))?;
    let template = layered(
        args.stream_template.clone(),
        file.stream_template.clone(),
        DEFAULT_STREAM_TEMPLATE.into(),
    );
    let invalid = |e: crate::capture::route::RouteError| CliError::Invalid(e.to_string());
    let mut routes = Vec::new();
    for (table, tpl) in file.routes.clone().unwrap_or_default() {
        routes.push((table, Template::parse(&tpl).map_err(invalid)?));
    }
    for raw in &args.routes {
        let (table, tpl) = parse_route_option(raw).map_err(invalid)?;
        routes.retain(|(t, _)| *t != table);
        routes.push((table, tpl));
    }
    let router =
        Router::new(Template::parse(&template).map_err(invalid)?, routes).map_err(invalid)?;
    let limits = Limits {
        max_messages: layered(
            args.batch_max_messages,
            file.batch_max_messages,
            Limits::DEFAULT_MAX_MESSAGES,
        )
        .max(1),
        max_bytes: layered(
            args.batch_max_bytes,
            file.batch_max_bytes,
            Limits::DEFAULT_MAX_BYTES,
        )
        .max(1),
        linger: args
            .linger_ms
            .or(file.linger_ms)
            .map_or(Limits::DEFAULT_LINGER, Duration::from_millis),
    };
    let timeout = args.request_timeout_ms.or(file.request_timeout_ms).map_or(
        ClientOptions::DEFAULT_REQUEST_TIMEOUT,
        Duration::from_millis,
    );
    let ds = DsClient::new(
        ds_url,
        ClientOptions {
            request_timeout: timeout,
            access,
            ..ClientOptions::default()
        },
    )?;
    let cfg = CaptureConfig {
        source: SourceConfig {
            target,
            slot,
            publication,
            tables: layered(args.tables.clone(), file.tables.clone(), Vec::new()),
            insert_only: layered(
                args.insert_only.clone(),
                file.insert_only.clone(),
                Vec::new(),
            ),
            policy: crate::publication::IdentityPolicy {
                toast: args.toast.or(file.toast).unwrap_or_default(),
                keep_replica_identity: args.keep_replica_identity
                    || file.keep_replica_identity.unwrap_or(false),
            },
            takeover: args.takeover || file.takeover.unwrap_or(false),
        },
        ds,
        router,
        limits,
        max_buffer_bytes: layered(
            args.max_buffer_bytes,
            file.max_buffer_bytes,
            CaptureConfig::DEFAULT_MAX_BUFFER_BYTES,
        ),
        max_in_flight: layered(
            args.max_in_flight,
            file.max_in_flight,
            CaptureConfig::DEFAULT_MAX_IN_FLIGHT,
        ),
        snapshot: SnapshotOptions {
            mode: layered(args.snapshot, file.snapshot, SnapshotMode::default()),
            workers: layered(
                args.snapshot_workers,
                file.snapshot_workers,
                SnapshotOptions::DEFAULT_WORKERS,
            )
            .max(1),
            chunk_rows: args
                .snapshot_chunk_rows
                .unwrap_or(crate::capture::snapshot::incremental::DEFAULT_CHUNK_ROWS)
                .max(1),
        },
        whole_rows: crate::capture::whole_rows::WholeRows::default(),
        on_slot_lost: args.on_slot_lost.or(file.on_slot_lost).unwrap_or_default(),
    };
    let stream_labels = args.metrics_stream_labels || file.metrics_stream_labels.unwrap_or(false);
    crate::observe::capture().configured(cfg.max_buffer_bytes, stream_labels);
    Ok(cfg)
}

const DEMO_TABLE: &str = "CREATE TABLE IF NOT EXISTS items (\
    id SERIAL PRIMARY KEY, title TEXT NOT NULL, body TEXT, created_at TIMESTAMPTZ DEFAULT NOW())";

/// `ds-sync dev`: capture against throwaway servers unless real ones are given.
pub async fn dev(args: &CaptureArgs, settings: &Settings) -> Result<(), CliError> {
    let stop = Stop::install(shutdown_timeout(args, settings));
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
    let mut args = args.clone();
    args.tables.get_or_insert_with(|| vec!["items".into()]);
    let cfg = if args.ingest.no_capture {
        None
    } else {
        let cfg = capture_config(&args, settings, target.clone(), &ds_url, access.clone())?;
        // The slot exists before the banner invites inserts, so no row falls before it. A
        // lost slot is left to capture, which recreates it with --on-slot-lost recreate.
        let slot = async {
            crate::capture::source::ensure_publication(&client, &cfg.source).await?;
            crate::capture::source::ensure_slot(&client, &cfg.source).await
        };
        match slot.await {
            Err(crate::capture::CaptureError::SlotLost(_))
                if cfg.on_slot_lost == crate::capture::slot_lost::OnSlotLost::Recreate => {}
            other => {
                other?;
            }
        }
        Some(cfg)
    };
    print_dev_banner(local_pg.as_ref(), &target, &ds_url, &args, cfg.is_some());
    let ingest = super::ingest::dev_config(&args.ingest, &target, &ds_url, access).await?;
    let maintenance =
        super::ingest::maintenance(&args.ingest, settings, &target, ingest.is_some())?;
    let result =
        super::ingest::run_directions(cfg, ingest, maintenance, settings, &shutdown, &hard_stop)
            .await;
    drop(ds_server);
    drop(local_pg);
    eprintln!("stopped; throwaway servers removed");
    stop.outcome(result)
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
    args: &CaptureArgs,
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
    let tables = args.tables.clone().unwrap_or_default();
    let first = tables.first().cloned().unwrap_or_else(|| "items".into());
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
