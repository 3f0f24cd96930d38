//! Makes a [`Network`] of the hosts named on the command line, prints its
//! id and waits to be killed: how `tests/network.rs` checks that a killed
//! owner's namespaces go away with it.

use std::io::Write as _;

use taskflow_testkit::Network;

fn main() -> anyhow::Result<()> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let network = Network::create(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", network.id())?;
    out.flush()?;
    loop {
        std::thread::park();
    }
}
