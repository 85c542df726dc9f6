//! The Lehnz client's reply reader, reached through the public API: a client whose transport
//! is a scripted service answering with any status, headers and body (chunked or not).
#![no_main]

use std::convert::Infallible;

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
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

fuzz_target!(|reply: Reply| {
    let Ok(status) = StatusCode::from_u16(reply.status) else { return };
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
                let mut events: Vec<Event> =
                    (0..records).map(|i| Event::new(format!("u{i}"), "i", "view")).collect();
                client.ingest_events(&mut events).await
            } else {
                let items: Vec<Item> = (0..records).map(|i| Item::new(format!("i{i}"))).collect();
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
                    assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN);
                }
                Err(other) => panic!("only a wrong key fails the whole call: {other:?}"),
            }
        })
    });
});

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
