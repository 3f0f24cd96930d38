//! `network`: the drain and sequential submissions with PostgreSQL, Redis,
//! the API and two workers spread over hosts of a private network (testkit
//! `Network`), with links of 1 ms and 5 ms round-trip time between the
//! TaskFlow processes and the servers, each beside the same deployment on
//! one host, in the same run (issue 16; docs/scaling.md).
//!
//! The benchmark itself is the client, on a host of its own in every
//! topology: its hop to the API is the same everywhere, so what changes
//! from one topology to the next is only how the API and the workers reach
//! PostgreSQL and Redis. The latency comes from `taskflow-delay-proxy` in
//! front of each server (`tc netem` is not available on this kind of
//! machine); a topology with the proxies at no delay shows what they cost
//! by themselves, and their CPU time is reported.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use taskflow_testkit::{DelayProxy, Network, Place, PrivatePostgres, PrivateRedis};

use super::Figure;
use super::cluster::{Placement, Target};
use super::drains::{DrainSetup, drain};
use super::submissions::submit;

/// The host the benchmark runs on.
const CLIENT: &str = "client";
/// The host of PostgreSQL and Redis.
const SERVERS: &str = "servers";
/// The API's host, when it has one of its own.
const API: &str = "api";
/// The workers' hosts, when they have their own.
const WORKERS: [&str; 2] = ["worker-1", "worker-2"];

/// Every host of the network.
fn hosts() -> Vec<&'static str> {
    [CLIENT, SERVERS, API].into_iter().chain(WORKERS).collect()
}

/// How the API and the workers reach the servers.
#[derive(Debug, Clone, Copy)]
enum Topology {
    /// On the servers' host: over loopback.
    OneHost,
    /// On hosts of their own, straight over the network.
    Hosts,
    /// On hosts of their own, through links that add this much each way.
    Delayed(Duration),
}

/// The topologies measured, the reference first.
const TOPOLOGIES: [Topology; 5] = [
    Topology::OneHost,
    Topology::Hosts,
    Topology::Delayed(Duration::ZERO),
    Topology::Delayed(Duration::from_micros(500)),
    Topology::Delayed(Duration::from_micros(2_500)),
];

impl Topology {
    fn label(self) -> String {
        match self {
            Self::OneHost => "one host".into(),
            Self::Hosts => "hosts, no added delay".into(),
            Self::Delayed(Duration::ZERO) => "hosts, through the proxies at 0 ms".into(),
            Self::Delayed(one_way) => {
                format!("hosts, {} ms RTT", (2 * one_way).as_secs_f64() * 1e3)
            }
        }
    }

    fn placement(self, network: &Network) -> Placement {
        match self {
            Self::OneHost => Placement {
                api: network.place(SERVERS),
                workers: vec![network.place(SERVERS)],
            },
            Self::Hosts | Self::Delayed(_) => Placement {
                api: network.place(API),
                workers: WORKERS.iter().map(|host| network.place(host)).collect(),
            },
        }
    }

    /// What the drain's and the sequential submissions' ratios to one host
    /// must reach (issue 16: at 1 ms RTT).
    fn targets(self) -> (&'static str, &'static str) {
        match self {
            Self::Delayed(one_way) if one_way == Duration::from_micros(500) => ("≥ 0.5", "≥ 0.4"),
            _ => ("report", "report"),
        }
    }
}

/// The delay proxies of a topology, one in front of each server.
struct Links {
    postgres: DelayProxy,
    redis: DelayProxy,
}

impl Links {
    fn start(
        servers: &Place,
        postgres: SocketAddrV4,
        redis: SocketAddrV4,
        one_way: Duration,
    ) -> anyhow::Result<Self> {
        let link = |target: SocketAddrV4| {
            DelayProxy::start(servers, servers.free_address(), target, one_way)
        };
        Ok(Self {
            postgres: link(postgres)?,
            redis: link(redis)?,
        })
    }

    fn cpu_micros(&self) -> u64 {
        [&self.postgres, &self.redis]
            .iter()
            .filter_map(|proxy| proxy.cpu_micros())
            .sum()
    }
}

