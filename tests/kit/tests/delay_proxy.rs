//! `taskflow-delay-proxy` (testkit `DelayProxy`), on loopback: each way
//! delays by what it was given, no more for what waits behind, keeps
//! every byte in order and passes a half-close on.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use taskflow_testkit::{DelayProxy, Place, free_port};

/// An echo server on loopback: per connection, writes back what it reads
/// and closes its side when the client has closed its own.
fn start_echo_server() -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            thread::spawn(move || {
                let mut buffer = [0; 8192];
                while let Ok(read @ 1..) = stream.read(&mut buffer) {
                    if stream.write_all(&buffer[..read]).is_err() {
                        return;
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

fn proxy_to(target: SocketAddrV4, one_way: Duration) -> DelayProxy {
    let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
    DelayProxy::start(&Place::Loopback, listen, target, one_way).expect("the proxy starts")
}

#[test]
fn each_message_is_delayed_by_the_round_trip_and_none_waits_for_another() {
    let one_way = Duration::from_millis(25);
    let proxy = proxy_to(start_echo_server(), one_way);
    let mut stream = TcpStream::connect(proxy.address()).unwrap();
    stream.set_nodelay(true).unwrap();
    let reader = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut arrivals = Vec::new();
            let mut byte = [0; 1];
            while arrivals.len() < 10 {
                stream.read_exact(&mut byte).unwrap();
                arrivals.push((byte[0], Instant::now()));
            }
            arrivals
        })
    };
    // One byte every 5 ms: each arrives while the ones before it still
    // wait out their delay.
    let mut sent = Vec::new();
    for message in 0..10_u8 {
        sent.push(Instant::now());
        stream.write_all(&[message]).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    let arrivals = reader.join().unwrap();
    for (message, (echoed, arrived)) in arrivals.into_iter().enumerate() {
        assert_eq!(usize::from(echoed), message, "out of order");
        let round_trip = arrived - sent[message];
        assert!(
            round_trip >= 2 * one_way,
            "message {message} came back in {round_trip:?}, less than the round trip"
        );
        // A proxy that held each message until the one before it was out
        // would have kept the last one about ten delays.
        assert!(
            round_trip < 6 * one_way,
            "message {message} came back in {round_trip:?}: delays add up"
        );
    }
}

#[test]
fn every_byte_arrives_in_order_and_a_half_close_is_passed_on() {
    let proxy = proxy_to(start_echo_server(), Duration::from_micros(500));
    let mut stream = TcpStream::connect(proxy.address()).unwrap();
    let sent: Vec<u8> = (0..1_000_000_u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let writer = {
        let (mut stream, sent) = (stream.try_clone().unwrap(), sent.clone());
        thread::spawn(move || {
            stream.write_all(&sent).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    // read_to_end returns only once the server's close came through.
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    writer.join().unwrap();
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "bytes changed or reordered on the way");
}

#[test]
fn a_sender_faster_than_its_receiver_is_slowed_as_on_a_full_link() {
    // A server that accepts and never reads.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, listener.local_addr().unwrap().port());
    let held = thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let proxy = proxy_to(target, Duration::from_micros(500));
    let mut stream = TcpStream::connect(proxy.address()).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // Socket buffers on the way hold a few MiB; a proxy that read without
    // bound would take all of it.
    let chunk = vec![0_u8; 1 << 20];
    let mut written = 0;
    while written < 256 << 20 && stream.write_all(&chunk).is_ok() {
        written += chunk.len();
    }
    assert!(
        written < 64 << 20,
        "{} MiB went into a link whose receiver reads nothing",
        written >> 20
    );
    drop(held);
}
