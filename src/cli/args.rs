//! The command line, parsed and validated without I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, OutputFormat};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error (connection, SQL, invalid input); the message says what and where;
     health: not ready (the reason follows)
  2  usage error (unknown option, missing argument)
  3  init: a server prerequisite is not met (each failed check is printed with its fix)
  4  slot status / slot drop: the slot does not exist
  5  slot status: the slot is lost (wal_status = lost): its WAL is gone;
     run / dev: the slot is lost and --on-slot-lost is error (the default)
  6  run / dev: a second signal or --shutdown-timeout-ms stopped it before the work in
     flight was finished (nothing is lost: the next start resumes)
  7  run: another ds-sync took the slot over (a standby, or --takeover); this one stopped sending";

/// ds-sync keeps PostgreSQL and a Durable Streams server in sync: row changes flow from a
/// logical replication slot into DS streams, and events from DS streams flow into Postgres.
#[derive(Debug, Parser)]
#[command(name = "ds-sync", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command. Each one can also come from an environment variable and
/// from the `--config` file (precedence: flag > env > file > default).
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// TOML file with defaults for the options below (keys: postgres_url, ds_server_url,
    /// ds_token, ds_token_file, ds_headers, ds_ca_file, ds_client_cert, ds_client_key, slot,
    /// publication, log_format, output, listen)
    #[arg(long, global = true, env = "DS_SYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Postgres URL, e.g. postgres://user:password@localhost:5432/app?sslmode=verify-full&sslrootcert=ca.pem
    /// (DATABASE_URL is also accepted; PGPASSWORD supplies a password the URL lacks; PGSSLMODE,
    /// PGSSLROOTCERT, PGSSLCERT, PGSSLKEY apply under the URL's own TLS parameters)
    #[arg(
        long,
        global = true,
        env = "POSTGRES_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub postgres_url: Option<String>,

    /// Durable Streams server base URL, http:// or https:// [default: http://127.0.0.1:4437]
    #[arg(long, global = true, env = "DS_SERVER_URL", value_name = "URL")]
    pub ds_server_url: Option<String>,

    /// Token sent to the DS server as `Authorization: Bearer TOKEN` on every request (never
    /// logged or shown)
    #[arg(
        long,
        global = true,
        env = "DS_SYNC_DS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub ds_token: Option<String>,

    /// File holding the DS token (e.g. a mounted secret), read when --ds-token is not given
    #[arg(
        long,
        global = true,
        env = "DS_SYNC_DS_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub ds_token_file: Option<PathBuf>,

    /// Header sent to the DS server on every request, 'Name: value'; repeatable (env: one
    /// header per line; values are never logged or shown)
    #[arg(
        long = "ds-header",
        global = true,
        env = "DS_SYNC_DS_HEADERS",
        hide_env_values = true,
        value_delimiter = '\n',
        value_name = "NAME: VALUE"
    )]
    pub ds_headers: Vec<String>,

    /// PEM file of the CA that signs an https:// DS server's certificate [default: the
    /// system's trust store]
    #[arg(long, global = true, env = "DS_SYNC_DS_CA_FILE", value_name = "FILE")]
    pub ds_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with the DS server (with --ds-client-key)
    #[arg(
        long,
        global = true,
        env = "DS_SYNC_DS_CLIENT_CERT",
        value_name = "FILE"
    )]
    pub ds_client_cert: Option<PathBuf>,

    /// Private key (PEM) of --ds-client-cert
    #[arg(
        long,
        global = true,
        env = "DS_SYNC_DS_CLIENT_KEY",
        value_name = "FILE"
    )]
    pub ds_client_key: Option<PathBuf>,

    /// Replication slot ds-sync consumes [default: ds_sync]
    #[arg(long, global = true, env = "DS_SYNC_SLOT", value_name = "NAME")]
    pub slot: Option<String>,

    /// Publication ds-sync decodes [default: ds_sync]
    #[arg(long, global = true, env = "DS_SYNC_PUBLICATION", value_name = "NAME")]
    pub publication: Option<String>,

    /// Log line format on stderr: text (coloured only on a terminal, unless NO_COLOR is set)
    /// or json (one object per line, for log shippers); filter with RUST_LOG, e.g.
    /// RUST_LOG=ds_sync=debug [default: text]
    #[arg(long, global = true, env = "DS_SYNC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Output format of commands that print results [default: table]
    #[arg(long, global = true, env = "DS_SYNC_OUTPUT", value_enum)]
    pub output: Option<OutputFormat>,

    /// Serve /metrics (Prometheus), /livez and /readyz on this IP:PORT while `run` or `dev`
    /// runs; `health` checks it [default: off]
    #[arg(long, global = true, env = "DS_SYNC_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture row changes from the replication slot into Durable Streams (runs until
    /// SIGTERM/SIGINT)
    #[command(after_help = "\
