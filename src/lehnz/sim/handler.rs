//! One request, from routing to the JSON answer: chaos, authentication, limits, body, storage.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderName, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, RETRY_AFTER,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::chaos::Fault;
use super::records::{records, BatchError, Collection};
use super::state::{Caller, KeyKind, Shared, Unauthenticated};
use super::window::{ceil_secs, Standing};
use crate::BoxError;

/// The response type of every simulator answer.
pub(crate) type Answer = Response<Full<Bytes>>;

/// The header that carries the API key.
pub(crate) const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// The simulator's own endpoint: its [`SimStats`](super::SimStats) as JSON.
pub(crate) const STATS_PATH: &str = "/_sim/stats";
/// The simulator's outage switch: `POST /_sim/outage?secs=N`.
pub(crate) const OUTAGE_PATH: &str = "/_sim/outage";

/// Returned instead of a response when chaos closes the connection: hyper then drops the
/// connection without writing anything.
#[derive(Debug)]
pub(crate) struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose by the simulator's chaos settings")
    }
}

impl std::error::Error for Dropped {}

/// What a path and method lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Api(Collection),
    Account,
    Stats,
    Outage,
}

/// Answers one request and counts the answer in the stats.
pub(crate) async fn handle<B>(
    shared: &Shared,
    peer: IpAddr,
    req: Request<B>,
) -> Result<Answer, Dropped>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if shared.in_outage(Instant::now()) {
        shared.record_refused();
        return Err(Dropped);
    }
    let answer = match route(req.method(), req.uri().path()) {
        Err(answer) => Ok(*answer),
        Ok(Route::Outage) => Ok(outage(shared, req.uri().query())),
        Ok(Route::Account) => Ok(account(shared, peer, req).await),
        Ok(Route::Stats) => Ok(json_answer(
            StatusCode::OK,
            &serde_json::to_value(shared.stats()).unwrap_or(Value::Null),
        )),
        Ok(Route::Api(collection)) => api(shared, collection, req).await,
    };
    match &answer {
        Ok(response) => {
            shared.record_response(response.status());
            tracing::trace!(
                status = response.status().as_u16(),
                remaining = ?response.headers().get(REMAINING),
                reset = ?response.headers().get(RESET),
                "lehnz simulator: answered"
            );
        }
        Err(Dropped) => {
            shared.record_drop();
            tracing::trace!("lehnz simulator: dropped the connection");
        }
    }
    answer
}

/// Finds the route of a request, or the 404 or 405 that answers it.
fn route(method: &Method, path: &str) -> Result<Route, Box<Answer>> {
    let route = match path {
        "/api/v1/events/ingest" => Route::Api(Collection::Events),
        "/api/v1/items/upsert" => Route::Api(Collection::Items),
        "/api/v1/users/upsert" => Route::Api(Collection::Users),
        "/auth/register" | "/auth/login" => Route::Account,
        STATS_PATH => Route::Stats,
        OUTAGE_PATH => Route::Outage,
        _ => {
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint at {path}"),
            )))
        }
    };
    let (allowed, allow) = if route == Route::Stats {
        (Method::GET, HeaderValue::from_static("GET"))
    } else {
        (Method::POST, HeaderValue::from_static("POST"))
    };
    if method != allowed {
        let mut answer = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} accepts {allowed}, not {method}"),
        );
        answer.headers_mut().insert(ALLOW, allow);
        return Err(Box::new(answer));
    }
    Ok(route)
}

/// `POST /_sim/outage?secs=N`: down for N seconds (a decimal; at most an hour) from now.
fn outage(shared: &Shared, query: Option<&str>) -> Answer {
    let secs = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("secs="))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .and_then(|v| Duration::try_from_secs_f64(v.min(Shared::MAX_OUTAGE.as_secs_f64())).ok());
    let Some(lasting) = secs else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "name the outage's length in seconds: POST /_sim/outage?secs=6",
        );
    };
    shared.outage(Instant::now(), lasting);
    tracing::info!(
        secs = lasting.as_secs_f64(),
        "lehnz simulator: outage switched on"
    );
    json_answer(
        StatusCode::OK,
        &json!({ "outage_secs": lasting.as_secs_f64() }),
    )
}

/// `/auth/register` and `/auth/login`: no key, a limit per client address.
async fn account<B>(shared: &Shared, peer: IpAddr, req: Request<B>) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let standing = shared.auth_hit(peer, Instant::now());
    let mut answer = if standing.allowed {
        match read_body(req, shared.config.max_body).await {
            Ok(_) => json_answer(StatusCode::OK, &json!({ "ok": true })),
            Err(answer) => answer,
        }
    } else {
        too_many(standing.limit, standing.reset_secs, "address")
    };
    put_standing(answer.headers_mut(), standing);
    answer
}

