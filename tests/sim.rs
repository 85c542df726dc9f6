//! The Lehnz simulator against a plain HTTP/1.1 client over loopback: every documented rule,
//! the chaos knobs, and the server's end.
#![cfg(feature = "sim")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_outbound::lehnz::sim::{Chaos, KeyKind, SimStats, Simulator};

const EVENTS: &str = "/api/v1/events/ingest";
const ITEMS: &str = "/api/v1/items/upsert";
const USERS: &str = "/api/v1/users/upsert";

/// What came back: a response, or nothing because the connection closed first.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// `(RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset)`, each parsed.
    fn quota(&self) -> Option<(u32, u32, u64)> {
        let limit = self.header("ratelimit-limit")?.parse().unwrap();
        let remaining = self.header("ratelimit-remaining")?.parse().unwrap();
        let reset = self.header("ratelimit-reset")?.parse().unwrap();
        Some((limit, remaining, reset))
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// A POST of `body` to `path` with the given headers.
fn post(path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut request = Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(body.into())).unwrap()
}

/// Sends one request on a fresh connection; `Err` when the connection closed without an answer.
async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("every answer is JSON")
    };
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Sends a request that must be answered.
async fn call(sim: &Simulator, request: Request<Full<Bytes>>) -> Reply {
    send(sim.addr(), request).await.expect("an answer")
}

fn event(user: &str, item: &str, id: &str) -> Value {
    json!({"user_id": user, "item_id": item, "event_type": "view",
           "timestamp": "2024-05-01T12:00:00Z", "context": {"client_event_id": id}})
}

fn body(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// A simulator for `acme` that keeps the stored records, for the tests that read them.
async fn acme() -> (Simulator, String, String) {
    let sim = Simulator::builder()
        .org("acme")
        .keep_bodies(true)
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    (sim, keys.secret, keys.publishable)
}

#[tokio::test]
async fn ingest_stores_events_and_counts_duplicate_ids() {
    let (sim, sk, _) = acme().await;
    let first = json!([event("u1", "i1", "e-1"), event("u1", "i2", "e-2")]);
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], body(&first))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body, json!({"accepted": 2}));
    assert_eq!(reply.header("content-type"), Some("application/json"));

    // A retry of the second event plus a new one, in the wrapped form.
    let again = json!({"events": [event("u1", "i2", "e-2"), event("u2", "i3", "e-3")]});
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], body(&again))).await;
    assert_eq!(reply.body, json!({"accepted": 2}));

    let stats = sim.stats();
    assert_eq!(stats.events, 4);
    assert_eq!(stats.distinct_event_ids, 3);
    assert_eq!(stats.duplicate_event_ids, 1);
    assert_eq!(stats.responses(202), 2);
    assert_eq!(sim.events()[0], first[0], "stored as sent, in order");
    assert_eq!(sim.events()[3], again["events"][1]);
}

#[tokio::test]
async fn upsert_replaces_and_counts_inactive_items() {
    let (sim, sk, _) = acme().await;
    let key = [("x-api-key", sk.as_str())];
    let items = json!([
        {"item_id": "i1", "title": "Lamp", "status": "active"},
        {"item_id": "i2", "title": "Desk"},
    ]);
    let reply = call(&sim, post(ITEMS, &key, body(&items))).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({"upserted": 2}))
    );
    let update = json!({"items": [{"item_id": "i1", "status": "inactive"}]});
    let reply = call(&sim, post(ITEMS, &key, body(&update))).await;
    assert_eq!(reply.body, json!({"upserted": 1}));
    assert_eq!(
        sim.items(),
        [
            json!({"item_id": "i1", "status": "inactive"}),
            json!({"item_id": "i2", "title": "Desk"})
        ],
        "an upsert replaces the whole record"
    );

    let users =
        json!({"users": [{"user_id": "u1", "plan": "free"}, {"user_id": "u1", "plan": "pro"}]});
    let reply = call(&sim, post(USERS, &key, body(&users))).await;
    assert_eq!(reply.body, json!({"upserted": 2}));
    assert_eq!(sim.users(), [json!({"user_id": "u1", "plan": "pro"})]);

    let stats = sim.stats();
    assert_eq!((stats.items, stats.inactive_items, stats.users), (2, 1, 1));
}