Creates the publication from --tables (and NAME_insert_only from --insert-only) and the slot
when they are missing, then streams every committed row change, in commit order, to its DS
stream (default pg-{table}). A table whose UPDATE and DELETE PostgreSQL would refuse once
published (no primary key, no replica identity) is refused first, with the fix; tables with
TOASTable columns get REPLICA IDENTITY FULL (logged) so that updates carry whole rows, unless
--toast partial or --keep-replica-identity. Partitioned tables stream as themselves. The slot only
advances for changes the DS server has acknowledged; after a crash, replayed changes are
recognised by their Stream-Seq and skipped. A lost connection (Postgres or DS) is opened again
after a backoff, and capture resumes. A slot the server invalidated (wal_status = lost, past
max_slot_wal_keep_size) stops it with exit code 5, or with --on-slot-lost recreate is dropped
and created again, every stream its tables wrote to reset and the tables snapshotted again.
SIGTERM/SIGINT: stop reading, deliver what was read, confirm, exit 0; a second signal, or
--shutdown-timeout-ms passing while a server is down, stops at once with exit code 6 (nothing
is lost: the slot did not move past it). Several `run` on one --slot: one captures, the others
wait as standbys (a session advisory lock on the slot) and take over when it ends, or when it
has looked hung for --standby-takeover-after-ms; the one taken over exits with code 7.

Examples:
  ds-sync run --tables items,orders
  ds-sync run --tables sessions --route 'sessions=sessions/{session_id}'
  ds-sync run --tables items --insert-only audit_log
  ds-sync run --stream-template 'db/{schema}/{table}' --takeover

Ingest (streams into session_events, the offset committed with the rows) runs beside capture
when --ingest, the [ingest] section or stored subscriptions name streams:
  ds-sync run --tables items --ingest sessions/1,sessions/2
  ds-sync run --no-capture --ingest sessions/1")]
    Run {
        #[command(flatten)]
        capture: CaptureArgs,
    },
    /// Try ds-sync with nothing installed but PostgreSQL: a throwaway Postgres, an in-process
    /// DS server, a demo table, capture running; Ctrl-C cleans everything up
    #[command(after_help = "\
Without --postgres-url it starts a private PostgreSQL cluster in a temp directory; without
--ds-server-url it serves a DS server in-process (port 4437 when free). It creates the table
items (id, title, body, created_at), runs capture, and prints a curl line that tails the
stream over SSE and a psql line to insert rows. With --no-capture it only starts the servers
(and ingest), for another ds-sync (e.g. the container image) to use.

Examples:
  ds-sync dev
  ds-sync dev --no-capture")]
    Dev {
        #[command(flatten)]
        capture: CaptureArgs,
    },
    /// Manage logical replication slots
    #[command(subcommand)]
    Slot(SlotCommand),
    /// Manage publications (which tables, rows and columns are decoded)
    #[command(subcommand)]
    Publication(PublicationCommand),
    /// Create the sink table and ds-sync's schema, and check the server's prerequisites
    #[command(after_help = "\
Applies sql/ (embedded) idempotently: public.session_events (with its indexes) and the ds_sync
schema; with --partition-by, session_events is partitioned by received_at. Then checks
wal_level, max_replication_slots, max_wal_senders, the role's REPLICATION attribute and the
server version, printing each failed check with its fix; exits 3 when one fails.

Example:
  ds-sync init --postgres-url postgres://app@localhost/app
  ds-sync init --partition-by month    # session_events partitioned by received_at")]
    Init(InitArgs),
    /// Delete old session_events rows and dead letters, in short batches (ingest goes on)
    #[command(after_help = "\
Deletes session_events rows whose received_at is older than --older-than, in batches of
--batch-rows rows, each its own short transaction, so ingest's COPY goes on meanwhile. On a
table made by `init --partition-by`, partitions wholly older than that are dropped first (a
lock of at most 2 s per try, retried), then the rest is deleted in batches. Dead letters go by
their created_at. Offsets in ds_sync.stream_offsets are not touched: ingest never reads a
pruned event again. A progress bar on a terminal; a summary line at the end. `run
--retention` does the same periodically.

Examples:
  ds-sync prune --older-than 30d
  ds-sync prune --older-than 12h --stream sessions/42 --stream sessions/43
  ds-sync prune --dead-letters-older-than 90d")]
    Prune(PruneArgs),
    /// Show the effective configuration and where each value came from
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ingest streams into session_events (a running ds-sync picks this up within a second)
    #[command(after_help = "\
Stores the subscription in ds_sync.subscriptions and notifies running ds-sync processes.
Subscribing a stream again restarts its subscription (e.g. after a 410 or a closed stream).
--reset-offset forgets the stored offset: ingest starts again from the oldest event the
server retains (rows already stored stay).

