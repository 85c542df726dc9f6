//! API keys, checked before any call.

use std::fmt;

use http::HeaderValue;

/// What kind of key it is, from its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A secret key, for servers: every endpoint.
    Secret,
    /// A publishable key (`lehnz_pk_…`), for browsers: event ingestion only.
    Publishable,
}

/// Why a key was refused before any call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty (or only white space).
    Empty,
    /// The key starts with `Bearer `: Lehnz takes the raw key in `X-API-KEY`.
    BearerPrefix,
    /// The key has white space or control characters inside it: probably two values pasted
    /// together, or a line break in the middle.
    InnerWhitespace,
    /// The key has characters that cannot go in an HTTP header.
    NotVisibleAscii,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Empty => "the Lehnz API key is empty; set it to the key shown in the Lehnz dashboard",
            KeyError::BearerPrefix => {
                "the Lehnz API key starts with \"Bearer \"; Lehnz takes the raw key in X-API-KEY, remove the prefix"
            }
            KeyError::InnerWhitespace => {
                "the Lehnz API key has white space inside it; check that exactly one key was pasted"
            }
            KeyError::NotVisibleAscii => {
                "the Lehnz API key has characters that are not visible ASCII; copy it again from the dashboard"
            }
        })
    }
}

impl std::error::Error for KeyError {}

/// A checked API key, ready to send in `X-API-KEY`. Its `Debug` output hides the secret.
#[derive(Clone)]
pub struct ApiKey {
    value: HeaderValue,
    kind: KeyKind,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("kind", &self.kind)
            .field("value", &"[redacted]")
            .finish()
    }
}

impl ApiKey {
    /// Checks a key. White space around it (keys pasted from a password manager often end in a
    /// newline) is trimmed; anything else wrong is an error that says what.
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        let key = raw.trim();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        // Bytes, not a `str` slice: a multi-byte character in the first seven bytes must not
        // split a char boundary.
        if key
            .as_bytes()
            .get(..7)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"bearer "))
        {
            return Err(KeyError::BearerPrefix);
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KeyError::InnerWhitespace);
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::NotVisibleAscii);
        }
        let mut value = HeaderValue::from_str(key).map_err(|_| KeyError::NotVisibleAscii)?;
        value.set_sensitive(true);
        let kind = if key.starts_with("lehnz_pk_") {
            KeyKind::Publishable
        } else {
            KeyKind::Secret
        };
        Ok(ApiKey { value, kind })
    }

    /// The kind of key.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The header value (marked sensitive, so logging layers hide it).
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let key = ApiKey::parse("  lehnz_sk_abc123\r\n").unwrap();
        assert_eq!(key.header_value(), "lehnz_sk_abc123");
        assert_eq!(key.kind(), KeyKind::Secret);
        assert!(key.header_value().is_sensitive());
    }

    #[test]
    fn publishable_keys_are_recognised() {
        assert_eq!(
            ApiKey::parse("lehnz_pk_xyz").unwrap().kind(),
            KeyKind::Publishable
        );
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert_eq!(ApiKey::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(ApiKey::parse(" \n\t").unwrap_err(), KeyError::Empty);
        assert_eq!(
            ApiKey::parse("Bearer lehnz_sk_abc").unwrap_err(),
            KeyError::BearerPrefix
        );
        assert_eq!(
            ApiKey::parse("bearer lehnz_sk_abc").unwrap_err(),
            KeyError::BearerPrefix
        );
        assert_eq!(
            ApiKey::parse("lehnz_sk_abc lehnz_sk_def").unwrap_err(),
            KeyError::InnerWhitespace
        );
        assert_eq!(
            ApiKey::parse("lehnz_sk_abc\ndef").unwrap_err(),
            KeyError::InnerWhitespace
        );
        assert_eq!(
            ApiKey::parse("lehnz_sk_äbc").unwrap_err(),
            KeyError::NotVisibleAscii
        );
        assert!(ApiKey::parse("Bearer x")
            .unwrap_err()
            .to_string()
            .contains("remove the prefix"));
    }

    #[test]
    fn multibyte_key_prefix_does_not_panic() {
        // Each of these has a multi-byte character across byte 7.
        for raw in [
            "béarer x",
            "lehnz_ä_key",
            "ééééééé",
            "bearer\u{e9}x",
            "日本語のキー",
        ] {
            let expected = if raw.contains(' ') {
                KeyError::InnerWhitespace
            } else {
                KeyError::NotVisibleAscii
            };
            assert_eq!(ApiKey::parse(raw).unwrap_err(), expected, "{raw:?}");
        }
        assert_eq!(
            ApiKey::parse("BEARER lehnz_sk_x").unwrap_err(),
            KeyError::BearerPrefix
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = ApiKey::parse("lehnz_sk_topsecret").unwrap();
        assert!(!format!("{key:?}").contains("topsecret"));
    }
}
