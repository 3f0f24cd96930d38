//! How TaskFlow reaches Redis: one server, or a Redis Cluster.
//!
//! `REDIS_URL` names one server (`redis://host:port/db`) or a cluster
//! (`redis+cluster://host:port,host:port,…`: seed nodes, from which the
//! client learns the rest). On a cluster every key and channel carries one
//! hash tag, the key prefix in braces (`{taskflow:}lease:…`), so all of them
//! live in one slot and every script and pipeline stays one round trip
//! (docs/adr/006-redis-cluster-one-hash-tag.md). Pub/sub on a cluster is sharded
//! (`SSUBSCRIBE`/`SPUBLISH`): a message stays on the shard owning that
//! slot instead of being broadcast to every node.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushKind, RedisFuture, Value};
use tokio::sync::mpsc;

use super::RedisError;

/// How long one Redis command may take before it fails. A stalled Redis must
/// never stall a worker: every caller has a fallback.
pub(super) const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a subscription waits for each cluster node to connect.
const SUBSCRIBER_NODE_TIMEOUT: Duration = Duration::from_millis(500);

/// The URL scheme that names a cluster by its seed nodes.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The Redis a deployment uses, as `REDIS_URL` names it.
#[derive(Clone)]
pub(super) enum Deployment {
    /// One server.
    Single(redis::Client),
    /// A Redis Cluster, by the seed URLs it is found through.
    Cluster(Vec<String>),
}

impl Deployment {
    /// Parses `url`: `redis+cluster://` names a cluster, anything else one
    /// server.
    pub(super) fn parse(url: &str) -> Result<Self, RedisError> {
        match cluster_seeds(url) {
            Some(Err(form)) => Err(RedisError(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                form,
            )))),
            Some(Ok(seeds)) => Ok(Self::Cluster(seeds)),
            None => Ok(Self::Single(redis::Client::open(url)?)),
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A multiplexed connection that reconnects by itself, made on first use
    /// so a process can start while Redis is down. Must be called on a
    /// Tokio runtime: a cluster's connection starts a task.
    pub(super) fn connect_lazy(&self) -> Result<Connection, RedisError> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(REDIS_RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Connection::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?))
            }
            // The config replaces the builder's timeouts, so it repeats them.
            Self::Cluster(seeds) => Ok(Connection::Cluster(
                cluster_client(seeds, None)?.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(REDIS_RESPONSE_TIMEOUT)
                        .set_response_timeout(REDIS_RESPONSE_TIMEOUT),
                ),
            )),
        }
    }

    /// A fresh subscription to `channels`, which yields each message's
    /// payload and ends when the subscription is lost.
    ///
    /// On a cluster the subscription is a new client built from the seeds,
    /// so it reloads the slot map. The crate's own client resubscribes only
    /// after it refreshes its slot map, which nothing triggers on a
    /// connection that only listens (ADR 006). So a node lost, or a
    /// subscription the server dropped (a graceful failover), ends the
    /// stream, and the caller subscribes again.
    pub(super) async fn subscribe(
        &self,
        channels: &[String],
    ) -> Result<BoxStream<'static, Vec<u8>>, RedisError> {
        let subscribe = async {
            match self {
                Self::Single(client) => {
                    let mut pubsub = client.get_async_pubsub().await?;
                    for channel in channels {
                        pubsub.subscribe(channel).await?;
                    }
                    Ok(pubsub
                        .into_on_message()
                        .map(|message| message.get_payload_bytes().to_vec())
                        .boxed())
                }
                Self::Cluster(seeds) => {
                    let (sender, receiver) = mpsc::unbounded_channel();
                    let client = cluster_client(seeds, Some(sender))?;
                    let mut connection = client.get_async_connection().await?;
                    connection.ssubscribe(channels).await?;
                    Ok(sharded_messages(connection, receiver))
                }
            }
        };
        match tokio::time::timeout(REDIS_RESPONSE_TIMEOUT, subscribe).await {
            Ok(result) => result,
            Err(_) => Err(RedisError(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out subscribing",
            )))),
        }
    }

    /// The command that publishes on a channel: sharded on a cluster.
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }
}