Examples:
  ds-sync subscribe sessions/42 sessions/43
  ds-sync subscribe sessions/42 --reset-offset")]
    Subscribe {
        /// Stream names (as after /v1/stream/ in the URL)
        #[arg(required = true, value_name = "STREAM")]
        streams: Vec<String>,
        /// Forget the stored offset and ingest from the start of what the server retains
        #[arg(long)]
        reset_offset: bool,
    },
    /// Stop ingesting streams (their stored offsets are kept)
    #[command(after_help = "Example:\n  ds-sync unsubscribe sessions/42")]
    Unsubscribe {
        /// Stream names
        #[arg(required = true, value_name = "STREAM")]
        streams: Vec<String>,
    },
    /// List subscriptions: state, committed offset, the stream's tail (HEAD), dead letters
    #[command(after_help = "Example:\n  ds-sync subscriptions --output json")]
    Subscriptions,
    /// Load-test runner: one scenario against throwaway servers (or the given URLs), next to
    /// its ceiling measured in the same run; writes JSON, Markdown and SVG charts
    #[command(after_help = "\
Without --postgres-url it starts a private PostgreSQL cluster; without --ds-server-url it serves a
DS server in this process. ds-sync itself runs as a child process (this executable, `run`), so
its memory and CPU are measured alone. Build with --release: debug figures mean little. The
runner is a cargo feature (`bench`), not part of the sidecar binary.
Arguments after `--` are passed to `ds-sync run` (e.g. batch limits being tuned).

Examples:
  cargo run --release --features bench -- bench capture-drain
  cargo run --release --features bench -- bench capture-latency --rate 2000 --duration 20
  cargo run --release --features bench -- bench memory --rows 1000000
  cargo run --release --features bench -- bench ingest-outage --rows 300000 --duration 15
  cargo run --release --features bench -- bench capture-drain -- --batch-max-messages 5000")]
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// Load-test runner: not in this build (cargo feature `bench`); says how to get it
    #[cfg(not(feature = "bench"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        /// Whatever was given; the runner is not here to read it
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Ask capture to send one table's existing rows again, while streaming goes on
    #[command(after_help = "\
Writes a request into ds_sync.signals (added to the publication automatically). The running
capture (`ds-sync run` on the same --slot), or the next one to start, reads the table in
key-ordered chunks between watermarks and sends its rows as inserts, placed so that no row
overrides a newer change. No reset is sent: rows deleted while the table was not captured
stay in clients' state. The table needs a primary key.

Example:
  ds-sync snapshot --table items --slot ds_sync --publication ds_sync")]
    Snapshot(SnapshotArgs),
    /// Check a running ds-sync's readiness (/readyz): exit 0 when ready, 1 otherwise, with
    /// the reason; the healthcheck of the container image
    #[command(after_help = "\
Asks GET /readyz of the ds-sync listening on --listen (DS_SYNC_LISTEN, file key listen; an
unspecified IP such as 0.0.0.0 means loopback), or on --url. Prints the reason when not ready.
Needs no shell or curl, so it is the HEALTHCHECK of the distroless image.

Examples:
  ds-sync health --url http://127.0.0.1:9464
  DS_SYNC_LISTEN=0.0.0.0:9464 ds-sync health")]
    Health {
        /// Base URL of the ds-sync to check, e.g. http://127.0.0.1:9464 [default: from --listen]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Streams written by another source
    #[command(subcommand)]
    Stream(StreamCommand),
}

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Hand streams written by another database to this one (the way out when `run` stops
    /// with "holds writes this source did not make")
    #[command(after_help = "\
A stream written from another database (or a restore of this one with lower WAL positions)
refuses this database's Stream-Seq values, and `run` stops rather than skip the rows. Adopting
the stream records a new epoch for it in this database (its Stream-Seq values then sort above
every earlier one), sends it a reset (clients drop what the other database wrote), and makes
the next `run` snapshot the tables routed to it again. The other database must stop writing
the stream. The alternative is deleting the stream on the DS server.

Example:
  ds-sync stream adopt pg-items")]
    Adopt {
        /// Stream names (as after /v1/stream/ in the URL)
        #[arg(required = true, value_name = "STREAM")]
        streams: Vec<String>,
    },
}

/// Options of `ds-sync snapshot`.
#[derive(Debug, Args, Clone)]
pub struct SnapshotArgs {
    /// The published table to send again (`name` or `schema.name`)
    #[arg(long, value_name = "TABLE")]
    pub table: String,
}

