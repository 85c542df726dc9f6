//! Per-partition state read without a lock, and upstream keys found without allocating.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Uri;

use super::{upstream_key, PartitionKey};
use crate::sync::{lock, Mutex};

/// States by partition key, hashed with the hash each key carries.
pub(crate) type Map<V> = HashMap<PartitionKey, Arc<V>, BuildHasherDefault<KeyHash>>;

/// Hands on the hash a [`PartitionKey`] computed when it was made (its `Hash` writes one
/// `u64`), so a look-up hashes nothing.
#[derive(Default)]
pub(crate) struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `PartitionKey` is hashed here, with `write_u64`; anything else still spreads.
        for byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

/// One shared state per partition key, at most `max` of them.
///
/// Reads are lock-free: one `ArcSwap` load and a hash look-up, so calls on every core read the
/// map without writing to a shared cache line. A new key copies the map under a writers' lock
/// and publishes the copy; that happens once per upstream (or per eviction at the cap).
pub(crate) struct Registry<V> {
    map: Published<Map<V>>,
    writer: Mutex<()>,
}

/// A value replaced as a whole and read without a lock: an `ArcSwap`. Under
/// `--cfg tower_outbound_loom` it is a mutex instead, whose ordering the model checker sees
/// (it cannot see `ArcSwap`'s), so states published here are model-checked too.
struct Published<T> {
    #[cfg(not(tower_outbound_loom))]
    value: ArcSwap<T>,
    #[cfg(tower_outbound_loom)]
    value: Mutex<Arc<T>>,
}

impl<T> Published<T> {
    fn new(value: T) -> Self {
        Published {
            #[cfg(not(tower_outbound_loom))]
            value: ArcSwap::from_pointee(value),
            #[cfg(tower_outbound_loom)]
            value: Mutex::new(Arc::new(value)),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        #[cfg(not(tower_outbound_loom))]
        return f(&self.value.load());
        #[cfg(tower_outbound_loom)]
        return f(&lock(&self.value));
    }

    fn load_full(&self) -> Arc<T> {
        #[cfg(not(tower_outbound_loom))]
        return self.value.load_full();
        #[cfg(tower_outbound_loom)]
        return lock(&self.value).clone();
    }

    fn store(&self, value: Arc<T>) {
        #[cfg(not(tower_outbound_loom))]
        self.value.store(value);
        #[cfg(tower_outbound_loom)]
        {
            *lock(&self.value) = value;
        }
    }
}

impl<V> fmt::Debug for Registry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("partitions", &self.len())
            .finish_non_exhaustive()
    }
}

impl<V> Default for Registry<V> {
    fn default() -> Self {
        Registry {
            map: Published::new(Map::default()),
            writer: Mutex::new(()),
        }
    }
}

impl<V> Registry<V> {
    /// The state of `key`, if there is one. Lock-free.
    pub(crate) fn get(&self, key: &PartitionKey) -> Option<Arc<V>> {
        self.map.with(|map| map.get(key).cloned())
    }

    /// The state of `key`, made with `make` when there is none. When `max` states are held,
    /// those `keep` says no to are dropped first (`keep` runs once per state, under the
    /// writers' lock), but never a state still held elsewhere (by a call in flight, or by a
    /// per-upstream record that found it once and keeps it): whoever holds it and whoever
    /// looks it up later must see one state. If the map is still full, `None`: the caller
    /// falls back to its shared default.
    pub(crate) fn get_or_insert(
        &self,
        key: &PartitionKey,
        max: usize,
        mut keep: impl FnMut(&V) -> bool,
        make: impl FnOnce() -> V,
    ) -> Option<Arc<V>> {
        if let Some(value) = self.get(key) {
            return Some(value);
        }
        let _writer = lock(&self.writer);
        let current = self.map.load_full();
        if let Some(value) = current.get(key) {
            return Some(value.clone());
        }
        let mut next = (*current).clone();
        if next.len() >= max {
            // Two references are the published map's and this copy's; a third is someone
            // else's.
            next.retain(|_, value| Arc::strong_count(value) > 2 || keep(value));
        }
        if next.len() >= max {
            if next.len() != current.len() {
                self.map.store(Arc::new(next));
            }
            return None;
        }
        let value = Arc::new(make());
        next.insert(key.clone(), value.clone());
        self.map.store(Arc::new(next));
        Some(value)
    }

    /// The state of `key`, made when there is none (as [`get_or_insert`](Self::get_or_insert)
    /// does), or `shared` for a call with no key and when the map is full of states worth
    /// keeping.
    pub(crate) fn get_or_shared(
        &self,
        key: Option<&PartitionKey>,
        shared: &Arc<V>,
        max: usize,
        keep: impl FnMut(&V) -> bool,
        make: impl FnOnce(&PartitionKey) -> V,
    ) -> Arc<V> {
        let Some(key) = key else {
            return shared.clone();
        };
        self.get_or_insert(key, max, keep, || make(key))
            .unwrap_or_else(|| shared.clone())
    }

    /// The states held now, as one consistent snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Map<V>> {
        self.map.load_full()
    }

    /// How many states are held.
    pub(crate) fn len(&self) -> usize {
        self.map.with(|map| map.len())
    }
}

/// How many upstream keys are remembered; past it, a new upstream's key is made per call.
const MAX_INTERNED: usize = 4096;

/// Upstream keys by what a URI says before normalising (`scheme` and the authority as
/// written), so that finding a request's key costs one look-up and no allocation. Only
/// authorities without userinfo are remembered: the table never holds a credential.
static INTERNED: std::sync::LazyLock<Interned> = std::sync::LazyLock::new(Interned::default);

