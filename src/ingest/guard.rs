//! Loop safety: ingest writes `public.session_events`; if capture published that table,
//! every ingested row would be decoded from the WAL and POSTed back to a stream, which a
//! subscriber may be ingesting again. Refused before either direction starts.

use tokio_postgres::Client;

use super::IngestError;
use crate::pg::PgError;

/// The sink table ingest fills.
pub const SINK_TABLE: &str = "public.session_events";

/// How the sink table would reach the publication, if it would.
///
/// # Errors
///
/// A failed catalog query.
pub async fn sink_published(
    client: &Client,
    publication: &str,
    capture_tables: &[String],
) -> Result<Option<String>, PgError> {
    let q = |e: tokio_postgres::Error| PgError::query("checking the capture publication", &e);
    let row = client
        .query_opt(
            "SELECT p.puballtables, EXISTS (SELECT 1 FROM pg_publication_tables t \
                 WHERE t.pubname = p.pubname AND t.schemaname = 'public' \
                 AND t.tablename = 'session_events') \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(q)?;
    if let Some(row) = row {
        if row.get::<_, bool>(0) {
            return Ok(Some("FOR ALL TABLES".into()));
        }
        if row.get::<_, bool>(1) {
            return Ok(Some("it lists the table".into()));
        }
    }
    for table in capture_tables {
        let row = client
            .query_one(
                "SELECT COALESCE(to_regclass($1::text) = to_regclass($2::text), false)",
                &[table, &SINK_TABLE],
            )
            .await
            .map_err(q)?;
        if row.get::<_, bool>(0) {
            return Ok(Some(format!("--tables names {table}")));
        }
    }
    Ok(None)
}

/// Refuses to start when the capture publication includes the sink table.
///
/// # Errors
///
/// [`IngestError::Loop`] naming the publication and how the table is in it.
pub async fn refuse_loop(
    client: &Client,
    publication: &str,
    capture_tables: &[String],
) -> Result<(), IngestError> {
    match sink_published(client, publication, capture_tables).await? {
        Some(how) => Err(IngestError::Loop {
            publication: publication.to_owned(),
            how,
        }),
        None => Ok(()),
    }
}
