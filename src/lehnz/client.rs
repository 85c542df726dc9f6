//! The Lehnz client: batching, concurrency and typed results over a stack of the crate's layers.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::error::LehnzError;
use super::key::{ApiKey, KeyKind};
use super::model::{Event, Item, Record, User};
use super::response::interpret;
use super::stack::LehnzService;
use super::stream::{run_stream, ChannelSource, IngestOptions, IterSource, Sender};
use super::summary::{Outcome, Summary};
use crate::body::ReplayBody;
use crate::dead_letter::Recorded;
use crate::error::{BoxError, Error};
use crate::idempotency::{MakeKey, UuidV4};

/// Lehnz's hard limit on a request body: 1 MB.
pub const MAX_BODY_BYTES: usize = 1_000_000;

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const EVENTS_PATH: &str = "/api/v1/events/ingest";
const ITEMS_PATH: &str = "/api/v1/items/upsert";
const USERS_PATH: &str = "/api/v1/users/upsert";
/// Replies are small JSON documents; more than this is not Lehnz talking.
const MAX_REPLY_BYTES: usize = 256 * 1024;

/// How the client gives an event without one its id.
#[derive(Clone)]
enum EventIds {
    /// Derived from the event and its position: [`Event::derived_id`].
    Derived(uuid::Uuid),
    /// Made by the caller's [`MakeKey`], independent of the event.
    Made(Arc<dyn MakeKey>),
}

impl EventIds {
    /// Stamps an event of a stream at `position` in its source.
    fn stamp(&self, position: usize, event: &mut Event) {
        if event.client_event_id().is_some() {
            return;
        }
        let id = match self {
            EventIds::Derived(namespace) => event
                .derived_id(namespace, position)
                .hyphenated()
                .to_string(),
            EventIds::Made(make) => made(&**make),
        };
        event.stamp_id(|| id);
    }

    /// Stamps an event of a slice. A slice has no position in a larger source: an index
    /// would give equal events at the same index of two calls the same id, and removing
    /// duplicates would then drop real events. So slices get random ids (or the caller's
    /// generator), written into the slice so sending it again keeps them.
    fn stamp_unpositioned(&self, event: &mut Event) {
        if event.client_event_id().is_some() {
            return;
        }
        let id = match self {
            EventIds::Derived(_) => made(&UuidV4),
            EventIds::Made(make) => made(&**make),
        };
        event.stamp_id(|| id);
    }
}

fn made(make: &dyn MakeKey) -> String {
    let key = make.make_key();
    key.to_str().map(str::to_owned).unwrap_or_default()
}

/// Builds a [`Client`]. See [`Client::builder`].
pub struct ClientBuilder {
    key: Result<ApiKey, LehnzError>,
    base_url: String,
    ingestion_url: Option<String>,
    stack: super::stack::StackConfig,
    service: Option<LehnzService>,
    event_batch: (usize, usize),
    upsert_batch: (usize, usize),
    concurrency: usize,
    event_ids: EventIds,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("ingestion_url", &self.ingestion_url)
            .field("event_batch", &self.event_batch)
            .field("upsert_batch", &self.upsert_batch)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The API host (default `https://api.lehnz.com`). Events go to the ingestion host unless
    /// [`ingestion_url`](Self::ingestion_url) says otherwise. Plain `http://` is accepted only
    /// for loopback addresses (a simulator on this machine), so a key never crosses a network
    /// unencrypted.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The events ingestion host (default `https://ingestion.lehnz.com`, or the
    /// [`base_url`](Self::base_url) when that was changed).
    pub fn ingestion_url(mut self, url: impl Into<String>) -> Self {
        self.ingestion_url = Some(url.into());
        self
    }

    /// Events per request and bytes per request (defaults 500 and 1,000,000). Bytes are capped at
    /// Lehnz's 1 MB hard limit; at least one record per request.
    pub fn event_batch(mut self, max_records: usize, max_bytes: usize) -> Self {
        self.event_batch = (max_records.max(1), max_bytes.min(MAX_BODY_BYTES));
        self
    }

    /// Items or users per upsert request and bytes per request (defaults 1,000 and 1,000,000),
    /// capped like [`event_batch`](Self::event_batch).
    pub fn upsert_batch(mut self, max_records: usize, max_bytes: usize) -> Self {
        self.upsert_batch = (max_records.max(1), max_bytes.min(MAX_BODY_BYTES));
        self
    }