/// Options of `ds-sync bench`.
#[cfg(feature = "bench")]
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// The scenario to run
    #[arg(value_enum)]
    pub scenario: crate::bench::Scenario,
    /// Rows of the large transaction (capture-drain, memory), of the table (snapshot), events
    /// of the backlog (ingest-drain), events arriving during the outage (ingest-outage)
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// One-row transactions (capture-drain); rows of the naive scenario's backlog
    #[arg(long, default_value_t = 100_000)]
    pub txns: u64,
    /// Transactions (or events) per second of the latency scenarios
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// capture-latency's second phase: this many transactions per second after the first
    /// (figures only, no target; 0 skips it)
    #[arg(long, default_value_t = 10_000)]
    pub peak_rate: u32,
    /// Seconds the latency scenarios run; seconds PostgreSQL is down (ingest-outage); seconds
    /// of load under faults (chaos); seconds of POSTs under load (ingest-share)
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Writer connections of the latency scenarios; concurrent POSTing clients
    /// (ingest-share)
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Subscriptions ingest-share shares out
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// `ds-sync run --no-capture` instances ingest-share runs (at least 2)
    #[arg(long, default_value_t = 4)]
    pub instances: usize,
    /// Times the memory scenario drains its transaction (a fresh table each time; the
    /// report gives each peak and holds the worst to the target), or ingest-drain drains its
    /// backlog per table form next to its ceiling (alternating which goes first; the median
    /// ratio is checked)
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Results go to DIR/<scenario>-<timestamp>/
    #[arg(long, default_value = "bench/results", value_name = "DIR")]
    pub out: PathBuf,
    /// Forms of session_events ingest-drain measures in this run, one drain of the same
    /// backlog each: plain (as init makes it), partitioned (init --partition-by day),
    /// unindexed (plain without the readers' indexes) [default: plain]
    #[arg(long, value_delimiter = ',', value_enum, value_name = "FORM,...")]
    pub table_forms: Vec<crate::bench::table_form::TableForm>,
    /// SIGKILLs of ds-sync in the chaos run; its other faults are in proportion (a
    /// PostgreSQL and a DS server restart per 10 kills, at least 3 each from 10 kills on; a
    /// connection cut and a freeze per 5 kills)
    #[arg(long, default_value_t = 50)]
    pub kills: u32,
    /// Seed of the chaos run's fault schedule and load [default: from the clock; the
    /// report gives it]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Passed to `ds-sync run`
    #[arg(last = true)]
    pub ds_sync_args: Vec<String>,
}

