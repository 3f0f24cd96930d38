//! A private network of Linux network namespaces, one per host of a
//! multi-host test (issue 16): each host is a namespace with one veth
//! interface on a bridge that lives in a namespace of its own, so nothing
//! of the machine's own network is touched. Hosts get addresses in
//! [`SUBNET`], which exists only on that bridge: no host has a route
//! anywhere else, so whatever runs inside can only reach addresses the
//! network made.
//!
//! A partition between two hosts ([`Network::cut`]) gives each of them a
//! static neighbour entry for the other that names a MAC address no host
//! has: their frames to each other go out, and nobody takes them. Packets
//! are dropped without an answer both ways, as on a lost link: a new
//! connection hangs in `SYN_SENT`, an open one retransmits, while either
//! host still reaches every other (`tc netem` and iptables are not
//! available on this kind of machine; a blackhole route would fail new
//! connections at once with `EINVAL`, which no real partition does).
//!
//! A process joins a host by [`Host::command`] (`ip netns exec`); a test
//! program joins one itself, client and all, by [`Network::enter`]. Servers
//! that tests start on a host or on loopback alike take a [`Place`].
//!
//! The namespaces go away when the network is dropped, and also when the
//! process that made it is killed: a watchdog process in a session of its
//! own waits for end-of-file on a pipe only the owner holds, then kills
//! what still runs in the namespaces and deletes them.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context as _, bail};
use uuid::Uuid;

/// The addresses hosts get: `10.77.0.2` onwards. Every network has its own
/// bridge, so concurrent networks may use the same subnet.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 24);

/// The MAC address a cut host's frames go to. Hosts' interfaces get
/// `02:77:00:00:00:<last byte of the address>`, and no host's address
/// ends in 255 (the broadcast address), so none has it.
const NOBODY: &str = "02:77:00:00:00:ff";

/// The ports [`Place::free_address`] hands out on hosts: below Linux's
/// ephemeral range (`ip_local_port_range`, 32768–60999 by default), so an
/// outgoing connection of a host never holds one. A port probed free in
/// the caller's namespace says nothing of another namespace's.
const HOST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The next of [`HOST_PORTS`] to hand out, counted from its start.
static NEXT_HOST_PORT: AtomicU16 = AtomicU16::new(0);

/// Most hosts a network holds (the subnet's size, less the network and
/// broadcast addresses and `.1`, kept free).
const MOST_HOSTS: usize = 253;

/// A running network; see the [module docs](self).
#[derive(Debug)]
pub struct Network {
    id: String,
    hosts: Vec<Host>,
    /// Closed on drop (or by the kernel when the owner dies), which starts
    /// the watchdog's cleanup.
    watchdog_pipe: Option<ChildStdin>,
    watchdog: Child,
}

/// One host of a [`Network`].
#[derive(Debug, Clone)]
pub struct Host {
    /// What the test calls it.
    pub name: String,
    /// Its network namespace (`ip netns` name).
    pub namespace: String,
    /// Its address on the network.
    pub address: Ipv4Addr,
}

impl Host {
    /// `program` to be run on this host: `ip netns exec` in its namespace.
    /// `ip` execs `program` in its own place, so the child's pid is the
    /// program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }

    /// Moves the calling thread onto this host; see [`Network::enter`].
    ///
    /// # Errors
    ///
    /// If the namespace cannot be opened or joined (not root).
    pub fn enter(&self) -> anyhow::Result<()> {
        let path = format!("/var/run/netns/{}", self.namespace);
        let namespace =
            std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot join {path}"))
    }
}

/// Where a test starts a server or a process: on the caller's loopback,
/// or on a host of a [`Network`].
#[derive(Debug, Clone, Default)]
pub enum Place {
    /// Where the caller runs, on `127.0.0.1`: this machine's own network,
    /// or the host the caller entered ([`Network::enter`]).
    #[default]
    Loopback,
    /// A host of a network, on its address.
    On(Host),
}

impl Place {
    /// The address a server here listens on and is reached at.
    pub fn address(&self) -> Ipv4Addr {
        match self {
            Self::Loopback => Ipv4Addr::LOCALHOST,
            Self::On(host) => host.address,
        }
    }