    /// Batches in flight at once per call (default 4; 0 is raised to 1).
    pub fn concurrency(mut self, batches: usize) -> Self {
        self.concurrency = batches.max(1);
        self
    }

    /// Makes the client-side ids of events that have none with `make` instead of deriving
    /// them (see [`event_id_namespace`](Self::event_id_namespace)). Ids made this way are
    /// not stable across runs unless `make` makes them so.
    pub fn event_ids(mut self, make: impl MakeKey) -> Self {
        self.event_ids = EventIds::Made(Arc::new(make));
        self
    }

    /// The namespace of derived event ids (default [`EVENT_ID_NAMESPACE`]). An event of a
    /// stream ([`Client::ingest_iter`], [`Client::ingest_channel`]) without a
    /// `client_event_id` gets [`Event::derived_id`] over this namespace and its offset in the
    /// source, so the same source sent again carries the same ids. Give each source its own
    /// namespace (for example `Uuid::new_v5(&EVENT_ID_NAMESPACE, file_name)`) when equal
    /// events at equal positions of two sources must not share an id.
    ///
    /// [`EVENT_ID_NAMESPACE`]: super::EVENT_ID_NAMESPACE
    pub fn event_id_namespace(mut self, namespace: uuid::Uuid) -> Self {
        self.event_ids = EventIds::Derived(namespace);
        self
    }

    /// Configures the default stack. See [`StackConfig`](super::StackConfig).
    pub fn stack(
        mut self,
        configure: impl FnOnce(super::StackConfig) -> super::StackConfig,
    ) -> Self {
        self.stack = configure(self.stack);
        self
    }

    /// Sends requests through `service` instead of the default stack: any tower service of
    /// `http::Request<ReplayBody>`, for example the crate's layers in another arrangement around
    /// another transport. The client still adds `X-API-KEY` and `Content-Type`.
    pub fn service<S, B>(mut self, service: S) -> Self
    where
        S: Service<Request<ReplayBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let service = service
            .map_response(|r: Response<B>| r.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(|e: S::Error| Error::from_box(e.into()));
        self.service = Some(BoxCloneSyncService::new(service));
        self
    }

    /// Checks the key and the URLs and builds the client.
    pub fn build(self) -> Result<Client, LehnzError> {
        let key = self.key?;
        let api = parse_base(&self.base_url)?;
        let ingestion = match &self.ingestion_url {
            Some(url) => parse_base(url)?,
            None if self.base_url == super::DEFAULT_BASE_URL => {
                parse_base(super::DEFAULT_INGESTION_URL)?
            }
            None => api.clone(),
        };
        let (service, stats) = match self.service {
            Some(service) => (service, None),
            None => {
                let (service, stats) = self.stack.build()?;
                (service, Some(stats))
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                key,
                api,
                ingestion,
                service,
                stats,
                event_batch: self.event_batch,
                upsert_batch: self.upsert_batch,
                concurrency: self.concurrency,
                event_ids: self.event_ids,
            }),
        })
    }
}

/// A base URL: scheme and authority, and a path prefix.
#[derive(Clone, Debug)]
struct Base {
    scheme: Scheme,
    authority: Authority,
    prefix: String,
}

fn parse_base(url: &str) -> Result<Base, LehnzError> {
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e| LehnzError::InvalidUrl(format!("{url:?}: {e}")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return Err(LehnzError::InvalidUrl(format!(
            "{url:?} needs a scheme and a host, such as https://api.lehnz.com"
        )));
    };
    if scheme == Scheme::HTTP && !is_loopback(authority.host()) {
        return Err(LehnzError::InvalidUrl(format!(
            "{url:?} is plain http: Lehnz takes https only (http is allowed for loopback simulators)"
        )));
    }
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(LehnzError::InvalidUrl(format!(
            "{url:?}: unsupported scheme"
        )));
    }
    Ok(Base {
        scheme,
        authority,
        prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// Whether `host` (as in a URI authority) is this machine: an IP literal in 127.0.0.0/8,
/// `[::1]`, or `localhost`. Nothing else: `127.attacker.example` is a name that resolves
/// wherever its owner wants.
fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>() == Ok(std::net::Ipv6Addr::LOCALHOST);
    }
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The port a URI goes to, its scheme's default when it names none.
fn uri_port(uri: &Uri) -> Option<u16> {
    uri.port_u16()
        .or_else(|| uri.scheme().and_then(default_port))
}

fn port_of(scheme: &Scheme, authority: &Authority) -> Option<u16> {
    authority.port_u16().or_else(|| default_port(scheme))
}

fn default_port(scheme: &Scheme) -> Option<u16> {
    if *scheme == Scheme::HTTPS {
        Some(443)
    } else if *scheme == Scheme::HTTP {
        Some(80)
    } else {
        None
    }
}

impl Base {
    /// Whether `uri` goes to this base's scheme, host and port.
    fn same_origin(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&self.scheme)
            && uri
                .host()
                .is_some_and(|h| h.eq_ignore_ascii_case(self.authority.host()))
            && uri_port(uri) == port_of(&self.scheme, &self.authority)
    }

    fn uri(&self, path: &str) -> Result<Uri, LehnzError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path}", self.prefix))
            .build()
            .map_err(|e| LehnzError::InvalidUrl(e.to_string()))
    }
}

