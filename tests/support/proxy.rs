//! A loopback fault proxy: a small HTTP/1.1 relay on 127.0.0.1 between a client and a server
//! that, per request, chosen by a seeded RNG, resets the connection (before or after
//! forwarding), stalls past the client's timeout, truncates the reply mid-body, or answers a
//! 429/503 of its own with odd and hostile headers. It stops (every connection included) when
//! dropped.
//!
//! It parses just enough HTTP/1.1: a head of at most 64 KiB, then a `Content-Length` body (a
//! response without one is read to the end of the stream). Anything else (a chunked body, a
//! malformed head) closes the connection. Each fault is decided from the seed, the request's
//! body and how many times that body was seen before, so the same run gives the same faults
//! to the same requests whatever the order in which concurrent requests arrive.
#![allow(dead_code, unreachable_pub)]

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 8 * 1024 * 1024;

/// What the proxy does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward and relay the reply.
    Pass,
    /// Read the request, close without forwarding or answering.
    ResetBeforeForward,
    /// Forward, read the reply, close without relaying it: processed, then dropped.
    ResetAfterForward,
    /// Read the request and answer nothing until the client gives up (or the stall cap).
    StallBeforeForward,
    /// Forward, then answer nothing until the client gives up (or the stall cap).
    StallAfterForward,
    /// Forward, relay the reply's head and half its body, then close.
    Truncate,
    /// Answer this status (429 or 503) without forwarding, with hostile headers.
    Inject(u16),
}

/// Which hostile headers injected replies carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// No rate-limit headers at all: a plain status and body.
    None,
    /// Odd and malformed, but naming no long pause: negative, garbage, far-past dates,
    /// non-UTF-8 bytes, duplicates, `RateLimit-*` with thousands of items.
    Odd,
    /// Only pauses of a year or more: huge `Retry-After`, far-future dates, overflowing
    /// numbers, `remaining: 0` with a reset in the year 2096.
    Pausing,
}

/// Per-request fault rates (each a probability; the rest passes).
#[derive(Clone, Debug)]
pub struct Faults {
    pub reset_before: f64,
    pub reset_after: f64,
    pub stall_before: f64,
    pub stall_after: f64,
    pub truncate: f64,
    pub status_429: f64,
    pub status_503: f64,
    /// The longest a stalled connection is held (the client should give up sooner).
    pub stall_cap: Duration,
    pub hostile: Hostile,
}

impl Faults {
    pub fn none() -> Self {
        Faults {
            reset_before: 0.0,
            reset_after: 0.0,
            stall_before: 0.0,
            stall_after: 0.0,
            truncate: 0.0,
            status_429: 0.0,
            status_503: 0.0,
            stall_cap: Duration::from_secs(5),
            hostile: Hostile::Odd,
        }
    }

    fn pick(&self, rng: &mut StdRng) -> Fault {
        let roll: f64 = rng.random();
        let table = [
            (self.reset_before, Fault::ResetBeforeForward),
            (self.reset_after, Fault::ResetAfterForward),
            (self.stall_before, Fault::StallBeforeForward),
            (self.stall_after, Fault::StallAfterForward),
            (self.truncate, Fault::Truncate),
            (self.status_429, Fault::Inject(429)),
            (self.status_503, Fault::Inject(503)),
        ];
        let mut edge = 0.0;
        for (rate, fault) in table {
            edge += rate;
            if roll < edge {
                return fault;
            }
        }
        Fault::Pass
    }
}

/// Counts of what the proxy did, by fault.
#[derive(Debug, Default)]
pub struct ProxyStats {
    counts: Mutex<HashMap<Fault, u64>>,
    /// Connections that ended in an I/O or parse error (not a planned fault).
    pub errors: AtomicU64,
}

impl ProxyStats {
    pub fn count(&self, fault: Fault) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(&fault)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.lock().unwrap().values().sum()
    }

    /// Requests that met any fault.
    pub fn faulted(&self) -> u64 {
        self.total() - self.count(Fault::Pass)
    }

    fn record(&self, fault: Fault) {
        *self.counts.lock().unwrap().entry(fault).or_default() += 1;
    }
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    seed: u64,
    seen: Mutex<HashMap<u64, u64>>,
    stats: Arc<ProxyStats>,
}