#[tokio::test]
async fn missing_unknown_bearer_and_revoked_keys_get_401() {
    let sim = Simulator::builder()
        .org("acme")
        .key("acme", "lehnz_sk_old", KeyKind::Secret)
        .revoked_key("lehnz_sk_old")
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let batch = body(&json!([event("u", "i", "e")]));
    let bearer = format!("Bearer {sk}");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "missing_api_key"),
        (&[("x-api-key", "lehnz_sk_nobody")], "invalid_api_key"),
        (&[("x-api-key", &bearer)], "invalid_api_key"),
        (&[("x-api-key", "lehnz_sk_old")], "revoked_api_key"),
    ];
    for (headers, code) in cases {
        let reply = call(&sim, post(EVENTS, headers, batch.clone())).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(reply.error(), code);
        assert!(reply.body["message"].is_string());
        assert_eq!(reply.quota(), None, "no quota before authentication");
    }

    // Revoking a working key takes effect on the next request.
    let ok = call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch.clone())).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED);
    assert!(sim.revoke(&sk));
    assert!(!sim.revoke("lehnz_sk_nobody"));
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch)).await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::UNAUTHORIZED, "revoked_api_key")
    );
    assert_eq!(sim.stats().events, 1);
    assert_eq!(sim.stats().responses(401), 5);
}

#[tokio::test]
async fn secret_key_from_a_browser_and_publishable_upserts_get_403() {
    let (sim, sk, pk) = acme().await;
    let origin = ("origin", "https://shop.example");
    let events = body(&json!([event("u", "i", "e")]));
    let reply = call(
        &sim,
        post(EVENTS, &[("x-api-key", &sk), origin], events.clone()),
    )
    .await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::FORBIDDEN, "forbidden")
    );

    let reply = call(&sim, post(EVENTS, &[("x-api-key", &pk), origin], events)).await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "a publishable key may ingest from a browser"
    );

    for path in [ITEMS, USERS] {
        let records = body(&json!([{"item_id": "i", "user_id": "u"}]));
        let reply = call(&sim, post(path, &[("x-api-key", &pk)], records)).await;
        assert_eq!(
            (reply.status, reply.error()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path}"
        );
    }
    let stats = sim.stats();
    assert_eq!((stats.events, stats.items, stats.users), (1, 0, 0));
}

#[tokio::test]
async fn the_window_is_shared_by_an_orgs_keys_and_not_by_other_orgs() {
    let sim = Simulator::builder()
        .org("acme")
        .org("globex")
        .window(3, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let acme = sim.keys("acme").unwrap();
    let globex = sim.keys("globex").unwrap();
    let batch = body(&json!([event("u", "i", "e")]));
    let mut remaining = Vec::new();
    for key in [&acme.secret, &acme.publishable, &acme.secret] {
        let reply = call(&sim, post(EVENTS, &[("x-api-key", key)], batch.clone())).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        remaining.push(reply.quota().unwrap().1);
    }
    assert_eq!(remaining, [2, 1, 0]);

    let reply = call(
        &sim,
        post(EVENTS, &[("x-api-key", &acme.publishable)], batch.clone()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.error(), "rate_limited");
    let (limit, remaining, reset) = reply.quota().unwrap();
    assert_eq!((limit, remaining), (3, 0));
    assert!((1..=60).contains(&reset));

    let reply = call(&sim, post(EVENTS, &[("x-api-key", &globex.secret)], batch)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.quota().unwrap().1, 2, "globex has its own window");

    let stats = sim.stats();
    assert_eq!((stats.events, stats.rate_limited), (4, 1));
}

#[tokio::test(start_paused = true)]
async fn every_authenticated_response_carries_exact_rate_limit_headers() {
    let sim = Simulator::builder()
        .org("acme")
        .window(10, Duration::from_secs(60))
        .max_body(200)
        .start()
        .await
        .unwrap();
    let keys = sim.keys("acme").unwrap();
    let (sk, pk) = (keys.secret, keys.publishable);
    let good = body(&json!([event("u", "i", "e")]));
    let requests = [
        (post(EVENTS, &[("x-api-key", &sk)], good.clone()), 202),
        (
            post(ITEMS, &[("x-api-key", &sk)], r#"[{"item_id":"a"}]"#),
            200,
        ),
        (
            post(ITEMS, &[("x-api-key", &pk)], r#"[{"item_id":"a"}]"#),
            403,
        ),
        (post(EVENTS, &[("x-api-key", &sk)], "{not json"), 400),
        (post(EVENTS, &[("x-api-key", &sk)], "[{}]"), 422),
        (post(EVENTS, &[("x-api-key", &sk)], vec![b' '; 201]), 413),
    ];
    let start = Instant::now();
    for (i, (request, status)) in requests.into_iter().enumerate() {
        let reply = call(&sim, request).await;
        assert_eq!(reply.status.as_u16(), status);
        // 5.5 s later every time: the reset counts down, rounded up.
        let elapsed = Instant::now() - start;
        let expected_reset = (60.0 - elapsed.as_secs_f64()).ceil() as u64;
        assert_eq!(
            reply.quota(),
            Some((10, 9 - i as u32, expected_reset)),
            "response {i} ({status})"
        );
        tokio::time::advance(Duration::from_millis(5_500)).await;
    }
    // 33 s into the window: four more use it up, and the 429 reports nothing left.
    for left in [3, 2, 1, 0] {
        let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], good.clone())).await;
        assert_eq!(reply.quota(), Some((10, left, 27)));
    }
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], good)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.quota(), Some((10, 0, 27)));
}

