//! What the simulator remembers: keys, windows, stored records and counters, behind one mutex
//! that is held only for short, synchronous steps.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use http::{HeaderValue, StatusCode};
use rand::rngs::SmallRng;
use serde_json::Value;
use tokio::time::Instant;

use super::chaos::{Chaos, Plan};
use super::records::{client_event_id, Collection, Record};
use super::window::{FixedWindow, Quota, Standing};

/// The two kinds of Lehnz API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A server-side key, `lehnz_sk_…`: may call every endpoint, but never from a browser (a
    /// request with an `Origin` header is refused with 403).
    Secret,
    /// A browser-safe key, `lehnz_pk_…`: may only ingest events; upserts are refused with 403.
    Publishable,
}

impl KeyKind {
    /// The prefix every key of this kind starts with: `lehnz_sk_` or `lehnz_pk_`.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyKind::Secret => "lehnz_sk_",
            KeyKind::Publishable => "lehnz_pk_",
        }
    }
}

/// The two keys the simulator made for an organization registered with
/// [`Builder::org`](super::Builder::org).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrgKeys {
    /// `lehnz_sk_test_<org>`.
    pub secret: String,
    /// `lehnz_pk_test_<org>`.
    pub publishable: String,
}

impl OrgKeys {
    pub(crate) fn for_org(org: &str) -> Self {
        OrgKeys {
            secret: format!("lehnz_sk_test_{org}"),
            publishable: format!("lehnz_pk_test_{org}"),
        }
    }
}

/// A snapshot of what the simulator stored and answered, from [`Simulator::stats`].
///
/// [`Simulator::stats`]: super::Simulator::stats
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Events stored, every copy counted.
    pub events: usize,
    /// Distinct `context.client_event_id`s among the stored events (per organization).
    pub distinct_event_ids: usize,
    /// `client_event_id`s that were stored more than once: each is a duplicate delivery.
    pub duplicate_event_ids: usize,
    /// Items stored (one per organization and `item_id`).
    pub items: usize,
    /// Stored items whose `status` is `"inactive"`.
    pub inactive_items: usize,
    /// Users stored (one per organization and `user_id`).
    pub users: usize,
    /// Responses sent, by status code. Connections dropped by chaos sent none and are not here.
    pub responses_by_status: BTreeMap<u16, u64>,
    /// Connections closed on purpose without a response (both chaos drop knobs).
    pub connections_dropped: u64,
    /// `429 Too Many Requests` responses sent: window limits, auth-endpoint limits and chaos.
    pub rate_limited: u64,
}

impl SimStats {
    /// The number of responses sent with `status`.
    pub fn responses(&self, status: u16) -> u64 {
        self.responses_by_status.get(&status).copied().unwrap_or(0)
    }
}

/// The fixed configuration of a running simulator.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) window: Quota,
    pub(crate) auth_window: Quota,
    pub(crate) max_body: usize,
    pub(crate) chaos: Chaos,
}

/// Everything the connections share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    state: Mutex<State>,
}

#[derive(Debug)]
pub(crate) struct State {
    keys: HashMap<String, KeyEntry>,
    orgs: Vec<Org>,
    auth_windows: HashMap<IpAddr, FixedWindow>,
    rng: SmallRng,
    events: Vec<Record>,
    duplicate_event_ids: usize,
    counters: Counters,
}

#[derive(Debug)]
struct KeyEntry {
    org: usize,
    kind: KeyKind,
    revoked: bool,
}

#[derive(Debug)]
struct Org {
    name: String,
    keys: Option<OrgKeys>,
    window: FixedWindow,
    event_ids: HashMap<String, u32>,
    items: BTreeMap<String, Record>,
    users: BTreeMap<String, Record>,
}

#[derive(Debug, Default)]
struct Counters {
    by_status: BTreeMap<u16, u64>,
    dropped: u64,
    rate_limited: u64,
}

/// An authenticated request: whose key it is, and how it stands in the org's window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller {
    pub(crate) org: usize,
    pub(crate) kind: KeyKind,
    pub(crate) standing: Standing,
}

/// Why a request was not authenticated (all 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unauthenticated {
    Missing,
    Bearer,
    Unknown,
    Revoked,
}

impl State {
    pub(crate) fn new(rng: SmallRng) -> Self {
        State {
            keys: HashMap::new(),
            orgs: Vec::new(),
            auth_windows: HashMap::new(),
            rng,
            events: Vec::new(),
            duplicate_event_ids: 0,
            counters: Counters::default(),
        }
    }

    /// The index of `name`, registering the organization if it is new.
    pub(crate) fn org(&mut self, name: &str) -> usize {
        if let Some(i) = self.orgs.iter().position(|o| o.name == name) {
            return i;
        }
        self.orgs.push(Org {
            name: name.to_owned(),
            keys: None,
            window: FixedWindow::default(),
            event_ids: HashMap::new(),
            items: BTreeMap::new(),
            users: BTreeMap::new(),
        });
        self.orgs.len() - 1
    }

    pub(crate) fn set_org_keys(&mut self, org: usize, keys: OrgKeys) {
        self.orgs[org].keys = Some(keys);
    }

    /// The organization and kind a key is already registered with.
    pub(crate) fn key_owner(&self, key: &str) -> Option<(usize, KeyKind)> {
        self.keys.get(key).map(|k| (k.org, k.kind))
    }

    pub(crate) fn org_name(&self, org: usize) -> &str {
        &self.orgs[org].name
    }

    pub(crate) fn add_key(&mut self, org: usize, key: String, kind: KeyKind) {
        self.keys.insert(
            key,
            KeyEntry {
                org,
                kind,
                revoked: false,
            },
        );
    }

