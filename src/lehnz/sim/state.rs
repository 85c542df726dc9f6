//! What the simulator remembers: keys, windows, stored records and counters, behind one mutex
//! that is held only for short, synchronous steps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

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

/// A snapshot of what the simulator stored and answered, from [`Simulator::stats`], or as JSON
/// from `GET /_sim/stats` when the simulator runs in another process (it deserializes back
/// into this type).
///
/// [`Simulator::stats`]: super::Simulator::stats
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SimStats {
    /// Events stored, every copy counted.
    pub events: usize,
    /// Distinct `context.client_event_id`s among the stored events (per organization).
    pub distinct_event_ids: usize,
    /// `client_event_id`s that were stored more than once, each counted once: the ids with at
    /// least one duplicate delivery.
    pub duplicate_event_ids: usize,
    /// Events stored whose `client_event_id` was already stored: every extra copy counted, so
    /// an id stored three times counts two. `events - duplicate_events` is the number of
    /// events stored once, plus those sent without an id.
    pub duplicate_events: usize,
    /// Events stored without a string `context.client_event_id`.
    pub events_without_id: usize,
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
    /// The 429s of [`rate_limited`](Self::rate_limited) that chaos injected (the window had
    /// room; the request was not counted).
    pub rate_limited_injected: u64,
    /// The 429s of [`rate_limited`](Self::rate_limited) sent because an organization had used
    /// its window.
    pub rate_limited_window: u64,
    /// Organization windows opened (every organization's counted).
    pub windows_opened: u64,
    /// Time from the end of an organization's window to the request that opened the next
    /// one, in milliseconds, summed: time in which the organization sent nothing while its
    /// window would have let it.
    pub window_idle_ms: u64,
    /// Requests an organization's ended windows would have admitted and did not get, summed:
    /// capacity left unused.
    pub window_unused: u64,
    /// Outages begun: switched on ([`Simulator::outage`](super::Simulator::outage),
    /// `POST /_sim/outage`) or periodic ([`Chaos::outages`](super::Chaos::outages)).
    pub outages: u64,
    /// Connections closed at once and requests left without a response because an outage was
    /// on.
    pub refused_in_outage: u64,
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
    /// When the simulator was made: periodic outages count from here.
    started: Instant,
}

#[derive(Debug)]
pub(crate) struct State {
    keys: HashMap<String, KeyEntry>,
    orgs: Vec<Org>,
    auth_windows: HashMap<IpAddr, FixedWindow>,
    rng: SmallRng,
    keep_bodies: bool,
    /// Events stored, every copy counted.
    event_count: usize,
    /// The stored events as sent, only with [`Builder::keep_bodies`](super::Builder::keep_bodies).
    events: Vec<Record>,
    duplicate_events: usize,
    events_without_id: usize,
    counters: Counters,
    /// An outage switched on lasts until then.
    outage_until: Option<Instant>,
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
    event_ids: EventIds,
    items: BTreeMap<String, Stored>,
    users: BTreeMap<String, Stored>,
}

/// An upserted item or user: what the stats need, and the record itself only when bodies are
/// kept.
#[derive(Debug)]
struct Stored {
    inactive: bool,
    body: Option<Record>,
}

/// The `client_event_id`s an organization stored, 16 bytes each (plus the hash table's own
/// overhead): a million ids take about 35 MB.
///
/// An id in the canonical UUID form (36 characters, lowercase, hyphenated) is kept as its 128
/// bits, exactly; any other string as a 128-bit hash of it, where a collision between two
/// different ids is far less likely than a lost packet.
#[derive(Debug, Default)]
struct EventIds {
    seen: HashSet<u128>,
    /// The ids stored more than once; small unless a client resends a lot.
    repeated: HashSet<u128>,
}

