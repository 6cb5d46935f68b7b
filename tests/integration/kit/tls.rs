//! Certificates made by the test (rcgen), and servers that use them: a PostgreSQL cluster
//! with `ssl = on` and a `hostssl`-only `pg_hba.conf`, and the embedded DS server over
//! HTTPS. Nothing is shared between tests: each makes its own CA.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use ds_sync::embedded::{LocalPostgres, PostgresOptions, PostgresSsl};
use ds_sync::pg::PgTarget;

/// A CA, a server certificate it signed, client certificates on demand, and a second CA
/// that signed nothing the servers use.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca_file: PathBuf,
    /// A CA unrelated to the servers (PEM).
    pub other_ca_file: PathBuf,
    /// The server certificate (PEM), for the names given to [`Pki::new`].
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    /// A CA and a server certificate for `server_names` (DNS names or IP addresses).
    pub fn new(server_names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("ds-sync test CA");
        let other = ca_file(dir.path(), "other-ca.pem", &self::ca("some other CA"));
        let ca_file = ca_file(dir.path(), "ca.pem", &ca);
        let mut pki = Pki {
            server_cert: PathBuf::new(),
            server_key: PathBuf::new(),
            ca_file,
            other_ca_file: other,
            dir,
            ca,
        };
        let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        let (cert, key) = pki.issue("server", names, "ds-sync test server");
        pki.server_cert = cert;
        pki.server_key = key;
        pki
    }

    /// A client certificate whose common name is `user` (for `cert` authentication).
    pub fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        self.issue(&format!("client-{user}"), Vec::new(), user)
    }

    fn issue(&self, file: &str, names: Vec<String>, cn: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.crt"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    pub fn path(&self, p: &Path) -> String {
        p.display().to_string()
    }
}

fn ca_file(dir: &Path, name: &str, ca: &CertifiedIssuer<'static, KeyPair>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

/// `pg_hba.conf` of a server that accepts only TLS connections over TCP, with passwords.
pub const HBA_TLS_ONLY: &[&str] = &["hostssl all all 127.0.0.1/32 scram-sha-256"];

/// A cluster serving `pki`'s server certificate, with these `pg_hba.conf` lines; client
/// certificates of `pki`'s CA are accepted for `cert` authentication.
pub async fn tls_cluster(pki: &Pki, hba: &[&str]) -> LocalPostgres {
    let opts = PostgresOptions {
        ssl: Some(PostgresSsl {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: Some(pki.ca_file.clone()),
        }),
        hba: Some(hba.iter().map(|l| l.to_string()).collect()),
        ..PostgresOptions::default()
    };
    tokio::task::spawn_blocking(move || crate::kit::start_cluster(&opts))
        .await
        .expect("starting a TLS cluster")
}

/// The superuser's URL for `db` on `host`, with extra query parameters.
pub fn url(pg: &LocalPostgres, host: &str, db: &str, params: &str) -> String {
    format!(
        "postgres://{}:{}@{host}:{}/{db}?{params}",
        pg.superuser(),
        pg.password(),
        pg.port()
    )
}

/// A database of its own on a TLS-only cluster, created over TLS (`sslmode=require`).
pub async fn create_db(pg: &LocalPostgres, name: &str) {
    let admin = PgTarget::parse(&url(pg, "127.0.0.1", "postgres", "sslmode=require"), None)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the TLS cluster over TLS: {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
}

/// A SQL client for `db` over TLS.
pub async fn client(pg: &LocalPostgres, db: &str) -> tokio_postgres::Client {
    PgTarget::parse(&url(pg, "127.0.0.1", db, "sslmode=require"), None)
        .unwrap()
        .connect()
        .await
        .unwrap()
}
