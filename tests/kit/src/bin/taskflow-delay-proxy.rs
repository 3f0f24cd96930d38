//! `taskflow-delay-proxy LISTEN TARGET ONE_WAY_DELAY_US`: a TCP proxy that
//! delays every byte by a fixed time each way, the latency of a link
//! between two hosts where `tc netem` is not available (issue 16). It
//! listens on LISTEN, connects each client to TARGET, forwards both ways,
//! and prints `ready` once it listens. The testkit starts it as
//! [`taskflow_testkit::DelayProxy`].
//!
//! Each direction of a connection has a reader thread, which stamps what it
//! reads with the time it arrived, and a writer thread, which writes each
//! chunk, in order, at that time plus the delay: a chunk that arrives while
//! an earlier one waits is not delayed twice, so pipelined requests keep
//! their spacing, as on a wire. The end of a stream is delayed likewise: a
//! close is passed on as a close of that direction, a failed read or write
//! as a close of both ends. At most
//! [`IN_FLIGHT_CHUNKS`] wait in between, after which the reader stops
//! reading and TCP's flow control slows the sender, as a full link would. Writers sleep with a timer slack of 1 µs
//! (`PR_SET_TIMERSLACK`): the default 50 µs would be a tenth of a 0.5 ms
//! delay. Four threads and their wake-ups per connection are what a link
//! in user space costs; the bench reports the proxy's CPU time.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Most bytes read at once.
const CHUNK_BYTES: usize = 64 * 1024;

/// Most chunks read and not yet written, per direction of a connection.
const IN_FLIGHT_CHUNKS: usize = 16;

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [listen, target, delay_us] = arguments.as_slice() else {
        anyhow::bail!("usage: taskflow-delay-proxy LISTEN TARGET ONE_WAY_DELAY_US");
    };
    let delay = Duration::from_micros(delay_us.parse().context("ONE_WAY_DELAY_US")?);
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    for client in listener.incoming() {
        let Ok(client) = client else {
            // Out of descriptors, say: wait for some to be closed rather
            // than spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let target = target.clone();
        // A client whose server cannot be reached, or that no thread can be
        // made for, is closed, as the server's refusal would close it.
        let _ = thread::Builder::new().spawn(move || {
            if let Ok(server) = TcpStream::connect(&target) {
                let _ = link(client, server, delay);
            }
        });
    }
    Ok(())
}

/// Forwards `client` and `server` to each other until both directions end.
fn link(client: TcpStream, server: TcpStream, delay: Duration) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let upstream = {
        let (from, to) = (client.try_clone()?, server.try_clone()?);
        thread::Builder::new().spawn(move || forward(from, to, delay))?
    };
    forward(server, client, delay);
    let _ = upstream.join();
    Ok(())
}

/// What a reader saw, stamped with when.
enum Arrival {
    Bytes(Vec<u8>),
    /// The sender closed its side.
    End,
    /// The connection failed (a reset): both ends are shut.
    Failure,
}

/// Reads `from` until it ends and writes what it read to `to`, each chunk,
/// and then the end, `delay` after it arrived.
fn forward(from: TcpStream, to: TcpStream, delay: Duration) {
    let (arrivals, delayed) = mpsc::sync_channel::<(Instant, Arrival)>(IN_FLIGHT_CHUNKS);
    let Ok(reader_side) = from.try_clone() else {
        return;
    };
    let Ok(writer) =
        thread::Builder::new().spawn(move || write_delayed(&delayed, to, &reader_side, delay))
    else {
        let _ = from.shutdown(Shutdown::Both);
        return;
    };
    let mut from = from;
    let mut buffer = vec![0; CHUNK_BYTES];
    loop {
        let arrival = match from.read(&mut buffer) {
            Ok(0) => Arrival::End,
            Ok(read) => Arrival::Bytes(buffer[..read].to_vec()),
            Err(_) => Arrival::Failure,
        };
        let last = !matches!(arrival, Arrival::Bytes(_));
        if arrivals.send((Instant::now(), arrival)).is_err() || last {
            break;
        }
    }
    drop(arrivals);
    let _ = writer.join();
}

/// Writes each arrival to `to` when it is due; a failed write, or a
/// failure read, shuts both `to` and the reader's side.
fn write_delayed(
    delayed: &mpsc::Receiver<(Instant, Arrival)>,
    mut to: TcpStream,
    reader_side: &TcpStream,
    delay: Duration,
) {
    let _ = nix::sys::prctl::set_timerslack(1_000);
    for (arrived, arrival) in delayed {
        if let Some(wait) = (arrived + delay).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let failed = match arrival {
            Arrival::Bytes(chunk) => to.write_all(&chunk).is_err(),
            Arrival::End => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Arrival::Failure => true,
        };
        if failed {
            let _ = to.shutdown(Shutdown::Both);
            let _ = reader_side.shutdown(Shutdown::Both);
            return;
        }
    }
}