    /// An address here that nothing listens on: a free ephemeral port on
    /// loopback; on a host, the next of `HOST_PORTS` (20000–31999), which no other
    /// listener of this process got and no outgoing connection uses (they
    /// take ports from 32768 up), whichever host it is on.
    pub fn free_address(&self) -> SocketAddrV4 {
        let port = match self {
            Self::Loopback => crate::free_port(),
            Self::On(_) => {
                let span = HOST_PORTS.end - HOST_PORTS.start;
                HOST_PORTS.start + NEXT_HOST_PORT.fetch_add(1, Ordering::Relaxed) % span
            }
        };
        SocketAddrV4::new(self.address(), port)
    }

    /// `program` to be run here.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match self {
            Self::Loopback => Command::new(program),
            Self::On(host) => host.command(program),
        }
    }
}

impl Network {
    /// Creates a network of the hosts `names`, each in a namespace of its
    /// own with an address in [`SUBNET`], in the order given.
    ///
    /// # Errors
    ///
    /// If network namespaces cannot be made here (not root, or no `ip`),
    /// or a name repeats.
    pub fn create(names: &[&str]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=MOST_HOSTS).contains(&names.len()),
            "a network holds 1 to {MOST_HOSTS} hosts"
        );
        let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
        let hosts: Vec<Host> = names
            .iter()
            .zip(2_u8..)
            .map(|(name, last)| {
                let [a, b, c, _] = SUBNET.0.octets();
                Host {
                    name: (*name).to_owned(),
                    namespace: format!("tfnet-{id}-{name}"),
                    address: Ipv4Addr::new(a, b, c, last),
                }
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        anyhow::ensure!(
            hosts.iter().all(|host| seen.insert(&host.name)),
            "host names repeat: {names:?}"
        );
        anyhow::ensure!(
            !seen.contains(&"hub".to_owned()),
            "hub names the network's bridge namespace, not a host"
        );
        let hub = format!("tfnet-{id}-hub");
        let mut namespaces: Vec<String> = hosts.iter().map(|h| h.namespace.clone()).collect();
        namespaces.push(hub.clone());
        // The watchdog first, so that whatever is made below is removed
        // however this process ends.
        let (watchdog, pipe) = spawn_watchdog(&namespaces)?;
        let network = Self {
            id,
            hosts,
            watchdog_pipe: Some(pipe),
            watchdog,
        };
        network.build(&hub)?;
        Ok(network)
    }

    fn build(&self, hub: &str) -> anyhow::Result<()> {
        ip(["netns", "add", hub])?;
        ip(["-n", hub, "link", "add", "bridge0", "type", "bridge"])?;
        ip(["-n", hub, "link", "set", "bridge0", "up"])?;
        for (index, host) in self.hosts.iter().enumerate() {
            let namespace = host.namespace.as_str();
            ip(["netns", "add", namespace])?;
            // Interface names are at most 15 bytes.
            let (outer, inner) = (
                format!("v{}{index}h", self.id),
                format!("v{}{index}n", self.id),
            );
            ip([
                "link", "add", &outer, "netns", hub, "type", "veth", "peer", "name", &inner,
                "netns", namespace,
            ])?;
            ip(["-n", hub, "link", "set", &outer, "master", "bridge0", "up"])?;
            ip(["-n", namespace, "link", "set", &inner, "name", "eth0"])?;
            let mac = format!("02:77:00:00:00:{:02x}", host.address.octets()[3]);
            ip(["-n", namespace, "link", "set", "eth0", "address", &mac])?;
            let address = format!("{}/{}", host.address, SUBNET.1);
            ip(["-n", namespace, "addr", "add", &address, "dev", "eth0"])?;
            // IPv4 only: an IPv6 link-local address would let hosts reach
            // each other past a cut, which only sets IPv4 neighbours.
            for scope in ["all", "default"] {
                let setting = format!("net.ipv6.conf.{scope}.disable_ipv6=1");
                ip(["netns", "exec", namespace, "sysctl", "-qw", &setting])?;
            }
            ip(["-n", namespace, "link", "set", "eth0", "up"])?;
            ip(["-n", namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The network's id, part of every namespace's name
    /// (`tfnet-<id>-<host>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host named `name`.
    ///
    /// # Panics
    ///
    /// If the network has no such host (a mistake in the test).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("no host {name} in this network"))
    }

    /// `program` to be run on host `name` ([`Host::command`]).
    ///
    /// # Panics
    ///
    /// If the network has no such host (a mistake in the test).
    pub fn command(&self, name: &str, program: impl AsRef<OsStr>) -> Command {
        self.host(name).command(program)
    }

    /// Host `name` as a [`Place`].
    ///
    /// # Panics
    ///
    /// If the network has no such host (a mistake in the test).
    pub fn place(&self, name: &str) -> Place {
        Place::On(self.host(name).clone())
    }

    /// Moves the calling thread onto host `name` (`setns(2)`): the sockets
    /// it opens from now on, and the threads and processes it starts, are
    /// on that host's network. Called before a program starts its other
    /// threads (its async runtime, say), it moves the whole program, which
    /// then reaches every host as that host's neighbours do; threads that
    /// already run stay where they were.
    ///
    /// # Errors
    ///
    /// If the namespace cannot be opened or joined (not root).
    ///
    /// # Panics
    ///
    /// If the network has no such host (a mistake in the test).
    pub fn enter(&self, name: &str) -> anyhow::Result<()> {
        self.host(name).enter()
    }

    /// Cuts hosts `a` and `b` off from each other, both ways, until
    /// [`Network::heal`]; see the [module docs](self).
    ///
    /// # Errors
    ///
    /// If a neighbour entry cannot be set.
    ///
    /// # Panics
    ///
    /// If the network has no such host (a mistake in the test).
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (self.host(from), self.host(to).address.to_string());
            ip([
                "-n",
                &from.namespace,
                "neigh",
                "replace",
                &to,
                "lladdr",
                NOBODY,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    /// Undoes [`Network::cut`]: the hosts learn each other's address again
    /// (for a pair that was not cut, they forget and relearn it).
    ///
    /// # Errors
    ///
    /// If either host has no neighbour entry for the other.
    ///
    /// # Panics
    ///
    /// If the network has no such host (a mistake in the test).
    pub fn heal(&self, a: &str, b: &str) -> anyhow::Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (self.host(from), self.host(to).address.to_string());
            ip(["-n", &from.namespace, "neigh", "del", &to, "dev", "eth0"])?;
        }
        Ok(())
    }

    /// The network namespaces of this network that exist now.
    ///
    /// # Errors
    ///
    /// If `ip netns list` fails.
    pub fn existing_namespaces(id: &str) -> anyhow::Result<Vec<String>> {
        let output = Command::new("ip").args(["netns", "list"]).output()?;
        anyhow::ensure!(output.status.success(), "ip netns list failed");
        let prefix = format!("tfnet-{id}-");
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| name.starts_with(&prefix))
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        drop(self.watchdog_pipe.take());
        let _ = self.watchdog.wait();
    }
}

/// Starts the watchdog: a shell in a session of its own (so a signal to
/// the owner's process group spares it) that reads its standard input to
/// its end, then kills every process left in `namespaces` and deletes
/// them. It says `ready` first, so nothing is made before it can clean up.
///
/// The owner itself is spared: it is in one of the namespaces if it
/// entered a host ([`Network::enter`]), and drops the network while it
/// still has work to do (report an error, say).
fn spawn_watchdog(namespaces: &[String]) -> anyhow::Result<(Child, ChildStdin)> {
    // Killed until none is left, as a process may fork meanwhile; its
    // output goes nowhere once `ready` is said, since the owner that read
    // it may be gone.
    let script = r#"echo ready; exec >/dev/null; cat
owner=$1; shift
for ns in "$@"; do
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(ip netns pids "$ns" 2>/dev/null | grep -vx "$owner")
    [ -z "$pids" ] && break
    kill -9 $pids 2>/dev/null; sleep 0.1
  done
  ip netns del "$ns" 2>/dev/null
done
true"#;
    let mut child = Command::new("setsid")
        .args(["sh", "-c", script, "tfnet-watchdog"])
        .arg(std::process::id().to_string())
        .args(namespaces)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the network's watchdog (setsid, sh)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("the watchdog's output")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("the network's watchdog did not start");
    }
    let pipe = child.stdin.take().context("the watchdog's input")?;
    Ok((child, pipe))
}

/// Runs `ip` with `arguments`, failing with its message.
fn ip<S: AsRef<std::ffi::OsStr>>(arguments: impl IntoIterator<Item = S>) -> anyhow::Result<()> {
    let arguments: Vec<S> = arguments.into_iter().collect();
    let output = Command::new("ip")
        .args(&arguments)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (iproute2)")?;
    anyhow::ensure!(
        output.status.success(),
        "ip {} failed: {}",
        arguments
            .iter()
            .map(|a| a.as_ref().to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
