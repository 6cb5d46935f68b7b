//! The DS client against the real in-process DS server: status codes as the server really
//! answers them, `Stream-Seq` replays, outages, SSE.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use ds_sync::ds::{AppendOutcome, ClientOptions, DsClient, DsError, SseSubscription};
use ds_sync::embedded::{DsServer, DsServerOptions};
use ds_sync::sse::{ArrayItem, Control, DsItem};

use crate::kit::fault_proxy::FaultProxy;

async fn server(opts: DsServerOptions) -> DsServer {
    DsServer::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the embedded DS server: {e}"))
}

fn client(ds: &DsServer) -> DsClient {
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    DsClient::new(&ds.url(), opts).expect("the embedded server's URL is valid")
}

fn body(value: Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// A request the client does not offer.
async fn raw(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> StatusCode {
    crate::kit::http(method, url, headers, body.as_bytes())
        .await
        .0
}

/// What a subscription delivered: a whole data event's messages, or a control.
#[derive(Debug)]
enum DsEvent {
    Data(Vec<Value>),
    Control(Control),
}

/// The next data event (its messages gathered) or control within 5 s, or a panic saying
/// what was expected.
async fn next_event(sub: &mut SseSubscription, what: &str) -> DsEvent {
    let mut messages = Vec::new();
    loop {
        let item = match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(Ok(item))) => item,
            Ok(Some(Err(e))) => panic!("waiting for {what}: error {e}"),
            Ok(None) => panic!("waiting for {what}: the server ended the SSE response"),
            Err(_) => panic!("waiting for {what}: nothing within 5 s"),
        };
        match item {
            DsItem::Array(ArrayItem::Element { text, .. }) => messages.push(
                serde_json::from_slice(&text)
                    .unwrap_or_else(|e| panic!("a message is not JSON ({e}): {text:?}")),
            ),
            DsItem::DataEnd => return DsEvent::Data(messages),
            DsItem::Control(c) => return DsEvent::Control(c),
            other => panic!("waiting for {what}: unexpected {other:?}"),
        }
    }
}

fn data_messages(event: DsEvent) -> Vec<Value> {
    match event {
        DsEvent::Data(messages) => messages,
        other => panic!("expected a data event, got {other:?}"),
    }
}

fn control(event: DsEvent) -> Control {
    match event {
        DsEvent::Control(c) => c,
        other => panic!("expected a control event, got {other:?}"),
    }
}

#[tokio::test]
async fn ensure_stream_is_idempotent() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("orders")
        .await
        .expect("first ensure creates");
    c.ensure_stream("orders")
        .await
        .expect("second ensure accepts");
    assert!(c.head("orders").await.unwrap().is_some());
}

#[tokio::test]
async fn ensure_on_a_stream_of_another_content_type_is_rejected_with_a_hint() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    let status = raw(
        Method::PUT,
        &c.stream_url("text"),
        &[("content-type", "text/plain")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let err = c
        .ensure_stream("text")
        .await
        .expect_err("content type differs");
    assert!(
        matches!(&err, DsError::Rejected { reply, .. } if reply.status == 409),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.hint().unwrap().contains("another configuration"));
}

#[tokio::test]
async fn append_and_read_all_round_trip() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("items").await.unwrap();
    let first = c
        .append(
            "items",
            body(json!([{"id": 1}, {"id": 2, "name": "b"}])),
            None,
        )
        .await
        .unwrap();
    let AppendOutcome::Written {
        next_offset: Some(first_offset),
    } = first
    else {
        panic!("expected Written with an offset, got {first:?}");
    };
    let second = c
        .append("items", body(json!({"id": 3})), None)
        .await
        .unwrap();
    let AppendOutcome::Written {
        next_offset: Some(second_offset),
    } = second
    else {
        panic!("expected Written with an offset, got {second:?}");
    };
    assert!(second_offset > first_offset, "offsets sort bytewise");
    assert_eq!(c.head("items").await.unwrap(), Some(second_offset.clone()));

    let all = c.read_all("items").await.unwrap();
    assert_eq!(
        all,
        vec![
            json!({"id": 1}),
            json!({"id": 2, "name": "b"}),
            json!({"id": 3})
        ]
    );
    let tail = c.read("items", &first_offset).await.unwrap();
    assert_eq!(tail.messages, vec![json!({"id": 3})]);
    assert_eq!(tail.next_offset, second_offset);
    assert!(tail.up_to_date && !tail.closed);
    let empty = c.read("items", &second_offset).await.unwrap();
    assert!(empty.messages.is_empty() && empty.up_to_date, "{empty:?}");
}