#[derive(Default)]
struct Interned {
    /// `scheme` `\0` `authority` → the normalised key.
    map: ArcSwap<HashMap<Box<[u8]>, PartitionKey>>,
    /// The writers' lock, over the distinct keys handed out (so every spelling of one
    /// upstream shares one `Bytes`).
    keys: std::sync::Mutex<HashSet<PartitionKey>>,
}

/// The last upstream key found on this thread, with what the URI said: the layers of one
/// call (retry budget, breaker, gate, throttle) ask for the same upstream one after another,
/// and find it here with one comparison.
struct LastKey {
    spelled: [u8; SPELLED],
    len: usize,
    key: Option<PartitionKey>,
}

/// The longest `scheme` `\0` `authority` remembered; longer ones are keyed without the table.
const SPELLED: usize = 128;

thread_local! {
    static LAST: std::cell::RefCell<LastKey> = const {
        std::cell::RefCell::new(LastKey { spelled: [0; SPELLED], len: 0, key: None })
    };
}

/// The key [`ByUpstream`](super::ByUpstream) gives `uri`, found without allocating once the
/// upstream was seen.
pub(crate) fn upstream_of(uri: &Uri) -> Option<PartitionKey> {
    let authority = uri.authority()?.as_str();
    let scheme = uri.scheme_str().unwrap_or("");
    let cached = LAST.try_with(|last| {
        let last = last.try_borrow().ok()?;
        let key = last.key.as_ref()?;
        let spelled = last.spelled.get(..last.len)?;
        let same = spelled.get(..scheme.len()) == Some(scheme.as_bytes())
            && spelled.get(scheme.len()) == Some(&0)
            && spelled.get(scheme.len() + 1..) == Some(authority.as_bytes());
        same.then(|| key.clone())
    });
    if let Ok(Some(key)) = cached {
        return Some(key);
    }
    let mut raw = [0u8; SPELLED];
    let len = scheme.len() + 1 + authority.len();
    let Some(spelled) = raw.get_mut(..len) else {
        return upstream_key(uri).map(PartitionKey::from);
    };
    spelled[..scheme.len()].copy_from_slice(scheme.as_bytes());
    spelled[scheme.len()] = 0;
    spelled[scheme.len() + 1..].copy_from_slice(authority.as_bytes());
    let spelled = &*spelled;
    let key = interned(uri, spelled, authority)?;
    if authority.contains('@') {
        // Never remembered: the table holds no credential.
        return Some(key);
    }
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            last.spelled[..len].copy_from_slice(spelled);
            last.len = len;
            last.key = Some(key.clone());
        }
    });
    Some(key)
}

/// The key of `uri` from the process-wide table, remembered there when it may be.
fn interned(uri: &Uri, spelled: &[u8], authority: &str) -> Option<PartitionKey> {
    let interned = &*INTERNED;
    if let Some(key) = interned.map.load().get(spelled) {
        return Some(key.clone());
    }
    let key = PartitionKey::from(upstream_key(uri)?);
    if authority.contains('@') {
        return Some(key);
    }
    let mut keys = interned
        .keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let current = interned.map.load_full();
    if current.len() >= MAX_INTERNED {
        return Some(key);
    }
    let key = match keys.get(&key) {
        Some(shared) => shared.clone(),
        None => {
            keys.insert(key.clone());
            key
        }
    };
    let mut next = (*current).clone();
    next.insert(Box::from(spelled), key.clone());
    interned.map.store(Arc::new(next));
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn every_spelling_of_an_upstream_gets_one_shared_key() {
        let a = upstream_of(&uri("https://API.example.com/a")).unwrap();
        let b = upstream_of(&uri("https://api.example.com:443/b")).unwrap();
        let again = upstream_of(&uri("https://API.example.com/c")).unwrap();
        assert_eq!(a.as_bytes(), b"https://api.example.com:443");
        assert_eq!(a, b);
        assert_eq!(
            a.as_bytes().as_ptr(),
            b.as_bytes().as_ptr(),
            "one shared key"
        );
        assert_eq!(a.as_bytes().as_ptr(), again.as_bytes().as_ptr());
    }

    #[test]
    fn keys_of_authorities_with_userinfo_are_not_remembered() {
        let key = upstream_of(&uri("https://bob:hunter2@secret.example/")).unwrap();
        assert_eq!(key.as_bytes(), b"https://secret.example:443");
        let remembered = INTERNED.map.load();
        assert!(remembered
            .keys()
            .all(|spelled| !spelled.windows(7).any(|w| w == b"hunter2")));
    }

    #[test]
    fn long_authorities_get_their_key_without_the_table() {
        let host = "h".repeat(300);
        let key = upstream_of(&uri(&format!("http://{host}/"))).unwrap();
        assert_eq!(key.as_bytes(), format!("http://{host}:80").as_bytes());
    }

    #[test]
    fn a_full_registry_evicts_what_it_may_and_refuses_the_rest() {
        let registry: Registry<u32> = Registry::default();
        let a = PartitionKey::from("a");
        let b = PartitionKey::from("b");
        let c = PartitionKey::from("c");
        assert_eq!(
            registry.get_or_insert(&a, 2, |_| true, || 1).as_deref(),
            Some(&1)
        );
        assert_eq!(
            registry.get_or_insert(&b, 2, |_| true, || 2).as_deref(),
            Some(&2)
        );
        assert_eq!(
            registry.get_or_insert(&c, 2, |_| true, || 3),
            None,
            "full, nothing evictable"
        );
        assert_eq!(
            registry.get_or_insert(&c, 2, |v| *v != 1, || 3).as_deref(),
            Some(&3)
        );
        assert!(registry.get(&a).is_none(), "evicted");
        assert_eq!(registry.get(&b).as_deref(), Some(&2));
        assert_eq!(registry.len(), 2);
    }
}