impl Shared {
    /// The RNG of one request: the seed, the body, and how many times the body came before.
    fn rng_for(&self, body: &[u8]) -> StdRng {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let digest = hasher.finish();
        let nth = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(digest).or_default();
            *n += 1;
            *n
        };
        let mut hasher = DefaultHasher::new();
        (self.seed, digest, nth).hash(&mut hasher);
        StdRng::seed_from_u64(hasher.finish())
    }
}

/// The running proxy. Dropping it stops the accept loop and every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 in front of `upstream`.
    pub async fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(faults),
            seed,
            seen: Mutex::default(),
            stats: stats.clone(),
        });
        let handle = shared.clone();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops the set, which aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { return };
                        let shared = shared.clone();
                        connections.spawn(async move {
                            if serve(stream, &shared).await.is_err() {
                                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        FaultProxy {
            addr,
            stats,
            shared: handle,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the faults of the requests that arrive from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

/// One HTTP/1.1 message: its head (up to and including the blank line) and its body.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
    close: bool,
}

/// A stream with the bytes read past the last message.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more; `false` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next message; `None` when the stream ends cleanly before one starts. A response
    /// without `Content-Length` runs to the end of the stream.
    async fn read_message(&mut self, is_response: bool) -> io::Result<Option<Message>> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("head too large"));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(invalid("stream ended inside a head"))
                };
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end).collect();
        let text = std::str::from_utf8(&head).map_err(|_| invalid("non-UTF-8 head"))?;
        let mut length = None;
        let mut close = false;
        for line in text.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| invalid("bad length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid("chunked bodies are not supported"));
            } else if name.eq_ignore_ascii_case("connection") {
                close |= value.eq_ignore_ascii_case("close");
            }
        }
        let body = match length {
            Some(n) if n > MAX_BODY => return Err(invalid("body too large")),
            Some(n) => {
                while self.buf.len() < n {
                    if !self.fill().await? {
                        return Err(invalid("stream ended inside a body"));
                    }
                }
                self.buf.drain(..n).collect()
            }
            None if is_response && !no_body_status(text) => {
                while self.fill().await? {
                    if self.buf.len() > MAX_BODY {
                        return Err(invalid("body too large"));
                    }
                }
                close = true;
                std::mem::take(&mut self.buf)
            }
            None => Vec::new(),
        };
        Ok(Some(Message { head, body, close }))
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Waits until the peer closes (it gave up), at most `cap`.
    async fn hold(&mut self, cap: Duration) {
        let _ = tokio::time::timeout(cap, async {
            while let Ok(true) = self.fill().await {
                self.buf.clear();
            }
        })
        .await;
    }
}

