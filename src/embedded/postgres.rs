//! A private PostgreSQL cluster: `initdb` into a temp dir, `postgres` on a free loopback port.
//!
//! When this process runs as root (CI containers do), `initdb` and `postgres` refuse to run,
//! so both are started as the unprivileged `postgres` user, who is given the directory. The
//! server is stopped and the directory removed on drop, also when a test panics; if this
//! process is killed outright, the server still gets SIGQUIT (see `spawn`).

use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::EmbeddedError;
use super::spawn::spawn_tied;

/// How long to wait for the server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many fresh ports to try when another process takes ours first.
const PORT_ATTEMPTS: usize = 5;

/// How to set the cluster up.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `wal_level`; `logical` unless a test needs to see ds-sync refuse another level.
    pub wal_level: String,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Extra `initdb` arguments (e.g. `--wal-segsize=1`).
    pub initdb_args: Vec<String>,
    /// The superuser created by initdb.
    pub superuser: String,
    /// Serve TLS (`ssl = on`) with these files.
    pub ssl: Option<PostgresSsl>,
    /// `pg_hba.conf` lines replacing initdb's (e.g. `hostssl` only).
    pub hba: Option<Vec<String>>,
    /// The directory of `initdb` and `postgres` to use instead of the one
    /// [`find_postgres_bin_dir`] finds (a test that needs one major version).
    pub bin_dir: Option<PathBuf>,
}

/// TLS files of the cluster; they are copied into the cluster directory, owned by the
/// server's user with the private key readable by it alone (PostgreSQL refuses others).
#[derive(Debug, Clone)]
pub struct PostgresSsl {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA whose client certificates the server accepts (`ssl_ca_file`, for `cert` auth).
    pub client_ca: Option<PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            wal_level: "logical".into(),
            settings: Vec::new(),
            initdb_args: Vec::new(),
            superuser: "postgres".into(),
            ssl: None,
            hba: None,
            bin_dir: None,
        }
    }
}

/// A running private cluster.
pub struct LocalPostgres {
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    port: u16,
    superuser: String,
    password: String,
    /// How it was set up, to start it again after [`LocalPostgres::stop`].
    opts: PostgresOptions,
}

/// The directory holding `initdb` and `postgres`: `$DS_SYNC_PG_BIN`, else the first PATH
/// entry that has both, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_postgres_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("DS_SYNC_PG_BIN").map(PathBuf::from) {
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(EmbeddedError::NoPostgresBinaries)
        };
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(EmbeddedError::NoPostgresBinaries)
}

/// The binaries `opts` names, else those [`find_postgres_bin_dir`] finds.
fn bin_dir(opts: &PostgresOptions) -> Result<PathBuf, EmbeddedError> {
    match &opts.bin_dir {
        Some(dir) if dir.join("postgres").is_file() => Ok(dir.clone()),
        Some(_) => Err(EmbeddedError::NoPostgresBinaries),
        None => find_postgres_bin_dir(),
    }
}

/// Removes what a file copy of a running cluster must not keep: the postmaster's pid and
/// options files, and the WAL (a standby streams it from the primary from the backup's
/// start).
fn clear_copied_runtime_files(data: &Path) -> Result<(), EmbeddedError> {
    for name in ["postmaster.pid", "postmaster.opts"] {
        let _ = fs::remove_file(data.join(name));
    }
    let wal = data.join("pg_wal");
    let entries = fs::read_dir(&wal).map_err(EmbeddedError::io("reading the copied pg_wal"))?;
    for entry in entries.flatten() {
        if entry.path().is_file() {
            fs::remove_file(entry.path())
                .map_err(EmbeddedError::io("clearing the copied pg_wal"))?;
        }
    }
    Ok(())
}

/// The uid/gid to run the server as: ourselves normally, `postgres` when we are root.
fn run_as() -> Result<Option<(u32, u32)>, EmbeddedError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        _ => Err(EmbeddedError::NoUnprivilegedUser),
    }
}

/// A password nobody can guess across runs; the cluster only listens on loopback anyway.
fn random_password() -> String {
    let mut out = String::new();
    for i in 0..3u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i ^ u64::from(std::process::id()));
        h.write_u128(Instant::now().elapsed().as_nanos());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(EmbeddedError::io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(EmbeddedError::io("finding a free port"))?
        .port())
}

