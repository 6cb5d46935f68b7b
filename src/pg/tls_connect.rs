//! rustls for tokio-postgres ([`RustlsConnect`]) and for the hand-written replication
//! session ([`handshake`]): the TLS handshake after the server accepted an SSLRequest.
//!
//! The connector records whether a handshake was started ([`RustlsConnect::tls_used`]):
//! tokio-postgres goes on in plain text when a `prefer` server declines TLS, and libpq's
//! rule is to retry without TLS only when the failed attempt did use it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

/// A tokio-postgres TLS connector over rustls. Without a configuration (plain attempts) it
/// is never asked to connect.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    used: Arc<AtomicBool>,
}

impl RustlsConnect {
    pub fn new(config: Option<Arc<ClientConfig>>) -> RustlsConnect {
        RustlsConnect {
            config,
            used: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a TLS handshake was started (the server accepted the SSLRequest).
    pub fn tls_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

/// The server name to check and send as SNI: a DNS name, or an IP address (checked against
/// the certificate's IP names; no SNI is sent for it).
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name TLS can check"),
        )
    })
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = OneConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<OneConnect> {
        Ok(OneConnect {
            config: self.config.clone(),
            name: server_name(host).ok(),
            used: Arc::clone(&self.used),
        })
    }
}

/// One connection's handshake.
pub struct OneConnect {
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
    used: Arc<AtomicBool>,
}

type HandshakeFuture<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for OneConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = HandshakeFuture<S>;

    fn connect(self, stream: S) -> Self::Future {
        self.used.store(true, Ordering::Relaxed);
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| io::Error::other("TLS was not configured for this attempt"))?;
            let name = self.name.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no host name to check TLS against",
                )
            })?;
            handshake(stream, config, name).await
        })
    }
}

/// The TLS handshake on a stream whose SSLRequest the server accepted.
pub async fn handshake<S>(
    stream: S,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<RustlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = TlsConnector::from(config).connect(name, stream).await?;
    Ok(RustlsStream(Box::new(tls)))
}

/// A TLS stream to the server.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No `tls-server-end-point` binding is offered: SCRAM runs without channel binding
    /// (`channel_binding=prefer` falls back; `require` is refused by the server exchange).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
