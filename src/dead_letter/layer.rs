use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use http::{Request, Response};
use tower_service::Service;

use super::sink::{Sink, SinkError};
use super::{Config, DeadLetter, DeadLetterService, DeadLetterStats, ReplayReport, Writer};
use crate::body::ReplayBody;
use crate::body::DEFAULT_MAX_BUFFERED;
use crate::classify::{Classify, DefaultClassifier};
use crate::error::BoxError;
use crate::redact::Redactor;

/// Records every call that finally fails as a [`DeadLetter`](super::DeadLetter) in a
/// [`Sink`]. See the [module docs](super).
///
/// Clones share the sink and the counters.
#[derive(Clone, Debug)]
pub struct DeadLetterLayer<C = DefaultClassifier> {
    config: Arc<Config>,
    classify: C,
}

impl DeadLetterLayer {
    /// Dead letters into `sink`, with bodies kept up to 1 MiB and `Authorization`,
    /// `Proxy-Authorization`, `X-API-KEY`, `Cookie` and `Set-Cookie` redacted.
    pub fn new(sink: impl Sink) -> Self {
        Self::with_sink(Arc::new(sink))
    }

    /// As [`new`](Self::new), with a sink already shared.
    pub fn with_sink(sink: Arc<dyn Sink>) -> Self {
        DeadLetterLayer {
            config: Arc::new(Config {
                sink,
                max_body: DEFAULT_MAX_BUFFERED,
                redact: vec![
                    http::header::AUTHORIZATION,
                    http::header::PROXY_AUTHORIZATION,
                    HeaderName::from_static("x-api-key"),
                    http::header::COOKIE,
                    http::header::SET_COOKIE,
                ],
                redactor: Redactor::default(),
                keep_secret_uris: false,
                record_refusals: true,
                idempotency_header: HeaderName::from_static("idempotency-key"),
                stats: DeadLetterStats::default(),
                writer: Arc::new(Writer::default()),
            }),
            classify: DefaultClassifier,
        }
    }
}

impl<C> DeadLetterLayer<C> {
    fn update(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The most body bytes kept (default 1 MiB). A larger body is still sent whole; if that
    /// call fails, its dead letter says the body was not kept.
    /// Any value is accepted: memory is only taken as the body arrives.
    pub fn max_body(self, bytes: usize) -> Self {
        self.update(|c| c.max_body = bytes)
    }

    /// Also redacts this header (values marked sensitive, as tower-http's
    /// `SetSensitiveHeaders` does, are always redacted).
    pub fn redact(self, name: HeaderName) -> Self {
        self.update(|c| {
            if !c.redact.contains(&name) {
                c.redact.push(name);
            }
        })
    }

    /// Redacts exactly these headers, replacing the defaults.
    pub fn redact_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.update(|c| c.redact = names.into_iter().collect())
    }

    /// Also redacts the values of query parameters whose names contain `fragment`
    /// (case-insensitive), besides [`redact::DEFAULT_SECRET_PARAMS`](crate::redact::DEFAULT_SECRET_PARAMS).
    pub fn redact_query_param(self, fragment: &str) -> Self {
        self.update(|c| c.redactor = c.redactor.clone().param(fragment))
    }

    /// Keeps the URI of each letter whole, userinfo and secret query values included, so a
    /// letter for an API that takes its credentials in the URI can be replayed (default
    /// `false`: the stored URI is redacted, and such a letter is skipped by replay). The
    /// secrets are then stored **in clear** in the sink: use it only with a sink whose storage
    /// is as protected as the credentials themselves. Logs show the redacted URI either way.
    pub fn keep_secret_uris(self, keep: bool) -> Self {
        self.update(|c| c.keep_secret_uris = keep)
    }

    /// Whether calls refused before reaching the upstream — circuit open, throttled past its
    /// wait, held by the Retry-After gate past its wait — get a letter (default `true`: the
    /// caller may not try again, and nothing is silently lost). Turn it off when every caller
    /// reschedules refused calls itself (a queue consumer that nacks): during a long outage
    /// each refused call would otherwise add a letter.
    pub fn record_refusals(self, record: bool) -> Self {
        self.update(|c| c.record_refusals = record)
    }

    /// The header holding the idempotency key kept in each record (default
    /// `Idempotency-Key`).
    pub fn idempotency_header(self, name: HeaderName) -> Self {
        self.update(|c| c.idempotency_header = name)
    }

    /// Decides which outcomes are failures worth a dead letter (default [`DefaultClassifier`]:
    /// errors, 429, 5xx; never other 4xx, which sending again cannot fix).
    pub fn classify<C2: Classify>(self, classify: C2) -> DeadLetterLayer<C2> {
        DeadLetterLayer {
            config: self.config,
            classify,
        }
    }

    /// What every service of this layer shares.
    pub(crate) fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The sink.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.config.sink.clone()
    }

    /// The counters of every service made by this layer and its clones.
    pub fn stats(&self) -> DeadLetterStats {
        self.config.stats.clone()
    }

    /// Letters handed to the sink whose write has not finished yet.
    pub fn pending(&self) -> usize {
        self.config.writer.pending()
    }

    /// Waits until every letter handed to the sink so far is written (or failed to be).
    ///
    /// Letters are written by tasks of their own, so a caller that drops its future after the
    /// final failure does not lose the letter; but a runtime that shuts down cancels those
    /// tasks. Call `flush` before shutting down (after the last call returned) so no letter
    /// is lost then.
    pub async fn flush(&self) {
        self.config.writer.flush().await
    }

    /// Dead letters still kept in the sink.
    pub async fn remaining(&self) -> Result<usize, SinkError> {
        self.config.sink.count().await
    }

    /// [`replay`](super::replay)s the letters of this layer's sink through `service`, and
    /// counts what was sent again and what succeeded in [`stats`](Self::stats).
    pub async fn replay<S, ResB>(&self, service: S) -> Result<ReplayReport, SinkError>
    where
        S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone,
        S::Error: Into<BoxError>,
    {
        self.replay_matching(service, |_: &DeadLetter| true).await
    }

    /// [`replay_matching`](super::replay_matching) on this layer's sink, counted in
    /// [`stats`](Self::stats).
    pub async fn replay_matching<S, ResB, F>(
        &self,
        service: S,
        filter: F,
    ) -> Result<ReplayReport, SinkError>
    where
        S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone,
        S::Error: Into<BoxError>,
        F: Fn(&DeadLetter) -> bool,
    {
        let report = super::replay_matching(&*self.config.sink, service, filter).await?;
        self.config.stats.add(2, report.replayed);
        self.config.stats.add(3, report.succeeded);
        Ok(report)
    }
}

impl<S, C: Clone> Layer<S> for DeadLetterLayer<C> {
    type Service = DeadLetterService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetterService::new(inner, self.config.clone(), self.classify.clone())
    }
}