#[tokio::test(start_paused = true)]
async fn the_window_resets_after_its_period() {
    let sim = Simulator::builder()
        .org("acme")
        .window(2, Duration::from_secs(900))
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let batch = body(&json!([event("u", "i", "e")]));
    let send_one = || call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch.clone()));
    assert_eq!(send_one().await.status, StatusCode::ACCEPTED);
    assert_eq!(send_one().await.status, StatusCode::ACCEPTED);

    tokio::time::advance(Duration::from_secs(899)).await;
    let refused = send_one().await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.quota(), Some((2, 0, 1)));

    tokio::time::advance(Duration::from_secs(1)).await;
    let fresh = send_one().await;
    assert_eq!(fresh.status, StatusCode::ACCEPTED);
    assert_eq!(fresh.quota(), Some((2, 1, 900)), "a new window opened");
    assert_eq!(sim.stats().events, 3);
}

/// Writes raw bytes on a new connection and reads until the server closes it.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server closes the connection after a 413")
}

#[tokio::test]
async fn an_oversized_content_length_gets_413_before_the_body_is_sent() {
    let sim = Simulator::builder().org("acme").start().await.unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    // Only the head: the server must answer without waiting for the 1,000,001 bytes.
    let head = format!(
        "POST {EVENTS} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {sk}\r\n\
         content-type: application/json\r\ncontent-length: 1000001\r\n\r\n"
    );
    let answer = raw_exchange(sim.addr(), head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("ratelimit-remaining: 999"), "{answer}");
    assert!(
        answer.contains(r#""error":"payload_too_large""#),
        "{answer}"
    );

    // Exactly at the cap is fine.
    let mut exact = json!([event("u", "i", "e")]).to_string().into_bytes();
    exact.resize(1_000_000, b' ');
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], exact)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(sim.stats().events, 1);
    assert_eq!(sim.stats().responses(413), 1);
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_413_while_reading() {
    let sim = Simulator::builder()
        .org("acme")
        .max_body(200)
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let head = format!(
        "POST {EVENTS} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {sk}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    // No length announced; two chunks of 150 bytes and no end: the second crosses the cap.
    let chunk = format!("96\r\n{}\r\n", " ".repeat(150));
    let answer = raw_exchange(sim.addr(), format!("{head}{chunk}{chunk}").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        answer.contains(r#""error":"payload_too_large""#),
        "{answer}"
    );

    // A chunked body under the cap is accepted.
    let small = json!([event("u", "i", "e")]).to_string();
    let request = format!("{head}{:x}\r\n{small}\r\n0\r\n\r\n", small.len())
        .replace("host: 127.0.0.1", "host: 127.0.0.1\r\nconnection: close");
    let answer = raw_exchange(sim.addr(), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 202 "), "{answer}");
    assert_eq!(sim.stats().events, 1);
    assert_eq!(sim.stats().responses(413), 1);
}

#[tokio::test]
async fn malformed_json_and_a_body_that_is_no_batch_get_400() {
    let (sim, sk, _) = acme().await;
    let key = [("x-api-key", sk.as_str())];
    let reply = call(&sim, post(EVENTS, &key, r#"[{"user_id": "u""#)).await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    assert!(reply.body["message"].as_str().unwrap().contains("line 1"));

    for shape in [r#"{"user_id": "u"}"#, r#"{"items": []}"#, "42"] {
        let reply = call(&sim, post(EVENTS, &key, shape)).await;
        assert_eq!(
            (reply.status, reply.error()),
            (StatusCode::BAD_REQUEST, "invalid_body"),
            "{shape}"
        );
    }
    assert_eq!(sim.stats().events, 0);
}

#[tokio::test]
async fn invalid_records_get_422_with_details_and_nothing_is_stored() {
    let (sim, sk, _) = acme().await;
    let batch = json!([
        event("u1", "i1", "e-1"),
        {"user_id": "u2", "event_type": "click", "context": {"client_event_id": "e-2"}},
        {"user_id": "", "item_id": "i3", "event_type": "view", "timestamp": 17},
    ]);
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], body(&batch))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error(), "validation_failed");
    assert!(reply.body["message"].is_string());
    assert_eq!(
        reply.body["details"],
        json!([
            {"index": 1, "field": "item_id", "message": "is required"},
            {"index": 2, "field": "user_id", "message": "must not be empty"},
            {"index": 2, "field": "timestamp", "message": "must be a string"},
        ])
    );
    let items = json!({"items": [{"item_id": "ok"}, {"title": "no id"}]});
    let reply = call(&sim, post(ITEMS, &[("x-api-key", &sk)], body(&items))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.body["details"],
        json!([{"index": 1, "field": "item_id", "message": "is required"}])
    );

    let stats = sim.stats();
    assert_eq!(
        (stats.events, stats.distinct_event_ids, stats.items),
        (0, 0, 0)
    );
    assert!(sim.events().is_empty() && sim.items().is_empty());
}

#[tokio::test]
async fn unknown_paths_get_404_and_other_methods_405() {
    let (sim, sk, _) = acme().await;
    let reply = call(&sim, post("/api/v2/events", &[("x-api-key", &sk)], "[]")).await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let get = Request::get(EVENTS)
        .header("host", "127.0.0.1")
        .header("x-api-key", &sk)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = call(&sim, get).await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert_eq!(reply.header("allow"), Some("POST"));
    let stats = sim.stats();
    assert_eq!((stats.responses(404), stats.responses(405)), (1, 1));
}

#[tokio::test]
async fn by_default_only_ids_and_counts_are_kept() {
    let sim = Simulator::builder().org("acme").start().await.unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let key = [("x-api-key", sk.as_str())];
    let uuid = "6f1c2b9e-4d3a-4c55-9a10-2b7e8d9f0a11";
    let no_id = json!({"user_id": "u", "item_id": "i", "event_type": "view"});
    let first = json!([event("u", "i", "e-1"), event("u", "i", uuid), no_id]);
    assert_eq!(
        call(&sim, post(EVENTS, &key, body(&first))).await.status,
        202
    );
    // e-1 twice more, the UUID once more; the same UUID in capitals is another id.
    let again = json!([
        event("u", "i", "e-1"),
        event("u", "i", "e-1"),
        event("u", "i", uuid),
        event("u", "i", &uuid.to_uppercase()),
    ]);
    assert_eq!(
        call(&sim, post(EVENTS, &key, body(&again))).await.status,
        202
    );
    let items = json!([{"item_id": "a", "status": "inactive"}, {"item_id": "b"}]);
    assert_eq!(
        call(&sim, post(ITEMS, &key, body(&items))).await.status,
        200
    );

    let stats = sim.stats();
    assert_eq!(stats.events, 7);
    assert_eq!(stats.distinct_event_ids, 3);
    assert_eq!(stats.duplicate_event_ids, 2, "e-1 and the UUID");
    assert_eq!(stats.duplicate_events, 3, "every extra copy");
    assert_eq!(stats.events_without_id, 1);
    assert_eq!((stats.items, stats.inactive_items), (2, 1));
    assert!(sim.has_event_id("e-1") && sim.has_event_id(uuid));
    assert!(sim.has_event_id(&uuid.to_uppercase()));
    assert!(!sim.has_event_id("e-2"));
    assert!(sim.events().is_empty() && sim.items().is_empty() && sim.users().is_empty());
}

#[tokio::test]
async fn stats_are_served_as_json_for_a_client_in_another_process() {
    let (sim, sk, _) = acme().await;
    let batch = json!([event("u", "i", "e-1"), event("u", "i", "e-1")]);
    call(&sim, post(EVENTS, &[("x-api-key", &sk)], body(&batch))).await;
    let get = Request::get("/_sim/stats")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = call(&sim, get).await;
    assert_eq!(reply.status, StatusCode::OK);
    let served: SimStats = serde_json::from_value(reply.body).unwrap();
    assert_eq!(served.events, 2);
    assert_eq!(served.duplicate_events, 1);
    assert_eq!(served.responses(202), 1);

    let post_stats = call(&sim, post("/_sim/stats", &[], "")).await;
    assert_eq!(post_stats.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post_stats.header("allow"), Some("GET"));
}

#[tokio::test]
async fn odd_api_key_bytes_get_401_not_a_panic() {
    let (sim, _, _) = acme().await;
    let odd: [&[u8]; 5] = [
        b"B",
        b"bearer",
        b"Bearer\xff",
        b"\xe2\x82\xac\xe2\x82\xacab",
        b"\xff\xfe",
    ];
    for key in odd {
        let request = Request::post(EVENTS)
            .header("host", "127.0.0.1")
            .header("x-api-key", http::HeaderValue::from_bytes(key).unwrap())
            .body(Full::new(Bytes::from_static(b"[]")))
            .unwrap();
        let reply = call(&sim, request).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "key {key:?}");
    }
}

#[tokio::test]
async fn a_non_loopback_address_is_refused() {
    let err = Simulator::builder()
        .addr(SocketAddr::from(([0, 0, 0, 0], 0)))
        .start()
        .await
        .expect_err("not loopback");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let sim = Simulator::builder()
        .addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        .start()
        .await
        .unwrap();
    assert!(sim.addr().ip().is_loopback());
}

#[tokio::test(start_paused = true)]
async fn auth_endpoints_limit_each_client_address() {
    let sim = Simulator::builder().start().await.unwrap();
    let credentials = r#"{"email": "a@example.com", "password": "hunter2"}"#;
    for i in 0..10 {
        let path = if i % 2 == 0 {
            "/auth/register"
        } else {
            "/auth/login"
        };
        let reply = call(&sim, post(path, &[], credentials)).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.body, json!({"ok": true}));
        assert_eq!(reply.quota(), Some((10, 9 - i, 900)));
    }
    tokio::time::advance(Duration::from_secs(600)).await;
    let reply = call(&sim, post("/auth/login", &[], credentials)).await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(reply.quota(), Some((10, 0, 300)));

    tokio::time::advance(Duration::from_secs(300)).await;
    let reply = call(&sim, post("/auth/register", &[], credentials)).await;
    assert_eq!(reply.status, StatusCode::OK, "a new window for the address");
    assert_eq!(sim.stats().rate_limited, 1);
}