    /// Marks `key` revoked; false when no such key is registered.
    pub(crate) fn revoke(&mut self, key: &str) -> bool {
        match self.keys.get_mut(key) {
            Some(entry) => {
                entry.revoked = true;
                true
            }
            None => false,
        }
    }
}

impl Shared {
    pub(crate) fn new(config: Config, state: State) -> Self {
        Shared {
            config,
            state: Mutex::new(state),
        }
    }

    /// The state, even if a panic elsewhere poisoned the lock: every step leaves it consistent.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Draws the chaos plan of the next API request.
    pub(crate) fn plan(&self) -> Plan {
        let mut state = self.lock();
        self.config.chaos.draw(&mut state.rng)
    }

    /// Checks the `X-API-KEY` header and counts the request in its organization's window.
    pub(crate) fn authenticate(
        &self,
        header: Option<&HeaderValue>,
        now: Instant,
    ) -> Result<Caller, Unauthenticated> {
        let key = match header.map(HeaderValue::as_bytes) {
            None | Some(b"") => return Err(Unauthenticated::Missing),
            Some(raw) if raw.len() >= 7 && raw[..7].eq_ignore_ascii_case(b"bearer ") => {
                return Err(Unauthenticated::Bearer)
            }
            Some(raw) => std::str::from_utf8(raw).map_err(|_| Unauthenticated::Unknown)?,
        };
        let mut state = self.lock();
        let (org, kind) = match state.keys.get(key) {
            None => return Err(Unauthenticated::Unknown),
            Some(entry) if entry.revoked => return Err(Unauthenticated::Revoked),
            Some(entry) => (entry.org, entry.kind),
        };
        let standing = state.orgs[org].window.hit(self.config.window, now);
        Ok(Caller {
            org,
            kind,
            standing,
        })
    }

    /// Counts a request to `/auth/*` from `ip` in that address's window.
    pub(crate) fn auth_hit(&self, ip: IpAddr, now: Instant) -> Standing {
        let quota = self.config.auth_window;
        let mut state = self.lock();
        // Forget ended windows now and then, so many addresses cannot grow the map for good.
        if state.auth_windows.len() >= 1024 && !state.auth_windows.contains_key(&ip) {
            state.auth_windows.retain(|_, w| !w.is_expired(quota, now));
        }
        state.auth_windows.entry(ip).or_default().hit(quota, now)
    }

    /// Stores a validated batch for `org`; returns how many records it held.
    pub(crate) fn store(&self, org: usize, collection: Collection, records: Vec<Record>) -> usize {
        let n = records.len();
        let mut state = self.lock();
        let state = &mut *state;
        match collection {
            Collection::Events => {
                let ids = &mut state.orgs[org].event_ids;
                for event in &records {
                    let Some(id) = client_event_id(event) else {
                        continue;
                    };
                    // Look up before inserting, so an id seen before costs no allocation.
                    if let Some(seen) = ids.get_mut(id) {
                        *seen += 1;
                        if *seen == 2 {
                            state.duplicate_event_ids += 1;
                        }
                    } else {
                        ids.insert(id.to_owned(), 1);
                    }
                }
                state.events.extend(records);
            }
            Collection::Items | Collection::Users => {
                let (field, table) = match collection {
                    Collection::Items => ("item_id", &mut state.orgs[org].items),
                    _ => ("user_id", &mut state.orgs[org].users),
                };
                for record in records {
                    if let Some(id) = record.get(field).and_then(Value::as_str) {
                        table.insert(id.to_owned(), record);
                    }
                }
            }
        }
        n
    }

    pub(crate) fn record_response(&self, status: StatusCode) {
        let mut state = self.lock();
        *state.counters.by_status.entry(status.as_u16()).or_insert(0) += 1;
        if status == StatusCode::TOO_MANY_REQUESTS {
            state.counters.rate_limited += 1;
        }
    }

    pub(crate) fn record_drop(&self) {
        self.lock().counters.dropped += 1;
    }

    pub(crate) fn stats(&self) -> SimStats {
        let state = self.lock();
        let orgs = &state.orgs;
        SimStats {
            events: state.events.len(),
            distinct_event_ids: orgs.iter().map(|o| o.event_ids.len()).sum(),
            duplicate_event_ids: state.duplicate_event_ids,
            items: orgs.iter().map(|o| o.items.len()).sum(),
            inactive_items: orgs
                .iter()
                .flat_map(|o| o.items.values())
                .filter(|item| item.get("status").and_then(Value::as_str) == Some("inactive"))
                .count(),
            users: orgs.iter().map(|o| o.users.len()).sum(),
            responses_by_status: state.counters.by_status.clone(),
            connections_dropped: state.counters.dropped,
            rate_limited: state.counters.rate_limited,
        }
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        let state = self.lock();
        state.events.iter().cloned().map(Value::Object).collect()
    }

    pub(crate) fn items(&self) -> Vec<Value> {
        let state = self.lock();
        let items = state.orgs.iter().flat_map(|o| o.items.values());
        items.cloned().map(Value::Object).collect()
    }

    pub(crate) fn users(&self) -> Vec<Value> {
        let state = self.lock();
        let users = state.orgs.iter().flat_map(|o| o.users.values());
        users.cloned().map(Value::Object).collect()
    }

    pub(crate) fn org_keys(&self, org: &str) -> Option<OrgKeys> {
        let state = self.lock();
        state.orgs.iter().find(|o| o.name == org)?.keys.clone()
    }
}