/// Options of the capture path. Each has an environment variable and a key in the config
/// file's `[capture]` section.
#[derive(Debug, Args, Clone, Default)]
pub struct CaptureArgs {
    /// Tables to publish (the publication is created, or extended, with them)
    #[arg(
        long,
        value_delimiter = ',',
        env = "DS_SYNC_TABLES",
        value_name = "TABLE,..."
    )]
    pub tables: Option<Vec<String>>,
    /// Tables to publish insert-only: their inserts (and TRUNCATE) are captured, not their
    /// updates and deletes, so they need no primary key or replica identity (they go to the
    /// publication's NAME_insert_only companion)
    #[arg(
        long,
        value_delimiter = ',',
        env = "DS_SYNC_INSERT_ONLY",
        value_name = "TABLE,..."
    )]
    pub insert_only: Option<Vec<String>>,
    /// complete: every insert and update carries the whole row (ds-sync sets REPLICA
    /// IDENTITY FULL on published tables with TOASTable columns); partial: updates may leave
    /// unchanged TOASTed columns out, named in headers.unchanged_toast [default: complete]
    #[arg(long, env = "DS_SYNC_TOAST", value_enum, value_name = "MODE")]
    pub toast: Option<crate::publication::ToastMode>,
    /// Never change an application table (its replica identity is the only change ds-sync
    /// makes); a table that would need one is refused with the fix
    #[arg(long, env = "DS_SYNC_KEEP_REPLICA_IDENTITY")]
    pub keep_replica_identity: bool,
    /// Stream name template for tables without a --route: {table}, {schema}, {column}
    /// [default: pg-{table}]
    #[arg(long, env = "DS_SYNC_STREAM_TEMPLATE", value_name = "TEMPLATE")]
    pub stream_template: Option<String>,
    /// Route one table to a stream template, e.g. 'sessions=sessions/{session_id}' (per-key
    /// streams are created on first use); repeatable
    #[arg(long = "route", value_name = "TABLE=TEMPLATE")]
    pub routes: Vec<String>,
    /// Terminate a walsender that still holds the slot (e.g. left by a crashed or hung
    /// instance); the instance it belonged to stops at its next lease check (exit code 7)
    #[arg(long, env = "DS_SYNC_TAKEOVER")]
    pub takeover: bool,
    /// Create the slot as a failover slot (PostgreSQL 17+), synchronized to physical
    /// standbys that have sync_replication_slots on, so that capture resumes on a promoted
    /// standby; an existing slot gets failover turned on. Refused on older servers
    #[arg(long, env = "DS_SYNC_FAILOVER_SLOT")]
    pub failover_slot: bool,
    /// A standby (an instance waiting for the slot lock another instance holds) ends the
    /// holder's session and takes over once the holder looks hung this long: its lease not
    /// renewed and no walsender of the slot answering, in ms [default: 10000]
    #[arg(long, env = "DS_SYNC_STANDBY_TAKEOVER_AFTER_MS", value_name = "MS")]
    pub standby_takeover_after_ms: Option<u64>,
    /// Most messages in one POST [default: 1000]
    #[arg(long, env = "DS_SYNC_BATCH_MAX_MESSAGES", value_name = "N")]
    pub batch_max_messages: Option<usize>,
    /// Most bytes in one POST [default: 1048576]
    #[arg(long, env = "DS_SYNC_BATCH_MAX_BYTES", value_name = "BYTES")]
    pub batch_max_bytes: Option<usize>,
    /// How long a small committed batch may wait for more changes, in ms [default: 0: send
    /// when the stream is idle; busy streams batch naturally]
    #[arg(long, env = "DS_SYNC_LINGER_MS", value_name = "MS")]
    pub linger_ms: Option<u64>,
    /// Stop reading WAL while this many bytes of changes are held [default: 8388608]
    #[arg(long, env = "DS_SYNC_MAX_BUFFER_BYTES", value_name = "BYTES")]
    pub max_buffer_bytes: Option<usize>,
    /// POSTs in flight at once over all streams (one per stream) [default: 16]
    #[arg(long, env = "DS_SYNC_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Timeout of one HTTP request to the DS server, in ms [default: 10000]
    #[arg(long, env = "DS_SYNC_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// When to send the published tables' existing rows before streaming: initial (when
    /// run creates the slot, and again after an unfinished snapshot), always (recreate the
    /// slot and snapshot on every start), never [default: initial]
    #[arg(long, env = "DS_SYNC_SNAPSHOT", value_enum, value_name = "WHEN")]
    pub snapshot: Option<crate::capture::snapshot::SnapshotMode>,
    /// When the server invalidated the slot (wal_status = lost: its WAL is gone): error
    /// (stop, exit code 5) or recreate (drop and recreate the slot, send reset to every
    /// stream its tables wrote to, snapshot the tables again, stream on) [default: error]
    #[arg(long, env = "DS_SYNC_ON_SLOT_LOST", value_enum, value_name = "ACTION")]
    pub on_slot_lost: Option<crate::capture::slot_lost::OnSlotLost>,
    /// The pgoutput protocol version: 1 (a transaction is sent whole after its commit) or 2
    /// (PostgreSQL 14+: a transaction larger than logical_decoding_work_mem is streamed while
    /// it runs, held by ds-sync, spilled to a temporary file past 1 MiB, and sent at its
    /// commit) [default: 1]
    #[arg(
        long,
        env = "DS_SYNC_PGOUTPUT_PROTOCOL",
        value_enum,
        value_name = "VERSION"
    )]
    pub pgoutput_protocol: Option<crate::capture::source::PgoutputProtocol>,
    /// Tables a snapshot reads in parallel [default: 4]
    #[arg(long, env = "DS_SYNC_SNAPSHOT_WORKERS", value_name = "N")]
    pub snapshot_workers: Option<usize>,
    /// Rows per key-ordered chunk of a snapshot taken while streaming (`ds-sync snapshot`,
    /// tables added to the publication later) [default: 1000]
    #[arg(long, env = "DS_SYNC_SNAPSHOT_CHUNK_ROWS", value_name = "N")]
    pub snapshot_chunk_rows: Option<usize>,
    /// Count messages per capture stream in the metrics (one series per stream, at most
    /// 10000; per-key routes make many) [default: off]
    #[arg(long, env = "DS_SYNC_METRICS_STREAM_LABELS")]
    pub metrics_stream_labels: bool,

    /// After SIGTERM/SIGINT, how long finishing the work in flight may take before it is
    /// abandoned (exit code 6; nothing is lost), in ms [default: 10000]
    #[arg(long, env = "DS_SYNC_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    #[command(flatten)]
    pub ingest: IngestArgs,
}

