//! The Lehnz client and simulator (features `lehnz` and `sim`): the key check, the client's
//! reply reader, and the simulator's request reader.

pub use key::lehnz_key;
pub use reply::lehnz_reply;
pub use sim::sim_request;

use super::structured;

/// The Lehnz API key check, and a client built with that key.
mod key {
    use tower_outbound::lehnz::{ApiKey, Client};

    pub fn lehnz_key(data: &[u8]) -> bool {
        let raw = String::from_utf8_lossy(data);
        if let Ok(key) = ApiKey::parse(&raw) {
            let value = key.header_value();
            assert!(value.is_sensitive());
            assert!(!value.is_empty());
            // The Debug output never holds the key.
            let debug = format!("{key:?}");
            if value.len() > 12 {
                assert!(!debug.contains(value.to_str().unwrap()));
            }
        }
        let _ = Client::builder(&*raw).build();
        true
    }
}

/// The Lehnz client's reply reader, reached through the public API: a client whose transport
/// is a scripted service answering with any status, headers and body (chunked or not).
mod reply {
    use std::convert::Infallible;

    use arbitrary::Arbitrary;
    use bytes::Bytes;
    use http::{HeaderName, HeaderValue, Response, StatusCode};
    use tower_outbound::body::ReplayBody;
    use tower_outbound::lehnz::{Client, Event, Item, LehnzError};

    #[derive(Arbitrary, Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(u8, Vec<u8>)>,
        body: Vec<u8>,
        chunk: u8,
        records: u8,
        events: bool,
    }

    const NAMES: &[&str] = &[
        "retry-after",
        "date",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-ratelimit-reset",
        "content-type",
        "content-length",
    ];

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
    }

    pub fn lehnz_reply(data: &[u8]) -> bool {
        let Some(reply) = super::structured::<Reply>(data) else {
            return false;
        };
        let Ok(status) = StatusCode::from_u16(reply.status) else {
            return false;
        };
        let records = usize::from(reply.records % 5) + 1;
        let chunk = usize::from(reply.chunk).max(1);
        let headers: Vec<(HeaderName, HeaderValue)> = reply
            .headers
            .iter()
            .filter_map(|(n, v)| {
                let name = HeaderName::from_static(NAMES[usize::from(*n) % NAMES.len()]);
                HeaderValue::from_bytes(v).ok().map(|v| (name, v))
            })
            .collect();
        let body = Bytes::from(reply.body);
        let upstream = tower::service_fn(move |_req: http::Request<ReplayBody>| {
            let chunks = (0..body.len())
                .step_by(chunk)
                .map(|at| body.slice(at..body.len().min(at + chunk)))
                .collect();
            let mut response = Response::new(Chunks(chunks));
            *response.status_mut() = status;
            for (name, value) in &headers {
                response.headers_mut().append(name.clone(), value.clone());
            }
            async move { Ok::<_, Infallible>(response) }
        });
        let client = Client::builder("lehnz_sk_fuzz")
            .base_url("https://api.lehnz.invalid")
            .service(upstream)
            .build()
            .unwrap();
        RUNTIME.with(|rt| {
            rt.block_on(async {
                let result = if reply.events {
                    let mut events: Vec<Event> = (0..records)
                        .map(|i| Event::new(format!("u{i}"), "i", "view"))
                        .collect();
                    client.ingest_events(&mut events).await
                } else {
                    let items: Vec<Item> =
                        (0..records).map(|i| Item::new(format!("i{i}"))).collect();
                    client.upsert_items(&items).await
                };
                match result {
                    Ok(summary) => {
                        assert!(summary.accepted <= records, "{summary:?}");
                        if status.is_success() {
                            assert!(summary.errors.is_empty(), "{summary:?}");
                        } else {
                            assert!(!summary.errors.is_empty(), "{status}: {summary:?}");
                            assert_eq!(summary.accepted, 0);
                        }
                    }
                    Err(LehnzError::Unauthorized { .. } | LehnzError::Forbidden { .. }) => {
                        assert!(
                            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
                        );
                    }
                    Err(other) => panic!("only a wrong key fails the whole call: {other:?}"),
                }
            })
        });
        true
    }

    /// A body that yields its chunks one frame at a time, as a network reply does.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
        }
    }
}

/// The simulator's request reader, over a real loopback connection: any method, path, key,
/// content type, headers and body sent to a simulator on 127.0.0.1 (one per fuzzing process,
/// with limits high enough that the reader, not the rate limit, answers). Every request gets
/// an answer that is not a server error, and the simulator keeps serving.
mod sim {
    use std::cell::RefCell;
    use std::net::SocketAddr;
    use std::sync::OnceLock;
    use std::time::Duration;