impl LocalPostgres {
    /// Creates and starts a cluster. Blocks until it accepts connections.
    pub fn start(opts: &PostgresOptions) -> Result<LocalPostgres, EmbeddedError> {
        let bin = bin_dir(opts)?;
        let owner = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("ds-sync-pg-")
            .tempdir()
            .map_err(EmbeddedError::io("creating the cluster directory"))?;
        let password = random_password();
        prepare_dir(dir.path(), owner, &password)?;
        initdb(&bin, dir.path(), owner, opts)?;
        configure_access(dir.path(), owner, opts)?;
        let mut pg = LocalPostgres {
            dir: Some(dir),
            child: None,
            port: 0,
            superuser: opts.superuser.clone(),
            password,
            opts: opts.clone(),
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match pg.launch(&bin, owner, opts, free_port()?) {
                Ok(()) => return Ok(pg),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(EmbeddedError::NoPostgresBinaries))
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// Starts the cluster again after [`stop`](Self::stop), on the same port with the same
    /// data (an outage that ends): clients reconnect to the same URL. Blocks until it
    /// accepts connections. Does nothing while it runs.
    ///
    /// # Errors
    ///
    /// The server did not start (the port may have been taken meanwhile).
    pub fn start_again(&mut self) -> Result<(), EmbeddedError> {
        if self.child.is_some() {
            return Ok(());
        }
        let bin = bin_dir(&self.opts)?;
        let owner = run_as()?;
        let opts = self.opts.clone();
        self.launch(&bin, owner, &opts, self.port)
    }

    /// A new cluster directory holding a file copy of `primary`'s data, not started: the
    /// file-copy step of a base backup by the low-level API (the caller brackets it with
    /// `pg_backup_start` / `pg_backup_stop` on the primary, writes the returned label with
    /// [`write_data_file`](Self::write_data_file), and starts it with
    /// [`start_on_free_port`](Self::start_on_free_port)). The copy leaves out the
    /// postmaster's files and the WAL, which a standby streams from the primary.
    ///
    /// # Errors
    ///
    /// The directory could not be made or copied.
    pub fn copy_of(
        primary: &LocalPostgres,
        opts: &PostgresOptions,
    ) -> Result<LocalPostgres, EmbeddedError> {
        let owner = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("ds-sync-pg-copy-")
            .tempdir()
            .map_err(EmbeddedError::io("creating the cluster directory"))?;
        prepare_dir(dir.path(), owner, &primary.password)?;
        let out = Command::new("cp")
            .arg("-a")
            .arg(primary.dir().join("data"))
            .arg(dir.path().join("data"))
            .output()
            .map_err(EmbeddedError::io("copying the primary's data directory"))?;
        if !out.status.success() {
            return Err(EmbeddedError::PostgresStart {
                reason: "copying the primary's data directory failed".into(),
                log: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        clear_copied_runtime_files(&dir.path().join("data"))?;
        Ok(LocalPostgres {
            dir: Some(dir),
            child: None,
            port: 0,
            superuser: primary.superuser.clone(),
            password: primary.password.clone(),
            opts: opts.clone(),
        })
    }

    /// Writes `name` (e.g. `backup_label`, `standby.signal`) into the data directory,
    /// owned by the server's user.
    ///
    /// # Errors
    ///
    /// The file could not be written or given to that user.
    pub fn write_data_file(&self, name: &str, contents: &str) -> Result<(), EmbeddedError> {
        let path = self.dir().join("data").join(name);
        let what = format!("writing {}", path.display());
        fs::write(&path, contents).map_err(EmbeddedError::io(what.clone()))?;
        if let Some((uid, gid)) = run_as()? {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(EmbeddedError::io(what.clone()))?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(EmbeddedError::io(what))
    }

    /// Starts a cluster made by [`copy_of`](Self::copy_of) on a free port.
    ///
    /// # Errors
    ///
    /// The server did not start.
    pub fn start_on_free_port(&mut self) -> Result<(), EmbeddedError> {
        let bin = bin_dir(&self.opts)?;
        let owner = run_as()?;
        let opts = self.opts.clone();
        self.launch(&bin, owner, &opts, free_port()?)
    }

    fn launch(
        &mut self,
        bin: &Path,
        owner: Option<(u32, u32)>,
        opts: &PostgresOptions,
        port: u16,
    ) -> Result<(), EmbeddedError> {
        let dir = self.dir().to_path_buf();
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("postgres.log"))
            .map_err(EmbeddedError::io("creating the server log"))?;
        let log_err = log
            .try_clone()
            .map_err(EmbeddedError::io("creating the server log"))?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .arg("-p")
            .arg(port.to_string());
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            (
                "unix_socket_directories".into(),
                dir.join("sock").display().to_string(),
            ),
            ("wal_level".into(), opts.wal_level.clone()),
            ("max_wal_senders".into(), "40".into()),
            ("max_replication_slots".into(), "40".into()),
            ("max_connections".into(), "300".into()),
            // Throwaway data: durability against OS crashes is not needed, speed is.
            ("fsync".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("shared_buffers".into(), "64MB".into()),
        ];
        if opts.ssl.is_some() {
            let file = |name: &str| dir.join("tls").join(name).display().to_string();
            settings.push(("ssl".into(), "on".into()));
            settings.push(("ssl_cert_file".into(), file("server.crt")));
            settings.push(("ssl_key_file".into(), file("server.key")));
            if opts.ssl.as_ref().is_some_and(|s| s.client_ca.is_some()) {
                settings.push(("ssl_ca_file".into(), file("client-ca.crt")));
            }
        }
        settings.extend(opts.settings.iter().cloned());
        for (k, v) in &settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        let child = spawn_tied(cmd).map_err(EmbeddedError::io("starting postgres"))?;
        self.child = Some(child);
        self.port = port;
        if let Err(e) = self.wait_ready() {
            self.kill();
            return Err(e);
        }
        Ok(())
    }

    /// Ready when `postmaster.pid` says so (PostgreSQL 10+ writes its status on line 8).
    fn wait_ready(&mut self) -> Result<(), EmbeddedError> {
        let pid_file = self.dir().join("data").join("postmaster.pid");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(self.start_error(format!("postgres exited with {status}")));
            }
            // A hot standby says "standby" once it accepts connections.
            if let Ok(text) = fs::read_to_string(&pid_file)
                && matches!(
                    text.lines().nth(7).map(str::trim),
                    Some("ready" | "standby")
                )
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.start_error(format!("not ready after {READY_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_error(&self, reason: String) -> EmbeddedError {
        EmbeddedError::PostgresStart {
            reason,
            log: self.log_tail(),
        }
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name.
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A URL for `db` as the superuser (with the password in it: for tests and `dev` only).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            self.superuser, self.password, self.port, db
        )
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fast shutdown (clients disconnected, no waiting for them); immediate after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let _ = child.wait();
    }

    /// Immediate shutdown (what `pg_ctl stop -m immediate` sends: SIGQUIT to the postmaster):
    /// every backend quits at once, nothing is checkpointed, and the next start runs crash
    /// recovery. Committed transactions survive it; connections see no orderly end.
    pub fn stop_immediately(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let _ = child.wait();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
        // TempDir removes the directory when it drops, after the server is gone.
        self.dir.take();
    }
}

/// Creates `data`, `sock` and the password file, owned by whoever runs the server.
fn prepare_dir(dir: &Path, owner: Option<(u32, u32)>, password: &str) -> Result<(), EmbeddedError> {
    fs::create_dir(dir.join("sock")).map_err(EmbeddedError::io("creating the socket directory"))?;
    fs::write(dir.join("pwfile"), password)
        .map_err(EmbeddedError::io("writing the password file"))?;
    if let Some((uid, gid)) = owner {
        for p in [dir.to_path_buf(), dir.join("sock"), dir.join("pwfile")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(EmbeddedError::io(
                format!("giving {} to the postgres user", p.display()),
            ))?;
        }
    }
    fs::set_permissions(dir.join("pwfile"), fs::Permissions::from_mode(0o600))
        .map_err(EmbeddedError::io("restricting the password file"))?;
    Ok(())
}

/// Copies the TLS files into `dir/tls` and writes `pg_hba.conf`, all owned by the server's
/// user.
fn configure_access(
    dir: &Path,
    owner: Option<(u32, u32)>,
    opts: &PostgresOptions,
) -> Result<(), EmbeddedError> {
    let give = |path: &Path, mode: u32| -> Result<(), EmbeddedError> {
        let what = format!("preparing {}", path.display());
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(EmbeddedError::io(what.clone()))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(EmbeddedError::io(what))
    };
    if let Some(ssl) = &opts.ssl {
        let tls = dir.join("tls");
        fs::create_dir(&tls).map_err(EmbeddedError::io("creating the TLS directory"))?;
        give(&tls, 0o700)?;
        let mut files = vec![(&ssl.cert, "server.crt"), (&ssl.key, "server.key")];
        if let Some(ca) = &ssl.client_ca {
            files.push((ca, "client-ca.crt"));
        }
        for (from, name) in files {
            let to = tls.join(name);
            fs::copy(from, &to)
                .map_err(EmbeddedError::io(format!("copying {}", from.display())))?;
            give(&to, 0o600)?;
        }
    }
    if let Some(lines) = &opts.hba {
        let path = dir.join("data").join("pg_hba.conf");
        fs::write(&path, lines.join("\n") + "\n")
            .map_err(EmbeddedError::io("writing pg_hba.conf"))?;
        give(&path, 0o600)?;
    }
    Ok(())
}

fn initdb(
    bin: &Path,
    dir: &Path,
    owner: Option<(u32, u32)>,
    opts: &PostgresOptions,
) -> Result<(), EmbeddedError> {
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .arg("--username")
        .arg(&opts.superuser)
        .arg("--pwfile")
        .arg(dir.join("pwfile"))
        .args([
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .args(&opts.initdb_args)
        .stdin(Stdio::null());
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().map_err(EmbeddedError::io("running initdb"))?;
    if !out.status.success() {
        return Err(EmbeddedError::Initdb {
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}