struct Inner {
    key: ApiKey,
    api: Base,
    ingestion: Base,
    service: LehnzService,
    stats: Option<super::stack::StackStats>,
    event_batch: (usize, usize),
    upsert_batch: (usize, usize),
    concurrency: usize,
    event_ids: EventIds,
}

/// A client for the Lehnz API. Cheap to clone: clones share the stack, and with it the
/// throttle, the breaker and the dead-letter sink.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("key", &self.inner.key)
            .field("api", &self.inner.api)
            .field("ingestion", &self.inner.ingestion)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client with this API key. The key is checked when the client is
    /// built: white space around it is trimmed, anything else wrong is a
    /// [`LehnzError::InvalidKey`] that says what.
    pub fn builder(api_key: impl AsRef<str>) -> ClientBuilder {
        ClientBuilder {
            key: ApiKey::parse(api_key.as_ref()).map_err(LehnzError::from),
            base_url: super::DEFAULT_BASE_URL.to_owned(),
            ingestion_url: None,
            stack: super::StackConfig::default(),
            service: None,
            event_batch: (500, MAX_BODY_BYTES),
            upsert_batch: (1000, MAX_BODY_BYTES),
            concurrency: 4,
            event_ids: EventIds::Derived(super::EVENT_ID_NAMESPACE),
        }
    }

    /// The counters of the default stack; `None` with a custom [`service`](ClientBuilder::service).
    pub fn stats(&self) -> Option<&super::stack::StackStats> {
        self.inner.stats.as_ref()
    }

    /// Sends events to `POST /api/v1/events/ingest` on the ingestion host, in batches.
    ///
    /// Each event without one first gets an id in `context.client_event_id`, written into the
    /// slice, so sending the same slice again (or replaying a dead letter) keeps the ids and
    /// duplicates can be removed downstream. A slice has no position in a larger source, so
    /// these ids are random (UUID v4, or the [`event_ids`](ClientBuilder::event_ids)
    /// generator): a job that must send the same ids after a restart streams its source with
    /// [`ingest_iter`](Self::ingest_iter), whose ids are derived from each event and its
    /// offset. A publishable key may ingest events; upserts need a secret key.
    ///
    /// Returns `Err` only when nothing can be sent (401 or 403: the key is wrong); failures of
    /// single batches are in [`Summary::errors`], with their records in [`Summary::rejected`]
    /// or counted in [`Summary::dead_lettered`]. A thin wrapper over
    /// [`ingest_iter`](Self::ingest_iter) that lists every rejection.
    pub async fn ingest_events(&self, events: &mut [Event]) -> Result<Summary, LehnzError> {
        for event in events.iter_mut() {
            self.inner.event_ids.stamp_unpositioned(event);
        }
        let uri = self.inner.ingestion.uri(EVENTS_PATH)?;
        let options = IngestOptions::new().listed_rejections(usize::MAX);
        run_stream(
            self,
            IterSource(events.iter()),
            uri,
            self.inner.event_batch,
            options,
            |_, _| {},
        )
        .await
    }

    /// Streams events to `POST /api/v1/events/ingest`: reads `events` one at a time, packs
    /// them into batches as they come, and keeps at most `concurrency` batches outstanding,
    /// reading the iterator only when a batch may go (backpressure). Memory is independent of
    /// how many events pass: the outstanding batches and the counters, nothing per event once
    /// its batch is settled.
    ///
    /// Each event without a `client_event_id` gets one derived from its content and its
    /// offset (see [`ClientBuilder::event_id_namespace`]); an id already there is kept.
    /// [`IngestOptions::on_progress`] reports, batch by batch, the offset below which every
    /// event is settled: checkpoint it, and after a crash resume with
    /// [`IngestOptions::start_offset`] on the rest of the source. The iterator is pulled on
    /// the task that awaits this call; a source that blocks (a file) should be quick to
    /// read, or go through [`ingest_channel`](Self::ingest_channel).
    ///
    /// ```
    /// # #[cfg(feature = "sim")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_outbound::lehnz::sim::Simulator;
    /// use tower_outbound::lehnz::{Client, Event, IngestOptions};
    ///
    /// let sim = Simulator::builder().org("acme").start().await?;
    /// let client = Client::builder(&sim.keys("acme").unwrap().secret)
    ///     .base_url(sim.base_url())
    ///     .build()?;
    /// let events = (0..1_200).map(|i| Event::new(format!("user-{i}"), "item-1", "view"));
    /// let mut checkpoint = 0;
    /// let options = IngestOptions::new().on_progress(|p| checkpoint = p.settled);
    /// let summary = client.ingest_iter(events, options).await?;
    /// assert_eq!((summary.accepted, summary.requests), (1_200, 3));
    /// assert_eq!(checkpoint, 1_200);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "sim"))]
    /// # fn main() {}
    /// ```
    pub async fn ingest_iter<I>(
        &self,
        events: I,
        options: IngestOptions<'_>,
    ) -> Result<Summary, LehnzError>
    where
        I: IntoIterator<Item = Event>,
    {
        let uri = self.inner.ingestion.uri(EVENTS_PATH)?;
        let ids = self.inner.event_ids.clone();
        run_stream(
            self,
            IterSource(events.into_iter()),
            uri,
            self.inner.event_batch,
            options,
            |position, event: &mut Event| ids.stamp(position, event),
        )
        .await
    }

    /// As [`ingest_iter`](Self::ingest_iter), from a channel: the call ends when every
    /// sender is dropped and the channel is empty. A full channel holds its senders back
    /// while the window is full.
    pub async fn ingest_channel(
        &self,
        events: tokio::sync::mpsc::Receiver<Event>,
        options: IngestOptions<'_>,
    ) -> Result<Summary, LehnzError> {
        let uri = self.inner.ingestion.uri(EVENTS_PATH)?;
        let ids = self.inner.event_ids.clone();
        run_stream(
            self,
            ChannelSource(events),
            uri,
            self.inner.event_batch,
            options,
            |position, event: &mut Event| ids.stamp(position, event),
        )
        .await
    }

    /// Upserts items (keyed on `item_id`) with `POST /api/v1/items/upsert`, in batches.
    pub async fn upsert_items(&self, items: &[Item]) -> Result<Summary, LehnzError> {
        let uri = self.inner.api.uri(ITEMS_PATH)?;
        self.send_all(items, uri).await
    }

    /// Upserts users (keyed on `user_id`) with `POST /api/v1/users/upsert`, in batches.
    pub async fn upsert_users(&self, users: &[User]) -> Result<Summary, LehnzError> {
        let uri = self.inner.api.uri(USERS_PATH)?;
        self.send_all(users, uri).await
    }

    async fn send_all<T: Record + Sync>(
        &self,
        records: &[T],
        uri: Uri,
    ) -> Result<Summary, LehnzError> {
        let options = IngestOptions::new().listed_rejections(usize::MAX);
        run_stream(
            self,
            IterSource(records.iter()),
            uri,
            self.inner.upsert_batch,
            options,
            |_, _| {},
        )
        .await
    }

    /// Sends the dead letters in `sink` again through the client's stack, with the client's
    /// key (the stored copies have it redacted), and removes those Lehnz now accepts (a 2xx).
    ///
    /// Only letters addressed to one of the client's own hosts (the scheme, host and port of
    /// its base URL or ingestion URL) are sent: the key never goes to a URI a letter names
    /// otherwise. The others are kept, not sent, and counted in the report's `refused`. See
    /// [`replay_matching`](crate::dead_letter::replay_matching).
    pub async fn replay_dead_letters(
        &self,
        sink: &dyn crate::Sink,
    ) -> Result<crate::dead_letter::ReplayReport, crate::dead_letter::SinkError> {
        let key = self.inner.key.header_value().clone();
        let service = tower::ServiceBuilder::new()
            .map_request(move |mut request: Request<ReplayBody>| {
                request.headers_mut().insert(API_KEY, key.clone());
                request
            })
            .service(self.inner.service.clone());
        crate::dead_letter::replay_matching(sink, service, |letter| self.is_own_host(letter)).await
    }

    /// Whether a dead letter is addressed to one of this client's hosts.
    fn is_own_host(&self, letter: &crate::DeadLetter) -> bool {
        letter.uri.parse::<Uri>().is_ok_and(|uri| {
            uri.authority().is_some_and(|a| !a.as_str().contains('@'))
                && (self.inner.api.same_origin(&uri) || self.inner.ingestion.same_origin(&uri))
        })
    }

    /// The kind of key the client uses.
    pub fn key_kind(&self) -> KeyKind {
        self.inner.key.kind()
    }
}

