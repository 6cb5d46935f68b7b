//! TCP keepalive on the sockets ds-sync opens to Postgres (SQL connections, the replication
//! session that exports a snapshot) and to the DS server (requests and SSE), read back from
//! the sockets themselves. The test process opens these connections in-process on a cluster
//! and a DS server of its own, so every client socket to their ports is ds-sync's.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use ds_sync::ds::{ClientOptions, DsClient};
use ds_sync::embedded::{DsServer, DsServerOptions, PostgresOptions};
use ds_sync::pg::PgTarget;
use ds_sync::pg::replication_session::ReplicationSession;

use crate::kit::start_cluster;

/// On, idle time, probe interval, probe count.
type Keepalive = (bool, Option<Duration>, Option<Duration>, Option<u32>);

/// Keepalive settings of every TCP socket of this process connected to `port`.
fn keepalive_of_sockets_to(port: u16) -> Vec<Keepalive> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the fd is open (listed just now) and only borrowed for a few getsockopt
        // calls; a socket closed meanwhile makes them fail, which is skipped.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        if peer.port() != port {
            continue;
        }
        out.push((
            sock.keepalive().unwrap_or(false),
            sock.tcp_keepalive_time().ok(),
            sock.tcp_keepalive_interval().ok(),
            sock.tcp_keepalive_retries().ok(),
        ));
    }
    out
}

fn assert_keepalive(port: u16, at_least: usize, what: &str) {
    let sockets = keepalive_of_sockets_to(port);
    assert!(
        sockets.len() >= at_least,
        "{what}: expected {at_least} open sockets to port {port}, found {sockets:?}"
    );
    for s in &sockets {
        assert_eq!(
            *s,
            (
                true,
                Some(ds_sync::keepalive::IDLE),
                Some(ds_sync::keepalive::INTERVAL),
                Some(ds_sync::keepalive::RETRIES)
            ),
            "{what}: keepalive on, probing after 30 s every 10 s, 5 probes ({sockets:?})"
        );
    }
}

#[tokio::test]
async fn every_socket_to_postgres_and_the_ds_server_has_keepalive() {
    assert_eq!(ds_sync::keepalive::IDLE, Duration::from_secs(30));
    let pg = tokio::task::spawn_blocking(|| start_cluster(&PostgresOptions::default()))
        .await
        .unwrap();
    let target = PgTarget::parse(&pg.url("postgres"), None).unwrap();
    let sql = target.connect().await.unwrap();
    let session = match ReplicationSession::connect(&target).await {
        Ok(s) => s,
        Err(e) => panic!("replication session: {e}"),
    };
    assert_keepalive(pg.port(), 2, "SQL connection and replication session");
    session.terminate().await;
    drop(sql);

    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
    let ds = DsClient::new(&server.url(), ClientOptions::default()).unwrap();
    ds.ensure_stream("keepalive").await.unwrap();
    let _sse = ds.subscribe("keepalive", "-1").await.unwrap();
    assert_keepalive(
        port,
        1,
        "the SSE connection (the PUT's pooled connection, reused)",
    );
}
