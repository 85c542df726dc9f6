//! The simulator's configuration and its start.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::net::TcpListener;

use super::chaos::{invalid, Chaos};
use super::server::Simulator;
use super::state::{Config, KeyKind, OrgKeys, Shared, State};
use super::window::Quota;

const FIFTEEN_MINUTES: Duration = Duration::from_secs(15 * 60);

/// Configures and starts a [`Simulator`]; made by [`Simulator::builder`].
///
/// Every setter states its default. Nothing is checked until [`start`](Self::start), which
/// refuses a bad configuration with an [`io::ErrorKind::InvalidInput`] error that says what is
/// wrong.
#[derive(Clone, Debug)]
pub struct Builder {
    orgs: Vec<String>,
    keys: Vec<(String, String, KeyKind)>,
    revoked: Vec<String>,
    window: Quota,
    auth_window: Quota,
    max_body: usize,
    chaos: Chaos,
    seed: u64,
    keep_bodies: bool,
    addr: SocketAddr,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            orgs: Vec::new(),
            keys: Vec::new(),
            revoked: Vec::new(),
            window: Quota {
                limit: 1000,
                period: FIFTEEN_MINUTES,
            },
            auth_window: Quota {
                limit: 10,
                period: FIFTEEN_MINUTES,
            },
            max_body: 1_000_000,
            chaos: Chaos::none(),
            seed: 0,
            keep_bodies: false,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }
}

impl Builder {
    /// Registers the organization `name` with two keys, `lehnz_sk_test_<name>` (secret) and
    /// `lehnz_pk_test_<name>` (publishable); [`Simulator::keys`] returns them. Names are ASCII
    /// letters, digits, `_` and `-`. Default: no organizations.
    pub fn org(mut self, name: impl Into<String>) -> Self {
        self.orgs.push(name.into());
        self
    }

    /// Registers `key` as a key of `kind` for the organization `org` (registering the
    /// organization too, without the keys [`org`](Self::org) makes). The key must start with
    /// its kind's [prefix](KeyKind::prefix) and be visible ASCII. Default: no keys.
    pub fn key(mut self, org: impl Into<String>, key: impl Into<String>, kind: KeyKind) -> Self {
        self.keys.push((org.into(), key.into(), kind));
        self
    }

    /// Marks an already registered key as revoked: requests with it get 401 from the start.
    /// [`Simulator::revoke`] revokes one while the simulator runs. Default: none revoked.
    pub fn revoked_key(mut self, key: impl Into<String>) -> Self {
        self.revoked.push(key.into());
        self
    }

    /// The request limit of each organization: `limit` requests per fixed window of `period`,
    /// shared by all the organization's keys. Default 1000 per 15 minutes. A limit of 0
    /// refuses every request; a zero `period` makes [`start`](Self::start) fail with
    /// `InvalidInput`; a period past what the clock holds is one window that never ends.
    pub fn window(mut self, limit: u32, period: Duration) -> Self {
        self.window = Quota { limit, period };
        self
    }

    /// The limit of `/auth/register` and `/auth/login` together, per client IP address:
    /// `limit` requests per fixed window of `period`. Default 10 per 15 minutes. Out-of-range
    /// values as for [`window`](Self::window).
    pub fn auth_window(mut self, limit: u32, period: Duration) -> Self {
        self.auth_window = Quota { limit, period };
        self
    }

    /// The largest request body accepted, in bytes; larger ones get 413. Default 1,000,000.
    /// Any value; bodies are read up to it, never reserved from a claimed length.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The faults to inject. Default [`Chaos::none`].
    pub fn chaos(mut self, chaos: Chaos) -> Self {
        self.chaos = chaos;
        self
    }

    /// The seed of the chaos RNG: the same seed and the same order of requests give the same
    /// faults and latencies. Default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether to keep every stored record as sent, for [`Simulator::events`],
    /// [`Simulator::items`] and [`Simulator::users`] to return. Default `false`: the simulator
    /// keeps only what [`SimStats`](super::SimStats) reports (the ids of stored events, 16 bytes
    /// each, and counts), so a million events take tens of MB instead of gigabytes, and those
    /// three methods return nothing. Turn it on in tests that inspect what was stored.
    pub fn keep_bodies(mut self, keep: bool) -> Self {
        self.keep_bodies = keep;
        self
    }

    /// The address to listen on. It must be a loopback address (`127.0.0.0/8` or `::1`): the
    /// simulator is a test server and never listens on a network. Port 0 picks a free port;
    /// [`Simulator::addr`] tells which. Default `127.0.0.1:0`.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds the [address](Self::addr) (127.0.0.1 on a free port by default) and starts serving on the current tokio runtime (it must
    /// be awaited inside one, as tokio's own sockets must).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a bad configuration (an invalid organization name or
    /// key, a key registered twice differently, a revoked key that was never registered, a
    /// zero-length window, chaos probabilities out of range, an address that is not
    /// loopback); otherwise the error of binding the socket.
    pub async fn start(self) -> io::Result<Simulator> {
        let addr = self.addr;
        let shared = self.build()?;
        let listener = TcpListener::bind(addr).await?;
        Simulator::serve(listener, Arc::new(shared))
    }

