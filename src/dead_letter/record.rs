//! The dead-letter record: everything needed to understand a failed call and send it again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use serde::{Deserialize, Serialize};

use crate::body::ReplayBody;
use crate::error::Error;
use crate::idempotency::{MakeKey, UuidV4};
use crate::retry::Attempts;

/// The value stored in place of a secret header.
pub const REDACTED: &str = "[redacted]";

/// One header as stored: the value as text when it is visible ASCII, else as base64, so
/// nothing is lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHeader {
    /// The header name, lowercase.
    pub name: String,
    /// The value, when it is text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's bytes in base64, when it is not text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl StoredHeader {
    /// Whether the value was a secret and was not kept.
    pub fn is_redacted(&self) -> bool {
        self.value.as_deref() == Some(REDACTED)
    }

    fn to_value(&self) -> Option<HeaderValue> {
        match (&self.value, &self.value_base64) {
            (Some(text), _) => HeaderValue::from_str(text).ok(),
            (None, Some(encoded)) => STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| HeaderValue::from_bytes(&bytes).ok()),
            (None, None) => None,
        }
    }
}

/// A request body as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "lowercase")]
pub enum StoredBody {
    /// UTF-8 text, as it was.
    Text(String),
    /// Any other bytes, in base64.
    Base64(String),
}

impl StoredBody {
    pub(crate) fn from_bytes(bytes: &Bytes) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => StoredBody::Text(text.to_owned()),
            Err(_) => StoredBody::Base64(STANDARD.encode(bytes)),
        }
    }

    /// The body's bytes; `None` when stored base64 does not decode.
    pub fn to_bytes(&self) -> Option<Bytes> {
        match self {
            StoredBody::Text(text) => Some(Bytes::copy_from_slice(text.as_bytes())),
            StoredBody::Base64(encoded) => STANDARD.decode(encoded).ok().map(Bytes::from),
        }
    }
}

/// Why a dead letter has no body, and how it can be had again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissingBody {
    /// The body was read whole but is longer than the layer's limit
    /// ([`max_body`](crate::DeadLetterLayer::max_body)).
    TooLarge {
        /// Its length, in bytes.
        len: u64,
    },
    /// A stream longer than the buffer limit, sent once as it came: nothing of it was kept.
    Streamed,
    /// Made by a [`BodySource`](crate::body::BodySource) for each attempt, never held in
    /// memory.
    Source {
        /// How it can be made again ([`describe`](crate::body::BodySource::describe)); absent
        /// when the source gave none, and the letter cannot have the body made again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// Its declared length, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        len: Option<u64>,
    },
    /// The body was never read whole: the call failed before it was, or reading it failed.
    Unread,
}

/// How the call ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalOutcome {
    /// The last response's status, when there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The error kind (`transport`, `timeout`, `rate_limited`, `throttled`, `circuit_open`,
    /// `body`), when the call ended in an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The error's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A call that finally failed, recorded so it can be understood and replayed.
