//! A multipart file upload through reqwest that survives a failed attempt: the retry opens the
//! file again and streams it again, and the file is never read into memory. Runs against a
//! loopback server that answers 503 to the first upload and 200 to the next, then exits.
//!
//! ```text
//! cargo run --example upload --features reqwest
//! ```
//!
//! reqwest's own `multipart::Form` cannot be retried this way: it is a one-shot body (a file
//! part is a stream, read once), and each form picks a random boundary, so a form built again
//! for the retry would carry a different `Content-Type` header. The example writes the
//! multipart framing itself around the file's bytes instead. The boundary is chosen once for
//! the upload, so every attempt carries the same header and the same bytes; it is random, not
//! a constant, so no file can be written to contain it and end its part early. The length of
//! the whole body is computed up front, so every attempt carries a `Content-Length`.
//!
//! A `BodySource` makes the body again for each attempt: it opens the file with
//! `tokio::fs::File::open` and streams the form's head, the file 64 KiB at a time, then the
//! closing boundary. It declares the body's length: a file that changes size between attempts
//! fails the call as a body error instead of sending a form that says one thing and carries
//! another.

use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;
use tower::{BoxError, ServiceExt};
use tower_outbound::body::{BodySource, ReplayBody};
use tower_outbound::reqwest::ReqwestService;
use tower_outbound::retry::Attempts;
use tower_outbound::Outbound;

/// The size of the uploaded file: a few MiB, and not a whole number of chunks.
const FILE_LEN: u64 = 5 * 1024 * 1024 + 123;
/// How much of the file is read and sent at a time.
const CHUNK: usize = 64 * 1024;

/// The file's byte at `offset`: a pattern the server checks without a copy of the file. Its
/// period (251) does not divide the chunk size, so a chunk lost or sent twice shows.
fn file_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Writes a file of `len` bytes in the system's temporary directory, a chunk at a time. It is
/// removed when the returned handle is closed or dropped.
fn write_file(len: u64) -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("upload-")
        .suffix(".bin")
        .tempfile()?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut written = 0;
    while written < len {
        let n = (len - written).min(CHUNK as u64);
        chunk.clear();
        chunk.extend((written..written + n).map(file_byte));
        file.write_all(&chunk)?;
        written += n;
    }
    file.flush()?;
    Ok(file)
}

/// The multipart/form-data framing around the file: a text field and the file part's headers
/// before its bytes, the closing boundary after them.
struct Form {
    boundary: String,
    head: Bytes,
    tail: Bytes,
}

impl Form {
    fn new(title: &str, filename: &str) -> Self {
        let boundary = format!("tower-outbound-{:016x}", rand::random::<u64>());
        let head = format!(
            "--{boundary}\r\n\
             Content-Disposition: form-data; name=\"title\"\r\n\
             \r\n\
             {title}\r\n\
             --{boundary}\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\
             \r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        Form {
            boundary,
            head: Bytes::from(head),
            tail: Bytes::from(tail),
        }
    }

    /// The request's `Content-Type`, the same on every attempt.
    fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The length of the whole body around a file of `file_len` bytes.
    fn len(&self, file_len: u64) -> u64 {
        self.head.len() as u64 + file_len + self.tail.len() as u64
    }

    /// A source that makes the body again for each attempt from the file at `path`.
    fn source(&self, path: &Path, file_len: u64) -> BodySource {
        let (head, tail) = (self.head.clone(), self.tail.clone());
        let description = format!("file {}", path.display());
        let path = path.to_owned();
        BodySource::new(move || {
            let (path, head, tail) = (path.clone(), head.clone(), tail.clone());
            async move {
                let file = tokio::fs::File::open(&path).await?;
                Ok::<_, std::io::Error>(MultipartBody::new(head, file, tail))
            }
        })
        .content_length(self.len(file_len))
        .describe(description)
    }
}

/// One attempt's body: the form's head, the bytes of a reader read a chunk at a time into one
/// buffer, then the form's tail.
struct MultipartBody<R> {
    head: Option<Bytes>,
    reader: Option<R>,
    tail: Option<Bytes>,
    buf: Box<[u8]>,
}

impl<R> MultipartBody<R> {
    fn new(head: Bytes, reader: R, tail: Bytes) -> Self {
        MultipartBody {
            head: Some(head),
            reader: Some(reader),
            tail: Some(tail),
            buf: vec![0; CHUNK].into_boxed_slice(),
        }
    }
}

impl<R: AsyncRead + Unpin> Body for MultipartBody<R> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(reader) = &mut this.reader {
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(reader).poll_read(cx, &mut read))?;
            if !read.filled().is_empty() {
                let chunk = Bytes::copy_from_slice(read.filled());
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            // The end of the file.
            this.reader = None;
        }
        Poll::Ready(this.tail.take().map(|tail| Ok(Frame::data(tail))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.reader.is_none() && self.tail.is_none()
    }
}