#[tokio::test]
async fn stream_seq_replays_are_already_written_and_never_duplicated() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("wal").await.unwrap();
    let append = |msg: &'static str, seq: &'static str| {
        let c = c.clone();
        async move {
            c.append("wal", body(json!([{"m": msg}])), Some(seq))
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        append("b", "b").await,
        AppendOutcome::Written { .. }
    ));
    assert_eq!(
        append("a", "a").await,
        AppendOutcome::AlreadyWritten,
        "lower seq"
    );
    assert_eq!(
        append("b again", "b").await,
        AppendOutcome::AlreadyWritten,
        "same seq"
    );
    assert!(matches!(
        append("c", "c").await,
        AppendOutcome::Written { .. }
    ));
    let all = c.read_all("wal").await.unwrap();
    assert_eq!(all, vec![json!({"m": "b"}), json!({"m": "c"})]);
}

#[tokio::test]
async fn missing_streams_are_not_found() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    let err = c
        .append("nope", body(json!([1])), Some("1"))
        .await
        .expect_err("no stream");
    assert!(
        matches!(&err, DsError::NotFound { stream, .. } if stream == "nope"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "stream \"nope\" does not exist; the server said: 404 Stream Not Found: \
         Stream not found: nope (code NOT_FOUND, type /errors/not-found)",
        "the message quotes the server's problem details"
    );
    assert_eq!(c.head("nope").await.unwrap(), None);
    let err = c.read("nope", "-1").await.expect_err("no stream");
    assert!(matches!(err, DsError::NotFound { .. }), "{err:?}");
    let err = c.subscribe("nope", "-1").await.expect_err("no stream");
    assert!(matches!(err, DsError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn invalid_bodies_are_rejected_with_the_status() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("s").await.unwrap();
    for bad in ["[]", "{not json", ""] {
        let err = c.append("s", Bytes::from(bad), None).await.expect_err(bad);
        assert!(
            matches!(&err, DsError::Rejected { reply, .. }
                if reply.status == 400 && (reply.detail.is_some() || reply.text.is_some())),
            "{bad:?}: {err:?}"
        );
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn an_append_over_the_stream_limit_is_too_large() {
    let opts = DsServerOptions {
        max_stream_bytes: 1024,
        ..DsServerOptions::default()
    };
    let ds = server(opts).await;
    let c = client(&ds);
    c.ensure_stream("small").await.unwrap();
    let big = body(json!([{"pad": "x".repeat(2048)}]));
    let len = big.len();
    let err = c
        .append("small", big, Some("0001"))
        .await
        .expect_err("over the limit");
    assert!(
        matches!(&err, DsError::TooLarge { bytes, .. } if *bytes == len),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("413 Payload Too Large: Stream size limit exceeded (code PAYLOAD_TOO_LARGE, type /errors/payload-too-large)"),
        "the message says what the server said: {err}"
    );
    let hint = err.hint().unwrap_or_default();
    assert!(
        hint.contains("stream is full") && hint.contains("DS_LIMITS__MAX_STREAM_BYTES"),
        "the hint is about the stream's size limit, not the request's: {hint}"
    );
    assert!(!err.is_transient());
    let ok = c
        .append("small", body(json!([{"ok": true}])), Some("0001"))
        .await;
    assert!(
        matches!(ok, Ok(AppendOutcome::Written { .. })),
        "a refused append does not consume its Stream-Seq: {ok:?}"
    );
}

#[tokio::test]
async fn an_outage_is_transient_and_the_pool_recovers() {
    let mut ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("outage").await.unwrap();
    c.append("outage", body(json!([1])), None).await.unwrap();

    ds.stop().await;
    let err = c
        .append("outage", body(json!([2])), None)
        .await
        .expect_err("server down");
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(&err, DsError::Transient { url, .. } if url.ends_with("/v1/stream/outage")));
    let err = c.head("outage").await.expect_err("server down");
    assert!(err.is_transient(), "{err:?}");

    ds.start_again().await.unwrap();
    c.append("outage", body(json!([3])), None)
        .await
        .expect("same client, server back");
    assert_eq!(
        c.read_all("outage").await.unwrap(),
        vec![json!(1), json!(3)]
    );
}

#[tokio::test]
async fn a_server_that_does_not_answer_times_out_as_transient() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let c = DsClient::new(&format!("http://{addr}/"), opts).unwrap();
    let err = c.head("s").await.expect_err("no answer");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string().contains("no response within 300ms"),
        "{err}"
    );
    let err = c.subscribe("s", "-1").await.expect_err("no answer");
    assert!(err.is_transient(), "{err:?}");
    silent.abort();
}

#[tokio::test]
async fn a_closed_stream_refuses_appends_as_closed() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("done").await.unwrap();
    c.append("done", body(json!([1])), Some("1")).await.unwrap();
    let status = raw(
        Method::POST,
        &c.stream_url("done"),
        &[("stream-closed", "true")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "close-only POST");

    for seq in [None, Some("2"), Some("0")] {
        let err = c
            .append("done", body(json!([2])), seq)
            .await
            .expect_err("closed");
        assert!(
            matches!(err, DsError::Closed { .. }),
            "seq {seq:?}: {err:?}"
        );
        assert!(!err.is_transient() && err.hint().is_some());
    }
    let err = c.ensure_stream("done").await.expect_err("closed");
    assert!(matches!(err, DsError::Closed { .. }), "ensure: {err:?}");
    let batch = c.read("done", "-1").await.unwrap();
    assert_eq!(batch.messages, vec![json!(1)]);
    assert!(batch.up_to_date && batch.closed, "{batch:?}");
    assert!(c.head("done").await.unwrap().is_some());
}

#[tokio::test]
async fn subscribe_yields_data_then_a_control_at_the_tail() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("live").await.unwrap();
    c.append("live", body(json!([{"n": 1}, {"n": 2}])), None)
        .await
        .unwrap();
    let tail = c.head("live").await.unwrap().expect("stream exists");

    let mut sub = c.subscribe("live", "-1").await.unwrap();
    assert_eq!(sub.stream(), "live");
    let first = data_messages(next_event(&mut sub, "the backlog").await);
    assert_eq!(first, vec![json!({"n": 1}), json!({"n": 2})]);
    let ctl = control(next_event(&mut sub, "the control after the backlog").await);
    assert_eq!(ctl.stream_next_offset, tail);
    assert!(ctl.up_to_date && !ctl.stream_closed, "{ctl:?}");

    c.append("live", body(json!({"n": 3})), None).await.unwrap();
    let live = data_messages(next_event(&mut sub, "a live append").await);
    assert_eq!(live, vec![json!({"n": 3})]);
    let ctl = control(next_event(&mut sub, "the control after the live append").await);
    assert_eq!(Some(ctl.stream_next_offset), c.head("live").await.unwrap());
}