/// What one request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Dropped,
}

async fn outcomes(seed: u64, n: usize) -> (Vec<Outcome>, usize) {
    let chaos = Chaos::none()
        .drop_before_processing(0.15)
        .rate_limited(0.15)
        .server_errors(0.15)
        .drop_after_processing(0.15);
    let sim = Simulator::builder()
        .org("acme")
        .chaos(chaos)
        .seed(seed)
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let mut seen = Vec::new();
    for i in 0..n {
        let batch = body(&json!([event("u", "i", &format!("e-{i}"))]));
        let outcome = match send(sim.addr(), post(EVENTS, &[("x-api-key", &sk)], batch)).await {
            Ok(reply) => Outcome::Status(reply.status.as_u16()),
            Err(_) => Outcome::Dropped,
        };
        seen.push(outcome);
    }
    let stats = sim.stats();
    let dropped = seen.iter().filter(|o| **o == Outcome::Dropped).count();
    assert_eq!(stats.connections_dropped as usize, dropped);
    (seen, stats.events)
}

#[tokio::test]
async fn chaos_is_the_same_for_the_same_seed() {
    let (first, stored_first) = outcomes(42, 60).await;
    let (second, stored_second) = outcomes(42, 60).await;
    assert_eq!(first, second);
    assert_eq!(stored_first, stored_second);
    let (other, _) = outcomes(43, 60).await;
    assert_ne!(first, other, "another seed, another sequence");

    // Every kind of outcome occurred, and drops after processing stored their event.
    for kind in [202, 429] {
        assert!(first.contains(&Outcome::Status(kind)), "{first:?}");
    }
    assert!(first.contains(&Outcome::Dropped));
    assert!(first
        .iter()
        .any(|o| matches!(o, Outcome::Status(500..=504))));
    let accepted = first.iter().filter(|o| **o == Outcome::Status(202)).count();
    assert!(
        stored_first > accepted,
        "some dropped requests were processed"
    );
}

