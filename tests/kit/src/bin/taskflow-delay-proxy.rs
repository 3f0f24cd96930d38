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
//! their spacing, as on a wire. Writers sleep with a timer slack of 1 µs
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
        let Ok(client) = client else { continue };
        let target = target.clone();
        thread::spawn(move || {
            // A client whose server cannot be reached is closed, as the
            // server's refusal would close it.
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
        thread::spawn(move || forward(from, to, delay))
    };
    forward(server, client, delay);
    let _ = upstream.join();
    Ok(())
}

/// Reads `from` until it ends and writes what it read to `to`, each chunk
/// `delay` after it arrived. The end of `from` is passed on as the end of
/// what `to` gets; a failed write ends both.
fn forward(from: TcpStream, to: TcpStream, delay: Duration) {
    let (chunks, delayed) = mpsc::channel::<(Instant, Vec<u8>)>();
    let Ok(reader_side) = from.try_clone() else {
        return;
    };
    let writer = thread::spawn(move || {
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let mut to = to;
        for (arrived, chunk) in delayed {
            if let Some(wait) = (arrived + delay).checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                let _ = reader_side.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut from = from;
    let mut buffer = vec![0; CHUNK_BYTES];
    while let Ok(read @ 1..) = from.read(&mut buffer) {
        if chunks
            .send((Instant::now(), buffer[..read].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(chunks);
    let _ = writer.join();
}
