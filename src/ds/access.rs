//! How ds-sync reaches a DS server beyond its URL: the TLS material for `https://` (a
//! private CA, a client certificate for mutual TLS) and the headers every request carries
//! (`Authorization: Bearer <token>` and any `--ds-header`).
//!
//! Header values are secrets: they are marked sensitive (hyper leaves them out of its own
//! debug output), [`DsAccess`]'s `Debug` shows header names only, and nothing here puts a
//! value into an error message.

use std::fmt;
use std::path::PathBuf;

use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use rustls::ClientConfig;

use crate::tls::{self, TlsError, Verify};

/// Headers ds-sync sets itself, or that the DS protocol gives a meaning per request; a
/// `--ds-header` may not override them.
const RESERVED: [&str; 10] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept",
    "te",
    "upgrade",
    "keep-alive",
    "expect",
];

/// TLS files for an `https://` DS server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsTls {
    /// PEM file of the CA(s) that sign the server's certificate; the system's trust store
    /// when `None`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// TLS material and request headers for one DS server.
#[derive(Clone, Default)]
pub struct DsAccess {
    pub tls: DsTls,
    headers: Vec<(HeaderName, HeaderValue)>,
    token: Option<String>,
    raw_headers: Vec<String>,
}

impl fmt::Debug for DsAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("DsAccess")
            .field("tls", &self.tls)
            .field("headers", &names)
            .finish()
    }
}

impl DsAccess {
    /// Checks the settings: `token` becomes `Authorization: Bearer <token>`; each header is
    /// `Name: value`. Errors name the header, never its value.
    pub fn new(tls: DsTls, token: Option<&str>, headers: &[String]) -> Result<DsAccess, String> {
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(
                "--ds-client-cert and --ds-client-key go together: give both for mutual TLS".into(),
            );
        }
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let mut parsed = Vec::new();
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                "--ds-token contains characters an HTTP header cannot carry".to_owned()
            })?;
            value.set_sensitive(true);
            parsed.push((AUTHORIZATION, value));
        }
        for raw in headers.iter().filter(|h| !h.trim().is_empty()) {
            let (name, value) = parse_header(raw)?;
            if parsed.iter().any(|(n, _)| *n == name) {
                return Err(format!(
                    "--ds-header {name} is given twice (or together with --ds-token for Authorization)"
                ));
            }
            parsed.push((name, value));
        }
        Ok(DsAccess {
            tls,
            headers: parsed,
            token: token.map(str::to_owned),
            raw_headers: headers.to_vec(),
        })
    }

    /// The headers every request carries.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The rustls configuration for `https://`: the CA file or the system's trust store,
    /// chain and host name checked, the client certificate when given.
    pub fn tls_config(&self) -> Result<ClientConfig, TlsError> {
        let roots = match &self.tls.ca_file {
            Some(path) => tls::roots_from_file("DS CA file (--ds-ca-file)", path)?,
            None => tls::system_roots()?,
        };
        let identity = match (&self.tls.client_cert, &self.tls.client_key) {
            (Some(cert), Some(key)) => Some((
                tls::load_certs("DS client certificate (--ds-client-cert)", cert)?,
                tls::load_key("DS client key (--ds-client-key)", key)?,
            )),
            _ => None,
        };
        tls::client_config(roots, Verify::Full, identity)
    }

    /// The settings as ds-sync's environment variables, for a child `ds-sync` process.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let mut out = Vec::new();
        if let Some(token) = &self.token {
            out.push(("DS_SYNC_DS_TOKEN", token.clone()));
        }
        if !self.raw_headers.is_empty() {
            out.push(("DS_SYNC_DS_HEADERS", self.raw_headers.join("\n")));
        }
        for (var, value) in [
            ("DS_SYNC_DS_CA_FILE", path(&self.tls.ca_file)),
            ("DS_SYNC_DS_CLIENT_CERT", path(&self.tls.client_cert)),
            ("DS_SYNC_DS_CLIENT_KEY", path(&self.tls.client_key)),
        ] {
            if let Some(value) = value {
                out.push((var, value));
            }
        }
        out
    }
}

/// `Name: value` into a header; the value is marked sensitive.
pub fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((name, value)) = raw.split_once(':') else {
        return Err(
            "--ds-header must look like 'Name: value' (a colon after the header name)".into(),
        );
    };
    let name = name.trim();
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("--ds-header {name:?} is not a valid header name"))?;
    let lower = header.as_str();
    if RESERVED.contains(&lower) || lower.starts_with("stream-") || lower.starts_with("producer-") {
        return Err(format!(
            "--ds-header {name} cannot be set: ds-sync sets it, or the DS protocol gives it a meaning per request"
        ));
    }
    let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
        format!("--ds-header {name}: the value contains characters a header cannot carry")
    })?;
    value.set_sensitive(true);
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_headers_become_request_headers() {
        let a = DsAccess::new(
            DsTls::default(),
            Some("s3cret-token"),
            &["X-Tenant: acme".into(), "x-api-key:k3y ".into()],
        )
        .unwrap();
        let h: Vec<(String, String)> = a
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            h,
            [
                ("authorization".into(), "Bearer s3cret-token".into()),
                ("x-tenant".into(), "acme".into()),
                ("x-api-key".into(), "k3y".into()),
            ]
        );
        assert!(a.headers().iter().all(|(_, v)| v.is_sensitive()));
        let debug = format!("{a:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("k3y"),
            "{debug}"
        );
        assert!(debug.contains("x-tenant"), "{debug}");
    }

    #[test]
    fn bad_headers_are_refused_without_echoing_the_value() {
        for (raw, why) in [
            ("no colon here", "Name: value"),
            ("Bad Name: x", "not a valid header name"),
            ("Content-Type: text/plain", "cannot be set"),
            ("Stream-Seq: 1", "cannot be set"),
            ("X-Ok: line\nbreak-s3cret", "cannot carry"),
        ] {
            let e = parse_header(raw).unwrap_err();
            assert!(e.contains(why), "{raw}: {e}");
            assert!(!e.contains("s3cret"), "{raw}: {e}");
        }
        let e = DsAccess::new(
            DsTls::default(),
            Some("t"),
            &["Authorization: Basic x".into()],
        )
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let tls = DsTls {
            client_cert: Some("c.pem".into()),
            ..DsTls::default()
        };
        assert!(
            DsAccess::new(tls, None, &[])
                .unwrap_err()
                .contains("go together")
        );
    }

    #[test]
    fn child_env_carries_every_setting() {
        let tls = DsTls {
            ca_file: Some("/ca.pem".into()),
            client_cert: Some("/c.pem".into()),
            client_key: Some("/k.pem".into()),
        };
        let a = DsAccess::new(tls, Some("tok"), &["X-A: 1".into(), "X-B: 2".into()]).unwrap();
        let env = a.child_env();
        assert!(env.contains(&("DS_SYNC_DS_TOKEN", "tok".into())));
        assert!(env.contains(&("DS_SYNC_DS_HEADERS", "X-A: 1\nX-B: 2".into())));
        assert!(env.contains(&("DS_SYNC_DS_CA_FILE", "/ca.pem".into())));
        assert!(env.contains(&("DS_SYNC_DS_CLIENT_KEY", "/k.pem".into())));
    }
}