#[tokio::test]
async fn processed_then_dropped_stores_the_event_but_the_client_sees_an_error() {
    let sim = Simulator::builder()
        .org("acme")
        .chaos(Chaos::none().drop_after_processing(1.0))
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let batch = body(&json!([event("u", "i", "e-1")]));
    for attempt in 1..=2 {
        let err = send(
            sim.addr(),
            post(EVENTS, &[("x-api-key", &sk)], batch.clone()),
        )
        .await
        .expect_err("no answer");
        assert!(
            err.is_incomplete_message() || err.is_closed(),
            "attempt {attempt}: {err}"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.events, 2, "both attempts were stored");
    assert_eq!(stats.duplicate_event_ids, 1, "the retry made a duplicate");
    assert_eq!(stats.connections_dropped, 2);
    assert!(stats.responses_by_status.is_empty(), "no response was sent");
}

#[tokio::test]
async fn dropped_before_processing_stores_nothing() {
    let sim = Simulator::builder()
        .org("acme")
        .chaos(Chaos::none().drop_before_processing(1.0))
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let batch = body(&json!([event("u", "i", "e-1")]));
    let result = send(sim.addr(), post(EVENTS, &[("x-api-key", &sk)], batch)).await;
    assert!(result.is_err(), "{result:?}");
    let stats = sim.stats();
    assert_eq!((stats.events, stats.connections_dropped), (0, 1));
}

#[tokio::test]
async fn injected_429s_and_5xx_carry_their_headers() {
    let sim = Simulator::builder()
        .org("acme")
        .chaos(
            Chaos::none()
                .rate_limited(1.0)
                .rate_limit_reset(Duration::from_millis(1500)),
        )
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let batch = body(&json!([event("u", "i", "e-1")]));
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch.clone())).await;
    assert_eq!(
        (reply.status, reply.error()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(reply.quota(), Some((1000, 0, 2)));
    assert_eq!(sim.stats().events, 0);

    let sim = Simulator::builder()
        .org("acme")
        .chaos(Chaos::none().server_errors(1.0))
        .seed(7)
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch.clone())).await;
        let code = reply.status.as_u16();
        seen.insert(code);
        assert!(reply.body["error"].is_string() && reply.body["message"].is_string());
        let retry_after = reply.header("retry-after");
        assert_eq!(retry_after, (code == 503).then_some("1"), "{code}");
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [500, 502, 503, 504]);
    assert_eq!(sim.stats().events, 0);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_every_answer() {
    let sim = Simulator::builder()
        .org("acme")
        .chaos(Chaos::none().latency_range(Duration::from_secs(2), Duration::from_secs(3)))
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    for _ in 0..3 {
        let start = Instant::now();
        let batch = body(&json!([event("u", "i", "e")]));
        let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        let took = start.elapsed();
        assert!(
            (Duration::from_secs(2)..=Duration::from_secs(3)).contains(&took),
            "{took:?}"
        );
    }
}

