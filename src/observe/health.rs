//! `ds-sync health`: asks a running ds-sync's `/readyz`, for a container healthcheck in an
//! image without a shell or curl.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;

/// How long the health check waits for the whole answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the health check.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("no address to check: --listen (DS_SYNC_LISTEN, file key listen) is not set")]
    NoAddress,
    #[error("invalid health URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("not ready: cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("not ready: {0}")]
    NotReady(String),
}

impl HealthError {
    pub fn hint(&self) -> Option<String> {
        match self {
            HealthError::NoAddress => Some(
                "Pass --url http://HOST:PORT, or give the same --listen / DS_SYNC_LISTEN the running ds-sync has.".into(),
            ),
            HealthError::Unreachable { .. } => Some(
                "Is ds-sync running with --listen on that address?".into(),
            ),
            _ => None,
        }
    }
}

/// The `/readyz` URL: `url` as given (with `/readyz` added to a bare `http://host:port`),
/// else the `listen` address, where an unspecified IP (`0.0.0.0`, `::`) means loopback.
/// Pure.
pub fn readyz_url(url: Option<&str>, listen: Option<&str>) -> Result<String, HealthError> {
    if let Some(url) = url {
        let uri: hyper::Uri = url.parse().map_err(|e| HealthError::InvalidUrl {
            url: url.to_owned(),
            reason: format!("{e}"),
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(HealthError::InvalidUrl {
                url: url.to_owned(),
                reason: "expected http://HOST:PORT".into(),
            });
        }
        return Ok(match uri.path() {
            "" | "/" => format!("{}/readyz", url.trim_end_matches('/')),
            _ => url.to_owned(),
        });
    }
    let listen = listen.ok_or(HealthError::NoAddress)?;
    let authority = match listen.parse::<SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            addr.to_string()
        }
        Err(_) => listen.to_owned(),
    };
    Ok(format!("http://{authority}/readyz"))
}

/// Asks `url`; `Ok(body)` when it answers 200, the reasons it gives otherwise.
pub async fn check(url: &str) -> Result<String, HealthError> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = url.parse().map_err(|e| HealthError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("{e}"),
    })?;
    let unreachable = |reason: String| HealthError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let exchange = async {
        let res = client
            .get(uri)
            .await
            .map_err(|e| unreachable(crate::pg::error_chain(&e)))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(crate::pg::error_chain(&e)))?
            .to_bytes();
        Ok::<_, HealthError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))??;
    if status == StatusCode::OK {
        return Ok(body);
    }
    Err(HealthError::NotReady(reasons(status, &body)))
}

/// The reasons a `/readyz` answer gives, one line. Pure.
pub fn reasons(status: StatusCode, body: &str) -> String {
    let listed = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let lines: Vec<String> = v["not_ready"]
                .as_array()?
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect();
            (!lines.is_empty()).then(|| lines.join("; "))
        });
    listed.unwrap_or_else(|| format!("status {status}: {}", body.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_comes_from_the_flag_or_the_listen_address() {
        let url = |u, l| readyz_url(u, l).unwrap();
        assert_eq!(
            url(None, Some("0.0.0.0:9464")),
            "http://127.0.0.1:9464/readyz"
        );
        assert_eq!(url(None, Some("[::]:9464")), "http://[::1]:9464/readyz");
        assert_eq!(url(None, Some("10.1.2.3:80")), "http://10.1.2.3:80/readyz");
        assert_eq!(
            url(None, Some("localhost:9464")),
            "http://localhost:9464/readyz"
        );
        assert_eq!(
            url(Some("http://127.0.0.1:1/"), Some("0.0.0.0:2")),
            "http://127.0.0.1:1/readyz"
        );
        assert_eq!(url(Some("http://h:1/readyz"), None), "http://h:1/readyz");
        assert!(matches!(
            readyz_url(None, None),
            Err(HealthError::NoAddress)
        ));
        assert!(readyz_url(Some("https://h:1"), None).is_err());
    }

    #[test]
    fn reasons_are_read_from_the_report() {
        let body = r#"{"ready":false,"not_ready":["capture: starting","ds_server: not answering (refused)"]}"#;
        assert_eq!(
            reasons(StatusCode::SERVICE_UNAVAILABLE, body),
            "capture: starting; ds_server: not answering (refused)"
        );
        assert_eq!(
            reasons(StatusCode::NOT_FOUND, "nope"),
            "status 404 Not Found: nope"
        );
    }
}