fn no_body_status(head: &str) -> bool {
    let status = head.split(' ').nth(1).unwrap_or("");
    status.starts_with('1') || status == "204" || status == "304"
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Serves one client connection, request after request, until it ends or a fault ends it.
async fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut client = Conn::new(stream);
    let mut upstream: Option<Conn> = None;
    while let Some(request) = client.read_message(false).await? {
        let mut rng = shared.rng_for(&request.body);
        let faults = shared.faults.lock().unwrap().clone();
        let fault = faults.pick(&mut rng);
        shared.stats.record(fault);
        match fault {
            Fault::ResetBeforeForward => return Ok(()),
            Fault::StallBeforeForward => {
                client.hold(faults.stall_cap).await;
                return Ok(());
            }
            Fault::Inject(status) => {
                let reply = injected(status, faults.hostile, &mut rng);
                client.write(&reply).await?;
                if request.close {
                    return Ok(());
                }
                continue;
            }
            Fault::Pass | Fault::ResetAfterForward | Fault::StallAfterForward | Fault::Truncate => {
            }
        }
        let mut conn = match upstream.take() {
            Some(conn) => conn,
            None => Conn::new(TcpStream::connect(shared.upstream).await?),
        };
        conn.write(&request.head).await?;
        conn.write(&request.body).await?;
        let Some(response) = conn.read_message(true).await? else {
            return Err(invalid("upstream closed without a reply"));
        };
        if !response.close {
            upstream = Some(conn);
        }
        match fault {
            Fault::ResetAfterForward => return Ok(()),
            Fault::StallAfterForward => {
                client.hold(faults.stall_cap).await;
                return Ok(());
            }
            Fault::Truncate => {
                client.write(&response.head).await?;
                let half = response.body.len() / 2;
                client.write(&response.body[..half]).await?;
                return Ok(());
            }
            _ => {
                client.write(&response.head).await?;
                client.write(&response.body).await?;
                if response.close || request.close {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// A 429 or 503 of the proxy's own, with a Lehnz-style JSON body and hostile headers.
fn injected(status: u16, hostile: Hostile, rng: &mut StdRng) -> Vec<u8> {
    let (reason, code) = match status {
        429 => ("Too Many Requests", "rate_limited"),
        _ => ("Service Unavailable", "service_unavailable"),
    };
    let body = format!(r#"{{"error":"{code}","message":"injected by the fault proxy"}}"#);
    let mut head =
        format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n").into_bytes();
    let mut sets = match hostile {
        Hostile::None => vec![Vec::new()],
        Hostile::Odd => odd_headers(),
        Hostile::Pausing => pausing_headers(),
    };
    let pick = rng.random_range(0..sets.len());
    let headers = sets.swap_remove(pick);
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(&value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    head.extend_from_slice(body.as_bytes());
    head
}

type Headers = Vec<(&'static str, Vec<u8>)>;

fn many(item: &str, n: usize) -> Vec<u8> {
    vec![item; n].join(", ").into_bytes()
}

/// Odd headers that name no long pause.
fn odd_headers() -> Vec<Headers> {
    vec![
        vec![("retry-after", b"-5".to_vec())],
        vec![("retry-after", b"soon, please".to_vec())],
        vec![("retry-after", b"1.5".to_vec())],
        vec![("retry-after", b"Thu, 01 Jan 1970 00:00:00 GMT".to_vec())],
        vec![("retry-after", b"Sunday, 06-Nov-94 08:49:37 GMT".to_vec())],
        vec![
            ("retry-after", b"0".to_vec()),
            ("retry-after", b"1".to_vec()),
        ],
        vec![
            ("retry-after", b"\xff\xfe1".to_vec()),
            ("ratelimit-reset", b"\xc3\x28".to_vec()),
            ("ratelimit-remaining", b"\x80\x80".to_vec()),
        ],
        vec![
            ("ratelimit-limit", many("1000", 3000)),
            ("ratelimit-remaining", many("500", 3000)),
            ("ratelimit-reset", many("1", 3000)),
        ],
        vec![
            ("ratelimit", many(r#""default";r=500;t=1"#, 2000)),
            ("ratelimit-policy", many(r#""default";q=1000;w=900"#, 2000)),
        ],
        vec![
            ("ratelimit", many("r=;t=;;;=,", 4000)),
            ("ratelimit-policy", many(r#""\"";q=-1;w=1e999"#, 2000)),
        ],
        vec![
            ("x-ratelimit-remaining", b"-1".to_vec()),
            ("x-ratelimit-limit", b"abc".to_vec()),
            ("x-ratelimit-reset", b"-100".to_vec()),
        ],
        vec![
            ("ratelimit-remaining", b"3".to_vec()),
            ("ratelimit-remaining", b"7".to_vec()),
            ("ratelimit-reset", b"1".to_vec()),
            ("ratelimit-reset", b"0".to_vec()),
            ("retry-after", b"".to_vec()),
        ],
        vec![("retry-after", "١".as_bytes().to_vec())],
    ]
}

/// Headers that name pauses of a year or more.
fn pausing_headers() -> Vec<Headers> {
    vec![
        vec![("retry-after", b"31536000".to_vec())],
        vec![("retry-after", b"Fri, 31 Dec 9999 23:59:59 GMT".to_vec())],
        vec![("retry-after", b"18446744073709551616000".to_vec())],
        vec![
            ("ratelimit-remaining", b"0".to_vec()),
            ("ratelimit-reset", b"4000000000".to_vec()),
            ("x-ratelimit-reset", b"99999999999".to_vec()),
        ],
    ]
}
