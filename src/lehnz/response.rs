//! Reading Lehnz's replies: counts on success, typed errors otherwise.

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::error::{FieldError, LehnzError};
use crate::rate_limit::RateLimitInfo;

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Vec<DetailBody>,
}

#[derive(Deserialize)]
struct DetailBody {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct SuccessBody {
    #[serde(default)]
    accepted: Option<usize>,
    #[serde(default)]
    upserted: Option<usize>,
}

/// The start of a body that is not JSON, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "empty body".to_owned()
    } else if body.len() > 200 {
        format!("{text}…")
    } else {
        text
    }
}

/// How many of `sent` records Lehnz took, or the error its reply means.
pub(crate) fn interpret(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    sent: usize,
) -> Result<usize, LehnzError> {
    if status.is_success() {
        // The status is Lehnz's word that the batch was taken; the count is a detail.
        return Ok(match serde_json::from_slice::<SuccessBody>(body) {
            Ok(parsed) => parsed
                .accepted
                .or(parsed.upserted)
                .unwrap_or(sent)
                .min(sent),
            Err(err) => {
                tracing::warn!(status = status.as_u16(), error = %err, "Lehnz success reply had an unreadable body");
                sent
            }
        });
    }
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|p| p.message.clone().or_else(|| p.error.clone()))
        .unwrap_or_else(|| snippet(body));
    match status.as_u16() {
        401 => Err(LehnzError::Unauthorized { message }),
        403 => Err(LehnzError::Forbidden { message }),
        413 => Err(LehnzError::PayloadTooLarge { message }),
        400 | 422 => {
            let Some(parsed) = parsed else {
                return Err(LehnzError::UnexpectedResponse {
                    status,
                    problem: format!("error body is not Lehnz JSON: {}", snippet(body)),
                });
            };
            let details = parsed
                .details
                .into_iter()
                .map(|d| FieldError {
                    index: d.index,
                    field: d.field,
                    message: d.message.unwrap_or_default(),
                })
                .collect();
            Err(LehnzError::Validation {
                status,
                message,
                details,
            })
        }
        429 => Err(LehnzError::RateLimited {
            retry_after: RateLimitInfo::from_headers(headers).and_then(|i| i.wait().or(i.reset)),
            message,
        }),
        500..=599 => Err(LehnzError::Server { status, message }),
        _ => Err(LehnzError::UnexpectedResponse {
            status,
            problem: message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str) -> LehnzError {
        interpret(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            10,
        )
        .unwrap_err()
    }

    #[test]
    fn success_counts() {
        let ok = |status: u16, body: &str| {
            interpret(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                body.as_bytes(),
                10,
            )
            .unwrap()
        };
        assert_eq!(ok(202, r#"{"accepted":10}"#), 10);
        assert_eq!(ok(200, r#"{"upserted":7}"#), 7);
        assert_eq!(ok(202, r#"{"accepted":99}"#), 10, "never more than sent");
        assert_eq!(
            ok(202, "<html>ok</html>"),
            10,
            "the status is authoritative"
        );
        assert_eq!(ok(202, r#"{"accep"#), 10);
    }

    #[test]
    fn typed_errors_from_json_bodies() {
        assert!(
            matches!(err(401, r#"{"error":"unauthorized","message":"key revoked"}"#),
            LehnzError::Unauthorized { message } if message == "key revoked")
        );
        assert!(matches!(err(403, r#"{"error":"forbidden"}"#),
            LehnzError::Forbidden { message } if message == "forbidden"));
        assert!(matches!(err(413, "{}"), LehnzError::PayloadTooLarge { .. }));
        let validation = err(
            422,
            r#"{"error":"validation_failed","message":"2 invalid","details":[{"index":3,"field":"user_id","message":"required"}]}"#,
        );
        match &validation {
            LehnzError::Validation { details, .. } => {
                assert_eq!(details[0].index, Some(3));
                assert_eq!(details[0].field.as_deref(), Some("user_id"));
            }
            other => panic!("{other:?}"),
        }
        assert!(validation
            .to_string()
            .contains("record 3 field user_id: required"));
        assert!(!validation.is_transient());
    }

    #[test]
    fn malformed_replies_are_typed_never_panics() {
        let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
        assert!(
            matches!(err(502, html), LehnzError::Server { message, .. } if message.contains("502 Bad Gateway"))
        );
        assert!(matches!(
            err(400, "{\"error\":"),
            LehnzError::UnexpectedResponse { .. }
        ));
        assert!(matches!(
            err(400, ""),
            LehnzError::UnexpectedResponse { .. }
        ));
        assert!(matches!(
            err(418, "teapot"),
            LehnzError::UnexpectedResponse { .. }
        ));
        assert!(
            matches!(err(503, ""), LehnzError::Server { message, .. } if message == "empty body")
        );
        let long = "x".repeat(5000);
        assert!(err(500, &long).to_string().len() < 400);
        let binary = [0xffu8, 0xfe, 0x00, 0x80];
        let e = interpret(StatusCode::BAD_GATEWAY, &HeaderMap::new(), &binary, 1).unwrap_err();
        assert!(e.is_transient());
    }
}
