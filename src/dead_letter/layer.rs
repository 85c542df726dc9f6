use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use http::{Request, Response};
use tower_service::Service;

use super::sink::{Sink, SinkError};
use super::{Config, DeadLetterService, DeadLetterStats, ReplayReport};
use crate::body::ReplayBody;
use crate::body::DEFAULT_MAX_BUFFERED;
use crate::classify::{Classify, DefaultClassifier};
use crate::error::BoxError;

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
                idempotency_header: HeaderName::from_static("idempotency-key"),
                stats: DeadLetterStats::default(),
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

    /// The sink.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.config.sink.clone()
    }

    /// The counters of every service made by this layer and its clones.
    pub fn stats(&self) -> DeadLetterStats {
        self.config.stats.clone()
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
        let report = super::replay(&*self.config.sink, service).await?;
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
