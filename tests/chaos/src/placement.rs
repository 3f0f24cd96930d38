//! Where each process of a run goes: on loopback, or with `--network` on
//! hosts of a private network (see the crate docs).

use std::sync::Arc;

use taskflow_testkit::{Network, Place};

use super::Args;

/// API processes the suite runs; the first is the one it kills.
pub const APIS: usize = 2;

/// Where each process of the run goes: everything on loopback, or with
/// `--network` each on a host of its own, named as below.
pub struct Placement {
    pub network: Option<Arc<Network>>,
}

impl Placement {
    const CLIENT: &str = "client";
    pub const POSTGRES: &str = "postgres";
    pub const REDIS: &str = "redis";

    /// Makes the network of `--network`, with a host for each API and
    /// each of `workers` worker slots (a worker killed is replaced on its
    /// slot's host), and moves this program onto its client host: call it
    /// before the runtime starts, so that every thread is there.
    pub fn new(args: &Args) -> anyhow::Result<Self> {
        if !args.network {
            return Ok(Self { network: None });
        }
        let mut names: Vec<String> = [Self::CLIENT, Self::POSTGRES, Self::REDIS]
            .map(str::to_owned)
            .to_vec();
        names.extend((1..=APIS).map(Self::api));
        names.extend((1..=args.workers).map(Self::worker));
        let network = Network::create(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
        network.enter(Self::CLIENT)?;
        Ok(Self {
            network: Some(Arc::new(network)),
        })
    }

    pub fn api(number: usize) -> String {
        format!("api-{number}")
    }

    pub fn worker(slot: usize) -> String {
        format!("worker-host-{slot}")
    }

    pub fn place(&self, host: &str) -> Place {
        self.network
            .as_ref()
            .map_or(Place::Loopback, |network| network.place(host))
    }
}
