//! The Lehnz client: batching, concurrency and typed results over a stack of the crate's layers.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::batch::{self, Batch, Rejected};
use super::error::LehnzError;
use super::key::{ApiKey, KeyKind};
use super::model::{Event, Item, Record, User};
use super::response::interpret;
use crate::body::ReplayBody;
use crate::error::{BoxError, Error};
use crate::idempotency::{MakeKey, UuidV4};

/// Lehnz's hard limit on a request body: 1 MB.
pub const MAX_BODY_BYTES: usize = 1_000_000;

/// The service a [`Client`] sends its requests through: the layer stack and the transport,
/// type-erased so a custom stack fits too (see [`ClientBuilder::service`]).
pub type LehnzService =
    BoxCloneSyncService<Request<ReplayBody>, Response<UnsyncBoxBody<Bytes, BoxError>>, Error>;

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const EVENTS_PATH: &str = "/api/v1/events/ingest";
const ITEMS_PATH: &str = "/api/v1/items/upsert";
const USERS_PATH: &str = "/api/v1/users/upsert";
/// Replies are small JSON documents; more than this is not Lehnz talking.
const MAX_REPLY_BYTES: usize = 256 * 1024;

/// What one call did with the records it was given.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Summary {
    /// Records Lehnz accepted (events queued, items or users upserted).
    pub accepted: usize,
    /// Records not accepted, each with its position, id and why.
    pub rejected: Vec<Rejected>,
    /// Records whose batch failed and was written to the dead-letter sink, to be replayed.
    pub dead_lettered: usize,
    /// Requests sent (batches), not counting retries.
    pub requests: usize,
    /// The error of each batch that failed.
    pub errors: Vec<LehnzError>,
}

impl Summary {
    /// Whether every record was accepted.
    pub fn is_complete(&self) -> bool {
        self.rejected.is_empty() && self.errors.is_empty()
    }
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
    make_event_id: Arc<dyn MakeKey>,
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

    /// Batches in flight at once per call (default 4).
    pub fn concurrency(mut self, batches: usize) -> Self {
        self.concurrency = batches.max(1);
        self
    }

