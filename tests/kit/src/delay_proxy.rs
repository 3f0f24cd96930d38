//! A link with latency between two hosts of a [`Network`](crate::Network):
//! the `taskflow-delay-proxy` program (src/bin/taskflow-delay-proxy.rs says
//! how it delays), started on the server's host in front of the server.
//! Clients that connect to the proxy's address see the round-trip time
//! grow by twice the one-way delay; the server's own address stays
//! without it.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{Place, cpu_micros};

/// A running `taskflow-delay-proxy`, killed when dropped.
#[derive(Debug)]
pub struct DelayProxy {
    child: Child,
    address: SocketAddrV4,
}

impl DelayProxy {
    /// Starts a proxy at `place`, listening on `listen` and forwarding to
    /// `target`, each way `one_way` later.
    ///
    /// # Errors
    ///
    /// If the program is not built (see [`delay_proxy_program`]) or cannot
    /// listen on `listen`.
    pub fn start(
        place: &Place,
        listen: SocketAddrV4,
        target: SocketAddrV4,
        one_way: Duration,
    ) -> anyhow::Result<Self> {
        let program = delay_proxy_program()?;
        let mut child = place
            .command(&program)
            .arg(listen.to_string())
            .arg(target.to_string())
            .arg(one_way.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("the proxy's output")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("taskflow-delay-proxy did not start on {listen}");
        }
        Ok(Self {
            child,
            address: listen,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// CPU time the proxy has used so far, user and system, in µs.
    pub fn cpu_micros(&self) -> Option<u64> {
        cpu_micros(self.child.id())
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `taskflow-delay-proxy` program: `TASKFLOW_DELAY_PROXY`, else next to
/// the running program or one directory up (a test binary runs from
/// `deps/`), where `cargo build` puts it.
///
/// # Errors
///
/// If it is in none of those places.
pub fn delay_proxy_program() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TASKFLOW_DELAY_PROXY") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("taskflow-delay-proxy"))
        .find(|path| path.is_file())
        .context("taskflow-delay-proxy is not built: cargo build -p taskflow-testkit --bins")
}