///
/// Stored as one JSON object per record with stable field names; `version` is 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Format version of the record.
    pub version: u32,
    /// A unique id (UUID v4).
    pub id: String,
    /// The request method.
    pub method: String,
    /// The request URI, without userinfo and with secret-looking query values replaced by
    /// `[redacted]` (see [`redact`](crate::redact)) unless the layer was told to
    /// [`keep_secret_uris`](crate::DeadLetterLayer::keep_secret_uris).
    pub uri: String,
    /// Whether `uri` lost something to redaction; such a letter cannot be replayed as it is
    /// ([`to_request`](Self::to_request) is `None`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uri_redacted: bool,
    /// The request headers, secrets redacted.
    pub headers: Vec<StoredHeader>,
    /// The request body; `None` when it could not be kept (larger than the layer's limit, or
    /// unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<StoredBody>,
    /// Whether the body was kept whole (false: `body` is absent and the record cannot be
    /// replayed as it is).
    pub body_kept: bool,
    /// Why the body is absent, and whether it can be made again (for a body from a
    /// [`BodySource`](crate::body::BodySource), its description); `None` when it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_missing: Option<MissingBody>,
    /// The idempotency key the call carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// How the call ended.
    pub outcome: FinalOutcome,
    /// Attempts made.
    pub attempts: u32,
    /// Time waited between attempts, in milliseconds.
    pub waited_ms: u64,
    /// When the call started, in milliseconds since the Unix epoch.
    pub first_attempt_at_ms: u64,
    /// When the call ended, in milliseconds since the Unix epoch.
    pub last_attempt_at_ms: u64,
}

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn store_headers(headers: &HeaderMap, redact: &[HeaderName]) -> Vec<StoredHeader> {
    headers
        .iter()
        .map(|(name, value)| {
            let secret = value.is_sensitive() || redact.contains(name);
            let (value, value_base64) = if secret {
                (Some(REDACTED.to_owned()), None)
            } else {
                match value.to_str() {
                    Ok(text) => (Some(text.to_owned()), None),
                    Err(_) => (None, Some(STANDARD.encode(value.as_bytes()))),
                }
            };
            StoredHeader {
                name: name.as_str().to_owned(),
                value,
                value_base64,
            }
        })
        .collect()
}

impl DeadLetter {
    /// The request to send again: method, URI, the headers that were not redacted (the
    /// replaying service adds credentials itself), and the body. `None` when the body was not
    /// kept or the record is damaged.
    pub fn to_request(&self) -> Option<Request<ReplayBody>> {
        if !self.body_kept || self.uri_redacted {
            return None;
        }
        let body = match &self.body {
            Some(body) => body.to_bytes()?,
            None => Bytes::new(),
        };
        let mut request = Request::new(ReplayBody::from_bytes(body));
        *request.method_mut() = Method::from_bytes(self.method.as_bytes()).ok()?;
        *request.uri_mut() = self.uri.parse::<Uri>().ok()?;
        for header in self.headers.iter().filter(|h| !h.is_redacted()) {
            let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
            request.headers_mut().append(name, header.to_value()?);
        }
        Some(request)
    }
}

/// A new letter id (UUID v4).
pub(crate) fn new_id() -> String {
    UuidV4.make_key().to_str().unwrap_or_default().to_owned()
}

/// How a call ended, as a record keeps it: the outcome, the attempts and the time waited.
pub(crate) fn outcome_of<R>(
    result: &Result<http::Response<R>, Error>,
) -> (FinalOutcome, u32, Duration) {
    match result {
        Ok(response) => {
            let attempts = response.extensions().get::<Attempts>();
            (
                FinalOutcome {
                    status: Some(response.status().as_u16()),
                    error_kind: None,
                    error: None,
                },
                attempts.map_or(1, |a| a.count),
                attempts.map_or(Duration::ZERO, |a| a.waited),
            )
        }
        Err(error) => (
            FinalOutcome {
                status: None,
                error_kind: Some(error.kind().name().to_owned()),
                error: Some(error.to_string()),
            },
            error.attempts(),
            error.waited(),
        ),
    }
}

impl DeadLetter {
    /// This letter after a replay that failed again: the same request under a new id, with the
    /// replay's outcome and times. Returns the old id with it.
    pub(crate) fn replayed<R>(
        self,
        result: &Result<http::Response<R>, Error>,
        started: SystemTime,
    ) -> (String, DeadLetter) {
        let (outcome, attempts, waited) = outcome_of(result);
        let old_id = self.id.clone();
        let letter = DeadLetter {
            id: new_id(),
            outcome,
            attempts: self.attempts.saturating_add(attempts),
            waited_ms: self.waited_ms.saturating_add(millis(waited)),
            last_attempt_at_ms: unix_ms(SystemTime::now()).max(unix_ms(started)),
            ..self
        };
        (old_id, letter)
    }
}
