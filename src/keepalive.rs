//! TCP keepalive on every socket ds-sync opens to Postgres and to the DS server.
//!
//! A peer that vanishes without closing (host powered off, NAT or firewall state dropped)
//! leaves an idle connection open forever: nothing is sent, so nothing fails. Keepalive
//! probes find it: the first after [`IDLE`] of silence, then every [`INTERVAL`], and the
//! kernel drops the connection after [`RETRIES`] unanswered probes, about 80 s after the
//! last byte instead of the kernel default of more than two hours. The connection's owner
//! then sees an error and reconnects as it would after any other network failure.

use std::time::Duration;

/// Silence before the first probe.
pub const IDLE: Duration = Duration::from_secs(30);
/// Interval between probes.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection is dropped.
pub const RETRIES: u32 = 5;

/// Turns keepalive on for a socket opened by ds-sync itself.
pub fn enable(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(IDLE)
        .with_interval(INTERVAL)
        .with_retries(RETRIES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