#[tokio::test]
async fn a_stopped_server_ends_the_subscription() {
    let mut ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("ending").await.unwrap();
    let mut sub = c.subscribe("ending", "-1").await.unwrap();
    let ctl = control(next_event(&mut sub, "the initial control").await);
    assert!(ctl.up_to_date);
    ds.stop().await;
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(None) => {}
        Ok(Some(Err(e))) => assert!(e.is_transient(), "{e:?}"),
        Ok(Some(Ok(event))) => panic!("no event expected after stop, got {event:?}"),
        Err(_) => panic!("the subscription did not end within 10 s of the server stopping"),
    }
}

#[tokio::test]
async fn names_with_slashes_and_spaces_round_trip() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    let name = "sessions/42/a b?c#d%e";
    assert!(
        c.stream_url(name)
            .ends_with("/v1/stream/sessions/42/a%20b%3Fc%23d%25e")
    );
    c.ensure_stream(name).await.unwrap();
    c.append(name, body(json!([{"k": "v"}])), Some("0001"))
        .await
        .unwrap();
    assert_eq!(c.read_all(name).await.unwrap(), vec![json!({"k": "v"})]);
    assert_eq!(
        c.head("sessions/42").await.unwrap(),
        None,
        "a prefix is another stream"
    );
    let tail = c.head(name).await.unwrap();
    let mut sub = c.subscribe(name, "-1").await.unwrap();
    assert_eq!(
        data_messages(next_event(&mut sub, "data").await),
        vec![json!({"k": "v"})]
    );
    let ctl = control(next_event(&mut sub, "control").await);
    assert_eq!(Some(ctl.stream_next_offset), tail);
}

#[tokio::test]
async fn malformed_base_urls_are_refused_up_front_and_https_is_accepted() {
    let https = DsClient::new("https://ds.example/", ClientOptions::default()).expect("https");
    assert_eq!(https.base_url(), "https://ds.example");
    let err = DsClient::new("ftp://ds.example", ClientOptions::default()).expect_err("ftp");
    assert!(matches!(err, DsError::InvalidUrl { .. }), "{err:?}");
    let err = DsClient::new("ds.example:4437", ClientOptions::default()).expect_err("no scheme");
    assert!(err.hint().unwrap().contains("http://host:port"));
}

/// All items of a catch-up read, reading its body to the end.
async fn read_items(read: &mut ds_sync::ds::CatchUpRead) -> Vec<ArrayItem> {
    let mut items = Vec::new();
    loop {
        while let Some(item) = read.next_buffered() {
            items.push(item);
        }
        if read.done() {
            return items;
        }
        match tokio::time::timeout(Duration::from_secs(5), read.read()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("reading the body: {e}"),
            Err(_) => panic!("the body did not end within 5 s"),
        }
    }
}

