//! The server's version, read once where a statement depends on it: several catalog columns
//! and publication features exist only from some version on.

use tokio_postgres::Client;

use super::PgError;

/// The first `server_version_num` with row filters and column lists in publications (and
/// the `pg_publication_tables` columns that show them).
pub const ROW_FILTERS_FROM: i32 = 150_000;

/// The first `server_version_num` with failover slots (synchronized to physical standbys).
pub const FAILOVER_SLOTS_FROM: i32 = 170_000;

/// `server_version_num` (e.g. `150018`) and `server_version` (e.g. `15.18 (Debian ...)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub num: i32,
    pub text: String,
}

impl ServerVersion {
    /// Row filters and column lists in publications (PostgreSQL 15+).
    pub fn has_row_filters(&self) -> bool {
        self.num >= ROW_FILTERS_FROM
    }

    /// Failover slots: `pg_create_logical_replication_slot(..., failover)` and the
    /// `FAILOVER` option of the replication commands (PostgreSQL 17+).
    pub fn has_failover_slots(&self) -> bool {
        self.num >= FAILOVER_SLOTS_FROM
    }

    /// The major version (`15` for `150018`).
    pub fn major(&self) -> i32 {
        self.num / 10_000
    }
}

/// Reads the version of the server `client` is connected to.
///
/// # Errors
///
/// The query failed.
pub async fn server_version(client: &Client) -> Result<ServerVersion, PgError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading the server version", &e))?;
    Ok(ServerVersion {
        num: row.get(0),
        text: row.get(1),
    })
}