impl EventIds {
    /// Records that an event with `id` was stored; true when the id was already stored.
    fn insert(&mut self, id: &str) -> bool {
        let key = id_key(id);
        if self.seen.insert(key) {
            false
        } else {
            self.repeated.insert(key);
            true
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.seen.contains(&id_key(id))
    }
}

/// The compact form of an event id: a canonical UUID's own bits, or a 128-bit hash.
fn id_key(id: &str) -> u128 {
    if id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase()) {
        if let Ok(uuid) = uuid::Uuid::try_parse(id) {
            return uuid.as_u128();
        }
    }
    // std's hasher with its fixed keys, twice over different prefixes: the same in every
    // run of one build, and unrelated between the two halves.
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut hasher);
        id.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

#[derive(Debug, Default)]
struct Counters {
    by_status: BTreeMap<u16, u64>,
    dropped: u64,
    rate_limited: u64,
    rate_limited_injected: u64,
    rate_limited_window: u64,
    windows_opened: u64,
    window_idle: Duration,
    window_unused: u64,
    outages: u64,
    refused_in_outage: u64,
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
    pub(crate) fn new(rng: SmallRng, keep_bodies: bool) -> Self {
        State {
            keys: HashMap::new(),
            orgs: Vec::new(),
            auth_windows: HashMap::new(),
            rng,
            keep_bodies,
            event_count: 0,
            events: Vec::new(),
            duplicate_events: 0,
            events_without_id: 0,
            counters: Counters::default(),
            outage_until: None,
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
            event_ids: EventIds::default(),
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
            started: Instant::now(),
        }
    }

    /// The longest outage one switch can ask for: an hour.
    pub(crate) const MAX_OUTAGE: Duration = Duration::from_secs(3600);

    /// Switches an outage on from `now` for `lasting` (at most an hour), or lengthens the one
    /// that is on.
    pub(crate) fn outage(&self, now: Instant, lasting: Duration) {
        let lasting = lasting.min(Self::MAX_OUTAGE);
        let until = now.checked_add(lasting).unwrap_or(now);
        let mut state = self.lock();
        state.outage_until = Some(state.outage_until.map_or(until, |u| u.max(until)));
        state.counters.outages += 1;
    }

    /// Whether an outage is on at `now`: switched on, or periodic.
    pub(crate) fn in_outage(&self, now: Instant) -> bool {
        let switched = self.lock().outage_until.is_some_and(|until| now < until);
        switched
            || self
                .config
                .chaos
                .outage_at(now.saturating_duration_since(self.started))
                .0
    }