    fn build(self) -> io::Result<Shared> {
        if !self.addr.ip().is_loopback() {
            return Err(invalid(format!(
                "the simulator listens on loopback only (127.0.0.0/8 or ::1), not {}",
                self.addr.ip()
            )));
        }
        for (name, quota) in [("window", self.window), ("auth_window", self.auth_window)] {
            if quota.period.is_zero() {
                return Err(invalid(format!(
                    "the {name} period must be longer than zero"
                )));
            }
        }
        self.chaos.validate()?;
        let mut state = State::new(SmallRng::seed_from_u64(self.seed), self.keep_bodies);
        let mut keys = Vec::new();
        for name in &self.orgs {
            check_org_name(name)?;
            let org = state.org(name);
            let made = OrgKeys::for_org(name);
            keys.push((org, made.secret.clone(), KeyKind::Secret));
            keys.push((org, made.publishable.clone(), KeyKind::Publishable));
            state.set_org_keys(org, made);
        }
        for (name, key, kind) in self.keys {
            check_org_name(&name)?;
            let org = state.org(&name);
            keys.push((org, key, kind));
        }
        for (org, key, kind) in keys {
            check_key(&key, kind)?;
            if let Some((owner, owner_kind)) = state.key_owner(&key) {
                if owner == org && owner_kind == kind {
                    continue;
                }
                return Err(invalid(format!(
                    "key {key} is registered twice: as {owner_kind:?} for organization {} and as {kind:?} for {}",
                    state.org_name(owner),
                    state.org_name(org),
                )));
            }
            state.add_key(org, key, kind);
        }
        for key in &self.revoked {
            if !state.revoke(key) {
                return Err(invalid(format!(
                    "revoked key {key} is not registered; register it with Builder::key first"
                )));
            }
        }
        let config = Config {
            window: self.window,
            auth_window: self.auth_window,
            max_body: self.max_body,
            chaos: self.chaos,
        };
        Ok(Shared::new(config, state))
    }
}

fn check_org_name(name: &str) -> io::Result<()> {
    let fine = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(fine) {
        return Err(invalid(format!(
            "organization name {name:?} must be non-empty ASCII letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

fn check_key(key: &str, kind: KeyKind) -> io::Result<()> {
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "key {key:?} must be visible ASCII without spaces"
        )));
    }
    if key.len() <= kind.prefix().len() || !key.starts_with(kind.prefix()) {
        return Err(invalid(format!(
            "a {kind:?} key must start with {} and go on after it; {key:?} does not",
            kind.prefix()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(builder: Builder) -> String {
        let err = builder
            .build()
            .expect_err("configuration should be refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        err.to_string()
    }

    #[test]
    fn refuses_bad_configuration_with_a_reason() {
        let b = Simulator::builder;
        assert!(refused(b().org("acme corp")).contains("organization name"));
        assert!(refused(b().key("acme", "lehnz_pk_x", KeyKind::Secret)).contains("lehnz_sk_"));
        assert!(refused(b().key("acme", "lehnz_sk_", KeyKind::Secret)).contains("lehnz_sk_"));
        assert!(refused(b().key("acme", "lehnz_sk_a b", KeyKind::Secret)).contains("visible"));
        let twice =
            b().key("a", "lehnz_sk_1", KeyKind::Secret)
                .key("b", "lehnz_sk_1", KeyKind::Secret);
        assert!(refused(twice).contains("twice"));
        assert!(refused(b().org("acme").revoked_key("lehnz_sk_nope")).contains("not registered"));
        assert!(refused(b().window(5, Duration::ZERO)).contains("window period"));
        assert!(refused(b().chaos(Chaos::none().rate_limited(2.0))).contains("rate_limited"));
        let public = SocketAddr::from(([192, 0, 2, 1], 8080));
        assert!(refused(b().addr(public)).contains("loopback"));
    }

    #[test]
    fn org_keys_can_also_be_registered_by_hand() {
        let ok = Simulator::builder()
            .org("acme")
            .key("acme", "lehnz_sk_test_acme", KeyKind::Secret)
            .revoked_key("lehnz_pk_test_acme")
            .build()
            .expect("valid configuration");
        assert_eq!(
            ok.org_keys("acme"),
            Some(OrgKeys {
                secret: "lehnz_sk_test_acme".into(),
                publishable: "lehnz_pk_test_acme".into(),
            })
        );
    }
}
