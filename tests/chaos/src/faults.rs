//! The faults a run injects, and what they act on.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use nix::sys::signal::Signal;
use taskflow_testkit::{Place, PrivateRedis, RedisCluster};

use super::analysis::WorkerFate;
use super::cluster::{RedisLink, Taskflow, TaskflowSetup};
use super::placement::Placement;

/// The Redis the run uses, and so the Redis faults it can inject.
pub enum RedisUnderTest {
    /// One server: flushed, restarted, and each worker on loopback
    /// reaching it through a link that can be cut.
    Single(PrivateRedis),
    /// A cluster: failed over, at the master of `epoch_key`'s slot, which
    /// holds all of TaskFlow's keys.
    Cluster {
        cluster: RedisCluster,
        epoch_key: String,
    },
}

impl RedisUnderTest {
    pub fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster { cluster, .. } => cluster.url(),
        }
    }
}

/// What a partition of `--network` cuts a worker's host off from.
#[derive(Debug, Clone, Copy)]
pub enum Partition {
    Redis,
    Postgres,
    Both,
}

impl Partition {
    fn hosts(self) -> &'static [&'static str] {
        match self {
            Self::Redis => &[Placement::REDIS],
            Self::Postgres => &[Placement::POSTGRES],
            Self::Both => &[Placement::REDIS, Placement::POSTGRES],
        }
    }

    /// Whether the worker's leases lapse: it cannot renew them in Redis
    /// (cut off from PostgreSQL only, it keeps them).
    fn loses_leases(self) -> bool {
        !matches!(self, Self::Postgres)
    }

    fn fault(self) -> &'static str {
        match self {
            Self::Redis => "worker host cut off from Redis (partition)",
            Self::Postgres => "worker host cut off from PostgreSQL (partition)",
            Self::Both => "worker host cut off from Redis and PostgreSQL (partition)",
        }
    }
}

/// Everything the fault schedule works on.
pub struct Chaos {
    pub setup: TaskflowSetup,
    pub placement: Placement,
    /// The single Redis server's port, for the links of workers on
    /// loopback; `None` on a cluster, whose clients reach every node
    /// directly, and on a network, where partitions cut the real path.
    pub redis_port: Option<u16>,
    /// Each worker's way to Redis, by name.
    pub links: HashMap<String, RedisLink>,
    pub apis: Vec<Taskflow>,
    pub api_addresses: Vec<SocketAddrV4>,
    pub workers: Vec<Taskflow>,
    pub next_worker: usize,
    pub fates: HashMap<String, WorkerFate>,
    /// Until when each partitioned worker is cut off, by name: no other
    /// fault picks it meanwhile.
    pub partitioned_until: HashMap<String, Instant>,
    /// The partitions' heals, awaited before the audit.
    pub heals: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub faults: HashMap<&'static str, usize>,
    pub random: u64,
}

impl Chaos {
    /// Starts a worker at `place`: its slot's host, or loopback.
    pub fn spawn_worker(&mut self, place: Place) -> anyhow::Result<()> {
        self.next_worker += 1;
        let name = format!("worker-{}", self.next_worker);
        let mut env = vec![("TASKFLOW_WORKER_ID", name.clone())];
        if let Some(port) = self.redis_port {
            let link = RedisLink::start(port)?;
            env.push(("REDIS_URL", link.url()));
            self.links.insert(name.clone(), link);
        }
        let worker = self.setup.spawn("worker", &name, &place, &env)?;
        self.fates.insert(name, WorkerFate::default());
        self.workers.push(worker);
        Ok(())
    }