/// What the server saw of one upload: counts, never the bytes.
#[derive(Clone, Copy, Debug)]
struct Received {
    /// The status the server answered.
    status: StatusCode,
    /// The `Content-Length` the request declared.
    content_length: Option<u64>,
    /// Bytes of the request body.
    body_bytes: u64,
    /// Parts of the form.
    parts: u32,
    /// Bytes of the file part.
    file_bytes: u64,
    /// Bytes of the file part that were not the file's.
    wrong_bytes: u64,
    /// Whether the body was framed as its `Content-Type`'s boundary says: the first delimiter at
    /// its start, each part's headers ended, the close delimiter at its end.
    framed: bool,
}

impl Received {
    /// Whether the whole file arrived, in a well-framed form of two parts.
    fn has_whole_file(&self) -> bool {
        self.framed && self.parts == 2 && self.file_bytes == FILE_LEN && self.wrong_bytes == 0
    }
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "answered {} after reading {} bytes",
            self.status, self.body_bytes
        )?;
        match self.content_length {
            Some(len) => write!(f, " (Content-Length: {len})")?,
            None => write!(f, " (no Content-Length)")?,
        }
        write!(
            f,
            "; {} parts, {} file bytes ({} wrong), {}",
            self.parts,
            self.file_bytes,
            self.wrong_bytes,
            if self.framed { "framed" } else { "NOT framed" }
        )
    }
}

/// Where a streaming check of a form is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Before the first delimiter, which must open the body.
    Preamble,
    /// Just after a delimiter: a line end (a part follows) or `--` (the form is closed).
    Delimited,
    /// In a part's headers.
    Headers,
    /// In a part's content; `file` when its headers name a file.
    Content { file: bool },
    /// After the close delimiter, where nothing more may come.
    Closed,
    /// Not a well-framed form.
    Broken,
}

/// The longest part headers the server accepts.
const MAX_HEADERS: usize = 1024;

/// Checks a multipart/form-data body as it streams past. It holds only what it has not decided
/// on yet: the few bytes that may start a delimiter split across two chunks, or a part's
/// headers.
struct FormCheck {
    /// `\r\n--` and the boundary: what starts every delimiter.
    delimiter: Vec<u8>,
    pending: Vec<u8>,
    stage: Stage,
    body_bytes: u64,
    parts: u32,
    file_bytes: u64,
    wrong_bytes: u64,
}