/// The payloads of the sharded messages pushed to `connection`, until a
/// push says a node connection was lost. The connection lives as long as
/// the stream.
fn sharded_messages(
    connection: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
) -> BoxStream<'static, Vec<u8>> {
    futures::stream::unfold(
        (connection, pushes),
        |(connection, mut pushes)| async move {
            loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                            return Some((payload, (connection, pushes)));
                        }
                    }
                    // A node went away (a master killed), or the server
                    // dropped the subscription itself (a graceful failover
                    // or a slot migration: TaskFlow never unsubscribes).
                    PushKind::Disconnection | PushKind::SUnsubscribe => return None,
                    _ => {}
                }
            }
        },
    )
    .boxed()
}

/// A cluster client for `seeds`, with TaskFlow's timeouts; `pushes` receives
/// pushed messages (which needs RESP3).
fn cluster_client(
    seeds: &[String],
    pushes: Option<mpsc::UnboundedSender<redis::PushInfo>>,
) -> Result<ClusterClient, RedisError> {
    let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(REDIS_RESPONSE_TIMEOUT)
        .response_timeout(REDIS_RESPONSE_TIMEOUT)
        .overall_response_timeout(Some(REDIS_RESPONSE_TIMEOUT));
    if let Some(pushes) = pushes {
        // A subscription connects to every node, replicas too, before it
        // subscribes; a node that drops packets must not use up the
        // subscription's whole deadline.
        builder = builder
            .connection_timeout(SUBSCRIBER_NODE_TIMEOUT)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes);
    }
    Ok(builder.build()?)
}

/// The seed URLs of `redis+cluster://[user:password@]host:port,host:port…`,
/// each `redis://[user:password@]host:port`; `None` for any other URL, and
/// an error naming what is wrong for a cluster URL that is not of that form
/// (credentials given once, before the first host, percent-encoded; no
/// database, path or query: a cluster has only database 0).
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, &'static str>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let first_host_ends = rest.find(',').unwrap_or(rest.len());
    let (credentials, hosts) = match rest[..first_host_ends].rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let seeds: Vec<&str> = hosts.split(',').collect();
    Some(if seeds.iter().any(|host| !is_host_and_port(host)) {
        Err(
            "a Redis Cluster URL is redis+cluster://[user:password@]host:port,host:port… \
             (credentials once, no database, path or query)",
        )
    } else {
        Ok(seeds
            .into_iter()
            .map(|host| format!("redis://{credentials}{host}"))
            .collect())
    })
}

/// Whether `seed` is `host:port` and nothing more.
fn is_host_and_port(seed: &str) -> bool {
    seed.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(['@', '/', '?', '#', ' ']) && port.parse::<u16>().is_ok()
    })
}

/// A connection to either kind of deployment; cheap to clone, clones share
/// one multiplexed connection (per node, on a cluster).
#[derive(Clone)]
pub enum Connection {
    /// To one server.
    Single(ConnectionManager),
    /// To a cluster: each command goes to the node owning its keys' slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_lists_its_seeds_with_their_credentials() {
        assert_eq!(
            cluster_seeds("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
            Some(Ok(vec![
                "redis://127.0.0.1:7000".to_owned(),
                "redis://127.0.0.1:7001".to_owned()
            ]))
        );
        assert_eq!(
            cluster_seeds("redis+cluster://user:p%40ss@a:1,b:2"),
            Some(Ok(vec![
                "redis://user:p%40ss@a:1".to_owned(),
                "redis://user:p%40ss@b:2".to_owned()
            ]))
        );
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379"), None);
    }

    #[test]
    fn a_cluster_url_of_another_form_is_refused_with_the_form_it_needs() {
        for url in [
            "redis+cluster://",
            "redis+cluster://a:1,",
            "redis+cluster://a:1/3",
            "redis+cluster://a:1?protocol=resp3",
            "redis+cluster://u:p@a:1,u:p@b:2",
            "redis+cluster://a:1, b:2",
            "redis+cluster://a",
            "redis+cluster://a:99999",
        ] {
            let refused = cluster_seeds(url).expect("a cluster URL");
            assert!(refused.is_err(), "{url}: {refused:?}");
            assert!(Deployment::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn only_the_cluster_scheme_names_a_cluster() {
        assert!(
            Deployment::parse("redis+cluster://127.0.0.1:7000")
                .unwrap()
                .is_cluster()
        );
        assert!(
            !Deployment::parse("redis://127.0.0.1:6379")
                .unwrap()
                .is_cluster()
        );
    }
}