    /// A worker that is neither paused nor partitioned, chosen by a
    /// fixed-seed generator; `None` if every worker is.
    fn pick_worker(&mut self) -> Option<usize> {
        let now = Instant::now();
        let running: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let name = &self.workers[i].name;
                let resumed = self.fates[name]
                    .paused
                    .last()
                    .is_none_or(|(_, resumed)| *resumed <= Utc::now());
                let connected = self
                    .partitioned_until
                    .get(name)
                    .is_none_or(|until| *until <= now);
                resumed && connected
            })
            .collect();
        self.random = self
            .random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (!running.is_empty()).then(|| running[(self.random >> 33) as usize % running.len()])
    }

    pub fn count(&mut self, fault: &'static str) {
        *self.faults.entry(fault).or_default() += 1;
        println!("chaos: {fault}");
    }

    /// Picks a worker for `fault`, or says that none could be.
    fn pick_worker_for(&mut self, fault: &str) -> Option<usize> {
        let picked = self.pick_worker();
        if picked.is_none() {
            println!("chaos: skipped {fault}: every worker is paused or partitioned");
        }
        picked
    }

    pub fn kill_a_worker(&mut self) -> anyhow::Result<()> {
        let Some(index) = self.pick_worker_for("a kill") else {
            return Ok(());
        };
        let mut worker = self.workers.remove(index);
        worker.kill()?;
        self.fates.get_mut(&worker.name).unwrap().killed_at = Some(Utc::now());
        self.count("worker SIGKILL");
        self.spawn_worker(worker.place.clone())
    }

    pub async fn pause_a_worker(&mut self, for_how_long: Duration) -> anyhow::Result<()> {
        let Some(index) = self.pick_worker_for("a pause") else {
            return Ok(());
        };
        let worker = &self.workers[index];
        worker.signal(Signal::SIGSTOP)?;
        let stopped = Utc::now();
        let name = worker.name.clone();
        let pid = worker.pid();
        self.fates
            .get_mut(&name)
            .unwrap()
            .paused
            .push((stopped, stopped + for_how_long));
        self.count("worker SIGSTOP past its lease");
        tokio::spawn(async move {
            tokio::time::sleep(for_how_long).await;
            let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
        });
        Ok(())
    }

    /// Cuts a worker off from Redis by a black hole for `for_how_long`: its
    /// commands time out, its leases cannot be renewed, and the other
    /// workers must rescue its jobs without two executions overlapping.
    pub fn cut_a_worker_off_from_redis(&mut self, for_how_long: Duration) {
        let Some(index) = self.pick_worker_for("a black hole") else {
            return;
        };
        let name = self.workers[index].name.clone();
        self.links[&name].black_hole();
        self.count("worker cut off from Redis (black hole)");
        let heal = self.links[&name].heal_handle();
        tokio::spawn(async move {
            tokio::time::sleep(for_how_long).await;
            heal.send_replace(false);
        });
    }

    /// Cuts a worker's host off from what `partition` names, both ways,
    /// for `for_how_long` (`--network` only): its packets to them and
    /// theirs to it are dropped without an answer, as on a lost link.
    pub fn partition_a_worker(
        &mut self,
        partition: Partition,
        for_how_long: Duration,
    ) -> anyhow::Result<()> {
        let network = self
            .placement
            .network
            .clone()
            .context("partitions need --network")?;
        let Some(index) = self.pick_worker_for(partition.fault()) else {
            return Ok(());
        };
        let worker = &self.workers[index];
        let Place::On(host) = &worker.place else {
            bail!("{} does not run on a host of the network", worker.name);
        };
        let host = host.name.clone();
        for server in partition.hosts() {
            network.cut(&host, server)?;
        }
        self.partitioned_until
            .insert(worker.name.clone(), Instant::now() + for_how_long);
        let name = worker.name.clone();
        if partition.loses_leases()
            && let Some(fate) = self.fates.get_mut(&name)
        {
            fate.partitioned.push(Utc::now());
        }
        self.count(partition.fault());
        println!("chaos:   {name} on {host}, for {for_how_long:?}");
        self.heals.push(tokio::spawn(async move {
            tokio::time::sleep(for_how_long).await;
            for server in partition.hosts() {
                network.heal(&host, server)?;
            }
            Ok(())
        }));
        Ok(())
    }

    /// Kills the master of TaskFlow's slot, waits for its replica to take
    /// over, and starts the old master again, which rejoins as a replica.
    pub fn fail_over(&mut self, cluster: &mut RedisCluster, epoch_key: &str) -> anyhow::Result<()> {
        let killed = cluster.kill_master_of(epoch_key)?;
        self.count("Redis Cluster master SIGKILL (failover)");
        cluster.until_healthy()?;
        cluster.restart(killed)?;
        cluster.until_healthy()
    }

    /// Kills the first API mid-submission and starts it again; the other
    /// goes on serving.
    pub async fn restart_api(&mut self) -> anyhow::Result<()> {
        self.apis[0].kill()?;
        self.count("API SIGKILL mid-submission");
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.apis[0] = spawn_api(&self.setup, &self.apis[0].place, self.api_addresses[0], 1)?;
        Ok(())
    }
}

/// Starts API number `number`, listening on `address`.
pub fn spawn_api(
    setup: &TaskflowSetup,
    place: &Place,
    address: SocketAddrV4,
    number: usize,
) -> anyhow::Result<Taskflow> {
    setup.spawn(
        "api",
        &Placement::api(number),
        place,
        &[("TASKFLOW_LISTEN", address.to_string())],
    )
}
