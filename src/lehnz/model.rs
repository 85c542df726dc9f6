//! The records Lehnz takes: events, items and users.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The key in an event's `context` under which the client stores its stable id.
pub const CLIENT_EVENT_ID: &str = "client_event_id";

/// The namespace of the event ids the client derives, unless
/// [`ClientBuilder::event_id_namespace`](super::ClientBuilder::event_id_namespace) names
/// another.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_686e_7a65_5076_8e6e_7473_2d69_6473);

/// Something a user did with an item: a view, a click, a purchase.
///
/// Lehnz has no natural key for events, so a retried batch can store an event twice. Before an
/// event is first sent, the client puts a stable id into its `context` under
/// [`CLIENT_EVENT_ID`] (unless one is there already); Lehnz keeps `context` as it is, so
/// duplicates can be removed downstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Who did it.
    pub user_id: String,
    /// What it was done to.
    pub item_id: String,
    /// What was done (`view`, `click`, `purchase`, …).
    pub event_type: String,
    /// When, as RFC 3339; Lehnz uses the time it received the event when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Free-form context, preserved by Lehnz.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub context: Map<String, Value>,
}

impl Event {
    /// An event with no timestamp and an empty context.
    pub fn new(
        user_id: impl Into<String>,
        item_id: impl Into<String>,
        event_type: impl Into<String>,
    ) -> Self {
        Event {
            user_id: user_id.into(),
            item_id: item_id.into(),
            event_type: event_type.into(),
            timestamp: None,
            context: Map::new(),
        }
    }

    /// Sets the timestamp (RFC 3339).
    pub fn at(mut self, timestamp: impl Into<String>) -> Self {
        self.timestamp = Some(timestamp.into());
        self
    }

    /// The stable client-side id, once stamped.
    pub fn client_event_id(&self) -> Option<&str> {
        self.context.get(CLIENT_EVENT_ID).and_then(Value::as_str)
    }

    /// The id derived for this event at `position` in its source: a name-based UUID (v5, RFC
    /// 9562) over `namespace` and the name `"{position}\n{canonical JSON}"`, where the
    /// canonical JSON is the event serialized with its context keys in sorted order and
    /// without a `client_event_id`. The same event at the same position always gets the same
    /// id, so a job that restarts and reads its source again sends the same ids; two equal
    /// events at different positions get different ids.
    ///
    /// ```
    /// use tower_outbound::lehnz::{Event, EVENT_ID_NAMESPACE};
    ///
    /// let event = Event::new("user-1", "item-9", "view");
    /// let id = event.derived_id(&EVENT_ID_NAMESPACE, 41);
    /// assert_eq!(id, event.clone().derived_id(&EVENT_ID_NAMESPACE, 41));
    /// assert_ne!(id, event.derived_id(&EVENT_ID_NAMESPACE, 42));
    /// assert_eq!(id.get_version_num(), 5);
    /// ```
    pub fn derived_id(&self, namespace: &Uuid, position: usize) -> Uuid {
        let mut name = format!("{position}\n").into_bytes();
        let written = if self.context.contains_key(CLIENT_EVENT_ID) {
            let mut bare = self.clone();
            bare.context.remove(CLIENT_EVENT_ID);
            serde_json::to_writer(&mut name, &bare)
        } else {
            serde_json::to_writer(&mut name, self)
        };
        // Serializing strings and JSON values into a Vec cannot fail; the position alone
        // still names the event if it ever did.
        debug_assert!(written.is_ok());
        Uuid::new_v5(namespace, &name)
    }

    /// Stamps a stable client-side id unless the event has one, and returns it.
    pub fn stamp_id(&mut self, make_id: impl FnOnce() -> String) -> &str {
        let value = self
            .context
            .entry(CLIENT_EVENT_ID)
            .or_insert_with(|| Value::String(make_id()));
        if !value.is_string() {
            *value = Value::String(value.to_string());
        }
        value.as_str().unwrap_or_default()
    }
}

/// Whether an item may be recommended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Recommended (the default).
    Active,
    /// Kept, but excluded from recommendations.
    Inactive,
}

/// A catalog item, upserted by `item_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The item's id in your catalog: the upsert key.
    pub item_id: String,
    /// Inactive items are excluded from recommendations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    /// Any other attributes (title, category, price, …).
    #[serde(flatten)]
    pub attributes: Map<String, Value>,
}

impl Item {
    /// An item with no status and no attributes.
    pub fn new(item_id: impl Into<String>) -> Self {
        Item {
            item_id: item_id.into(),
            status: None,
            attributes: Map::new(),
        }
    }

    /// Sets an attribute.
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }
}

/// A user, upserted by `user_id`. Users with fewer than about ten events get popularity-based
/// recommendations until Lehnz knows them better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The user's id in your system: the upsert key.
    pub user_id: String,
    /// Any other attributes.
    #[serde(flatten)]
    pub attributes: Map<String, Value>,
}

impl User {
    /// A user with no attributes.
    pub fn new(user_id: impl Into<String>) -> Self {
        User {
            user_id: user_id.into(),
            attributes: Map::new(),
        }
    }

    /// Sets an attribute.
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }
}

/// A record that has an id worth naming in errors.
pub(crate) trait Record: Serialize {
    fn id(&self) -> Option<&str>;
}

impl<T: Record> Record for &T {
    fn id(&self) -> Option<&str> {
        (**self).id()
    }
}

impl Record for Event {
    fn id(&self) -> Option<&str> {
        self.client_event_id()
    }
}

impl Record for Item {
    fn id(&self) -> Option<&str> {
        Some(&self.item_id)
    }
}

impl Record for User {
    fn id(&self) -> Option<&str> {
        Some(&self.user_id)
    }
}
