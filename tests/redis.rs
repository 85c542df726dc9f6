//! The Redis-backed pieces against a real `redis-server` on loopback.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use support::redis::RedisServer;
use tower_outbound::redis::{RedisBuckets, RedisDecision};

async fn buckets(server: &RedisServer) -> RedisBuckets {
    let client = redis::Client::open(server.url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    RedisBuckets::new(manager)
}

#[tokio::test]
async fn gcra_script_admits_the_burst_then_paces() {
    let server = RedisServer::start();
    let buckets = buckets(&server).await;
    let interval = Duration::from_millis(100);
    let mut waits = Vec::new();
    for _ in 0..5 {
        match buckets
            .acquire("b", interval, 3, Duration::from_secs(1))
            .await
            .unwrap()
        {
            RedisDecision::Reserved { wait, .. } => waits.push(wait),
            RedisDecision::Rejected { wait } => panic!("rejected, wait {wait:?}"),
        }
    }
    // Three at once, then one every 100 ms (less the few µs the calls took).
    assert!(waits[..3].iter().all(|w| w.is_zero()), "{waits:?}");
    assert!(
        waits[3] > Duration::from_millis(90) && waits[3] <= interval,
        "{waits:?}"
    );
    assert!(
        waits[4] > Duration::from_millis(190) && waits[4] <= 2 * interval,
        "{waits:?}"
    );
    // Past the allowed wait: rejected, nothing reserved.
    let rejected = buckets
        .acquire("b", interval, 3, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(
        matches!(rejected, RedisDecision::Rejected { wait } if wait > Duration::from_millis(250))
    );
}
