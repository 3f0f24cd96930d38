//! `bench http`: what outbound HTTP costs. In this process, attempts of
//! the http-probe plugin make GETs to a local server through the sandbox
//! (policy check, connection to the checked address, metered bodies, audit
//! record), alternating in rounds with as many GETs from a plain hyper
//! client, each on a new connection as the host's are; the difference is
//! the host's own cost per request, guest-side `wasi:http` calls included.
//! Then a drain of `fetch` jobs, one GET each, with the API and 2 workers.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::json;
use sha2::{Digest, Sha256};
use taskflow::api::types::{PutQueue, SubmitBatch};
use taskflow::config::ExecutionLimits;
use taskflow::queue::AllowedHost;
use taskflow::sandbox::{Grants, OutboundLimits};
use taskflow_testkit::TestServers;

use super::Figure;
use super::cluster::Target;
use super::in_process::{attempt, plugin_bytes, sandbox_for};
use super::scenarios::{cores, job, wait_succeeded, warm_deployment};
use super::usage::Usage;

/// Both measurements.
pub async fn http(target: &Target, requests: usize, jobs: usize) -> anyhow::Result<Vec<Figure>> {
    let servers = TestServers::start().await;
    let mut figures = per_request(target, &servers, requests).await?;
    figures.extend(drain(target, &servers, jobs).await?);
    Ok(figures)
}

async fn per_request(
    target: &Target,
    servers: &TestServers,
    count: usize,
) -> anyhow::Result<Vec<Figure>> {
    let origin = format!("http://127.0.0.1:{}", servers.http.port());
    let limits = ExecutionLimits {
        outbound: OutboundLimits {
            max_requests: u32::try_from(count)? + 1,
            ..OutboundLimits::default()
        },
        ..ExecutionLimits::default()
    };
    let sandbox = sandbox_for(target, &limits, None)?;
    let bytes = plugin_bytes(target, "http_probe")?;
    let hash = hex::encode(Sha256::digest(&bytes));
    let (task, _) = sandbox
        .prepare(&hash, async move { Ok(bytes) })
        .await
        .map_err(|failure| anyhow::anyhow!("{}", failure.message))?;
    let flood = |count: usize| {
        let input = json!({"mode": "flood", "url": format!("{origin}/hello"), "count": count});
        let mut attempt = attempt(input.to_string().as_bytes(), 64 << 20);
        attempt.grants = Grants {
            allowed_hosts: vec![AllowedHost::parse(&origin).expect("a valid origin")],
            ..Grants::default()
        };
        attempt
    };
    sandbox
        .run(&task, flood(10))
        .await
        .result
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    // Alternate the two in rounds, so a change in the machine's pace during
    // the run moves both sides of each round's difference alike.
    let per_round = count.div_ceil(ROUNDS);
    let (mut through_task, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Reading::now();
        let execution = sandbox.run(&task, flood(per_round)).await;
        through_task.push(started.since().per(per_round));
        let output: serde_json::Value = serde_json::from_slice(
            &execution
                .result
                .map_err(|f| anyhow::anyhow!("{}", f.message))?,
        )?;
        anyhow::ensure!(
            output["ok"] == per_round,
            "not every request succeeded: {output}"
        );
        let started = Reading::now();
        for _ in 0..per_round {
            plain_get(servers.http).await?;
        }
        plain.push(started.since().per(per_round));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        taskflow_testkit::median(&values)
    };
    let of = |spent: &[Spent], field: fn(&Spent) -> f64| median(spent.iter().map(field).collect());
    let difference = median(
        through_task
            .iter()
            .zip(&plain)
            .map(|(task, plain)| task.micros - plain.micros)
            .collect(),
    );
    let measures: [Measure; 3] = [
        (
            "GET through a task",
            "GET from plain hyper",
            |s| s.micros,
            "µs/request",
        ),
        (
            "CPU, through a task",
            "CPU, plain hyper",
            |s| s.cpu_micros,
            "µs/request",
        ),
        (
            "context switches, through a task",
            "context switches, plain hyper",
            |s| s.switches,
            "/request",
        ),
    ];
    let mut figures = vec![Figure::new(
        "host's cost per request",
        difference,
        "µs/request",
        "≤ 50",
    )];
    for (task_name, plain_name, field, unit) in measures {
        figures.push(Figure::new(
            task_name,
            of(&through_task, field),
            unit,
            "report",
        ));
        figures.push(Figure::new(plain_name, of(&plain, field), unit, "report"));
    }
    Ok(figures)
}