#[tokio::test]
async fn the_server_stops_when_dropped() {
    let (sim, _, _) = acme().await;
    let addr = sim.addr();
    // A kept-alive connection, idle when the simulator goes.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let reply = sender
        .send_request(post("/nowhere", &[], ""))
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    drop(reply);

    drop(sim);
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener closed");
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle connection was closed by the server")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_returns_once_the_server_is_gone() {
    let (sim, _, _) = acme().await;
    let addr = sim.addr();
    assert_eq!(sim.base_url(), format!("http://{addr}"));
    sim.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_outage_switch_takes_the_server_down_for_its_length_and_keeps_its_counts() {
    let (sim, sk, _) = acme().await;
    let batch = || body(&json!([event("u", "i", "e")]));
    assert_eq!(
        call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch()))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // A keep-alive connection opened before the outage.
    let stream = TcpStream::connect(sim.addr()).await.unwrap();
    let (mut open, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let reply = open
        .send_request(post(EVENTS, &[("x-api-key", &sk)], batch()))
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::ACCEPTED);
    drop(reply);

    let switched = call(&sim, post("/_sim/outage?secs=6", &[], Bytes::new())).await;
    assert_eq!(switched.status, StatusCode::OK);
    assert_eq!(switched.body["outage_secs"], 6.0);
    let start = Instant::now();

    // Down: a new connection is closed without an answer, a request on an open one too.
    assert!(
        send(sim.addr(), post(EVENTS, &[("x-api-key", &sk)], batch()))
            .await
            .is_err()
    );
    assert!(open
        .send_request(post(EVENTS, &[("x-api-key", &sk)], batch()))
        .await
        .is_err());
    assert!(send(
        sim.addr(),
        Request::get("/_sim/stats").body(Full::default()).unwrap()
    )
    .await
    .is_err());
    tokio::time::sleep(Duration::from_millis(5_999)).await;
    assert!(
        send(sim.addr(), post(EVENTS, &[("x-api-key", &sk)], batch()))
            .await
            .is_err()
    );

    // Up again after six seconds, with what it stored before.
    tokio::time::sleep_until(start + Duration::from_secs(6)).await;
    let reply = call(&sim, post(EVENTS, &[("x-api-key", &sk)], batch())).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let stats = sim.stats();
    assert_eq!(stats.events, 3);
    assert_eq!(stats.outages, 1);
    assert_eq!(stats.refused_in_outage, 4);
}