impl Sender for Client {
    fn concurrency(&self) -> usize {
        self.inner.concurrency
    }

    /// Sends one batch and reads what became of it.
    async fn send(&self, uri: Uri, body: Bytes, sent: usize) -> Outcome {
        let mut request = Request::new(ReplayBody::from_bytes(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(API_KEY, self.inner.key.header_value().clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = match self.inner.service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(err) => {
                let stored = err.dead_letter().map(|r| r.stored);
                let result = Err(LehnzError::from_layers(err));
                return Outcome { result, stored };
            }
        };
        let (parts, body) = response.into_parts();
        let recorded = parts.extensions.get::<Recorded>().map(|r| r.stored);
        let result = match read_reply(body).await {
            Ok(body) => interpret(parts.status, &parts.headers, &body, sent),
            Err(problem) => Err(LehnzError::UnexpectedResponse {
                status: parts.status,
                problem,
            }),
        };
        // A receipt only counts for a batch that failed.
        let stored = if result.is_err() { recorded } else { None };
        Outcome { result, stored }
    }

    fn circuit_open_for(&self) -> Option<std::time::Duration> {
        self.stats().and_then(|s| s.circuit_open_for())
    }
}

/// Reads a reply body, refusing more than [`MAX_REPLY_BYTES`].
async fn read_reply(mut body: UnsyncBoxBody<Bytes, BoxError>) -> Result<Bytes, String> {
    let mut data = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the reply failed: {e}"))?;
        if let Ok(chunk) = frame.into_data() {
            if data.len().saturating_add(chunk.len()) > MAX_REPLY_BYTES {
                return Err(format!("reply is over {MAX_REPLY_BYTES} bytes"));
            }
            data.extend_from_slice(&chunk);
        }
    }
    Ok(data.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(parse_base("http://127.0.0.1:8080").is_ok());
        assert!(parse_base("http://localhost:1/").is_ok());
        assert!(parse_base("https://api.lehnz.com").is_ok());
        let err = parse_base("http://api.lehnz.com").unwrap_err();
        assert!(err.to_string().contains("https only"));
        assert!(parse_base("api.lehnz.com").is_err());
        assert!(parse_base("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn host_starting_with_127_is_not_loopback() {
        for url in [
            "http://127.attacker.example",
            "http://127.0.0.1.attacker.example:8080",
            "http://127.1",
            "http://0x7f.0.0.1",
            "http://[::ffff:127.0.0.1]",
            "http://[::2]",
            "http://localhost.attacker.example",
            "http://user@attacker.example",
        ] {
            let err = parse_base(url).unwrap_err();
            assert!(err.to_string().contains("https only"), "{url}: {err}");
        }
        for url in [
            "http://127.0.0.1:1",
            "http://127.255.255.254",
            "http://[::1]:8080",
            "http://LOCALHOST:9",
        ] {
            assert!(parse_base(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn paths_join_the_prefix() {
        let base = parse_base("https://example.com/lehnz/").unwrap();
        assert_eq!(
            base.uri(EVENTS_PATH).unwrap().to_string(),
            "https://example.com/lehnz/api/v1/events/ingest"
        );
    }

    #[test]
    fn a_bad_key_fails_the_build_with_a_clear_error() {
        let err = Client::builder("Bearer lehnz_sk_x").build().unwrap_err();
        assert!(matches!(err, LehnzError::InvalidKey(_)));
    }
}