    use arbitrary::Arbitrary;
    use bytes::Bytes;
    use http::{HeaderName, HeaderValue, Method, Request};
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1::SendRequest;
    use hyper_util::rt::TokioIo;
    use tower_outbound::lehnz::sim::Simulator;

    #[derive(Arbitrary, Debug)]
    struct Call {
        method: u8,
        path: Result<u8, String>,
        key: Key,
        content_type: Option<Vec<u8>>,
        headers: Vec<(u8, Vec<u8>)>,
        body: Result<Vec<u8>, u8>,
    }

    #[derive(Arbitrary, Debug)]
    enum Key {
        None,
        Secret,
        Publishable,
        Other(Vec<u8>),
    }

    const METHODS: &[Method] = &[
        Method::POST,
        Method::GET,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
    ];
    const PATHS: &[&str] = &[
        "/api/v1/events/ingest",
        "/api/v1/items/upsert",
        "/api/v1/users/upsert",
        "/api/v1/account",
        "/",
    ];
    const NAMES: &[&str] = &[
        "origin",
        "content-length",
        "x-api-key",
        "authorization",
        "accept",
    ];
    /// Well-formed bodies the fuzzer mutates from.
    const BODIES: &[&str] = &[
        r#"{"events":[{"user_id":"u","item_id":"i","event_type":"view","context":{"client_event_id":"e1"}}]}"#,
        r#"{"items":[{"item_id":"i","status":"active","attributes":{"a":1}}]}"#,
        r#"{"users":[{"user_id":"u","attributes":{}}]}"#,
        r#"{"events":[]}"#,
    ];

    static SIM: OnceLock<SocketAddr> = OnceLock::new();

    fn simulator() -> SocketAddr {
        *SIM.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let sim = Simulator::builder()
                        .org("fuzz")
                        .window(u32::MAX, Duration::from_secs(1))
                        .auth_window(u32::MAX, Duration::from_secs(1))
                        .max_body(64 * 1024)
                        .start()
                        .await
                        .unwrap();
                    tx.send(sim.addr()).unwrap();
                    std::future::pending::<()>().await;
                });
            });
            rx.recv().unwrap()
        })
    }

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        static CONNECTION: RefCell<Option<SendRequest<Full<Bytes>>>> = const { RefCell::new(None) };
    }

    async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    pub fn sim_request(data: &[u8]) -> bool {
        let Some(call) = super::structured::<Call>(data) else {
            return false;
        };
        let addr = simulator();
        let path = match &call.path {
            Ok(i) => PATHS[usize::from(*i) % PATHS.len()].to_owned(),
            Err(raw) => raw.clone(),
        };
        let Ok(uri) = format!(
            "http://{addr}{}{path}",
            if path.starts_with('/') { "" } else { "/" }
        )
        .parse::<http::Uri>() else {
            return false;
        };
        let body = match &call.body {
            Ok(bytes) => Bytes::from(bytes.clone()),
            Err(i) => Bytes::from_static(BODIES[usize::from(*i) % BODIES.len()].as_bytes()),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = METHODS[usize::from(call.method) % METHODS.len()].clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert("host", HeaderValue::from_static("127.0.0.1"));
        for (n, v) in &call.headers {
            let name = HeaderName::from_static(NAMES[usize::from(*n) % NAMES.len()]);
            if name == "content-length" {
                continue; // hyper frames the body; a wrong length only breaks the connection
            }
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append(name, v);
            }
        }
        match &call.key {
            Key::None => {}
            Key::Secret => {
                headers.insert("x-api-key", HeaderValue::from_static("lehnz_sk_test_fuzz"));
            }
            Key::Publishable => {
                headers.insert("x-api-key", HeaderValue::from_static("lehnz_pk_test_fuzz"));
            }
            Key::Other(raw) => {
                if let Ok(v) = HeaderValue::from_bytes(raw) {
                    headers.insert("x-api-key", v);
                }
            }
        }
        match &call.content_type {
            None => {
                headers.insert("content-type", HeaderValue::from_static("application/json"));
            }
            Some(raw) => {
                if let Ok(v) = HeaderValue::from_bytes(raw) {
                    headers.insert("content-type", v);
                }
            }
        }
        RUNTIME.with(|rt| {
            rt.block_on(async {
                let mut send = match CONNECTION.with(|c| c.borrow_mut().take()) {
                    Some(send) if !send.is_closed() => send,
                    _ => connect(addr).await,
                };
                if send.ready().await.is_err() {
                    send = connect(addr).await;
                }
                let response =
                    tokio::time::timeout(Duration::from_secs(5), send.send_request(request))
                        .await
                        .expect("the simulator answers within 5 s")
                        .expect("the simulator answers every request");
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .expect("the answer body is whole")
                    .to_bytes();
                assert!(
                    !status.is_server_error(),
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                );
                CONNECTION.with(|c| *c.borrow_mut() = Some(send));
            })
        });
        true
    }
}
