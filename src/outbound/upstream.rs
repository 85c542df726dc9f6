//! The hosts given stacks of their own ([`Outbound::upstream`](super::Outbound::upstream)),
//! and how a record's upstream is matched against them.

use std::fmt;

use crate::partition::PartitionKey;

/// The most hosts an [`Outbound`](super::Outbound) gives stacks of their own
/// ([`Outbound::upstream`](super::Outbound::upstream)). Each is compared only when a record is
/// made for an upstream (once per upstream, never per call).
pub const MAX_UPSTREAM_STACKS: usize = 256;

/// The longest host name (as DNS allows).
const MAX_HOST_LEN: usize = 253;

/// A host, or a host and port, as an override names it: lowercase; an IPv6 literal in
/// brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Host {
    name: Box<str>,
    port: Option<u16>,
}

impl Host {
    /// `host` or `host:port` (`api.example.com`, `API.example.com:8443`, `127.0.0.1:3000`,
    /// `[::1]:8080`, `::1`), or `None` when `spec` is neither: empty, too long, a character
    /// no host has (a scheme, a path, userinfo, a space), a port that is not 1 to 65535.
    pub(crate) fn parse(spec: &str) -> Option<Host> {
        if spec.is_empty() || spec.len() > MAX_HOST_LEN + 8 {
            return None;
        }
        let (name, port) = if let Some(inside) = spec.strip_prefix('[') {
            let (v6, rest) = inside.split_once(']')?;
            let port = match rest {
                "" => None,
                _ => Some(port(rest.strip_prefix(':')?)?),
            };
            (ipv6(v6)?, port)
        } else if spec.matches(':').count() > 1 {
            // A bare IPv6 literal: no port can follow it.
            (ipv6(spec)?, None)
        } else {
            let (name, port) = match spec.split_once(':') {
                Some((name, p)) => (name, Some(port(p)?)),
                None => (spec, None),
            };
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
            if name.is_empty() || name.len() > MAX_HOST_LEN || !name.chars().all(ok) {
                return None;
            }
            (name.to_ascii_lowercase(), port)
        };
        Some(Host {
            name: name.into_boxed_str(),
            port,
        })
    }

    /// Whether a record keyed `key` (`scheme://host:port`, as
    /// [`ByUpstream`](crate::partition::ByUpstream) names upstreams: lowercase) is this
    /// host's: the same host, and the same port when this names one.
    pub(crate) fn matches(&self, key: &PartitionKey) -> bool {
        let Some((host, port)) = host_and_port(key.as_bytes()) else {
            return false;
        };
        host.eq_ignore_ascii_case(self.name.as_bytes()) && self.port.is_none_or(|p| port == Some(p))
    }

    /// Whether this names a port.
    pub(crate) fn has_port(&self) -> bool {
        self.port.is_some()
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&p| p != 0)
}

/// `[v6]`, lowercase, when `v6` is an IPv6 literal's text.
fn ipv6(v6: &str) -> Option<String> {
    let ok = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
    (!v6.is_empty() && v6.len() <= 45 && v6.chars().all(ok) && v6.contains(':'))
        .then(|| format!("[{}]", v6.to_ascii_lowercase()))
}

/// The host (an IPv6 literal with its brackets) and port of an upstream key
/// `scheme://host[:port]`.
fn host_and_port(key: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let at = key.windows(3).position(|w| w == b"://")?;
    let rest = key.get(at + 3..)?;
    let (host, port) = if rest.first() == Some(&b'[') {
        let end = rest.iter().position(|&b| b == b']')?;
        let (host, after) = rest.split_at(end + 1);
        (host, after.strip_prefix(b":"))
    } else {
        match rest.iter().rposition(|&b| b == b':') {
            Some(colon) => (&rest[..colon], rest.get(colon + 1..)),
            None => (rest, None),
        }
    };
    let port = port.and_then(|p| std::str::from_utf8(p).ok()?.parse::<u16>().ok());
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> PartitionKey {
        crate::partition::ByUpstream::of(&uri.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_host_matches_every_scheme_and_port_of_it_case_insensitively() {
        let host = Host::parse("API.Example.com").unwrap();
        assert_eq!(host.to_string(), "api.example.com");
        assert!(host.matches(&key("https://api.example.com/v1")));
        assert!(host.matches(&key("http://API.EXAMPLE.COM:8080/")));
        assert!(!host.matches(&key("https://example.com/")));
        assert!(!host.matches(&key("https://api.example.com.evil.test/")));
        assert!(!host.matches(&key("https://x.api.example.com/")));
    }

    #[test]
    fn a_host_and_port_matches_that_port_only() {
        let host = Host::parse("api.example.com:8443").unwrap();
        assert!(host.has_port());
        assert!(host.matches(&key("https://api.example.com:8443/")));
        assert!(!host.matches(&key("https://api.example.com/")));
        let https = Host::parse("api.example.com:443").unwrap();
        assert!(
            https.matches(&key("https://api.example.com/")),
            "the default port"
        );
    }

    #[test]
    fn ipv6_literals_match_with_or_without_brackets() {
        for spec in ["::1", "[::1]", "[::1]:8080"] {
            let host = Host::parse(spec).unwrap();
            assert!(host.matches(&key("http://[::1]:8080/")), "{spec}");
        }
        assert!(!Host::parse("[::1]:8080")
            .unwrap()
            .matches(&key("http://[::1]:9090/")));
        assert!(!Host::parse("::1").unwrap().matches(&key("http://[::2]/")));
    }

    #[test]
    fn the_setter_replaces_a_host_and_leaves_out_what_it_cannot_use() {
        use crate::Outbound;
        let stack = Outbound::new()
            .upstream("a.example", Outbound::new())
            .upstream("A.EXAMPLE", Outbound::user_facing())
            .upstream("https://b.example/", Outbound::new())
            .upstream("", Outbound::new());
        let stacks: Vec<_> = stack.upstream_stacks().collect();
        assert_eq!(stacks.len(), 1);
        assert_eq!(stacks[0].0, "a.example");
        assert_eq!(
            stacks[0].1.retry_layer().config().max_attempts,
            2,
            "the later one"
        );
        let mut stack = Outbound::new();
        for i in 0..MAX_UPSTREAM_STACKS + 10 {
            stack = stack.upstream(format!("h{i}.example"), Outbound::new());
        }
        assert_eq!(stack.upstream_stacks().count(), MAX_UPSTREAM_STACKS);
        // A host already there is still replaced at the bound.
        let stack = stack.upstream("h0.example", Outbound::user_facing());
        let (_, first) = stack.upstream_stacks().next().unwrap();
        assert_eq!(first.retry_layer().config().max_attempts, 2);
    }

    #[test]
    fn what_is_not_a_host_is_refused() {
        for spec in [
            "",
            "https://api.example.com",
            "api.example.com/v1",
            "user@api.example.com",
            "api example.com",
            "api.example.com:",
            "api.example.com:0",
            "api.example.com:65536",
            "api.example.com:+80",
            "[::1",
            "[::1]x",
            "[]",
            "[zz::1]",
            "é.example",
        ] {
            assert_eq!(Host::parse(spec), None, "{spec:?}");
        }
        assert_eq!(Host::parse(&"a".repeat(300)), None);
        assert!(Host::parse(&"a".repeat(253)).is_some());
    }
}
