//! Redis as teams run it: TLS with a private CA, and ACL users — against real `redis-server`s
//! on 127.0.0.1 with certificates made at test time by `openssl`. What can be known before the
//! first request is a typed error at connect, and no password reaches an error's text.
#![cfg(feature = "redis-tls")]

#[path = "support/redis.rs"]
mod redis_server;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::{Request, Response};
use redis_server::RedisServer;
use tower::ServiceExt;
use tower_outbound::redis::{RedisStore, RedisStreamSink, RedisTls, SetupErrorKind};
use tower_outbound::Sink;
use tower_outbound::ThrottleLayer;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed to make the test certificates");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA named `name` (`name.crt`, `name.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A server certificate for 127.0.0.1 signed by the CA `ca` (`server.crt`, `server.key`).
fn server_certificate(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    );
}

/// A Redis speaking TLS on its own port, with a certificate from the CA `ca` in `dir`.
fn tls_server(dir: &Path) -> (RedisServer, u16) {
    let tls_port = RedisServer::free_port();
    let path = |f: &str| dir.join(f).display().to_string();
    let server = RedisServer::start_with(vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path("server.crt"),
        "--tls-key-file".into(),
        path("server.key"),
        "--tls-ca-cert-file".into(),
        path("ca.crt"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]);
    (server, tls_port)
}

/// Two requests in a minute, shared through `store`; a third is refused at once.
fn throttled(
    store: RedisStore,
) -> impl tower::Service<Request<String>, Response = Response<()>, Error = tower_outbound::Error> + Clone
{
    tower::ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(2, Duration::from_secs(60))
                .max_wait(Duration::ZERO)
                .store(store),
        )
        .service(tower::service_fn(|_req: Request<_>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }))
}

fn get() -> Request<String> {
    Request::get("http://api.example.com/")
        .body(String::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_over_tls_with_a_private_ca_share_one_bucket() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path(), "ca");
    server_certificate(dir.path(), "ca");
    let (_server, tls_port) = tls_server(dir.path());
    let pem = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let tls = RedisTls::new().ca_pem(pem);

    let a = RedisStore::connect_tls(&url, &tls)
        .await
        .unwrap()
        .prefix("tls");
    let b = RedisStore::connect_tls(&url, &tls)
        .await
        .unwrap()
        .prefix("tls");

    throttled(a.clone()).oneshot(get()).await.unwrap();
    throttled(b.clone()).oneshot(get()).await.unwrap();
    let third = throttled(a.clone()).oneshot(get()).await.unwrap_err();
    assert!(third.is_throttled(), "{third}");
    assert_eq!(
        a.stats().redis_decisions() + b.stats().redis_decisions(),
        3,
        "every decision came from Redis over TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_a_typed_tls_error_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path(), "ca");
    ca(dir.path(), "other");
    server_certificate(dir.path(), "ca");
    let (_server, tls_port) = tls_server(dir.path());
    let other = std::fs::read(dir.path().join("other.crt")).unwrap();

    let err = RedisStore::connect_tls(
        &format!("rediss://127.0.0.1:{tls_port}/"),
        &RedisTls::new().ca_pem(other),
    )
    .await
    .unwrap_err();

    assert_eq!(err.kind(), SetupErrorKind::Tls, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_work_with_their_permissions_and_are_refused_at_connect_without_them() {
    let server = RedisServer::start();
    add_users(
        &server,
        &[
            // Everything the store does.
            vec!["worker", "on", ">worker-pw-1", "~*", "+@all"],
            // No scripting.
            vec!["reader", "on", ">reader-pw-2", "~*", "+@all", "-@scripting"],
            // Scripts, but not on the store's keys.
            vec!["elsewhere", "on", ">elsewhere-pw-3", "~other:*", "+@all"],
            // All but one command a reply's report runs (in its script).
            vec![
                "no-hgetall",
                "on",
                ">no-hgetall-pw-5",
                "~*",
                "+@all",
                "-hgetall",
            ],
        ],
    )
    .await;
    let url = |user: &str, password: &str| {
        format!(
            "redis://{user}:{password}@127.0.0.1:{}/",
            server.addr().port()
        )
    };

    let store = RedisStore::connect(&url("worker", "worker-pw-1"))
        .await
        .unwrap();
    throttled(store.clone()).oneshot(get()).await.unwrap();
    assert_eq!(store.stats().redis_decisions(), 1);

    for (user, password, kind) in [
        ("reader", "reader-pw-2", SetupErrorKind::NoPermission),
        ("elsewhere", "elsewhere-pw-3", SetupErrorKind::NoPermission),
        (
            "no-hgetall",
            "no-hgetall-pw-5",
            SetupErrorKind::NoPermission,
        ),
        ("worker", "not-the-pw-4", SetupErrorKind::Auth),
    ] {
        let err = RedisStore::connect(&url(user, password)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{user}: {err}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(password),
            "{user}: the password is shown: {shown}"
        );
        assert!(
            shown.contains("redis://127.0.0.1:"),
            "{user}: the server is named: {shown}"
        );
        if kind == SetupErrorKind::NoPermission {
            assert!(
                shown.contains("'script|load'")
                    || shown.contains("keys")
                    || shown.contains("@user_script"),
                "{user}: the refused command or key is named: {shown}"
            );
        }
    }
}

/// The dead-letter stream is checked at start as the store is: a user that cannot add to,
/// read or remove from it, or a key of another type under its name, is a typed error before
/// the first letter, not a letter refused on the way to being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_stream_the_user_cannot_write_is_refused_at_start() {
    let server = RedisServer::start();
    add_users(
        &server,
        &[
            vec!["worker", "on", ">worker-pw-1", "~*", "+@all"],
            vec!["reader", "on", ">reader-pw-2", "~*", "+@all", "-@scripting"],
            vec!["no-xadd", "on", ">no-xadd-pw-3", "~*", "+@all", "-xadd"],
            vec!["read-only", "on", ">read-only-pw-4", "%R~*", "+@all"],
        ],
    )
    .await;
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("not-a-stream")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let sink = |user: &str, password: &str, stream: &str| {
        let url = format!(
            "redis://{user}:{password}@127.0.0.1:{}/",
            server.addr().port()
        );
        RedisStreamSink::new(tower_outbound::redis::connect(&url).unwrap(), stream, 10)
    };

    let worker = sink("worker", "worker-pw-1", "letters");
    worker.verify().await.unwrap();
    assert_eq!(worker.count().await.unwrap(), 0, "the check wrote nothing");

    for (user, password, stream, kind, named) in [
        (
            "reader",
            "reader-pw-2",
            "letters",
            SetupErrorKind::NoPermission,
            "script",
        ),
        (
            "no-xadd",
            "no-xadd-pw-3",
            "letters",
            SetupErrorKind::NoPermission,
            "xadd",
        ),
        (
            "read-only",
            "read-only-pw-4",
            "letters",
            SetupErrorKind::NoPermission,
            "keys",
        ),
        (
            "worker",
            "worker-pw-1",
            "not-a-stream",
            SetupErrorKind::Other,
            "WRONGTYPE",
        ),
    ] {
        let err = sink(user, password, stream).verify().await.unwrap_err();
        assert_eq!(err.kind(), kind, "{user} on {stream}: {err}");
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains(named),
            "{user}: {named} is not named: {shown}"
        );
        assert!(
            !shown.contains(password),
            "{user}: the password is shown: {shown}"
        );
    }
}

/// Adds ACL users, each with its `ACL SETUSER` rules.
async fn add_users(server: &RedisServer, users: &[Vec<&str>]) {
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    for rules in users {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(rules)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
}