    /// Makes the stable client-side event ids (default: UUID v4).
    pub fn event_ids(mut self, make: impl MakeKey) -> Self {
        self.make_event_id = Arc::new(make);
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
                make_event_id: self.make_event_id,
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
    let loopback = matches!(
        authority.host(),
        "localhost" | "127.0.0.1" | "[::1]" | "::1"
    ) || authority.host().starts_with("127.");
    if scheme == Scheme::HTTP && !loopback {
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

impl Base {
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
    make_event_id: Arc<dyn MakeKey>,
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

/// The outcome of one batch.
struct BatchResult {
    indices: Vec<usize>,
    result: Result<usize, LehnzError>,
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
            make_event_id: Arc::new(UuidV4),
        }
    }

    /// The counters of the default stack; `None` with a custom [`service`](ClientBuilder::service).
    pub fn stats(&self) -> Option<&super::stack::StackStats> {
        self.inner.stats.as_ref()
    }

    /// Sends events to `POST /api/v1/events/ingest` on the ingestion host, in batches.
    ///
    /// Each event without one first gets a stable id in `context.client_event_id`, written into
    /// the slice, so sending the same slice again (or replaying a dead letter) keeps the ids and
    /// duplicates can be removed downstream. A publishable key may ingest events; upserts need
    /// a secret key.
    ///
    /// Returns `Err` only when nothing can be sent (401 or 403: the key is wrong); failures of
    /// single batches are in [`Summary::errors`], with their records in [`Summary::rejected`]
    /// or counted in [`Summary::dead_lettered`].
    pub async fn ingest_events(&self, events: &mut [Event]) -> Result<Summary, LehnzError> {
        for event in events.iter_mut() {
            event.stamp_id(|| {
                let key = self.inner.make_event_id.make_key();
                key.to_str().map(str::to_owned).unwrap_or_default()
            });
        }
        let (max_records, max_bytes) = self.inner.event_batch;
        let uri = self.inner.ingestion.uri(EVENTS_PATH)?;
        self.send_all(&*events, uri, max_records, max_bytes).await
    }

    /// Upserts items (keyed on `item_id`) with `POST /api/v1/items/upsert`, in batches.
    pub async fn upsert_items(&self, items: &[Item]) -> Result<Summary, LehnzError> {
        let (max_records, max_bytes) = self.inner.upsert_batch;
        let uri = self.inner.api.uri(ITEMS_PATH)?;
        self.send_all(items, uri, max_records, max_bytes).await
    }

    /// Upserts users (keyed on `user_id`) with `POST /api/v1/users/upsert`, in batches.
    pub async fn upsert_users(&self, users: &[User]) -> Result<Summary, LehnzError> {
        let (max_records, max_bytes) = self.inner.upsert_batch;
        let uri = self.inner.api.uri(USERS_PATH)?;
        self.send_all(users, uri, max_records, max_bytes).await
    }

    async fn send_all<T: Record>(
        &self,
        records: &[T],
        uri: Uri,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Summary, LehnzError> {
        let (batches, rejected) = batch::split(records, max_records, max_bytes);
        let mut summary = Summary {
            rejected,
            requests: batches.len(),
            ..Summary::default()
        };
        let semaphore = Arc::new(Semaphore::new(self.inner.concurrency));
        let mut tasks = JoinSet::new();
        for batch in batches {
            let permit = semaphore.clone().acquire_owned().await.map_err(|_| {
                LehnzError::InvalidConfig("the batch limiter was closed".to_owned())
            })?;
            let (client, uri) = (self.clone(), uri.clone());
            tasks.spawn(async move {
                let _permit = permit;
                client.send_batch(uri, batch).await
            });
        }
        // A wrong key fails every batch alike: stop at the first and say so.
        let mut fatal = None;
        while let Some(joined) = tasks.join_next().await {
            let Ok(BatchResult { indices, result }) = joined else {
                continue;
            };
            match result {
                Ok(accepted) => summary.accepted += accepted,
                Err(err @ (LehnzError::Unauthorized { .. } | LehnzError::Forbidden { .. })) => {
                    tasks.abort_all();
                    fatal.get_or_insert(err);
                }
                Err(err) => {
                    if err.is_transient() && self.dead_letters_enabled() {
                        summary.dead_lettered += indices.len();
                    }
                    let reason = err.to_string();
                    summary
                        .rejected
                        .extend(indices.into_iter().map(|index| Rejected {
                            index,
                            id: records.get(index).and_then(Record::id).map(str::to_owned),
                            reason: reason.clone(),
                        }));
                    summary.errors.push(err);
                }
            }
        }
        if let Some(err) = fatal {
            return Err(err);
        }
        summary.rejected.sort_by_key(|r| r.index);
        Ok(summary)
    }

    async fn send_batch(&self, uri: Uri, batch: Batch) -> BatchResult {
        let sent = batch.indices.len();
        let result = self.send(uri, batch.body, sent).await;
        BatchResult {
            indices: batch.indices,
            result,
        }
    }

    async fn send(&self, uri: Uri, body: Bytes, sent: usize) -> Result<usize, LehnzError> {
        let mut request = Request::new(ReplayBody::from_bytes(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(API_KEY, self.inner.key.header_value().clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = self
            .inner
            .service
            .clone()
            .oneshot(request)
            .await
            .map_err(LehnzError::from_layers)?;
        let (parts, body) = response.into_parts();
        let body = read_reply(body)
            .await
            .map_err(|problem| LehnzError::UnexpectedResponse {
                status: parts.status,
                problem,
            })?;
        interpret(parts.status, &parts.headers, &body, sent)
    }

    /// Sends the dead letters in `sink` again through the client's stack, with the client's
    /// key (the stored copies have it redacted), and removes those Lehnz now accepts. See
    /// [`replay`](crate::dead_letter::replay).
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
        crate::dead_letter::replay(sink, service).await
    }

    fn dead_letters_enabled(&self) -> bool {
        self.inner
            .stats
            .as_ref()
            .is_some_and(super::stack::StackStats::dead_letters_enabled)
    }

    /// The kind of key the client uses.
    pub fn key_kind(&self) -> KeyKind {
        self.inner.key.kind()
    }
}

/// Reads a reply body, refusing more than [`MAX_REPLY_BYTES`].
async fn read_reply(mut body: UnsyncBoxBody<Bytes, BoxError>) -> Result<Bytes, String> {
    let mut data = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the reply failed: {e}"))?;
        if let Ok(chunk) = frame.into_data() {
            if data.len() + chunk.len() > MAX_REPLY_BYTES {
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