/// Options of the ingest path (stream → `session_events`). Each has an environment variable
/// and a key in the config file's `[ingest]` section.
#[derive(Debug, Args, Clone, Default)]
pub struct IngestArgs {
    /// Streams to ingest into session_events (added to the stored subscriptions; see
    /// `ds-sync subscribe`)
    #[arg(
        long = "ingest",
        value_delimiter = ',',
        num_args = 1..,
        env = "DS_SYNC_INGEST",
        value_name = "STREAM"
    )]
    pub streams: Vec<String>,
    /// Run ingest only (it runs even with no subscriptions: they may be added while it runs)
    #[arg(long, conflicts_with = "no_ingest")]
    pub no_capture: bool,
    /// Run capture only
    #[arg(long)]
    pub no_ingest: bool,
    /// Largest message stored; larger ones go to ds_sync.dead_letters [default: 16777216]
    #[arg(long, env = "DS_SYNC_INGEST_MAX_EVENT_BYTES", value_name = "BYTES")]
    pub ingest_max_event_bytes: Option<usize>,
    /// Most rows written in one ingest transaction (over all streams) [default: 10000]
    #[arg(long, env = "DS_SYNC_INGEST_BATCH_MAX_ROWS", value_name = "N")]
    pub ingest_batch_max_rows: Option<usize>,
    /// Bound on what ingest holds in memory, all streams together (one stream holds at most
    /// half); at the bound it stops reading, and a data event too large to hold is read
    /// again by a catch-up read streamed into PostgreSQL [default: 33554432]
    #[arg(long, env = "DS_SYNC_INGEST_MAX_BUFFER_BYTES", value_name = "BYTES")]
    pub ingest_max_buffer_bytes: Option<usize>,
    /// A stream connection without a byte (data, control or keepalive) for this long is
    /// presumed dead and reopened from the committed offset, e.g. 60s, 2m, 500ms
    /// [default: 60s]
    #[arg(
        long,
        env = "DS_SYNC_INGEST_IDLE_TIMEOUT",
        value_name = "DURATION",
        value_parser = crate::config::parse_duration
    )]
    pub ingest_idle_timeout: Option<std::time::Duration>,
    /// Instances running ingest on one database share the subscriptions; one that stops
    /// renewing its leases (hung, cut off) for this long loses its streams to the others (a
    /// killed one loses them at once), e.g. 15s, 3s [default: 15s]
    #[arg(
        long,
        env = "DS_SYNC_INGEST_LEASE_TTL",
        value_name = "DURATION",
        value_parser = crate::config::parse_duration
    )]
    pub ingest_lease_ttl: Option<std::time::Duration>,
    /// Prune session_events rows received longer ago than this, at every retention pass
    /// (as `ds-sync prune --older-than`), e.g. 30d, 12h, 2w [default: keep everything]
    #[arg(
        long,
        env = "DS_SYNC_RETENTION",
        value_name = "DURATION",
        value_parser = crate::config::parse_duration
    )]
    pub retention: Option<std::time::Duration>,
    /// Prune dead letters (ds_sync.dead_letters) created longer ago than this, at every
    /// retention pass, e.g. 90d [default: keep everything]
    #[arg(
        long,
        env = "DS_SYNC_DEAD_LETTER_RETENTION",
        value_name = "DURATION",
        value_parser = crate::config::parse_duration
    )]
    pub dead_letter_retention: Option<std::time::Duration>,
    /// Time between retention passes (pruning, and partitions of a partitioned
    /// session_events created ahead of time); the first runs at start [default: 10m]
    #[arg(
        long,
        env = "DS_SYNC_RETENTION_INTERVAL",
        value_name = "DURATION",
        value_parser = crate::config::parse_duration
    )]
    pub retention_interval: Option<std::time::Duration>,
}

/// Options of `ds-sync init`.
#[derive(Debug, Args, Clone, Default)]
pub struct InitArgs {
    /// Create session_events partitioned by received_at, one partition per day, week (from
    /// Monday) or month (UTC); its primary key is then (id, received_at). Refused for an
    /// existing plain table that holds rows (the error says how to migrate)
    #[arg(long, value_enum, value_name = "INTERVAL")]
    pub partition_by: Option<crate::retention::PartitionInterval>,
}