/// Drains `drain_jobs` and submits `submissions` one after another in each
/// topology.
pub async fn network(
    target: &Target,
    drain_jobs: usize,
    submissions: usize,
) -> anyhow::Result<Vec<Figure>> {
    let network = target.network.clone().context(
        "the network scenario needs its network made before the benchmark starts: \
         name it on the command line (it is not part of `all`), as root",
    )?;
    // Removed when dropped, after the servers (declared later) stop.
    let dir = tempfile::Builder::new()
        .prefix("taskflow-bench-network-")
        .tempdir()?;
    let servers = network.place(SERVERS);
    let (postgres, redis) = tokio::task::spawn_blocking({
        let (dir, servers) = (dir.path().to_owned(), servers.clone());
        move || {
            anyhow::Ok((
                PrivatePostgres::start(&dir, servers.clone())?,
                PrivateRedis::start(servers)?,
            ))
        }
    })
    .await??;
    let mut figures = Vec::new();
    let mut one_host: Option<(f64, f64)> = None;
    for topology in TOPOLOGIES {
        let links = match topology {
            Topology::Delayed(one_way) => Some(Links::start(
                &servers,
                postgres.address(),
                redis.address(),
                one_way,
            )?),
            Topology::OneHost | Topology::Hosts => None,
        };
        let (database, cache) = match &links {
            Some(links) => (links.postgres.address(), links.redis.address()),
            None => (postgres.address(), redis.address()),
        };
        let topology_target = Target {
            database_url: format!("postgres://postgres@{database}/postgres"),
            redis_url: format!("redis://{cache}"),
            pgbouncer: None,
            placement: topology.placement(&network),
            ..target.clone()
        };
        let label = topology.label();
        eprintln!("-- {label}");
        let proxies_before = links.as_ref().map_or(0, Links::cpu_micros);
        let drained = drain(&topology_target, drain_jobs, &DrainSetup::default()).await?;
        let proxies_cpu = links.as_ref().map_or(0, Links::cpu_micros) - proxies_before;
        let submitted = submit(&topology_target, submissions, 1).await?;
        let (drain_rate, submit_rate) = (drained.jobs_per_second, submitted.jobs_per_second);
        let (reference_drain, reference_submit) =
            *one_host.get_or_insert((drain_rate, submit_rate));
        let (drain_target, submit_target) = topology.targets();
        figures.extend([
            Figure::new(format!("{label}: drained"), drain_rate, "jobs/s", "report"),
            Figure::new(
                format!("{label}: drained / one host"),
                drain_rate / reference_drain,
                "ratio",
                drain_target,
            ),
            Figure::new(
                format!("{label}: worker database calls per drained job"),
                drained.calls_per_job.all,
                "calls",
                "report",
            ),
            Figure::new(
                format!("{label}: sequential submit"),
                submit_rate,
                "jobs/s",
                "report",
            ),
            Figure::new(
                format!("{label}: sequential submit, mean time per request"),
                1e3 / submit_rate,
                "ms",
                "report",
            ),
            Figure::new(
                format!("{label}: sequential submit / one host"),
                submit_rate / reference_submit,
                "ratio",
                submit_target,
            ),
            Figure::new(
                format!("{label}: one-row INSERT + COMMIT from the client host"),
                submitted.reference_per_second,
                "tps",
                "report",
            ),
        ]);
        if let Topology::Delayed(one_way) = topology {
            // A submission that paid one more round trip to PostgreSQL
            // than on one host, and nothing else, would reach this ratio.
            let floor = 1.0 / (1.0 + reference_submit * (2 * one_way).as_secs_f64());
            figures.extend([
                Figure::new(
                    format!("{label}: sequential submit / one host, if one round trip more"),
                    floor,
                    "ratio",
                    "report",
                ),
                Figure::new(
                    format!("{label}: delay proxies' CPU per drained job (setup included)"),
                    proxies_cpu as f64 / drain_jobs as f64,
                    "µs",
                    "report",
                ),
            ]);
        }
    }
    Ok(figures)
}

/// Makes the network of the `network` scenario and moves this program onto
/// its client host. Call it before the runtime starts, so that every
/// thread of the benchmark is there.
///
/// # Errors
///
/// If network namespaces cannot be made (not root).
pub fn enter_network() -> anyhow::Result<Arc<Network>> {
    let network = Network::create(&hosts())?;
    network.enter(CLIENT)?;
    Ok(Arc::new(network))
}