#[tokio::test]
async fn a_catch_up_read_says_its_offset_first_and_splits_its_body() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("backlog").await.unwrap();
    c.append("backlog", body(json!([{"n": 1}, {"n": 2}, "three"])), None)
        .await
        .unwrap();
    let tail = c.head("backlog").await.unwrap().expect("stream exists");
    let mut read = c
        .read_stream("backlog", "-1", 1 << 20, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(read.next_offset, tail, "known before the body");
    assert!(read.up_to_date && !read.closed && read.json, "{read:?}");
    let texts: Vec<String> = read_items(&mut read)
        .await
        .into_iter()
        .map(|i| match i {
            ArrayItem::Element { text, .. } => String::from_utf8(text).unwrap(),
            other => panic!("not an element: {other:?}"),
        })
        .collect();
    assert_eq!(texts, [r#"{"n":1}"#, r#"{"n":2}"#, r#""three""#]);

    let mut empty = c
        .read_stream("backlog", &tail, 1 << 20, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(empty.next_offset, tail);
    assert_eq!(
        read_items(&mut empty).await,
        vec![],
        "an empty read has no items"
    );

    let status = raw(
        Method::PUT,
        &c.stream_url("text"),
        &[("Content-Type", "text/plain")],
        "",
    )
    .await;
    assert!(status.is_success(), "{status}");
    let text = c
        .read_stream("text", "-1", 1 << 20, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        !text.json,
        "a text stream's read is not a JSON array of messages"
    );
    let err = c
        .read_stream("missing", "-1", 1 << 20, Duration::from_secs(5))
        .await
        .expect_err("no stream");
    assert!(matches!(err, DsError::NotFound { .. }), "{err:?}");
}

/// An SSE subscription gets a connection of its own, even when the pool holds an idle one
/// from a plain read. A keep-alive connection that carried a request and its response before
/// is in the kernel's delayed-ACK mode; against a server that does not set `TCP_NODELAY`,
/// small SSE writes then wait for those delayed ACKs and arrive in bursts, milliseconds late.
#[tokio::test]
async fn a_subscription_does_not_reuse_a_pooled_connection() {
    let ds = server(DsServerOptions::default()).await;
    let proxy = FaultProxy::for_url(&ds.url()).await.expect("fault proxy");
    let c = DsClient::new(
        &proxy.url(),
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
    .expect("the proxy's URL is valid");
    c.ensure_stream("own-conn")
        .await
        .expect("creating the stream");
    c.append("own-conn", body(json!([{"n": 1}])), None)
        .await
        .expect("appending");
    let read = c.read("own-conn", "-1").await.expect("a plain read");
    let before = proxy.accepted();
    let mut sub = c
        .subscribe("own-conn", &read.next_offset)
        .await
        .expect("subscribing");
    assert_eq!(
        proxy.accepted(),
        before + 1,
        "the subscription must open a connection of its own, not take the idle pooled one"
    );
    c.append("own-conn", body(json!([{"n": 2}])), None)
        .await
        .expect("appending while subscribed");
    // The server may say first that the subscription starts at the tail.
    for _ in 0..2 {
        if let DsEvent::Data(messages) =
            next_event(&mut sub, "the message appended while subscribed").await
        {
            assert_eq!(messages, vec![json!({"n": 2})]);
            return;
        }
    }
    panic!("two controls and no data event after the append");
}

/// The embedded server sets `TCP_NODELAY` on every connection it accepts, so an SSE event
/// leaves at once instead of waiting for the client's ACK of the one before (Nagle).
#[tokio::test]
async fn the_embedded_server_sends_without_delay() {
    let ds = server(DsServerOptions::default()).await;
    let c = client(&ds);
    c.ensure_stream("nodelay")
        .await
        .expect("creating the stream");
    let mut sub = c.subscribe("nodelay", "-1").await.expect("subscribing");
    let _ = next_event(&mut sub, "the first control").await;
    let port = ds
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the server's port");
    let accepted = server_side_sockets(port);
    assert!(
        !accepted.is_empty(),
        "no accepted socket of the server (port {port}) found in this process"
    );
    for (fd, nodelay) in accepted {
        assert!(nodelay, "the server's socket (fd {fd}) has TCP_NODELAY off");
    }
}

/// The sockets of this process whose local port is `port` and that are connected (the
/// server's side of its connections), with whether `TCP_NODELAY` is set on each.
fn server_side_sockets(port: u16) -> Vec<(i32, bool)> {
    use std::os::fd::BorrowedFd;
    let mut found = Vec::new();
    let entries = std::fs::read_dir("/proc/self/fd").expect("listing /proc/self/fd");
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for the two calls below, while this
        // process keeps it open (a descriptor closed meanwhile makes the calls fail).
        #[allow(unsafe_code)]
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let local = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(fd);
        let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrIn>(fd);
        if let (Ok(local), Ok(_)) = (local, peer)
            && local.port() == port
            && let Ok(nodelay) =
                nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::TcpNoDelay)
        {
            found.push((fd, nodelay));
        }
    }
    found
}
