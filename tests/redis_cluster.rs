//! The throttle's buckets on a Redis Cluster: three real `redis-server`s in cluster mode on
//! 127.0.0.1, joined by `redis-cli --cluster create`. Buckets of different upstreams land on
//! different nodes; two stores share each bucket; a node that lost its scripts gets them again.
#![cfg(feature = "redis-cluster")]

#[path = "support/redis.rs"]
mod redis_server;

use std::process::Command;
use std::time::{Duration, Instant};

use http::{Request, Response};
use redis_server::RedisServer;
use tower::ServiceExt;
use tower_outbound::partition::ByUpstream;
use tower_outbound::redis::RedisStore;
use tower_outbound::ThrottleLayer;

/// Three primaries covering every slot, stopped when dropped.
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Self {
        Self::start_with(3, 0)
    }

    /// `primaries` primaries with `replicas` replicas each.
    fn start_with(primaries: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("redis-cli is needed to make the cluster");
        assert!(status.success(), "redis-cli --cluster create");
        let cluster = Cluster { nodes };
        cluster.wait_ok();
        cluster.wait_replicas_synced();
        cluster
    }

    /// Until every replica's link to its primary is up (a replica that never synced is not
    /// promoted), 20 s at most.
    fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let synced = (0..self.nodes.len()).all(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut self.connection(node))
                    .unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            });
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas did not sync in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn connection(&self, node: usize) -> redis::Connection {
        redis::Client::open(self.nodes[node].url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Until every live node says the cluster is ok (its slots assigned and agreed), 20 s at
    /// most.
    fn wait_ok(&self) {
        self.wait_ok_on(&(0..self.nodes.len()).collect::<Vec<_>>());
    }

    fn wait_ok_on(&self, live: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = live.iter().all(|&node| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut self.connection(node))
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node that serves `key`'s slot as its primary.
    fn primary_of(&self, key: &str) -> usize {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.connection(0))
            .unwrap();
        let slots: Vec<(i64, i64, Vec<redis::Value>)> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.connection(0))
            .map(|ranges: Vec<redis::Value>| {
                ranges
                    .into_iter()
                    .map(|range| redis::from_redis_value(range).unwrap())
                    .collect()
            })
            .unwrap();
        let (_, _, master) = slots
            .into_iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .expect("every slot is served");
        let port: i64 = redis::from_redis_value(master[1].clone()).unwrap();
        self.nodes
            .iter()
            .position(|n| i64::from(n.addr().port()) == port)
            .expect("the primary is one of ours")
    }

    /// Keys each node holds.
    fn keys_per_node(&self) -> Vec<u64> {
        (0..self.nodes.len())
            .map(|node| {
                redis::cmd("DBSIZE")
                    .query(&mut self.connection(node))
                    .unwrap()
            })
            .collect()
    }
}

/// Two requests a minute per upstream, shared through `store`; a third is refused at once.
fn throttled(
    store: RedisStore,
) -> impl tower::Service<Request<String>, Response = Response<()>, Error = tower_outbound::Error> + Clone
{
    tower::ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(2, Duration::from_secs(60))
                .max_wait(Duration::ZERO)
                .store(store)
                .partition(ByUpstream),
        )
        .service(tower::service_fn(|_req: Request<_>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }))
}

fn get(host: &str) -> Request<String> {
    Request::get(format!("https://{host}/"))
        .body(String::new())
        .unwrap()
}

const HOSTS: [&str; 6] = [
    "api.stripe.com",
    "api.github.com",
    "search.internal",
    "billing.internal",
    "maps.example.com",
    "mail.example.com",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_each_upstreams_bucket_across_the_clusters_nodes() {
    let cluster = Cluster::start();
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let a = RedisStore::cluster(&nodes).await.unwrap().prefix("fleet");
    // The other store knows one node only: the cluster tells it the rest.
    let b = RedisStore::cluster(&nodes[2..])
        .await
        .unwrap()
        .prefix("fleet");

    for host in HOSTS {
        throttled(a.clone()).oneshot(get(host)).await.unwrap();
        throttled(b.clone()).oneshot(get(host)).await.unwrap();
        let third = throttled(a.clone()).oneshot(get(host)).await.unwrap_err();
        assert!(third.is_throttled(), "{host}: {third}");
    }

    assert_eq!(
        a.stats().redis_decisions() + b.stats().redis_decisions(),
        3 * HOSTS.len() as u64,
        "every decision came from the cluster"
    );
    let keys = cluster.keys_per_node();
    assert!(
        keys.iter().filter(|&&n| n > 0).count() >= 2,
        "the buckets are spread over the nodes: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_scripts_gets_them_again() {
    let cluster = Cluster::start();
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::cluster(&nodes).await.unwrap().prefix("flushed");
    throttled(store.clone())
        .oneshot(get(HOSTS[0]))
        .await
        .unwrap();

    // As after a restart or a failover: the nodes' script caches are empty.
    for node in 0..3 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut cluster.connection(node))
            .unwrap();
    }

    for host in HOSTS {
        throttled(store.clone()).oneshot(get(host)).await.unwrap();
    }
    assert_eq!(store.stats().errors(), 0, "no acquire failed");
    assert_eq!(store.stats().fallback_decisions(), 0, "none fell back");
}