#[tokio::test]
async fn an_outage_switch_without_a_length_is_refused() {
    let (sim, _, _) = acme().await;
    for query in [
        "",
        "?secs=",
        "?secs=abc",
        "?secs=-1",
        "?secs=NaN",
        "?mins=5",
    ] {
        let reply = call(
            &sim,
            post(&format!("/_sim/outage{query}"), &[], Bytes::new()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.error(), "invalid_query");
    }
    // A huge one is cut to an hour.
    let reply = call(&sim, post("/_sim/outage?secs=1e300", &[], Bytes::new())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["outage_secs"], 3600.0);
    assert_eq!(sim.stats().outages, 1);
}

#[tokio::test(start_paused = true)]
async fn periodic_outages_come_back_every_period() {
    let sim = Simulator::builder()
        .org("acme")
        .chaos(Chaos::none().outages(Duration::from_secs(10), Duration::from_secs(3)))
        .start()
        .await
        .unwrap();
    let sk = sim.keys("acme").unwrap().secret;
    let start = Instant::now();
    let mut up = Vec::new();
    for at in [0, 9_900, 10_100, 12_900, 13_100, 20_500, 23_500] {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let batch = body(&json!([event("u", "i", &format!("e-{at}"))]));
        up.push(
            send(sim.addr(), post(EVENTS, &[("x-api-key", &sk)], batch))
                .await
                .is_ok(),
        );
    }
    assert_eq!(up, [true, true, false, false, true, false, true]);
    let stats = sim.stats();
    assert_eq!(
        (stats.events, stats.outages, stats.refused_in_outage),
        (4, 2, 3)
    );
}
