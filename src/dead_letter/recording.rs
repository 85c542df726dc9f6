//! Recording a failed call: whether it gets a letter, the letter itself, its write by a task
//! of its own, and the receipt on the call's result. One implementation, driven by the
//! dead-letter layer's future and by [`Outbound`](crate::Outbound)'s call alike.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::Response;

use super::record::{
    millis, new_id, outcome_of, store_headers, unix_ms, DeadLetter, MissingBody, StoredBody,
};
use super::sink::BoxFuture;
use super::{Config, Recorded};
use crate::body::Buffered;
use crate::classify::Outcome;
use crate::error::Error;

/// Whether a call that ended with `result`, its last attempt classified as `outcome`, finally
/// failed: any error, and a response that is rate limited, transient or a server error.
pub(crate) fn failed<R>(result: &Result<Response<R>, Error>, outcome: Outcome) -> bool {
    result.is_err()
        || matches!(
            outcome,
            Outcome::RateLimited | Outcome::Transient | Outcome::ServerError
        )
}

/// Whether a failed call gets a letter: not a replay (its letter is still in the sink), and
/// not a refusal when refusals are not recorded.
pub(crate) fn wanted<R>(
    config: &Config,
    replaying: bool,
    result: &Result<Response<R>, Error>,
) -> bool {
    let refused = matches!(result, Err(e) if e.is_refusal());
    !replaying && (config.record_refusals || !refused)
}

/// A dead letter on its way to the sink.
///
/// On a tokio runtime the write runs in a task of its own, so it finishes even when the caller
/// drops the call's future (a `select!`, a timeout, a client that went away); the future only
/// waits for the receipt. Without a runtime the write runs inside the caller's future.
pub(crate) struct Write {
    id: String,
    how: How,
}

enum How {
    Task(tokio::task::JoinHandle<bool>),
    Inline(BoxFuture<'static, bool>),
}

impl Write {
    pub(crate) fn start(config: &Config, letter: DeadLetter) -> Self {
        let id = letter.id.clone();
        let guard = config.writer.start();
        let sink = config.sink.clone();
        let stats = config.stats.clone();
        let write = async move {
            let stored = match sink.write(letter).await {
                Ok(()) => {
                    stats.count(0);
                    true
                }
                Err(err) => {
                    stats.count(1);
                    tracing::error!(error = %err, "could not write a dead letter; the failed call is returned to the caller");
                    false
                }
            };
            drop(guard);
            stored
        };
        let how = match tokio::runtime::Handle::try_current() {
            Ok(handle) => How::Task(handle.spawn(write)),
            Err(_) => How::Inline(Box::pin(write)),
        };
        Write { id, how }
    }

    /// The receipt, once the sink answered.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Recorded> {
        let stored = match &mut self.how {
            // A task that panicked or was cancelled (runtime shutdown) did not store the letter.
            How::Task(handle) => ready!(Pin::new(handle).poll(cx)).unwrap_or(false),
            How::Inline(write) => ready!(write.as_mut().poll(cx)),
        };
        Poll::Ready(Recorded {
            id: self.id.clone(),
            stored,
        })
    }
}

/// Puts the receipt on the call's result: a response extension, or on the error.
pub(crate) fn attach<R>(recorded: Recorded, result: &mut Result<Response<R>, Error>) {
    match result {
        Ok(response) => {
            response.extensions_mut().insert(recorded);
        }
        Err(error) => error.set_dead_letter(recorded),
    }
}

/// What a letter can keep of a call's body.
#[derive(Debug)]
pub(crate) enum Kept {
    /// The body, read whole.
    Bytes(Bytes),
    /// Why there is none.
    Missing(MissingBody),
}

impl Kept {
    /// What a letter can keep of a body in this state (`None`: it was never read whole).
    pub(crate) fn of(buffered: Option<&Buffered>) -> Self {
        match buffered {
            Some(Buffered::Complete { data, .. }) => Kept::Bytes(data.clone()),
            Some(Buffered::Source(source)) => Kept::Missing(MissingBody::Source {
                description: source.description().map(str::to_owned),
                len: source.declared_length(),
            }),
            Some(Buffered::TooLarge(_) | Buffered::Sent) => Kept::Missing(MissingBody::Streamed),
            None => Kept::Missing(MissingBody::Unread),
        }
    }
}

/// The dead letter of a failed call: its head `parts`, what was kept of its `body`, when it
/// started (`None`: it ended in its first poll, so now), and how it ended.
pub(crate) fn letter<R>(
    config: &Config,
    parts: Parts,
    body: Kept,
    started: Option<SystemTime>,
    result: &Result<Response<R>, Error>,
) -> DeadLetter {
    let now = SystemTime::now();
    let (outcome, attempts, waited) = outcome_of(result);
    let (body, body_missing) = match body {
        Kept::Bytes(bytes) if bytes.len() <= config.max_body => (Some(bytes), None),
        Kept::Bytes(bytes) => (
            None,
            Some(MissingBody::TooLarge {
                len: bytes.len() as u64,
            }),
        ),
        Kept::Missing(missing) => (None, Some(missing)),
    };
    let uri_redacted = !config.keep_secret_uris && config.redactor.has_secrets(&parts.uri);
    let uri = if config.keep_secret_uris {
        parts.uri.to_string()
    } else {
        config.redactor.uri(&parts.uri)
    };
    let letter = DeadLetter {
        version: 1,
        id: new_id(),
        method: parts.method.to_string(),
        uri,
        uri_redacted,
        headers: store_headers(&parts.headers, &config.redact),
        body: body.as_ref().map(StoredBody::from_bytes),
        body_kept: body.is_some(),
        body_missing,
        idempotency_key: parts
            .headers
            .get(&config.idempotency_header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        outcome,
        attempts,
        waited_ms: millis(waited),
        first_attempt_at_ms: unix_ms(started.unwrap_or(now)),
        last_attempt_at_ms: unix_ms(now),
    };
    let logged_uri = if config.keep_secret_uris {
        config.redactor.uri(&parts.uri)
    } else {
        letter.uri.clone()
    };
    tracing::warn!(id = %letter.id, method = %letter.method, uri = %logged_uri, "recording a dead letter");
    letter
}
