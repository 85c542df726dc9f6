//! The running simulator: the accept loop, one task per connection, and the way it stops.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::builder::Builder;
use super::handler;
use super::state::{OrgKeys, Shared, SimStats};

/// How long [`Simulator::shutdown`] lets requests in flight finish before closing their
/// connections.
const GRACE: Duration = Duration::from_secs(5);

/// A running Lehnz simulator on 127.0.0.1; see the [module docs](super).
///
/// Dropping it stops the server: the listener closes, idle connections close, and requests in
/// flight are answered first. [`shutdown`](Self::shutdown) does the same and waits for it.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Never sent on: dropping it is the signal to stop.
    stop: watch::Sender<()>,
    server: JoinHandle<()>,
}

impl Simulator {
    /// A [`Builder`] with the defaults Lehnz documents.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn serve(listener: TcpListener, shared: Arc<Shared>) -> io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(());
        let server = tokio::spawn(accept(listener, Arc::clone(&shared), stopped));
        Ok(Simulator {
            addr,
            shared,
            stop,
            server,
        })
    }

    /// The address the simulator listens on (127.0.0.1 and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The keys made for an organization registered with [`Builder::org`]; `None` for other
    /// names.
    pub fn keys(&self, org: &str) -> Option<OrgKeys> {
        self.shared.org_keys(org)
    }

    /// Revokes `key`: every later request with it gets 401. Returns false when no such key is
    /// registered.
    pub fn revoke(&self, key: &str) -> bool {
        self.shared.lock().revoke(key)
    }

    /// What was stored and answered so far.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Whether an event with this `context.client_event_id` was stored, for any organization.
    /// Works whether or not bodies are [kept](Builder::keep_bodies).
    pub fn has_event_id(&self, client_event_id: &str) -> bool {
        self.shared.has_event_id(client_event_id)
    }

    /// The stored events, as sent, in the order they were stored (all organizations).
    ///
    /// Empty unless the simulator was built with [`Builder::keep_bodies`]`(true)`: by default
    /// it keeps only ids and counts (see [`stats`](Self::stats) and
    /// [`has_event_id`](Self::has_event_id)).
    pub fn events(&self) -> Vec<Value> {
        self.shared.events()
    }

    /// The stored items, one per organization and `item_id`, the latest upsert of each;
    /// organization by organization, by `item_id`. Empty unless bodies are
    /// [kept](Builder::keep_bodies).
    pub fn items(&self) -> Vec<Value> {
        self.shared.items()
    }

    /// The stored users, one per organization and `user_id`, the latest upsert of each;
    /// organization by organization, by `user_id`. Empty unless bodies are
    /// [kept](Builder::keep_bodies).
    pub fn users(&self) -> Vec<Value> {
        self.shared.users()
    }

    /// Takes the simulator down for `lasting` (at most an hour) from now, as if its host were
    /// unreachable: new connections are closed at once, requests on open connections get no
    /// response (and store nothing), every endpoint included. What it stored and counted is
    /// kept. Calling it during an outage lengthens the outage if `lasting` ends later.
    /// `POST /_sim/outage?secs=N` does the same over HTTP.
    pub fn outage(&self, lasting: Duration) {
        self.shared.outage(tokio::time::Instant::now(), lasting);
    }

    /// Stops accepting, lets requests in flight finish (up to 5 seconds, then closes their
    /// connections) and returns when the server is gone.
    pub async fn shutdown(self) {
        let Simulator { stop, server, .. } = self;
        drop(stop);
        // The server task only ends by itself; a join error means the runtime is going away.
        let _ = server.await;
    }
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Accepts connections until the [`Simulator`] is dropped or shut down, then winds them down.
async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if shared.in_outage(tokio::time::Instant::now()) => {
                    // Down: the connection is closed at once, without a byte.
                    shared.record_refused();
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, Arc::clone(&shared), stopped.clone()));
                }
                Err(e) => {
                    // Per-connection failures (aborted handshakes) and fd exhaustion: wait a
                    // moment rather than spin.
                    tracing::debug!(error = %e, "lehnz simulator: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(GRACE, drain).await.is_err() {
        tracing::debug!("lehnz simulator: closing connections still busy after the grace period");
    }
    // Dropping the set aborts the connections still running.
}

/// Serves one connection with HTTP/1.1 keep-alive until the client closes it, chaos drops it,
/// or the simulator stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<()>,
) {
    // Small JSON answers: send them at once.
    let _ = stream.set_nodelay(true);
    let ip = peer.ip();
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { handler::handle(&shared, ip, req).await }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "lehnz simulator: connection ended");
    }
}
