//! A simulator of the Lehnz API: a real HTTP/1.1 server on 127.0.0.1 that behaves as Lehnz
//! documents, and misbehaves on request.
//!
//! It lets an integration, the crate's own Lehnz client included, be tested on one machine:
//! keys, limits, validation and storage follow the documented rules, [`Chaos`] injects the
//! failures a real upstream has (spurious 429s, 5xx, latency, dropped connections), and the
//! stored records and [`SimStats`] let a test check what actually arrived, duplicates included.
//!
//! # Endpoints
//!
//! | method and path | key | success |
//! |---|---|---|
//! | `POST /api/v1/events/ingest` | secret or publishable | `202 {"accepted": n}` |
//! | `POST /api/v1/items/upsert` | secret | `200 {"upserted": n}` |
//! | `POST /api/v1/users/upsert` | secret | `200 {"upserted": n}` |
//! | `POST /auth/register`, `POST /auth/login` | none | `200 {"ok": true}` |
//! | `GET /_sim/stats` (the simulator's own, not Lehnz's) | none | `200` and [`SimStats`] as JSON |
//! | `POST /_sim/outage?secs=N` (the simulator's own) | none | `200 {"outage_secs": N}`, then down for N seconds |
//!
//! An outage ([`Simulator::outage`], `POST /_sim/outage?secs=N` with N in decimal seconds, at
//! most an hour, or periodic ones with [`Chaos::outages`]) takes the whole server down as an
//! unreachable host would be, while keeping what it stored and counted: every new connection is
//! closed at once and every request on an open connection is left without a response, the
//! simulator's own endpoints included; [`SimStats::outages`] and
//! [`SimStats::refused_in_outage`] count them. It ends by itself.
//!
//! Batch bodies are a JSON array of records, or the same array wrapped under the endpoint's
//! noun: `{"events": [...]}`, `{"items": [...]}`, `{"users": [...]}`.
//!
//! - An event is `{"user_id": str, "item_id": str, "event_type": str, "timestamp": str?,
//!   "context": object?}`; the three ids are required and non-empty. A string
//!   `context.client_event_id` identifies the event: the simulator counts ids stored more
//!   than once ([`SimStats::duplicate_event_ids`], [`SimStats::duplicate_events`]).
//! - An item needs a non-empty string `item_id`, a user a non-empty `user_id`; other fields
//!   are free and stored as sent. An upsert replaces the whole record with the same id in the
//!   same organization; `"status": "inactive"` is counted in [`SimStats::inactive_items`].
//! - A batch is all or nothing: one bad record and nothing of the request is stored.
//!
//! # Rules, in the order they are checked
//!
//! 1. Unknown path → `404`; another method than `POST` → `405` with `Allow: POST`.
//! 2. For `/api/v1/`: chaos (see [`Chaos`]), then the `X-API-KEY` header holding the raw key:
//!    missing, `Bearer …`, unknown or revoked → `401`.
//! 3. The organization's window: every authenticated request counts, whichever of the
//!    organization's keys it uses. Over the limit → `429`.
//! 4. A secret key on a request with an `Origin` header (a browser) → `403`; a publishable
//!    key on an upsert → `403`.
//! 5. A body over the size cap → `413` (from `Content-Length` before reading, or while
//!    reading a chunked body; the body is never buffered past the cap). Invalid JSON → `400`,
//!    a body that is not a batch → `400`, records that break the rules → `422`.
//!
//! Every response to an authenticated request, errors and 429 included, carries
//! `RateLimit-Limit` (the quota), `RateLimit-Remaining` (requests left in the window after
//! this one) and `RateLimit-Reset` (whole seconds until the window resets, rounded up). A
//! window opens with the first request after the previous one ended. The `/auth/` endpoints
//! have their own window per client IP address and send the same three headers.
//!
//! Every error body is JSON `{"error": code, "message": text}`:
//!
//! | status | `error` |
//! |---|---|
//! | 400 | `invalid_json`, `invalid_body` |
//! | 401 | `missing_api_key`, `invalid_api_key`, `revoked_api_key` |
//! | 403 | `forbidden` |
//! | 404, 405 | `not_found`, `method_not_allowed` |
//! | 413 | `payload_too_large` (with `Connection: close`) |
//! | 422 | `validation_failed`, plus `"details": [{"index": i, "field": name, "message": text}]` |
//! | 429 | `rate_limited` |
//! | 500, 502, 503, 504 | `internal_error`, `bad_gateway`, `service_unavailable` (with `Retry-After: 1`), `gateway_timeout` |
//!
//! # Defaults
//!
//! | setting | default |
//! |---|---|
//! | [`Builder::window`] | 1000 requests per 15 minutes per organization |
//! | [`Builder::auth_window`] | 10 requests per 15 minutes per client IP |
//! | [`Builder::max_body`] | 1,000,000 bytes |
//! | [`Builder::chaos`] | [`Chaos::none`] |
//! | [`Builder::seed`] | 0 |
//! | [`Builder::keep_bodies`] | `false`: ids and counts only |
//! | [`Builder::addr`] | `127.0.0.1:0` (loopback only) |
//!
//! # Memory
//!
//! By default the simulator keeps what [`SimStats`] reports and no more: for every stored
//! event its `client_event_id` in 16 bytes (a canonical UUID as its own 128 bits, any other id
//! as a 128-bit hash), and counts. A million stored events take about 35 MB, whatever their
//! size. [`Builder::keep_bodies`] keeps every record as sent, for tests that read them back with
//! [`Simulator::events`], [`Simulator::items`] and [`Simulator::users`].
//!
//! Windows and chaos latency run on [`tokio::time`], so tests under a paused clock
//! (`#[tokio::test(start_paused = true)]`) are deterministic. All state sits behind one
//! mutex held only for short synchronous steps; the simulator is meant for tests, not for
//! load.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_outbound::lehnz::sim::Simulator;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sim = Simulator::builder().org("acme").start().await?;
//! let keys = sim.keys("acme").expect("registered above");
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let event = r#"[{"user_id": "u1", "item_id": "i9", "event_type": "view",
//!                  "context": {"client_event_id": "e-1"}}]"#;
//! let request = http::Request::post(format!("{}/api/v1/events/ingest", sim.base_url()))
//!     .header("X-API-KEY", &keys.secret)
//!     .header("Content-Type", "application/json")
//!     .body(Full::new(Bytes::from(event)))?;
//! let response = client.request(request).await?;
//!
//! assert_eq!(response.status(), 202);
//! assert_eq!(response.headers()["ratelimit-remaining"], "999");
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(&body[..], br#"{"accepted":1}"#);
//! assert_eq!(sim.stats().events, 1);
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod builder;
mod chaos;
mod handler;
mod records;
mod server;
mod state;
mod window;

pub use builder::Builder;
pub use chaos::Chaos;
pub use server::Simulator;
pub use state::{KeyKind, OrgKeys, SimStats};