/// One upstream's bucket on the cluster, shared through a store under `prefix` at 100 requests
/// a second: the store, a throttled service over it, and the node that holds the bucket as its
/// primary. Twenty calls have gone through Redis already.
async fn shared_bucket(
    cluster: &Cluster,
    prefix: &str,
) -> (
    RedisStore,
    impl tower::Service<Request<String>, Response = Response<()>, Error = tower_outbound::Error> + Clone,
    usize,
) {
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::cluster(&nodes).await.unwrap().prefix(prefix);
    let primary = cluster.primary_of(&format!("{{{prefix}:https://{}:443}}", HOSTS[0]));
    let service = tower::ServiceBuilder::new()
        .layer(
            ThrottleLayer::new(100, Duration::from_secs(1))
                .max_wait(Duration::from_secs(5))
                .store(store.clone())
                .partition(ByUpstream),
        )
        .service(tower::service_fn(|_req: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
    for _ in 0..20 {
        service.clone().oneshot(get(HOSTS[0])).await.unwrap();
    }
    assert!(
        store.stats().redis_decisions() >= 20,
        "shared through the cluster"
    );
    (store, service, primary)
}

/// Calls every 10 ms (the store's fallback decides while the bucket's slot has no primary)
/// until 20 more were decided by Redis than `before`, or 15 s passed: how many calls, and how
/// long it took.
async fn calls_until_shared_again<S>(
    store: &RedisStore,
    service: &S,
    before: u64,
) -> (u32, Duration)
where
    S: tower::Service<Request<String>, Response = Response<()>, Error = tower_outbound::Error>
        + Clone,
{
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(15) {
        service.clone().oneshot(get(HOSTS[0])).await.unwrap();
        calls += 1;
        if store.stats().redis_decisions() > before + 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (calls, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_run_fails_over_and_the_store_shares_again() {
    let mut cluster = Cluster::start_with(3, 1);
    let (store, service, primary) = shared_bucket(&cluster, "failover").await;
    let before = store.stats().redis_decisions();

    // The bucket's primary dies; its replica is promoted after the node timeout (1 s).
    cluster.nodes[primary].kill();
    let live: Vec<usize> = (0..cluster.nodes.len()).filter(|&n| n != primary).collect();
    let (calls, took) = calls_until_shared_again(&store, &service, before).await;
    cluster.wait_ok_on(&live);

    assert!(
        store.stats().redis_decisions() > before + 20,
        "after the failover the bucket is shared through Redis again ({calls} calls, {took:?})"
    );
}

/// A primary without a replica restarted empty (a crash with no persistence): it comes back
/// with its slots (its cluster config survives) but without the bucket's keys or the scripts.
/// The store goes on through its fallback meanwhile, loads the scripts again on `NOSCRIPT`, and
/// shares the bucket through the cluster again; the bucket starts over full, which lets at
/// most one burst more through than the lost state would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_empty_shares_the_bucket_again() {
    let mut cluster = Cluster::start();
    let (store, service, primary) = shared_bucket(&cluster, "restarted").await;
    let before = store.stats().redis_decisions();

    cluster.nodes[primary].restart();
    assert_eq!(cluster.keys_per_node()[primary], 0, "it came back empty");
    cluster.wait_ok();
    let (calls, took) = calls_until_shared_again(&store, &service, before).await;

    assert!(
        store.stats().redis_decisions() > before + 20,
        "after the restart the bucket is shared through Redis again ({calls} calls, {took:?}, {:?})",
        store.stats()
    );
    assert!(
        cluster.keys_per_node()[primary] > 0,
        "the bucket's keys are on the restarted node again"
    );
}