/// Options of `ds-sync prune`.
#[derive(Debug, Args, Clone)]
#[command(group(
    clap::ArgGroup::new("what").required(true).multiple(true)
        .args(["older_than", "dead_letters_older_than"])
))]
pub struct PruneArgs {
    /// Delete session_events rows received longer ago than this (by received_at), e.g.
    /// 30d, 12h, 2w, '7days 12h'
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Only this stream's rows (and dead letters); repeatable. No partition is dropped then
    #[arg(long = "stream", value_name = "STREAM")]
    pub streams: Vec<String>,
    /// Delete dead letters (ds_sync.dead_letters) created longer ago than this, e.g. 90d
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub dead_letters_older_than: Option<std::time::Duration>,
    /// Rows per DELETE statement (each its own short transaction)
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::retention::prune::DEFAULT_BATCH_ROWS,
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub batch_rows: i64,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting, and every option `run` would use, with its source (flag, env,
    /// file, default); passwords are hidden
    #[command(after_help = "\
Takes run's options too, so that flags can be checked before a start: the capture and ingest
sections show what `ds-sync run` would use given the same flags, environment and --config file.

Examples:
  POSTGRES_URL=postgres://app@db/app ds-sync config show --output json
  ds-sync config show --config ds-sync.toml --batch-max-messages 500")]
    Show {
        #[command(flatten)]
        run: CaptureArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlotCommand {
    /// Create a logical pgoutput slot
    #[command(after_help = "\
Examples:
  ds-sync slot create                      # the configured slot (--slot, default ds_sync)
  ds-sync slot create items_slot --if-not-exists
  ds-sync slot create probe --temporary    # dropped again when the command exits: checks that slots can be created
  ds-sync slot create items_slot --failover  # PostgreSQL 17+: kept by a promoted physical standby")]
    Create {
        /// Slot name ([a-z0-9_]{1,63}); defaults to --slot
        name: Option<String>,
        /// Create a temporary slot that the server drops when this command's session ends
        #[arg(long)]
        temporary: bool,
        /// Succeed when a compatible slot of that name already exists
        #[arg(long)]
        if_not_exists: bool,
        /// Make it a failover slot, synchronized to physical standbys so that a promoted
        /// standby keeps it (PostgreSQL 17+; with --if-not-exists, turns failover on for an
        /// existing slot)
        #[arg(long)]
        failover: bool,
    },
    /// Drop a slot (refused while a consumer holds it, unless --force)
    #[command(after_help = "\
Examples:
  ds-sync slot drop items_slot
  ds-sync slot drop items_slot --force     # terminates the walsender holding it first")]
    Drop {
        /// Slot name
        name: String,
        /// Terminate the walsender that holds an active slot, then drop it
        #[arg(long)]
        force: bool,
    },
    /// List every slot with its lag, WAL status and safe WAL size
    #[command(after_help = "Example:\n  ds-sync slot list --output json")]
    List,
    /// Show one slot; exits 4 when it does not exist and 5 when it is lost
    #[command(after_help = "\
Example:
  ds-sync slot status ds_sync || echo \"slot missing (4) or lost (5)\"")]
    Status {
        /// Slot name; defaults to --slot
        name: Option<String>,
    },
}

/// Tables and their per-table options.
#[derive(Debug, Args, Clone)]
pub struct TableArgs {
    /// Tables, comma separated (schema-qualified or resolved through search_path); each needs
    /// a primary key or a replica identity, or PostgreSQL would refuse its UPDATE and DELETE
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "insert_only",
        value_name = "TABLE,..."
    )]
    pub tables: Vec<String>,
    /// Tables to publish insert-only (inserts and TRUNCATE; no key needed), in the
    /// NAME_insert_only companion publication
    #[arg(long, value_delimiter = ',', value_name = "TABLE,...")]
    pub insert_only: Vec<String>,
    /// Row filter for one table (PostgreSQL 15+): TABLE=EXPR, e.g. "orders=status <> 'draft'";
    /// repeat for more tables
    #[arg(long = "row-filter", value_name = "TABLE=EXPR", value_parser = parse_table_option)]
    pub row_filters: Vec<(String, String)>,
    /// Column list for one table (PostgreSQL 15+): TABLE=COL,COL, e.g. "users=id,email";
    /// repeat for more tables
    #[arg(long = "columns", value_name = "TABLE=COLS", value_parser = parse_table_option)]
    pub column_lists: Vec<(String, String)>,
    /// complete: set REPLICA IDENTITY FULL on tables with TOASTable columns, so that updates
    /// carry whole rows; partial: leave replica identities as they are [default: complete]
    #[arg(long, env = "DS_SYNC_TOAST", value_enum, value_name = "MODE")]
    pub toast: Option<crate::publication::ToastMode>,
    /// Never change an application table; a table that would need REPLICA IDENTITY FULL is
    /// refused with the fix
    #[arg(long, env = "DS_SYNC_KEEP_REPLICA_IDENTITY")]
    pub keep_replica_identity: bool,
}

fn parse_table_option(raw: &str) -> Result<(String, String), String> {
    crate::publication::split_table_option(raw)
        .ok_or_else(|| format!("expected TABLE=VALUE, got '{raw}'"))
}

#[derive(Debug, Subcommand)]
pub enum PublicationCommand {
    /// Create a publication for some tables
    #[command(after_help = "\
Creates NAME (inserts, updates, deletes, TRUNCATE) and NAME_insert_only (inserts and
TRUNCATE, for --insert-only tables), both publishing partitions through their partitioned
table (publish_via_partition_root). Before changing anything it refuses a table whose UPDATE
and DELETE PostgreSQL would refuse once published (no primary key and no replica identity,
or a column list without the key), with the fix. Tables with TOASTable columns get REPLICA
IDENTITY FULL (logged) so that updates carry whole rows, unless --toast partial or
--keep-replica-identity.

Examples:
  ds-sync publication create ds_sync --tables items,orders
  ds-sync publication create ds_sync --tables items --insert-only audit_log
  ds-sync publication create ds_sync --tables items,orders \\
      --row-filter \"orders=status <> 'draft'\" --columns \"items=id,title\" --toast partial")]
    Create {
        /// Publication name; defaults to --publication
        name: Option<String>,
        #[command(flatten)]
        tables: TableArgs,
    },
    /// Add tables to a publication
    #[command(after_help = "\
Checks the tables as `publication create` does, before changing anything. Insert-only tables
go to NAME_insert_only; when that publication does not exist yet and the slot (--slot) does,
the command refuses: the slot would stop at WAL written before it.

