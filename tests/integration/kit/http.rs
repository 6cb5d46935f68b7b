//! Raw HTTP to the DS server, for what the DS client does not send: other content types,
//! closing or deleting a stream, requests a test wants to see the status of.

/// Sends one HTTP request (for what the DS client does not send: other content types,
/// closing or deleting a stream) and returns the status and the body.
pub async fn http(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (hyper::StatusCode, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .unwrap();
    let res = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("request to {url}: {e}"));
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("response from {url}: {e}"))
        .to_bytes();
    (status, body)
}

/// Sends one request to a stream of the DS server at `base` and returns the status code.
pub async fn stream_request(
    base: &str,
    method: &str,
    stream: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    let method = hyper::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let url = format!("{base}/v1/stream/{stream}");
    http(method, &url, headers, body).await.0.as_u16()
}

/// Creates a stream with a given content type.
pub async fn create_stream(base: &str, stream: &str, content_type: &str) {
    let status = stream_request(base, "PUT", stream, &[("Content-Type", content_type)], b"").await;
    assert!(status == 201 || status == 200, "PUT {stream}: {status}");
}

/// Appends raw bytes with a content type.
pub async fn post_raw(base: &str, stream: &str, content_type: &str, body: &[u8]) {
    let status = stream_request(
        base,
        "POST",
        stream,
        &[("Content-Type", content_type)],
        body,
    )
    .await;
    assert!(status == 204 || status == 200, "POST {stream}: {status}");
}
