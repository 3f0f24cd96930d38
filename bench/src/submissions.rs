//! Submission scenarios: single-job requests from one client or many, each
//! beside PostgreSQL's one-row INSERT + COMMIT of as many connections; and
//! batches of 1,000 jobs from one and two clients.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use tokio::net::TcpStream;

use taskflow::api::types::SubmitBatch;

use super::Figure;
use super::cluster::{Deployment, Target};
use super::reference::{self, Reference};
use super::scenarios::{cpu_budget, job, progress, redis_commands_since};
use super::usage::{self, Servers, Usage};

/// Runs `clients` clients at once, each making its share of `requests`
/// posts of `post` and moving `bar` by `step` after each, and returns how
/// long they took together.
///
/// Every client has a connection of its own, and all of them share one
/// single-threaded runtime on a thread of its own: the way `pgbench -j 1`
/// and the reference ([`reference::inserts`]) drive their connections, and
/// the least a load generator can take from the two cores the API and
/// PostgreSQL need, since real clients run on other machines. On the
/// benchmark's shared multi-threaded runtime every response hopped between
/// its threads; with a thread per client, 32 threads on two cores cost the
/// clients more CPU per request than the API (docs/benchmarks.md, "The
/// load generator"). For the same reason the clients speak HTTP through
/// hyper with the body serialized once ([`Post`]), not through
/// `taskflow::client::Client`, whose serde and reqwest layers cost as much
/// CPU per request as the API's handling of it under 32 clients
/// (docs/benchmarks.md, "A lighter load generator").
async fn run_clients(
    clients: usize,
    requests: usize,
    (bar, step): (&ProgressBar, u64),
    post: Post,
) -> anyhow::Result<Duration> {
    let bar = bar.clone();
    let started = Instant::now();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let loops = (0..clients).map(|client| {
                    let share = requests / clients + usize::from(client < requests % clients);
                    let (post, bar) = (&post, &bar);
                    async move {
                        let mut connection = post.connect().await?;
                        for _ in 0..share {
                            post.send(&mut connection).await?;
                            bar.inc(step);
                        }
                        anyhow::Ok(())
                    }
                });
                futures::future::try_join_all(loops).await?;
                anyhow::Ok(())
            })
    });
    tokio::task::spawn_blocking(move || {
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
    .await??;
    Ok(started.elapsed())
}

/// The one request a benchmark client repeats: a JSON body, serialized
/// once, posted to a path of the deployment's API.
struct Post {
    address: SocketAddrV4,
    path: &'static str,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    body: Bytes,
}

impl Post {
    fn new(
        deployment: &Deployment,
        path: &'static str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Self> {
        let (address, token) = deployment.api_endpoint();
        Ok(Self {
            address,
            path,
            host: HeaderValue::from_str(&address.to_string())?,
            authorization: token
                .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
                .transpose()?,
            body: Bytes::from(serde_json::to_vec(body)?),
        })
    }

    /// A keep-alive connection to the API, its driver spawned on the
    /// current runtime.
    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Posts the body once on `connection` and reads the whole answer; an
    /// answer other than a success is an error naming it.
    async fn send(&self, connection: &mut SendRequest<Full<Bytes>>) -> anyhow::Result<()> {
        let mut request = Request::post(self.path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))?;
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        connection.ready().await?;
        let response = connection.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "POST {} answered {status}: {}",
            self.path,
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// Submissions' figures, and their rate and reference for comparisons.
pub(crate) struct Submitted {
    pub figures: Vec<Figure>,
    pub jobs_per_second: f64,
    /// One-row INSERT + COMMIT per second from as many connections, the
    /// mean of before and after the submissions ([`reference::Bracket`]).
    pub reference_per_second: f64,
}

/// What one run of single-job submissions measured, between the two
/// measurements of the reference.
struct SubmissionRun {
    /// Jobs per second.
    rate: f64,
    /// Write-ahead log written during the run, in bytes.
    wal: i64,
    api: Usage,
    postgres: Usage,
    redis: Usage,
    client: Usage,
    redis_calls: u64,
    /// For a sequential client: the job's own row by a plain INSERT, and
    /// the same submissions straight through the store (jobs per second).
    parts: Option<(Reference, f64)>,
}

/// `count` single-job submissions from `clients` concurrent clients, beside
/// the reference of as many connections, and what the API spent on each.
pub(crate) async fn submit(
    target: &Target,
    count: usize,
    clients: usize,
) -> anyhow::Result<Submitted> {
    let (run, reference) = reference::bracket(target, clients, async || {
        submission_run(target, count, clients).await
    })
    .await?;
    let [reference_rate, drift] = reference.figures(clients);
    let reference = reference.mean();
    let (ratio_target, switches_target) = if clients == 1 {
        ("≥ 0.75", "≤ 2")
    } else {
        ("≥ 1.0", "report")
    };
    let mut figures = vec![
        Figure::new("submitted", run.rate, "jobs/s", "report"),
        reference_rate,
        drift,
        Figure::new(
            "submitted / reference",
            run.rate / reference.per_second,
            "ratio",
            ratio_target,
        ),
        Figure::new(
            "reference: PostgreSQL CPU per INSERT + COMMIT",
            reference.postgres_cpu_micros,
            "µs",
            "report",
        ),
        Figure::new(
            "WAL bytes per request",
            run.wal as f64 / count as f64,
            "bytes",
            "report",
        ),
        Figure::new(
            "reference: WAL bytes per INSERT + COMMIT",
            reference.wal_bytes,
            "bytes",
            "report",
        ),
        Figure::new(
            "API context switches per request",
            run.api.switches_per(count),
            "switches",
            switches_target,
        ),
        Figure::new(
            "of them, involuntary (the API preempted)",
            run.api.involuntary_switches_per(count),
            "switches",
            "report",
        ),
        Figure::new(
            "Redis commands per request",
            run.redis_calls as f64 / count as f64,
            "commands",
            "report",
        ),
    ];
    if let Some((job_rows, without_http)) = run.parts {
        figures.extend([
            Figure::new(
                "reference: the job's own row, plain INSERT + COMMIT, 1 connection",
                job_rows.per_second,
                "tps",
                "report",
            ),
            Figure::new(
                "the job's own row / reference",
                job_rows.per_second / reference.per_second,
                "ratio",
                "report",
            ),
            Figure::new(
                "PostgreSQL CPU per job-row INSERT + COMMIT",
                job_rows.postgres_cpu_micros,
                "µs",
                "report",
            ),
            Figure::new(
                "WAL bytes per job-row INSERT + COMMIT",
                job_rows.wal_bytes,
                "bytes",
                "report",
            ),
            Figure::new(
                "submitted / the job's own row",
                run.rate / job_rows.per_second,
                "ratio",
                "report",
            ),
            Figure::new(
                "the same jobs straight through the store, no HTTP",
                without_http,
                "jobs/s",
                "report",
            ),
            Figure::new(
                "store alone / reference",
                without_http / reference.per_second,
                "ratio",
                "report",
            ),
            // The sequential ratio as the product of three factors of this
            // run (docs/benchmarks.md, "The job's own row in every run"):
            // the row (above), TaskFlow's statement, and HTTP (below).
            Figure::new(
                "store alone / the job's own row",
                without_http / job_rows.per_second,
                "ratio",
                "report",
            ),
            Figure::new(
                "submitted / store alone",
                run.rate / without_http,
                "ratio",
                "report",
            ),
        ]);
    }
    figures.extend(cpu_budget(
        count,
        "request",
        &[
            ("API", run.api),
            ("PostgreSQL", run.postgres),
            ("Redis", run.redis),
            ("client", run.client),
        ],
    ));
    Ok(Submitted {
        figures,
        jobs_per_second: run.rate,
        reference_per_second: reference.per_second,
    })
}

/// The submissions of [`submit`] on a deployment of their own, and for a
/// sequential client the job's own row before them and the store alone
/// after them.
async fn submission_run(
    target: &Target,
    count: usize,
    clients: usize,
) -> anyhow::Result<SubmissionRun> {
    // For a sequential client, the job's own row beside the reference, in
    // the same conditions: before the deployment, whose database's drop
    // forces a checkpoint.
    let job_rows = if clients == 1 {
        Some(reference::job_rows(target).await?)
    } else {
        None
    };
    let deployment = Deployment::start(target).await?;
    let module = deployment.upload("noop").await?;
    let bar = progress(count, "submitting");
    let submission = job(&module);
    let post = Post::new(&deployment, "/v1/jobs", &submission)?;
    let (before, servers_before, client_before) =
        (deployment.api_usage(), Servers::read(), usage::own());
    let redis_before = usage::redis_commands(&target.redis_url).await?;
    let wal_before = deployment.store().wal_bytes_written().await?;
    let elapsed = run_clients(clients, count, (&bar, 1), post).await?;
    let wal = deployment.store().wal_bytes_written().await? - wal_before;
    let api = deployment.api_usage().since(before);
    let (postgres, redis) = Servers::read().since(&servers_before);
    let client = usage::own().since(client_before);
    let redis_calls = redis_commands_since(target, redis_before).await?;
    bar.finish_and_clear();
    let parts = match job_rows {
        Some(job_rows) => Some((
            job_rows,
            reference::store_submissions(deployment.store(), &submission).await?,
        )),
        None => None,
    };
    deployment.stop().await?;
    Ok(SubmissionRun {
        rate: count as f64 / elapsed.as_secs_f64(),
        wal,
        api,
        postgres,
        redis,
        client,
        redis_calls,
        parts,
    })
}

/// `requests` batch submissions of 1,000 jobs each: from one client, one
/// after another, then from two clients at once (one per core).
pub(crate) async fn submit_batch(target: &Target, requests: usize) -> anyhow::Result<Vec<Figure>> {
    let deployment = Deployment::start(target).await?;
    let module = deployment.upload("noop").await?;
    let batch = SubmitBatch {
        jobs: vec![job(&module); 1000],
    };
    let mut rates = Vec::new();
    for clients in [1, 2] {
        let bar = progress(
            requests * 1000,
            &format!("submitting ({clients} client(s))"),
        );
        let post = Post::new(&deployment, "/v1/jobs/batch", &batch)?;
        let elapsed = run_clients(clients, requests, (&bar, 1000), post).await?;
        rates.push((requests * 1000) as f64 / elapsed.as_secs_f64());
        bar.finish_and_clear();
    }
    deployment.stop().await?;
    Ok(vec![
        Figure::new("submitted, 1 client", rates[0], "jobs/s", "≥ 100000"),
        Figure::new("submitted, 2 clients", rates[1], "jobs/s", "≥ 100000"),
    ])
}
