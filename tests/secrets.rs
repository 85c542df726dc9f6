//! Secrets in URIs never reach dead letters, log lines or error text. In a test binary of its
//! own: the log capture uses a thread-local subscriber, and tracing caches which call sites
//! are enabled process-wide, so tests logging on other threads of the same binary could make
//! the capture miss lines.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_outbound::body::ReplayBody;
use tower_outbound::{DeadLetterLayer, MemorySink, Outbound};

fn reply(status: u16) -> Response<()> {
    Response::builder().status(status).body(()).unwrap()
}

fn get(uri: &str) -> Request<String> {
    Request::get(uri).body(String::new()).unwrap()
}

/// Log lines written while `f` runs, as text.
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = buffer.clone();
            move || LogWriter(buffer.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        (Logs(buffer), guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn uri_secrets_stay_out_of_dead_letters_logs_and_errors() {
    let (logs, _guard) = Logs::capture();
    let sink = MemorySink::new();
    let down = tower::service_fn(|_req: Request<ReplayBody>| async {
        Ok::<_, std::io::Error>(reply(503))
    });
    let client = Outbound::background()
        .dead_letters(Some(DeadLetterLayer::new(sink.clone())))
        .service(down);
    let uri =
        "https://bob:hunter2@api.example.com/v1/items?page=2&api_key=sk_live_SECRET&sig=SIGNED";
    let response = client.clone().oneshot(get(uri)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter.uri,
        "https://api.example.com/v1/items?page=2&api_key=[redacted]&sig=[redacted]"
    );
    assert!(letter.uri_redacted);
    assert!(
        letter.to_request().is_none(),
        "a redacted URI is not replayed as is"
    );
    let stored = serde_json::to_string(letter).unwrap();
    let logged = logs.text();
    for secret in ["hunter2", "bob", "sk_live_SECRET", "SIGNED"] {
        assert!(!stored.contains(secret), "letter holds {secret}: {stored}");
        assert!(!logged.contains(secret), "logs hold {secret}: {logged}");
    }
    assert!(
        logged.contains("retrying request"),
        "the retry log line was checked"
    );

    // An error's text and debug form carry the upstream without userinfo.
    let refused = tower::service_fn(|_req: Request<ReplayBody>| async {
        Err::<Response<()>, _>(std::io::Error::other("connection refused"))
    });
    let err = Outbound::user_facing()
        .service(refused)
        .oneshot(get(uri))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("bob@"),
        "{text}"
    );
    assert_eq!(err.upstream().unwrap().as_str(), "api.example.com");
}
