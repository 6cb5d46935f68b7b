//! TLS building blocks shared by the Postgres connections and the DS client: one crypto
//! provider, PEM files read into certificates and keys, trust anchors, the three ways of
//! checking a server certificate, and errors that say which certificate problem stopped a
//! handshake.
//!
//! Everything is rustls. Two crypto providers end up in the binary (the DS server crate
//! pulls in aws-lc-rs, the replication library ring), so rustls cannot pick a process
//! default by itself: [`provider`] names ring explicitly and installs it as the default for
//! the libraries that build their own configurations.
//!
//! | check ([`Verify`]) | chain | host name | used for |
//! |---|---|---|---|
//! | `None` | no | no | `sslmode=require`/`prefer`/`allow` without a root certificate (encryption only, as libpq) |
//! | `Chain` | yes | no | `verify-ca`, and `require`/`prefer`/`allow` with a root certificate |
//! | `Full` | yes | yes | `verify-full`, HTTPS to the DS server |
//!
//! Files are read again at every connection, so certificates rotated on disk are picked up
//! by the next reconnect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

/// Errors of building a TLS configuration (files, trust anchors). Handshake failures are
/// the connection's errors; [`certificate_problem`] explains them.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error(
        "no system root certificates were found (looked where OpenSSL does, and at \
         SSL_CERT_FILE / SSL_CERT_DIR)"
    )]
    NoSystemRoots,
    #[error("invalid TLS settings: {0}")]
    Config(String),
}

/// How a server certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encryption only: any certificate is accepted (the handshake signature still is
    /// checked, so the session key belongs to whoever holds the certificate's key).
    None,
    /// The chain must lead to a trusted root; the host name is not compared.
    Chain,
    /// The chain and the host name (DNS name or IP address) are checked.
    Full,
}

/// The crypto provider every configuration uses (ring), installed as the process default
/// the first time it is asked for, for the libraries that build their own configurations.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // Fails only when another provider was installed first, which is just as good.
            let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
            provider
        })
        .clone()
}

/// Every certificate in a PEM file.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM certificate (BEGIN CERTIFICATE)",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM private key (PKCS#8, PKCS#1 or SEC1)",
        },
        other => TlsError::File {
            what,
            path: path.to_path_buf(),
            reason: pem_reason(&other),
        },
    })
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// A trust store with the certificates of a PEM file.
pub fn roots_from_file(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(load_certs(what, path)?);
    if added == 0 {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "usable CA certificate",
        });
    }
    Ok(roots)
}

/// The operating system's trust store (as OpenSSL finds it, honouring `SSL_CERT_FILE` and
/// `SSL_CERT_DIR`), read once per process.
pub fn system_roots() -> Result<RootCertStore, TlsError> {
    static SYSTEM: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    let certs = SYSTEM.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::debug!(error = %e, "skipped part of the system trust store");
        }
        loaded.certs
    });
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs.iter().cloned());
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// The system's CA bundle as one PEM file, for the replication library, which takes a path.
pub fn system_bundle_file() -> Result<PathBuf, TlsError> {
    openssl_probe::probe()
        .cert_file
        .filter(|p| p.is_file())
        .ok_or(TlsError::NoSystemRoots)
}

/// A client configuration: trust anchors, how the server certificate is checked, and an
/// optional client certificate chain with its key.
pub fn client_config(
    roots: RootCertStore,
    verify: Verify,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match verify {
        Verify::Full => builder.with_root_certificates(roots),
        Verify::Chain => {
            let inner = web_pki(roots, &provider)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
        }
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            })),
    };
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("the client certificate and key: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn web_pki(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Encryption only (libpq's `require` without a root certificate): any certificate is
/// accepted, but the handshake must be signed by its key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error somewhere in an error's cause chain. I/O errors carry it inside, at
/// times wrapped in another I/O error, and their `source()` skips the error they wrap, so
/// they are opened with `get_ref()` instead.
pub fn find_rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Whether a rustls error is a certificate refused, by us or by the server (as opposed to a
/// broken connection): retrying cannot help until someone changes a certificate.
pub fn is_certificate_error(e: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(
                A::CertificateRequired
                    | A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateUnknown
                    | A::AccessDenied
                    | A::CertificateExpired
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
            )
    )
}

/// Which certificate problem ended a handshake, in words, when the chain holds one.
pub fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    find_rustls_error(err).map(describe_rustls)
}

/// A rustls error as a sentence fragment naming the certificate problem.
pub fn describe_rustls(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(c) => describe_certificate(c),
        rustls::Error::AlertReceived(
            alert @ (A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::AccessDenied
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate),
        ) => format!(
            "the server refused the client certificate (TLS alert {alert:?}): none was sent, \
             or it is not signed by a CA the server trusts"
        ),
        other => format!("TLS error: {other}"),
    }
}

fn describe_certificate(c: &CertificateError) -> String {
    let what = match c {
        CertificateError::UnknownIssuer => {
            "is not signed by a trusted certificate authority (unknown issuer)".to_owned()
        }
        CertificateError::NotValidForName => "is not valid for the host name".to_owned(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "is not valid for the host name {expected:?} (it names {})",
            presented.join(", ")
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "is not valid yet".to_owned()
        }
        CertificateError::Revoked => "has been revoked".to_owned(),
        CertificateError::BadSignature => "has a bad signature".to_owned(),
        CertificateError::BadEncoding => "cannot be parsed".to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "is not meant for a TLS server (extended key usage)".to_owned()
        }
        other => format!("was refused ({other:?})"),
    };
    format!("the server's certificate {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_are_named() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe_rustls(&e).contains("not signed by a trusted certificate authority"));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let outer: Box<dyn std::error::Error> = Box::new(std::io::Error::other(io));
        let found = certificate_problem(outer.as_ref()).expect("found inside nested I/O errors");
        assert!(found.contains("unknown issuer"), "{found}");
        let e = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(describe_rustls(&e).contains("expired"));
        let e = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert!(describe_rustls(&e).contains("client certificate"));
    }

    #[test]
    fn missing_and_empty_files_say_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_certs("root certificate file", &missing).unwrap_err();
        assert!(e.to_string().contains("root certificate file"), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = load_certs("root certificate file", &empty).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = load_key("client key file", &empty).unwrap_err();
        assert!(e.to_string().contains("holds no PEM private key"), "{e}");
    }
}