impl FormCheck {
    fn new(boundary: Option<&str>) -> Self {
        FormCheck {
            delimiter: format!("\r\n--{}", boundary.unwrap_or_default()).into_bytes(),
            // The first delimiter opens the body without a line end before it: one is put in
            // front, so that every delimiter looks the same.
            pending: b"\r\n".to_vec(),
            stage: if boundary.is_some() {
                Stage::Preamble
            } else {
                Stage::Broken
            },
            body_bytes: 0,
            parts: 0,
            file_bytes: 0,
            wrong_bytes: 0,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.body_bytes += data.len() as u64;
        self.pending.extend_from_slice(data);
        self.advance(false);
    }

    fn finish(mut self, status: StatusCode, content_length: Option<u64>) -> Received {
        self.advance(true);
        Received {
            status,
            content_length,
            body_bytes: self.body_bytes,
            parts: self.parts,
            file_bytes: self.file_bytes,
            wrong_bytes: self.wrong_bytes,
            framed: self.stage == Stage::Closed,
        }
    }

    /// Decides on as much of the pending bytes as it can; at the end of the body, on all.
    fn advance(&mut self, at_end: bool) {
        loop {
            match self.stage {
                Stage::Preamble | Stage::Content { .. } => {
                    let found = find(&self.pending, &self.delimiter);
                    let content = match found {
                        Some(at) => at,
                        None if at_end => self.pending.len(),
                        // The last bytes may be the start of a delimiter: they wait.
                        None => self.pending.len().saturating_sub(self.delimiter.len() - 1),
                    };
                    match self.stage {
                        Stage::Preamble if content > 0 => {
                            self.stage = Stage::Broken;
                            continue;
                        }
                        Stage::Content { file: true } => {
                            let offset = self.file_bytes;
                            self.wrong_bytes += self.pending[..content]
                                .iter()
                                .zip(offset..)
                                .filter(|&(&byte, at)| byte != file_byte(at))
                                .count() as u64;
                            self.file_bytes += content as u64;
                        }
                        _ => {}
                    }
                    self.pending.drain(..content);
                    match found {
                        Some(_) => {
                            self.pending.drain(..self.delimiter.len());
                            self.stage = Stage::Delimited;
                        }
                        // The body ended inside a part.
                        None if at_end => self.stage = Stage::Broken,
                        None => return,
                    }
                }
                Stage::Delimited => {
                    if self.pending.starts_with(b"\r\n") {
                        self.pending.drain(..2);
                        self.stage = Stage::Headers;
                    } else if self.pending.starts_with(b"--\r\n") {
                        self.pending.drain(..4);
                        self.stage = Stage::Closed;
                    } else if self.pending.len() < 4 && !at_end {
                        return;
                    } else {
                        self.stage = Stage::Broken;
                    }
                }
                Stage::Headers => match find(&self.pending, b"\r\n\r\n") {
                    Some(at) => {
                        let file = find(&self.pending[..at], b"filename=").is_some();
                        self.parts += 1;
                        self.pending.drain(..at + 4);
                        self.stage = Stage::Content { file };
                    }
                    None if at_end || self.pending.len() > MAX_HEADERS => {
                        self.stage = Stage::Broken;
                    }
                    None => return,
                },
                Stage::Closed if !self.pending.is_empty() => self.stage = Stage::Broken,
                Stage::Closed => return,
                Stage::Broken => {
                    self.pending.clear();
                    return;
                }
            }
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The boundary of a `multipart/form-data` content type, if it has a valid one (1 to 70
/// characters, RFC 2046).
fn boundary_of(content_type: &str) -> Option<&str> {
    let (essence, params) = content_type.split_once(';')?;
    if !essence.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let boundary = params.split(';').find_map(|param| {
        let (name, value) = param.trim().split_once('=')?;
        name.eq_ignore_ascii_case("boundary")
            .then(|| value.trim_matches('"'))
    })?;
    (1..=70).contains(&boundary.len()).then_some(boundary)
}

/// A server on 127.0.0.1 that reads each upload to its end, checking it as it streams past,
/// and answers 503 to the first upload and 200 to the next. It returns its URL and what it saw
/// of each upload.
async fn upload_server() -> std::io::Result<(String, Arc<Mutex<Vec<Received>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/upload", listener.local_addr()?);
    let uploads: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = uploads.clone();
    let count = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, count) = (seen.clone(), count.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (seen, count) = (seen.clone(), count.clone());
                async move {
                    let received = receive(req, &count).await;
                    let status = received.status;
                    seen.lock().unwrap().push(received);
                    let mut response = Response::new(Empty::<Bytes>::new());
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((url, uploads))
}

/// Reads one upload to its end and decides the answer: 503 to the first, 200 after.
async fn receive(req: Request<Incoming>, count: &AtomicU32) -> Received {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let content_length = header(CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let mut check = FormCheck::new(header(CONTENT_TYPE).and_then(boundary_of));
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame.map(Frame::into_data) {
            Ok(Ok(data)) => check.feed(&data),
            Ok(Err(_trailers)) => {}
            // The client went away: what arrived is checked as it is.
            Err(_) => break,
        }
    }
    let status = if count.fetch_add(1, Ordering::SeqCst) == 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    check.finish(status, content_length)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let file = write_file(FILE_LEN)?;
    let path = file.path().to_owned();
    let file_len = tokio::fs::metadata(&path).await?.len();
    let (url, uploads) = upload_server().await?;

    let form = Form::new("quarterly export", "export.bin");
    let total = form.len(file_len);
    println!(
        "uploading {} ({file_len} bytes) as a {total}-byte form, boundary {}",
        path.display(),
        form.boundary
    );
    // reqwest's own retries are off, so each attempt the server sees is one the stack counts.
    // The general stack allows 10 s per attempt and 30 s per call, sending the body included:
    // a larger file over a slower link needs `.attempt_timeout(..)` and `.deadline(..)` raised.
    let client = Outbound::new().service(ReqwestService::new(
        reqwest::Client::builder()
            .retry(reqwest::retry::never())
            .build()?,
    ));
    let request = Request::post(&url)
        .header(CONTENT_TYPE, form.content_type())
        .body(ReplayBody::from(form.source(&path, file_len)))?;
    let response = client.oneshot(request).await?;

    let (attempts, waited) = response
        .extensions()
        .get::<Attempts>()
        .map_or((1, Duration::ZERO), |a| (a.count, a.waited));
    println!(
        "{} after {attempts} attempts ({waited:?} waited between them)",
        response.status()
    );
    let uploads = uploads.lock().unwrap().clone();
    for (n, upload) in uploads.iter().enumerate() {
        println!("attempt {}: {upload}", n + 1);
    }

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts, 2, "the 503, then the retry");
    assert_eq!(uploads.len(), 2, "one upload per attempt");
    let retry = &uploads[1];
    assert!(
        retry.has_whole_file(),
        "the retry carried the whole file: {retry:?}"
    );
    assert_eq!(retry.body_bytes, total);
    assert_eq!(retry.content_length, Some(total), "with its Content-Length");

    file.close()?;
    assert!(!path.exists());
    println!("removed {}", path.display());
    Ok(())
}
