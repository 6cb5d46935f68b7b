//! The forms of `session_events` `ingest-drain` can measure in one run: the plain table of
//! the sync-layer document with the readers' indexes (what `init` makes), the same without
//! those indexes (what they cost), and the table partitioned by day (`init --partition-by
//! day`). Before each form's drain the table is made anew, empty, in that form.

use crate::retention::PartitionInterval;
use crate::retention::partitions;

use super::BenchError;

/// One form of the sink table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableForm {
    /// As `ds-sync init` makes it: primary key and the readers' indexes
    Plain,
    /// Partitioned by day of received_at (`init --partition-by day`), same indexes
    Partitioned,
    /// Plain, without the readers' indexes: the cost of those indexes
    Unindexed,
}

impl TableForm {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TableForm::Plain => "plain",
            TableForm::Partitioned => "partitioned",
            TableForm::Unindexed => "unindexed",
        }
    }
}

const PLAIN: &str = include_str!("../../sql/001_session_events.sql");
/// The readers' indexes (and the rest of that migration, all `IF NOT EXISTS`).
const INDEXES: &str = include_str!("../../sql/011_session_events_indexes.sql");

/// Makes `public.session_events` empty, in `form`, and forgets ingest's offset and
/// subscription of `stream` so that the next drain reads the stream from its start.
///
/// # Errors
///
/// A failed statement.
pub async fn reset(
    client: &mut tokio_postgres::Client,
    form: TableForm,
    stream: &str,
) -> Result<(), BenchError> {
    crate::schema::apply(client)
        .await
        .map_err(|e| BenchError::Setup(format!("applying the schema: {e}")))?;
    let sql = |what: &'static str| move |e: tokio_postgres::Error| BenchError::sql(what, &e);
    client
        .execute(
            "DELETE FROM ds_sync.stream_offsets WHERE stream_name = $1",
            &[&stream],
        )
        .await
        .map_err(sql("forgetting the stored offset"))?;
    client
        .execute(
            "DELETE FROM ds_sync.subscriptions WHERE stream_name = $1",
            &[&stream],
        )
        .await
        .map_err(sql("forgetting the subscription"))?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS public.session_events; \
             DELETE FROM ds_sync.partitioning WHERE table_name = 'public.session_events'",
        )
        .await
        .map_err(sql("dropping session_events"))?;
    client
        .batch_execute(PLAIN)
        .await
        .map_err(sql("creating session_events"))?;
    match form {
        TableForm::Plain => client
            .batch_execute(INDEXES)
            .await
            .map_err(sql("creating the readers' indexes"))?,
        TableForm::Unindexed => {}
        TableForm::Partitioned => {
            partitions::partition(client, PartitionInterval::Day)
                .await
                .map_err(|e| BenchError::Setup(format!("partitioning session_events: {e}")))?;
        }
    }
    Ok(())
}