    /// A connection or request turned away by an outage.
    pub(crate) fn record_refused(&self) {
        self.lock().counters.refused_in_outage += 1;
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
            Some(raw)
                if raw
                    .get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"bearer ")) =>
            {
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
        let quota = self.config.window;
        let window = &mut state.orgs[org].window;
        if window.is_expired(quota, now) {
            let ended = window.ended(quota);
            let counters = &mut state.counters;
            counters.windows_opened += 1;
            if let Some((end, count)) = ended {
                counters.window_idle = counters
                    .window_idle
                    .saturating_add(now.saturating_duration_since(end));
                counters.window_unused += u64::from(quota.limit.saturating_sub(count));
            }
        }
        let standing = state.orgs[org].window.hit(quota, now);
        if !standing.allowed {
            state.counters.rate_limited_window += 1;
        }
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

    /// Stores a validated batch for `org`; returns how many records it held. Keeps the ids and
    /// counts the stats report, and the records themselves only when bodies are kept.
    pub(crate) fn store(&self, org: usize, collection: Collection, records: Vec<Record>) -> usize {
        let n = records.len();
        let mut state = self.lock();
        let state = &mut *state;
        match collection {
            Collection::Events => {
                let ids = &mut state.orgs[org].event_ids;
                for event in &records {
                    match client_event_id(event) {
                        Some(id) if ids.insert(id) => state.duplicate_events += 1,
                        Some(_) => {}
                        None => state.events_without_id += 1,
                    }
                }
                state.event_count += n;
                if state.keep_bodies {
                    state.events.extend(records);
                }
            }
            Collection::Items | Collection::Users => {
                let (field, table) = match collection {
                    Collection::Items => ("item_id", &mut state.orgs[org].items),
                    _ => ("user_id", &mut state.orgs[org].users),
                };
                for record in records {
                    let Some(id) = record.get(field).and_then(Value::as_str) else {
                        continue;
                    };
                    let id = id.to_owned();
                    let inactive = record.get("status").and_then(Value::as_str) == Some("inactive");
                    let body = state.keep_bodies.then_some(record);
                    table.insert(id, Stored { inactive, body });
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

    pub(crate) fn record_injected_too_many(&self) {
        self.lock().counters.rate_limited_injected += 1;
    }

    pub(crate) fn record_drop(&self) {
        self.lock().counters.dropped += 1;
    }

    pub(crate) fn stats(&self) -> SimStats {
        let state = self.lock();
        let orgs = &state.orgs;
        SimStats {
            events: state.event_count,
            distinct_event_ids: orgs.iter().map(|o| o.event_ids.seen.len()).sum(),
            duplicate_event_ids: orgs.iter().map(|o| o.event_ids.repeated.len()).sum(),
            duplicate_events: state.duplicate_events,
            events_without_id: state.events_without_id,
            items: orgs.iter().map(|o| o.items.len()).sum(),
            inactive_items: orgs
                .iter()
                .flat_map(|o| o.items.values())
                .filter(|item| item.inactive)
                .count(),
            users: orgs.iter().map(|o| o.users.len()).sum(),
            responses_by_status: state.counters.by_status.clone(),
            connections_dropped: state.counters.dropped,
            rate_limited: state.counters.rate_limited,
            rate_limited_injected: state.counters.rate_limited_injected,
            rate_limited_window: state.counters.rate_limited_window,
            windows_opened: state.counters.windows_opened,
            window_idle_ms: u64::try_from(state.counters.window_idle.as_millis())
                .unwrap_or(u64::MAX),
            window_unused: state.counters.window_unused,
            outages: state.counters.outages
                + self
                    .config
                    .chaos
                    .outage_at(Instant::now().saturating_duration_since(self.started))
                    .1,
            refused_in_outage: state.counters.refused_in_outage,
        }
    }

    /// Whether an event with this `client_event_id` was stored, for any organization.
    pub(crate) fn has_event_id(&self, id: &str) -> bool {
        let state = self.lock();
        state.orgs.iter().any(|o| o.event_ids.contains(id))
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        let state = self.lock();
        state.events.iter().cloned().map(Value::Object).collect()
    }

    pub(crate) fn items(&self) -> Vec<Value> {
        let state = self.lock();
        let items = state.orgs.iter().flat_map(|o| o.items.values());
        items
            .filter_map(|s| s.body.clone())
            .map(Value::Object)
            .collect()
    }

    pub(crate) fn users(&self) -> Vec<Value> {
        let state = self.lock();
        let users = state.orgs.iter().flat_map(|o| o.users.values());
        users
            .filter_map(|s| s.body.clone())
            .map(Value::Object)
            .collect()
    }

    pub(crate) fn org_keys(&self, org: &str) -> Option<OrgKeys> {
        let state = self.lock();
        state.orgs.iter().find(|o| o.name == org)?.keys.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canonical_uuid_is_kept_as_its_own_bits() {
        let id = "6f1c2b9e-4d3a-4c55-9a10-2b7e8d9f0a11";
        assert_eq!(id_key(id), uuid::Uuid::parse_str(id).unwrap().as_u128());
        // Other spellings of the same UUID are other strings, so other ids.
        assert_ne!(id_key(&id.to_uppercase()), id_key(id));
        assert_ne!(id_key(&id.replace('-', "")), id_key(id));
        assert_eq!(id_key("e-1"), id_key("e-1"));
        assert_ne!(id_key("e-1"), id_key("e-2"));
    }

    #[test]
    fn ids_are_counted_once_and_repeats_apart() {
        let mut ids = EventIds::default();
        let repeats: Vec<bool> = ["a", "b", "a", "a", "€"]
            .iter()
            .map(|id| ids.insert(id))
            .collect();
        assert_eq!(repeats, [false, false, true, true, false]);
        assert_eq!((ids.seen.len(), ids.repeated.len()), (3, 1));
        assert!(ids.contains("€") && !ids.contains("c"));
    }
}