Examples:
  ds-sync publication add ds_sync --tables invoices
  ds-sync publication add ds_sync --insert-only page_views")]
    Add {
        /// Publication name; defaults to --publication
        name: Option<String>,
        #[command(flatten)]
        tables: TableArgs,
    },
    /// Remove tables from a publication (or from its insert-only companion)
    #[command(after_help = "Example:\n  ds-sync publication remove ds_sync --tables invoices")]
    Remove {
        /// Publication name; defaults to --publication
        name: Option<String>,
        /// Tables, comma separated
        #[arg(long, value_delimiter = ',', required = true, value_name = "TABLE,...")]
        tables: Vec<String>,
    },
    /// Show a publication: tables, row filters, column lists and replica identities
    #[command(after_help = "Example:\n  ds-sync publication show ds_sync --output json")]
    Show {
        /// Publication name; defaults to --publication
        name: Option<String>,
    },
    /// Drop a publication and its insert-only companion
    #[command(after_help = "Example:\n  ds-sync publication drop ds_sync")]
    Drop {
        /// Publication name; defaults to --publication
        name: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--help` states each default `run` merges with (`cli::options`); the constants are
    /// the only place the values are written.
    #[test]
    fn run_help_states_the_defaults_the_merge_uses() {
        use crate::capture::CaptureConfig;
        use crate::capture::batch::Limits;
        use crate::capture::snapshot::SnapshotOptions;
        use crate::ds::ClientOptions;
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run");
        for (id, value) in [
            (
                "batch_max_messages",
                Limits::DEFAULT_MAX_MESSAGES.to_string(),
            ),
            ("batch_max_bytes", Limits::DEFAULT_MAX_BYTES.to_string()),
            ("linger_ms", Limits::DEFAULT_LINGER.as_millis().to_string()),
            (
                "max_buffer_bytes",
                CaptureConfig::DEFAULT_MAX_BUFFER_BYTES.to_string(),
            ),
            (
                "max_in_flight",
                CaptureConfig::DEFAULT_MAX_IN_FLIGHT.to_string(),
            ),
            (
                "request_timeout_ms",
                ClientOptions::DEFAULT_REQUEST_TIMEOUT
                    .as_millis()
                    .to_string(),
            ),
            (
                "snapshot_workers",
                SnapshotOptions::DEFAULT_WORKERS.to_string(),
            ),
            (
                "snapshot_chunk_rows",
                SnapshotOptions::DEFAULT_CHUNK_ROWS.to_string(),
            ),
        ] {
            let arg = run
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no option {id}"));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                help.contains(&format!("[default: {value}]"))
                    || help.contains(&format!("[default: {value}:")),
                "--{id}: help {help:?} does not state the default {value}"
            );
        }
    }

    #[test]
    fn globals_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from(["ds-sync", "slot", "list", "--output", "json"]).unwrap();
        assert_eq!(cli.global.output, Some(OutputFormat::Json));
    }

    #[test]
    fn run_takes_ingest_streams_and_direction_switches() {
        let cli = Cli::try_parse_from([
            "ds-sync",
            "run",
            "--ingest",
            "a,b",
            "--ingest",
            "c/d",
            "--no-capture",
        ])
        .unwrap();
        let Command::Run { capture } = cli.command else {
            panic!("parsed into the wrong command");
        };
        assert_eq!(capture.ingest.streams, ["a", "b", "c/d"]);
        assert!(capture.ingest.no_capture && !capture.ingest.no_ingest);
        let both = Cli::try_parse_from(["ds-sync", "run", "--no-capture", "--no-ingest"]);
        assert!(both.is_err(), "--no-capture and --no-ingest conflict");
        let cli =
            Cli::try_parse_from(["ds-sync", "subscribe", "s1", "s2", "--reset-offset"]).unwrap();
        let Command::Subscribe {
            streams,
            reset_offset,
        } = cli.command
        else {
            panic!("parsed into the wrong command");
        };
        assert_eq!(streams, ["s1", "s2"]);
        assert!(reset_offset);
        assert!(Cli::try_parse_from(["ds-sync", "unsubscribe"]).is_err());
    }

    #[test]
    fn row_filter_needs_table_equals_expr() {
        let err = Cli::try_parse_from([
            "ds-sync",
            "publication",
            "create",
            "p",
            "--tables",
            "a",
            "--row-filter",
            "nonsense",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("TABLE=VALUE"), "{err}");
        let cli = Cli::try_parse_from([
            "ds-sync",
            "publication",
            "create",
            "p",
            "--tables",
            "a,b",
            "--row-filter",
            "a=x > 1",
        ])
        .unwrap();
        let Command::Publication(PublicationCommand::Create { tables, .. }) = cli.command else {
            panic!("parsed into the wrong command");
        };
        assert_eq!(tables.tables, vec!["a", "b"]);
        assert_eq!(
            tables.row_filters,
            vec![("a".to_string(), "x > 1".to_string())]
        );
    }
}