/// The three `/api/v1/` endpoints.
async fn api<B>(shared: &Shared, collection: Collection, req: Request<B>) -> Result<Answer, Dropped>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let plan = shared.plan();
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    match plan.fault {
        Some(Fault::DropBefore) => return Err(Dropped),
        Some(Fault::RateLimited) => {
            shared.record_injected_too_many();
            return Ok(injected_too_many(shared));
        }
        Some(Fault::ServerError(code)) => return Ok(server_error(code)),
        Some(Fault::DropAfter) | None => {}
    }
    let answer = match shared.authenticate(req.headers().get(API_KEY), Instant::now()) {
        Ok(caller) => {
            let mut answer = authenticated(shared, collection, caller, req).await;
            put_standing(answer.headers_mut(), caller.standing);
            answer
        }
        Err(why) => unauthenticated(why),
    };
    if plan.fault == Some(Fault::DropAfter) {
        return Err(Dropped);
    }
    Ok(answer)
}

async fn authenticated<B>(
    shared: &Shared,
    collection: Collection,
    caller: Caller,
    req: Request<B>,
) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !caller.standing.allowed {
        return too_many(
            caller.standing.limit,
            caller.standing.reset_secs,
            "organization",
        );
    }
    if caller.kind == KeyKind::Secret && req.headers().contains_key(ORIGIN) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "secret keys must not be used from a browser (the request has an Origin header); use a publishable key",
        );
    }
    if caller.kind == KeyKind::Publishable && collection != Collection::Events {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "publishable keys may only ingest events; upserts need a secret key",
        );
    }
    let bytes = match read_body(req, shared.config.max_body).await {
        Ok(bytes) => bytes,
        Err(answer) => return answer,
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
        }
    };
    let batch = match records(collection, body) {
        Ok(batch) => batch,
        Err(BatchError::Shape(message)) => {
            return error(StatusCode::BAD_REQUEST, "invalid_body", message)
        }
        Err(BatchError::Invalid(problems)) => {
            let details: Vec<Value> = problems.iter().map(|p| p.to_json()).collect();
            let message = format!(
                "{} problem(s) in the batch; nothing was stored",
                problems.len()
            );
            return json_answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "error": "validation_failed", "message": message, "details": details }),
            );
        }
    };
    let n = shared.store(caller.org, collection, batch);
    match collection {
        Collection::Events => json_answer(StatusCode::ACCEPTED, &json!({ "accepted": n })),
        Collection::Items | Collection::Users => {
            json_answer(StatusCode::OK, &json!({ "upserted": n }))
        }
    }
}

/// Reads the whole body, refusing it with 413 as soon as it is known to exceed `max` bytes:
/// from `Content-Length` before reading anything, or while reading a body of unknown length.
async fn read_body<B>(req: Request<B>, max: usize) -> Result<Bytes, Answer>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large(max));
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large(max)),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("reading the request body failed: {e}"),
        )),
    }
}

fn too_large(max: usize) -> Answer {
    let mut answer = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body exceeds {max} bytes; send smaller batches"),
    );
    // The rest of the body is not read, so the connection cannot carry another request.
    answer
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    answer
}

fn unauthenticated(why: Unauthenticated) -> Answer {
    let (code, message) = match why {
        Unauthenticated::Missing => (
            "missing_api_key",
            "send the API key in the X-API-KEY header",
        ),
        Unauthenticated::Bearer => (
            "invalid_api_key",
            "send the raw key in X-API-KEY, without a Bearer prefix",
        ),
        Unauthenticated::Unknown => ("invalid_api_key", "the API key is not valid"),
        Unauthenticated::Revoked => ("revoked_api_key", "the API key has been revoked"),
    };
    error(StatusCode::UNAUTHORIZED, code, message)
}

fn too_many(limit: u32, reset_secs: u64, per: &str) -> Answer {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("the {per} used its {limit} requests for this window; retry in {reset_secs}s"),
    )
}

/// A 429 injected by chaos: the window's limit, nothing remaining, chaos's short reset.
fn injected_too_many(shared: &Shared) -> Answer {
    let reset_secs = ceil_secs(shared.config.chaos.reset());
    let limit = shared.config.window.limit;
    let mut answer = too_many(limit, reset_secs, "organization");
    let standing = Standing {
        allowed: false,
        limit,
        remaining: 0,
        reset_secs,
    };
    put_standing(answer.headers_mut(), standing);
    answer
}

fn server_error(code: u16) -> Answer {
    let (status, name) = match code {
        502 => (StatusCode::BAD_GATEWAY, "bad_gateway"),
        503 => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        504 => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    };
    let mut answer = error(status, name, "the server failed; retry later");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        answer
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    answer
}

fn put_standing(headers: &mut HeaderMap, standing: Standing) {
    headers.insert(LIMIT, HeaderValue::from(standing.limit));
    headers.insert(REMAINING, HeaderValue::from(standing.remaining));
    headers.insert(RESET, HeaderValue::from(standing.reset_secs));
}

/// `{"error": code, "message": message}` with `status`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    json_answer(status, &json!({ "error": code, "message": message.into() }))
}

fn json_answer(status: StatusCode, body: &Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body.to_string())));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}
