//! The official TypeScript clients as a test oracle: `tests/node/read-state.mjs` reads a
//! stream with `@durable-streams/client` and materializes it with `@durable-streams/state`
//! (`MaterializedState`), the way an application does; these helpers run it with `node` and
//! compare what it holds with a table.
//!
//! The packages are pinned in `tests/node/package-lock.json` and installed by `.ci/run`
//! (`npm ci`). A missing `node` or missing packages fail the test with the way to fix it;
//! nothing is skipped.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::wait::Wait;

/// The pinned versions the tests were written against.
const PACKAGES: [(&str, &str); 2] = [
    ("@durable-streams/state", "0.3.1"),
    ("@durable-streams/client", "0.2.7"),
];

/// What the official client holds after reading a stream to its tail.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClientState {
    /// The URL the client built (each `{}` value as the README's `streamSegment` maps it:
    /// `encodeURIComponent` of the value, but for the few values ds-sync escapes).
    pub url: String,
    /// Messages read.
    pub messages: usize,
    /// Control messages, in stream order.
    pub controls: Vec<String>,
    /// `type` → `key` → `value`, as `MaterializedState` holds them.
    pub state: BTreeMap<String, BTreeMap<String, Value>>,
}

impl ClientState {
    /// The rows of one `type` (empty when the client holds none).
    pub fn rows(&self, type_name: &str) -> BTreeMap<String, Value> {
        self.state.get(type_name).cloned().unwrap_or_default()
    }
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// Panics with the fix unless `node` runs and the pinned packages are installed.
fn check_installed() {
    let dir = node_dir();
    let node = std::process::Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "the official-client tests need node (20 or newer) on PATH: `bash .ci/run` installs \
             it (apt-get install nodejs npm), then the packages with `npm ci` in {}",
            dir.display()
        ),
    }
    for (package, version) in PACKAGES {
        let manifest = dir.join("node_modules").join(package).join("package.json");
        let installed = std::fs::read_to_string(&manifest)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned));
        assert_eq!(
            installed.as_deref(),
            Some(version),
            "{package} {version} is not installed in {}: run `npm ci` there (`bash .ci/run` does)",
            dir.display()
        );
    }
}

/// Reads `template` (the path after `/v1/stream/`, each `{}` replaced by the next value,
/// URL-encoded once by the client, see [`ClientState::url`]) on the DS server at `base`. `Err` carries the script's
/// error output (e.g. a 404 for a stream that is not there).
pub async fn try_read(base: &str, template: &str, values: &[&str]) -> Result<ClientState, String> {
    check_installed();
    let dir = node_dir();
    let out = tokio::process::Command::new("node")
        .arg(dir.join("read-state.mjs"))
        .arg(base)
        .arg(template)
        .args(values)
        .current_dir(&dir)
        .output()
        .await
        .expect("running node");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("read-state.mjs printed no state ({e}): {stdout}")))
}

/// Reads the stream with the official client until `rows` of `type_name` equal `expected`
/// (another reader sees the stream grow), or panics after `timeout` with both sides and
/// `context` (e.g. the ds-sync log).
#[track_caller]
pub fn wait_for_rows<'a>(
    base: &'a str,
    stream: &'a str,
    type_name: &'a str,
    expected: &'a BTreeMap<String, Value>,
    timeout: Duration,
    context: impl Fn() -> String + Send + Sync + 'a,
) -> impl Future<Output = ClientState> + 'a {
    Wait::new(
        format!(
            "the official client reading {stream} to hold the table's rows of type {type_name}"
        ),
        timeout,
    )
    .every(Duration::from_millis(200))
    .context(move || {
        format!(
            "--- expected ---\n{expected:#?}\n--- context ---\n{}",
            context()
        )
    })
    .until(move || async move {
        match try_read(base, stream, &[]).await {
            Ok(state) if state.rows(type_name) == *expected => Ok(state),
            Ok(state) => Err(format!("the client holds {:#?}", state.rows(type_name))),
            Err(e) => Err(e),
        }
    })
}

/// A table as `key → row`, the way ds-sync keys it: the text of `key_sql` (one key column)
/// and the row as `to_jsonb`. Good for tables whose columns map to JSON the same way in
/// ds-sync and `to_jsonb` (integers, text, booleans, jsonb).
pub async fn table_rows(
    sql: &tokio_postgres::Client,
    table: &str,
    key_sql: &str,
) -> BTreeMap<String, Value> {
    let query = format!("SELECT ({key_sql})::text, to_jsonb(t)::text FROM {table} t");
    sql.query(&query, &[])
        .await
        .unwrap_or_else(|e| panic!("reading {table}: {e}"))
        .iter()
        .map(|r| {
            let row: String = r.get(1);
            (
                r.get(0),
                serde_json::from_str(&row).expect("to_jsonb is JSON"),
            )
        })
        .collect()
}