/// A figure measured on both sides: the task's name, the plain client's,
/// the value of a [`Spent`], and its unit.
type Measure = (&'static str, &'static str, fn(&Spent) -> f64, &'static str);

/// Rounds of the per-request comparison; each figure is the median of the
/// rounds' (the difference: of each round's difference).
const ROUNDS: usize = 5;

/// Wall time, CPU time and context switches of this process (client,
/// sandbox and test server alike) at one moment.
struct Reading {
    at: Instant,
    usage: Usage,
}

/// What a stretch of work cost, between a [`Reading`] and now.
struct Spent {
    micros: f64,
    cpu_micros: f64,
    switches: f64,
}

impl Reading {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            usage: Usage::of([std::process::id()]),
        }
    }

    fn since(&self) -> Spent {
        let spent = Self::now().usage.since(self.usage);
        Spent {
            micros: self.at.elapsed().as_secs_f64() * 1e6,
            cpu_micros: spent.cpu_micros as f64,
            switches: spent.switches as f64,
        }
    }
}

impl Spent {
    /// This cost spread over `count` requests.
    fn per(self, count: usize) -> Self {
        let count = count as f64;
        Self {
            micros: self.micros / count,
            cpu_micros: self.cpu_micros / count,
            switches: self.switches / count,
        }
    }
}

/// One GET on a new connection, body read to the end.
async fn plain_get(address: std::net::SocketAddr) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/hello")
        .header("host", address.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    response.into_body().collect().await?;
    Ok(())
}

/// `count` `fetch` jobs, one GET each, drained by 2 workers: their rate,
/// and the workers' database calls per job (grants are read at most once a
/// second per queue, `worker/grants.rs`).
async fn drain(
    target: &Target,
    servers: &TestServers,
    count: usize,
) -> anyhow::Result<Vec<Figure>> {
    let (deployment, module) = warm_deployment(target, 2, cores(), "fetch").await?;
    let origin = format!("http://127.0.0.1:{}", servers.http.port());
    let grants = PutQueue {
        allowed_hosts: vec![origin.clone()],
        ..PutQueue::default()
    };
    deployment.client.put_queue("default", &grants).await?;
    let input = json!({"url": format!("{origin}/hello")});
    let calls_before = deployment.worker_db_calls().await?.all();
    let started = Instant::now();
    let mut remaining = count;
    while remaining > 0 {
        let size = remaining.min(1000);
        let jobs = (0..size)
            .map(|_| taskflow::api::types::SubmitJob {
                input: Some(input.clone().into()),
                ..job(&module)
            })
            .collect();
        deployment
            .client
            .submit_batch(&SubmitBatch { jobs })
            .await?;
        remaining -= size;
    }
    wait_succeeded(deployment.store(), count, "fetching")
        .await
        .context("the fetch jobs did not all succeed")?;
    let seconds = started.elapsed().as_secs_f64();
    let calls = deployment.worker_db_calls().await?.all() - calls_before;
    deployment.stop().await?;
    Ok(vec![
        Figure::new(
            "fetch jobs drained, 2 workers",
            count as f64 / seconds,
            "jobs/s",
            "report",
        ),
        Figure::new(
            "fetch drain, worker database calls per job",
            calls as f64 / count as f64,
            "calls",
            "report",
        ),
    ])
}
