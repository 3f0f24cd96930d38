//! The multi-host network of tests/kit (`Network`): hosts reach each other
//! and nothing else, a cut drops the traffic of exactly the pair it names,
//! a program that enters a host works from there with servers started at
//! other hosts, a delayed link between hosts delays, and the namespaces go
//! away on drop and when their owner is killed.
//! Needs root (network namespaces); `scripts/test` skips these by name,
//! with a notice, where namespaces cannot be made.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream};

use taskflow_testkit::{DelayProxy, Network, PrivateRedis};

/// Whether host `from` gets an answer from the Redis at `redis` within 2 s.
fn answers(network: &Network, from: &str, redis: SocketAddrV4) -> bool {
    network
        .command(from, "timeout")
        .args(["2", "redis-cli", "-h", &redis.ip().to_string()])
        .args(["-p", &redis.port().to_string(), "ping"])
        .output()
        .is_ok_and(|output| output.status.success() && output.stdout.starts_with(b"PONG"))
}

#[test]
fn hosts_reach_each_other_and_a_cut_drops_only_the_pair_it_names() {
    let network = Network::create(&["db", "w1", "w2"]).expect("namespaces can be made");
    let redis = PrivateRedis::start(network.place("db")).expect("redis starts on db");
    let redis = redis.address();
    assert!(answers(&network, "w1", redis));
    assert!(answers(&network, "w2", redis));

    // No host has a route beyond the network's subnet.
    let routes = Command::new("ip")
        .args(["-n", &network.host("w1").namespace, "route"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(!routes.contains("default"), "{routes}");
    // Nor an IPv6 address, by which a cut host would still be reached.
    let addresses = Command::new("ip")
        .args(["-n", &network.host("w1").namespace, "-6", "addr"])
        .output()
        .unwrap();
    assert!(addresses.stdout.is_empty(), "{addresses:?}");

    network.cut("w1", "db").unwrap();
    let started = Instant::now();
    assert!(
        !answers(&network, "w1", redis),
        "w1 reached db through the cut"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the cut refused the connection instead of dropping it"
    );
    assert!(answers(&network, "w2", redis), "the cut of w1 cut w2 too");

    network.heal("w1", "db").unwrap();
    assert!(
        answers(&network, "w1", redis),
        "the heal did not reconnect w1"
    );
}

/// The time a `PING` to the Redis at `address` takes to be answered.
fn ping(address: SocketAddrV4) -> std::io::Result<Duration> {
    let mut stream = TcpStream::connect_timeout(&address.into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let started = Instant::now();
    stream.write_all(b"PING\r\n")?;
    let mut answer = [0; 7];
    stream.read_exact(&mut answer)?;
    assert_eq!(&answer, b"+PONG\r\n");
    Ok(started.elapsed())
}

#[test]
fn a_program_on_a_host_reaches_servers_on_others_directly_and_through_a_delayed_link() {
    let network = Network::create(&["client", "redis"]).expect("namespaces can be made");
    // On a thread of its own, as this test's process is shared with others
    // under `cargo test`: entering moves only the calling thread.
    thread_on(&network, "client", |network| {
        // The machine's own Redis is on another network now.
        assert!(ping("127.0.0.1:6379".parse().unwrap()).is_err());
        let redis = PrivateRedis::start(network.place("redis")).expect("redis starts on its host");
        assert_eq!(redis.address().ip(), &network.host("redis").address);
        let direct = ping(redis.address()).expect("the client reaches the redis host");

        let one_way = Duration::from_millis(10);
        let redis_host = network.place("redis");
        let link = DelayProxy::start(
            &redis_host,
            redis_host.free_address(),
            redis.address(),
            one_way,
        )
        .expect("the proxy starts on the redis host");
        let delayed = ping(link.address()).expect("the client reaches redis through the link");
        assert!(
            delayed >= 2 * one_way,
            "through the link {delayed:?}, directly {direct:?}"
        );
    });
}

/// Runs `work` on a thread that has entered host `name` of `network`.
fn thread_on(network: &Network, name: &str, work: impl FnOnce(&Network) + Send) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                network.enter(name).expect("the thread enters the host");
                work(network);
            })
            .join()
            .expect("the work on the host succeeds");
    });
}

#[test]
fn dropping_the_network_removes_its_namespaces() {
    let network = Network::create(&["a", "b"]).expect("namespaces can be made");
    let id = network.id().to_owned();
    assert_eq!(Network::existing_namespaces(&id).unwrap().len(), 3);
    drop(network);
    assert_eq!(
        Network::existing_namespaces(&id).unwrap(),
        Vec::<String>::new()
    );
}

/// A child process killed when dropped, so a failed assertion does not
/// leave it (and its network) behind.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_owner_leaves_no_namespace_behind() {
    let mut owner = KilledOnDrop(
        Command::new(env!("CARGO_BIN_EXE_taskflow-network-owner"))
            .args(["a", "b", "c"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut id = String::new();
    BufReader::new(owner.0.stdout.take().unwrap())
        .read_line(&mut id)
        .unwrap();
    let id = id.trim().to_owned();
    assert_eq!(
        Network::existing_namespaces(&id).unwrap().len(),
        4,
        "{id:?}"
    );

    drop(owner);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Network::existing_namespaces(&id).unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "namespaces of a killed owner still exist after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
