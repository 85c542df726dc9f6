//! The connection the Redis pieces run on: one server (a reconnecting
//! [`ConnectionManager`]) or, with the `redis-cluster` feature, a Redis Cluster.

use std::fmt;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to one Redis server or to a Redis Cluster, multiplexed: clones share it, and
/// concurrent commands are pipelined on it. Made from a [`ConnectionManager`] (`.into()`, or
/// [`connect`](super::connect)), or from a cluster with [`connect_cluster`](super::connect_cluster)
/// (feature `redis-cluster`), which follows `MOVED` and `ASK` redirections, refreshes its map
/// of slots after a failover, and loads a script again on a node that lost it (`NOSCRIPT`, as
/// after a restart or a failover).
#[derive(Clone)]
pub struct RedisConnection(Connection);

#[derive(Clone)]
enum Connection {
    Server(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Connection::Server(_) => f.write_str("RedisConnection::Server"),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(_) => f.write_str("RedisConnection::Cluster"),
        }
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(connection: ConnectionManager) -> Self {
        RedisConnection(Connection::Server(connection))
    }
}

#[cfg(feature = "redis-cluster")]
impl From<redis::cluster_async::ClusterConnection> for RedisConnection {
    fn from(connection: redis::cluster_async::ClusterConnection) -> Self {
        RedisConnection(Connection::Cluster(connection))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Connection::Server(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Connection::Server(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Connection::Server(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
