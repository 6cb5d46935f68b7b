//! A TCP proxy for fault tests: it listens on a free loopback port, relays every connection
//! to a target, and can make the network misbehave the ways production networks do.
//!
//! * [`FaultProxy::freeze`]: the open connections stop relaying in both directions, and stop
//!   reading too, so senders fill their socket buffers: a path that dropped its state (a NAT
//!   or load balancer) without closing anything. No FIN, no RST. [`FaultProxy::resume`] lets
//!   them flow again. New connections relay normally meanwhile.
//! * [`FaultProxy::partition`]: like `freeze`, and connections opened later freeze at once
//!   (until [`FaultProxy::heal`]).
//! * [`FaultProxy::cut`]: every open connection is reset (RST to both sides);
//!   [`FaultProxy::close`] ends them with a FIN instead.
//! * [`FaultProxy::set_delay`]: every chunk is relayed only after a delay.
//!
//! It works for any TCP protocol (HTTP to the DS server, PostgreSQL's wire protocol), counts
//! the connections it accepted, keeps the last [`RECORDED`] bytes relayed each way so a test
//! can see what went through (e.g. how many requests), and stops with its last handle.
//!
//! The integration tests' fault tests and `bench chaos` share this one proxy (the tests build
//! with the `bench` feature).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes of traffic kept per direction (the most recent).
pub const RECORDED: usize = 4 << 20;

/// What a connection does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flow,
    Frozen,
    /// Reset both sockets.
    Cut,
    /// Close both sockets with a FIN.
    Close,
}

/// One relayed connection's control.
struct Conn {
    mode: watch::Sender<Mode>,
}

struct Inner {
    target: SocketAddr,
    conns: Mutex<Vec<Conn>>,
    /// Mode of connections accepted from now on.
    new_mode: Mutex<Mode>,
    delay: Mutex<Duration>,
    accepted: AtomicUsize,
    /// Connections the target ended (its side read to the end).
    target_ended: AtomicUsize,
    /// Recent traffic: from clients to the target, and back.
    upstream: Mutex<Vec<u8>>,
    downstream: Mutex<Vec<u8>>,
}

impl Inner {
    fn record(&self, from_target: bool, bytes: &[u8]) {
        let log = if from_target {
            &self.downstream
        } else {
            &self.upstream
        };
        let mut log = lock(log);
        if log.len() + bytes.len() > RECORDED {
            let drop = (log.len() + bytes.len() - RECORDED).min(log.len());
            log.drain(..drop);
        }
        log.extend_from_slice(&bytes[bytes.len().saturating_sub(RECORDED)..]);
    }
}

/// A lock that ignores poisoning: the proxy's state stays valid whatever a panicking holder
/// left half done (a traffic log, a list of connections).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn occurrences(log: &Mutex<Vec<u8>>, needle: &[u8]) -> usize {
    let log = lock(log);
    if needle.is_empty() {
        return 0;
    }
    log.windows(needle.len()).filter(|w| *w == needle).count()
}

/// A running proxy; see the module documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `target`.
    ///
    /// # Errors
    ///
    /// No loopback port could be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            target,
            conns: Mutex::new(Vec::new()),
            new_mode: Mutex::new(Mode::Flow),
            delay: Mutex::new(Duration::ZERO),
            accepted: AtomicUsize::new(0),
            target_ended: AtomicUsize::new(0),
            upstream: Mutex::new(Vec::new()),
            downstream: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept(listener, Arc::clone(&inner)));
        Ok(FaultProxy {
            addr,
            inner,
            acceptor,
        })
    }

    /// Starts a proxy in front of an `http://ip:port` URL and returns it.
    ///
    /// # Errors
    ///
    /// The URL is not `http://ip:port[/...]`, or no loopback port could be bound.
    pub async fn for_url(url: &str) -> std::io::Result<FaultProxy> {
        let hostport = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let target: SocketAddr = hostport.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{url} is not http://ip:port: {e}"),
            )
        })?;
        FaultProxy::start(target).await
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`, for HTTP clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port, for a PostgreSQL URL (`postgres://...@127.0.0.1:{port}/db`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose target ended its side (e.g. a server that finished a response and
    /// closed); what it sent before was relayed.
    pub fn target_ended(&self) -> usize {
        self.inner.target_ended.load(Ordering::SeqCst)
    }

    /// How often `needle` occurs in the recent traffic from clients (e.g. `b"GET "`).
    pub fn sent_by_clients(&self, needle: &[u8]) -> usize {
        occurrences(&self.inner.upstream, needle)
    }

    /// How often `needle` occurs in the recent traffic from the target.
    pub fn sent_by_target(&self, needle: &[u8]) -> usize {
        occurrences(&self.inner.downstream, needle)
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.prune();
        lock(&self.inner.conns).len()
    }

    /// Open connections stop relaying (and reading) without closing.
    pub fn freeze(&self) {
        self.set_all(Mode::Frozen);
    }

    /// Frozen connections relay again.
    pub fn resume(&self) {
        self.set_all(Mode::Flow);
    }

    /// Freezes open connections and every connection accepted until [`Self::heal`].
    pub fn partition(&self) {
        *lock(&self.inner.new_mode) = Mode::Frozen;
        self.freeze();
    }

    /// Ends a partition: every connection relays again.
    pub fn heal(&self) {
        *lock(&self.inner.new_mode) = Mode::Flow;
        self.resume();
    }

    /// Resets every open connection (RST to both sides).
    pub fn cut(&self) {
        self.set_all(Mode::Cut);
    }

    /// Closes every open connection with a FIN.
    pub fn close(&self) {
        self.set_all(Mode::Close);
    }

    /// Every chunk, in both directions, is relayed after `delay` (zero: at once).
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.inner.delay) = delay;
    }

    fn set_all(&self, mode: Mode) {
        self.prune();
        for c in lock(&self.inner.conns).iter() {
            let _ = c.mode.send(mode);
        }
    }

    fn prune(&self) {
        lock(&self.inner.conns).retain(|c| !c.mode.is_closed());
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        inner.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = *lock(&inner.new_mode);
        let (tx, rx) = watch::channel(mode);
        lock(&inner.conns).push(Conn { mode: tx });
        tokio::spawn(relay(client, Arc::clone(&inner), rx));
    }
}

/// Relays one connection until either side closes or the proxy cuts it.
async fn relay(client: TcpStream, inner: Arc<Inner>, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(inner.target).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let up = pump(client_r, server_w, Arc::clone(&inner), mode.clone(), false);
    let down = pump(server_r, client_w, inner, mode, true);
    tokio::join!(up, down);
}

/// Copies one direction, honouring the mode, until the source ends or the proxy cuts or
/// closes the connection.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    inner: Arc<Inner>,
    mut mode: watch::Receiver<Mode>,
    from_target: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_flowing(&mut mode).await {
            return end(&from, &to, &mode);
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    if from_target {
                        inner.target_ended.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
        };
        let delay = *lock(&inner.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !wait_flowing(&mut mode).await {
            return end(&from, &to, &mode);
        }
        inner.record(from_target, &buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A cut resets both sockets when their halves drop; a close lets them end with a FIN.
fn end(from: &OwnedReadHalf, to: &OwnedWriteHalf, mode: &watch::Receiver<Mode>) {
    if *mode.borrow() == Mode::Cut {
        let _ = from.as_ref().set_zero_linger();
        let _ = to.as_ref().set_zero_linger();
    }
}

/// Waits while the connection is frozen; false when it is to be cut or closed.
async fn wait_flowing(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Flow => return true,
            Mode::Cut | Mode::Close => return false,
            Mode::Frozen => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}
