//! A private Redis Cluster on loopback: `redis-server --cluster-enabled yes`
//! on free ports, joined by `redis-cli --cluster create`, each node a child
//! process killed when the cluster is dropped. The failover tests kill one
//! master and wait for its replica to take over.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::free_port;

/// How long a node may stay silent before the others fail it over. Short,
/// so a failover test takes seconds.
const NODE_TIMEOUT_MS: u32 = 1000;

/// How long forming the cluster or a failover may take.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// A running Redis Cluster; see the [module docs](self).
pub struct RedisCluster {
    _dir: TempDir,
    nodes: Vec<Node>,
}

struct Node {
    port: u16,
    bus_port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas_per_master` replicas each and
    /// returns once every live node reports the cluster healthy (and every
    /// replica has synchronised with its master).
    pub fn start(masters: usize, replicas_per_master: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("taskflow-redis-cluster-")
            .tempdir()?;
        let count = masters * (1 + replicas_per_master);
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < 2 * count {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let nodes = ports
            .chunks_exact(2)
            .map(|pair| Node::start(dir.path(), pair[0], pair[1]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = Self { _dir: dir, nodes };
        for node in &cluster.nodes {
            settle(|| node.answers())
                .with_context(|| format!("redis-server on port {} never answered", node.port))?;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let created = create
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .output()
            .context("redis-cli (Debian's redis-tools) runs")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
        }
        cluster.until_healthy()?;
        Ok(cluster)
    }

    /// `redis+cluster://` with every node as a seed, as `REDIS_URL` takes it.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Kills (SIGKILL) the master serving `key`'s slot, and returns its
    /// port; its replica takes over within a few node timeouts
    /// ([`RedisCluster::until_healthy`]).
    pub fn kill_master_of(&mut self, key: &str) -> anyhow::Result<u16> {
        let port = self.master_of(key)?;
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .context("the master is one of ours")?;
        node.kill();
        Ok(port)
    }

    /// Kills (SIGKILL) a replica, and returns its port; the cluster stays
    /// `ok`, and no slot changes hands.
    pub fn kill_a_replica(&mut self) -> anyhow::Result<u16> {
        let masters = self.masters()?;
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.process.is_some() && !masters.contains(&node.port))
            .context("a live replica")?;
        node.kill();
        Ok(node.port)
    }

    /// Has a replica of the master serving `key`'s slot take over from it
    /// gracefully (`CLUSTER FAILOVER`: the master hands over once the
    /// replica has caught up, and stays up as a replica), and returns once
    /// the cluster is healthy again.
    pub fn fail_over_gracefully(&self, key: &str) -> anyhow::Result<()> {
        let master = self.master_of(key)?;
        let nodes = cli(master, &["CLUSTER", "NODES"])?;
        let master_id = nodes
            .lines()
            .find(|line| line.contains("myself"))
            .and_then(|line| line.split_whitespace().next())
            .context("the master names itself")?;
        let replica = nodes
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| {
                fields.len() > 3 && fields[2].contains("slave") && fields[3] == master_id
            })
            .map(|fields| port_of(fields[1]))
            .context("the master has a replica")??;
        cli(replica, &["CLUSTER", "FAILOVER"])?;
        settle(|| Ok(self.master_of(key)? == replica))?;
        self.until_healthy()
    }

    /// Starts again the node killed on `port`; it rejoins the cluster as a
    /// replica ([`RedisCluster::until_healthy`] waits for its sync).
    pub fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port && node.process.is_none())
            .context("a killed node of ours")?
            .spawn()
    }

    /// Returns once every live node says the cluster is `ok`, each slot is
    /// served by a live master, and every live replica's link to its master
    /// is up.
    pub fn until_healthy(&self) -> anyhow::Result<()> {
        settle(|| {
            for node in self.live_nodes() {
                if !cli(node.port, &["CLUSTER", "INFO"])?.contains("cluster_state:ok") {
                    return Ok(false);
                }
                let replication = cli(node.port, &["INFO", "replication"])?;
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    return Ok(false);
                }
            }
            let live: Vec<u16> = self.live_nodes().map(|node| node.port).collect();
            Ok(self.masters()?.iter().all(|port| live.contains(port)))
        })
        .context("the Redis Cluster never became healthy")
    }

    /// The port of the master serving `key`'s slot, as a live node sees it.
    pub fn master_of(&self, key: &str) -> anyhow::Result<u16> {
        let asked = self.live_nodes().next().context("no live node")?.port;
        let slot: u16 = cli(asked, &["CLUSTER", "KEYSLOT", key])?.trim().parse()?;
        for line in cli(asked, &["CLUSTER", "NODES"])?.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields.get(2).is_some_and(|flags| flags.contains("master"))
                || fields.get(2).is_some_and(|flags| flags.contains("fail"))
            {
                continue;
            }
            let slots = fields.get(8..).unwrap_or_default();
            let serves = slots.iter().any(|range| match range.split_once('-') {
                Some((from, to)) => {
                    from.parse::<u16>().is_ok_and(|from| from <= slot)
                        && to.parse::<u16>().is_ok_and(|to| slot <= to)
                }
                None => range.parse::<u16>().is_ok_and(|only| only == slot),
            });
            if serves {
                return port_of(fields[1]);
            }
        }
        bail!("no live master serves slot {slot}")
    }

    /// The ports of the masters serving slots, as a live node sees them.
    fn masters(&self) -> anyhow::Result<Vec<u16>> {
        let asked = self.live_nodes().next().context("no live node")?.port;
        cli(asked, &["CLUSTER", "NODES"])?
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|fields| fields.len() > 8 && fields[2].contains("master"))
            .map(|fields| port_of(fields[1]))
            .collect()
    }

    fn live_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.process.is_some())
    }
}

impl Node {
    fn start(dir: &Path, port: u16, bus_port: u16) -> anyhow::Result<Self> {
        let dir = dir.join(port.to_string());
        std::fs::create_dir(&dir)?;
        let mut node = Self {
            port,
            bus_port,
            dir,
            process: None,
        };
        node.spawn()?;
        Ok(node)
    }

    /// Starts the node's server; it reads its cluster configuration from
    /// its directory, so a restarted node rejoins as it was (a former
    /// master as a replica of its successor).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let process = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server (Debian's redis-server) runs")?;
        self.process = Some(process);
        Ok(())
    }

    /// Whether our own server answers on the node's port: a free port
    /// found earlier may since have been taken by another test's server.
    fn answers(&self) -> anyhow::Result<bool> {
        let pid = self.process.as_ref().context("not running")?.id();
        Ok(cli(self.port, &["INFO", "server"])?.contains(&format!("process_id:{pid}\r")))
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// `redis-cli -p port args…`'s output.
fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!("redis-cli -p {port} {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The port of `host:port@bus`, as `CLUSTER NODES` names a node.
fn port_of(address: &str) -> anyhow::Result<u16> {
    let host_port = address.split('@').next().unwrap_or(address);
    let (_, port) = host_port
        .rsplit_once(':')
        .context("an address with a port")?;
    Ok(port.parse()?)
}

/// Polls `done` until it says so, within [`SETTLE_WITHIN`]; errors from it
/// count as "not yet".
fn settle(mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < SETTLE_WITHIN {
        if matches!(done(), Ok(true)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("not settled within {SETTLE_WITHIN:?}")
}
